/* CIDer's MCA attention, and its attention-distillation KL, as CPU kernels (the autograd
 * wrappers and the layouts are in cider/kernels.py).
 *
 * Why: at head width 4 every (query modality, key modality) block of MCA is a batch of tiny
 * 50 x 50 score maps; PyTorch forms each map in memory and passes over it five or six times
 * (scores, row maxima, exponentials, weighted values, and again in the backward), so the work
 * is bound by memory traffic and per-op overhead, not arithmetic. Here every map lives in
 * registers only: the forward computes, per query row and key block, the row maximum m and the
 * sums sum_j exp(s_j - m) [v_j | 1], combines the blocks into the branches' outputs (the
 * log-sum-exp combination of cider/mct.py) and writes them where the output projection reads
 * them; the backward recomputes the same exponentials from q, k and m instead of storing them.
 * The KL of the last layer's full score rows (teacher || student) is formed the same way.
 *
 * Lanes, exp and the copies in and out: mer_bench/native/vec.h.
 */
#include "vec.h"

/* One query row against keys [k0, k1) of a lane block: the row maximum m and, in t, the sums
 * sum_j exp(s_j - m) v_j (dv values) and sum_j exp(s_j - m). */
static inline __attribute__((always_inline)) vf fwd_keys(
    const vf *qi, const float *k, const float *v, long k0, long k1, long d, long dv, vf *s,
    vf *t) {
    vf m = splat(-__builtin_inff());
    for (long j = k0; j < k1; j++) {
        s[j - k0] = score(qi, k + j * d * W, d);
        m = vmax(m, s[j - k0]);
    }
#pragma GCC unroll 65
    for (long c = 0; c <= dv; c++) t[c] = splat(0.0f);
    for (long j = k0; j < k1; j++) {
        vf e = vexp(s[j - k0] - m);
        const float *vj = v + j * dv * W;
#pragma GCC unroll 64
        for (long c = 0; c < dv; c++) t[c] += e * ld(vj + c * W);
        t[dv] += e;
    }
    return m;
}

/* The backward of fwd_keys for gradients g of its sums (dv + 1): accumulates d/dq into dqi,
 * d/dk and d/dv into dk and dv_. */
static inline __attribute__((always_inline)) void bwd_keys(
    const vf *qi, vf m, const vf *g, const float *k, const float *v, vf *dqi, float *dk,
    float *dv_, long k0, long k1, long d, long dv) {
    for (long j = k0; j < k1; j++) {
        const float *kj = k + j * d * W, *vj = v + j * dv * W;
        float *dkj = dk + j * d * W, *dvj = dv_ + j * dv * W;
        vf e = vexp(score(qi, kj, d) - m);
        vf de = g[dv];
#pragma GCC unroll 64
        for (long c = 0; c < dv; c++) de += g[c] * ld(vj + c * W);
        score_grad(de * e, qi, kj, dqi, dkj, d);
#pragma GCC unroll 64
        for (long c = 0; c < dv; c++) st(dvj + c * W, ld(dvj + c * W) + e * g[c]);
    }
}

/* Branch slot `slot` of a row: top = max of the key blocks' maxima in `mask`, w_j = exp(m_j -
 * top); returns D = sum w_j t_j[d] and writes w and o = sum w_j t_j[:d] / D. t[j] holds block
 * j's sums (d + 1 values) and then its maximum m_j. */
static inline __attribute__((always_inline)) vf combine(
    vf (*t)[MAXD + 2], int mask, long d, vf *w, vf *o) {
    vf top = splat(-__builtin_inff());
    for (int j = 0; j < 3; j++)
        if (mask >> j & 1) top = vmax(top, t[j][d + 1]);
    vf den = splat(0.0f);
#pragma GCC unroll 64
    for (long c = 0; c < d; c++) o[c] = splat(0.0f);
    for (int j = 0; j < 3; j++) {
        if (!(mask >> j & 1)) continue;
        w[j] = vexp(t[j][d + 1] - top);
#pragma GCC unroll 64
        for (long c = 0; c < d; c++) o[c] += w[j] * t[j][c];
        den += w[j] * t[j][d];
    }
#pragma GCC unroll 64
    for (long c = 0; c < d; c++) o[c] /= den;
    return den;
}

static inline __attribute__((always_inline)) int modality(const long *start, long i) {
    return i < start[1] ? 0 : (i < start[2] ? 1 : 2);
}

/* The shape of one call: B samples, L = lens[0] + lens[1] + lens[2] rows, H heads of width d. */
typedef struct {
    Pairs p;
    long L, start[4];
} Shape;

static Shape shape_of(long B, long H, long d, const long *lens) {
    Shape sh = {{B, H, d}, 0, {0, 0, 0, 0}};
    for (int m = 0; m < 3; m++) sh.start[m + 1] = sh.start[m] + lens[m];
    sh.L = sh.start[3];
    return sh;
}

/* The (sample, head) strides of q, k and v inside qkv (B, L, 3 E): part 0, 1, 2. */
static void qkv_strides(const Shape *sh, long *st4) {
    long e = sh->p.H * sh->p.d;
    st4[0] = sh->L * 3 * e; st4[1] = sh->p.d; st4[2] = 3 * e; st4[3] = 1;
}

/* A lane block's q (times scale), k and v from qkv into three (L, d, W) planes at x. */
static void pack_qkv(const float *qkv, const Shape *sh, float scale, float *x, long b) {
    long st4[4], e = sh->p.H * sh->p.d, plane = sh->L * sh->p.d * W;
    qkv_strides(sh, st4);
    for (int part = 0; part < 3; part++)
        pack(qkv + part * e, st4, part == 0 ? scale : 1.0f, x + part * plane, &sh->p, sh->L, b);
}

/* Where each real lane's rows start in the output: modality m's rows are one (B, L_m, 4, H, d)
 * block at B * start[m] * 4 E, so lane pair n's row r of modality m, slot s, feature c is at
 * base[m][l] + (r * 4 + s) * E + c; -1 for padding lanes. Computed once per lane block. */
static void out_bases(const Shape *sh, long b, long base[3][W]) {
    long e = sh->p.H * sh->p.d;
    for (int l = 0; l < W; l++) {
        long n = lane_pair(&sh->p, b, l);
        for (int m = 0; m < 3; m++) {
            long lm = sh->start[m + 1] - sh->start[m];
            base[m][l] = n < 0 ? -1
                : sh->p.B * sh->start[m] * 4 * e + (n / sh->p.H) * lm * 4 * e + (n % sh->p.H) * sh->p.d;
        }
    }
}

/* Every query row of one lane block: branch outputs scattered into out, terms (L, 3, d + 2, W)
 * kept for the backward (skipped when terms is NULL). */
static inline __attribute__((always_inline)) void fwd_block(
    const float *q, const float *k, const float *v, float *out, float *terms, const Shape *sh,
    long b, const int *masks, long d, vf *s) {
    long base[3][W];
    out_bases(sh, b, base);
    for (long i = 0; i < sh->L; i++) {
        vf qi[MAXD], t[3][MAXD + 2], w[3], o[4][MAXD];
#pragma GCC unroll 64
        for (long c = 0; c < d; c++) qi[c] = ld(q + (i * d + c) * W);
        for (int j = 0; j < 3; j++) {
            t[j][d + 1] = fwd_keys(qi, k, v, sh->start[j], sh->start[j + 1], d, d, s, t[j]);
        }
        const int *mk = masks + 4 * modality(sh->start, i);
        for (int slot = 0; slot < 4; slot++) combine(t, mk[slot], d, w, o[slot]);
        if (terms)
            for (int j = 0; j < 3; j++)
#pragma GCC unroll 66
                for (long c = 0; c <= d + 1; c++) st(terms + ((i * 3 + j) * (d + 2) + c) * W, t[j][c]);
        const long *bm = base[modality(sh->start, i)];
        long row = (i - sh->start[modality(sh->start, i)]) * 4 * sh->p.H * d, e = sh->p.H * d;
        for (int l = 0; l < W && bm[l] >= 0; l++)  /* GCC vectors take subscripts: lane l */
            for (int slot = 0; slot < 4; slot++) {
                float *dst = out + bm[l] + row + slot * e;
                for (long c = 0; c < d; c++) dst[c] = o[slot][c][l];
            }
    }
}

/* The backward of fwd_block for output gradients gout (laid out like out): per row, the
 * gradients of the three blocks' sums (out = N / D: dN = w go / D, dD = -w (go . out) / D),
 * then the keys; dq rows into dq (L, d, W), d/dk and d/dv accumulated into dk and dv_. */
static inline __attribute__((always_inline)) void bwd_block(
    const float *q, const float *k, const float *v, const float *terms, const float *gout,
    float *dq, float *dk, float *dv_, const Shape *sh, long b, const int *masks, long d) {
    long base[3][W];
    out_bases(sh, b, base);
    for (long i = 0; i < sh->L; i++) {
        vf qi[MAXD], dqi[MAXD], t[3][MAXD + 2], g[3][MAXD + 1], w[3], o[MAXD], go[4][MAXD];
        for (int slot = 0; slot < 4; slot++)
            for (long c = 0; c < d; c++) go[slot][c] = splat(0.0f);
        const long *bm = base[modality(sh->start, i)];
        long row = (i - sh->start[modality(sh->start, i)]) * 4 * sh->p.H * d, e = sh->p.H * d;
        for (int l = 0; l < W && bm[l] >= 0; l++)
            for (int slot = 0; slot < 4; slot++) {
                const float *src = gout + bm[l] + row + slot * e;
                for (long c = 0; c < d; c++) go[slot][c][l] = src[c];
            }
#pragma GCC unroll 64
        for (long c = 0; c < d; c++) { qi[c] = ld(q + (i * d + c) * W); dqi[c] = splat(0.0f); }
        for (int j = 0; j < 3; j++) {
#pragma GCC unroll 66
            for (long c = 0; c <= d + 1; c++) t[j][c] = ld(terms + ((i * 3 + j) * (d + 2) + c) * W);
#pragma GCC unroll 65
            for (long c = 0; c <= d; c++) g[j][c] = splat(0.0f);
        }
        const int *mk = masks + 4 * modality(sh->start, i);
        for (int slot = 0; slot < 4; slot++) {
            vf den = combine(t, mk[slot], d, w, o), gs[MAXD], dot = splat(0.0f);
#pragma GCC unroll 64
            for (long c = 0; c < d; c++) {
                gs[c] = go[slot][c] / den;
                dot += gs[c] * o[c];
            }
            for (int j = 0; j < 3; j++) {
                if (!(mk[slot] >> j & 1)) continue;
#pragma GCC unroll 64
                for (long c = 0; c < d; c++) g[j][c] += w[j] * gs[c];
                g[j][d] -= w[j] * dot;
            }
        }
        for (int j = 0; j < 3; j++)
            bwd_keys(qi, t[j][d + 1], g[j], k, v, dqi, dk, dv_, sh->start[j], sh->start[j + 1],
                     d, d);
#pragma GCC unroll 64
        for (long c = 0; c < d; c++) st(dq + (i * d + c) * W, dqi[c]);
    }
}

static void fwd_any(const float *q, const float *k, const float *v, float *out, float *terms,
                    const Shape *sh, long b, const int *masks, vf *s) {
    fwd_block(q, k, v, out, terms, sh, b, masks, sh->p.d, s);
}

static void fwd_4(const float *q, const float *k, const float *v, float *out, float *terms,
                  const Shape *sh, long b, const int *masks, vf *s) {
    fwd_block(q, k, v, out, terms, sh, b, masks, 4, s);
}

static void bwd_any(const float *q, const float *k, const float *v, const float *terms,
                    const float *gout, float *dq, float *dk, float *dv_, const Shape *sh, long b,
                    const int *masks) {
    bwd_block(q, k, v, terms, gout, dq, dk, dv_, sh, b, masks, sh->p.d);
}

static void bwd_4(const float *q, const float *k, const float *v, const float *terms,
                  const float *gout, float *dq, float *dk, float *dv_, const Shape *sh, long b,
                  const int *masks) {
    bwd_block(q, k, v, terms, gout, dq, dk, dv_, sh, b, masks, 4);
}

/* Scratch of `count` (L, d, W) arrays and one row buffer of `rows` x longest-block vectors. */
static float *scratch(const Shape *sh, int count, long row_vectors) {
    size_t n = (size_t)count * sh->L * sh->p.d * W * sizeof(float) + (size_t)row_vectors * sizeof(vf);
    return aligned_alloc(sizeof(vf), (n + sizeof(vf) - 1) / sizeof(vf) * sizeof(vf));
}


/* MCA forward over lane blocks [b0, b1). qkv: (B, L, 3 E) contiguous, E = H d, q scaled by
 * `scale` here; masks[4 m + slot]: the key modalities (bits) of the slot-th branch containing
 * query modality m. out: per modality m a (B, L_m, 4, E) block (see out_bases); terms: (blocks, L,
 * 3, d + 2, W) for the backward, or NULL. Returns 0, or 1 when d is out of range or memory is
 * short. */
int mca_forward(const float *qkv, float *out, float *terms, const long *lens, const int *masks,
                long B, long H, long d, float scale, long b0, long b1) {
    Shape sh = shape_of(B, H, d, lens);
    long longest = 1, plane = sh.L * d * W;
    int err = d < 1 || d > MAXD;
    for (int m = 0; m < 3; m++) longest = lens[m] > longest ? lens[m] : longest;
#pragma omp parallel if (!err) reduction(| : err)
    {
        float *x = scratch(&sh, 3, longest);
        err |= !x;
#pragma omp for schedule(static)
        for (long b = b0; b < b1; b++) {
            if (!x) continue;
            pack_qkv(qkv, &sh, scale, x, b);
            float *tb = terms ? terms + b * sh.L * 3 * (d + 2) * W : NULL;
            vf *s = (vf *)(x + 3 * plane);
            if (d == 4) fwd_4(x, x + plane, x + 2 * plane, out, tb, &sh, b, masks, s);
            else fwd_any(x, x + plane, x + 2 * plane, out, tb, &sh, b, masks, s);
        }
        free(x);
    }
    return err;
}

/* MCA backward over lane blocks [b0, b1): gout like out; dqkv like qkv (overwritten for every
 * real lane). */
int mca_backward(const float *qkv, const float *terms, const float *gout, float *dqkv,
                 const long *lens, const int *masks, long B, long H, long d, float scale,
                 long b0, long b1) {
    Shape sh = shape_of(B, H, d, lens);
    long st4[4], e = H * d, plane = sh.L * d * W;
    int err = d < 1 || d > MAXD;
    qkv_strides(&sh, st4);
#pragma omp parallel if (!err) reduction(| : err)
    {
        float *x = scratch(&sh, 6, 0);
        err |= !x;
#pragma omp for schedule(static)
        for (long b = b0; b < b1; b++) {
            if (!x) continue;
            pack_qkv(qkv, &sh, scale, x, b);
            float *dq = x + 3 * plane, *dk = x + 4 * plane, *dv_ = x + 5 * plane;
            memset(dk, 0, sizeof(float) * 2 * (size_t)plane);
            const float *tb = terms + b * sh.L * 3 * (d + 2) * W;
            if (d == 4) bwd_4(x, x + plane, x + 2 * plane, tb, gout, dq, dk, dv_, &sh, b, masks);
            else bwd_any(x, x + plane, x + 2 * plane, tb, gout, dq, dk, dv_, &sh, b, masks);
            for (int part = 0; part < 3; part++)
                unpack(x + (3 + part) * plane, part == 0 ? scale : 1.0f, dqkv + part * e, st4, &sh.p, sh.L, b);
        }
        free(x);
    }
    return err;
}

/* KL(softmax(teacher) || softmax(student)) over one lane block's full score rows s = q . k
 * (every key), summed into *kl; its gradient d/dq, d/dk of the student into dq, dk ((L, d, W),
 * dk accumulated). The terms are p_t (log p_t - log p_s) per element, as F.kl_div. */
static inline __attribute__((always_inline)) void kl_block(
    const float *qs, const float *ks, const float *qt, const float *kt, float *dq, float *dk,
    const Shape *sh, long b, long d, vf *row, double *kl) {
    long L = sh->L;
    vf *ss = row, *tt = row + L, *es = row + 2 * L, *et = row + 3 * L;
    for (long i = 0; i < L; i++) {
        vf qsi[MAXD], qti[MAXD], dqi[MAXD];
#pragma GCC unroll 64
        for (long c = 0; c < d; c++) {
            qsi[c] = ld(qs + (i * d + c) * W);
            qti[c] = ld(qt + (i * d + c) * W);
            dqi[c] = splat(0.0f);
        }
        vf ms = splat(-__builtin_inff()), mt = ms, sum_s = splat(0.0f), sum_t = sum_s;
        for (long j = 0; j < L; j++) {
            ss[j] = score(qsi, ks + j * d * W, d);
            tt[j] = score(qti, kt + j * d * W, d);
            ms = vmax(ms, ss[j]);
            mt = vmax(mt, tt[j]);
        }
        for (long j = 0; j < L; j++) {
            es[j] = vexp(ss[j] - ms);
            et[j] = vexp(tt[j] - mt);
            sum_s += es[j];
            sum_t += et[j];
        }
        float a[W], c_[W];
        memcpy(a, &sum_s, sizeof a);
        memcpy(c_, &sum_t, sizeof c_);
        for (int l = 0; l < W; l++) { a[l] = logf(a[l]); c_[l] = logf(c_[l]); }
        vf lse_s = ms + ld(a), lse_t = mt + ld(c_);
        vf inv_s = splat(1.0f) / sum_s, inv_t = splat(1.0f) / sum_t, acc = splat(0.0f);
        for (long j = 0; j < L; j++) {
            vf pt = et[j] * inv_t, ps = es[j] * inv_s, ds = ps - pt;
            acc += pt * ((tt[j] - lse_t) - (ss[j] - lse_s));
            score_grad(ds, qsi, ks + j * d * W, dqi, dk + j * d * W, d);
        }
        store_row(dq, i, dqi, d);
        float part[W];
        memcpy(part, &acc, sizeof part);
        for (int l = 0; l < W; l++)
            if (lane_pair(&sh->p, b, l) >= 0) *kl += part[l];
    }
}

static void kl_any(const float *qs, const float *ks, const float *qt, const float *kt, float *dq,
                   float *dk, const Shape *sh, long b, vf *row, double *kl) {
    kl_block(qs, ks, qt, kt, dq, dk, sh, b, sh->p.d, row, kl);
}

static void kl_4(const float *qs, const float *ks, const float *qt, const float *kt, float *dq,
                 float *dk, const Shape *sh, long b, vf *row, double *kl) {
    kl_block(qs, ks, qt, kt, dq, dk, sh, b, 4, row, kl);
}

/* The attention KL over lane blocks [b0, b1). qs, ks (student) and qt, kt (teacher): (B, H,
 * L, d) read with strides[4 x 4] (sample, head, row, feature) in that order. gq, gk: the
 * student's gradient of the KL sum, contiguous (B, H, L, d); kl[b]: block b's sum. */
int attn_kl(const float *qs, const float *ks, const float *qt, const float *kt,
            const long *strides, float *gq, float *gk, double *kl, long B, long H, long L,
            long d, long b0, long b1) {
    long lens[3] = {L, 0, 0}, dense[4] = {H * L * d, L * d, d, 1};
    Shape sh = shape_of(B, H, d, lens);
    long plane = L * d * W;
    int err = d < 1 || d > MAXD;
    const float *src[4] = {qs, ks, qt, kt};
#pragma omp parallel if (!err) reduction(| : err)
    {
        float *x = scratch(&sh, 6, 4 * L);
        err |= !x;
#pragma omp for schedule(static)
        for (long b = b0; b < b1; b++) {
            if (!x) continue;
            for (int t = 0; t < 4; t++) pack(src[t], strides + 4 * t, 1.0f, x + t * plane, &sh.p, sh.L, b);
            float *dq = x + 4 * plane, *dk = x + 5 * plane;
            memset(dk, 0, sizeof(float) * (size_t)plane);
            vf *row = (vf *)(x + 6 * plane);
            kl[b] = 0.0;
            if (d == 4) kl_4(x, x + plane, x + 2 * plane, x + 3 * plane, dq, dk, &sh, b, row, kl + b);
            else kl_any(x, x + plane, x + 2 * plane, x + 3 * plane, dq, dk, &sh, b, row, kl + b);
            unpack(dq, 1.0f, gq, dense, &sh.p, sh.L, b);
            unpack(dk, 1.0f, gk, dense, &sh.p, sh.L, b);
        }
        free(x);
    }
    return err;
}

/* The MCT's FFN ReLU + dropout over elements [i0, i1): out = relu(h) * (keep * scale), with
 * keep the 0/1 draws of torch's bernoulli_ and scale = 1 / (1 - p) as torch rounds it, so the
 * values are bit for bit F.dropout(F.relu(h)) (relu(h) times the same float multiplier). */
int relu_dropout_forward(const float *h, const float *keep, float scale, float *out, long i0,
                         long i1) {
#pragma omp parallel for schedule(static)
    for (long i = i0; i < i1; i++) {
        float r = h[i] > 0.0f ? h[i] : 0.0f;
        out[i] = r * (keep[i] * scale);
    }
    return 0;
}

/* Its backward from the output alone: the gradient times scale where out > 0, else zero (a
 * positive value times a scale above 1 never rounds to zero). */
int relu_dropout_backward(const float *out, const float *grad, float scale, float *dh, long i0,
                          long i1) {
#pragma omp parallel for schedule(static)
    for (long i = i0; i < i1; i++) dh[i] = out[i] > 0.0f ? grad[i] * scale : 0.0f;
    return 0;
}
