/* Narrow-head attention for the transformer baselines, with an optional bool mask and
 * attention dropout on given 16-bit draws, as one CPU kernel (the autograd wrapper is in
 * baselines/kernels.py; lanes, exp and the copies in and out: mer_bench/native/vec.h).
 *
 * Why: at head widths 5-10 (the MulT family) PyTorch's attention is a handful of passes over
 * every (L_q, L_k) map in memory (scores, mask, softmax, dropout, the weighted values, and
 * again in the backward). Here a row's scores live in a small buffer only: the forward
 * computes softmax(q k^T / sqrt(d) + mask) * keep / (1 - p) @ v and the row's log-sum-exp,
 * the backward recomputes the weights from q, k and that log-sum-exp (flash-attention's
 * recurrence: d/dS = P (dP - rowsum(dO * O))). Keys that no lane of a row may see (MulT's
 * future mask) are skipped.
 */
#include "vec.h"

typedef struct {
    Pairs p;
    long Lq, Lk;
    const unsigned char *mask; /* (sample, head, row, key) with strides mst; NULL: no mask */
    long mst[4];
    const int16_t *draws; /* (B, H, L_q, L_k) contiguous; kept where >= keep_from; NULL: none */
    int keep_from;
    float c; /* 1 / (1 - p) */
} Attn;

typedef int16_t vs __attribute__((vector_size(2 * W)));

/* Lanes that read the same mask row (the same sample when the mask is shared by the heads),
 * as a lane mask; padding lanes belong to no group (their mask stays 0: every key allowed). */
typedef struct {
    const unsigned char *base;
    vi lanes;
} Group;

static int mask_groups(const Attn *a, long b, Group *g) {
    int count = 0;
    for (int l = 0; l < W; l++) {
        long n = lane_pair(&a->p, b, l);
        if (n < 0 || !a->mask) continue;
        const unsigned char *base = a->mask + (n / a->p.H) * a->mst[0] + (n % a->p.H) * a->mst[1];
        int k = 0;
        while (k < count && g[k].base != base) k++;
        if (k == count) g[count++] = (Group){base, (vi){0}};
        g[k].lanes[l] = -1;
    }
    return count;
}

/* keep[j0 + t] for t < 16: the 16 lanes' draws of keys j0 .. j0 + 15 of row i, compared with
 * keep_from, as c or 0. The lanes' draws are 16 separate rows; four rounds of perfect-shuffle
 * interleaving transpose the 16 x 16 block in registers. */
static void keep_tile(const Attn *a, long b, long i, long j0, vf *keep) {
    vs r[W], t[W];
    long lk = a->Lk, n0 = b * W, count = lk - j0 < W ? lk - j0 : W;
    for (int l = 0; l < W; l++) {
        r[l] = (vs){0};
        if (lane_pair(&a->p, b, l) >= 0)
            memcpy(&r[l], a->draws + ((n0 + l) * a->Lq + i) * lk + j0, 2 * (size_t)count);
    }
    const vs lo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
    const vs hi = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    for (int round = 0; round < 4; round++) {
        for (int x = 0; x < W / 2; x++) {
            t[2 * x] = __builtin_shuffle(r[x], r[x + W / 2], lo);
            t[2 * x + 1] = __builtin_shuffle(r[x], r[x + W / 2], hi);
        }
        memcpy(r, t, sizeof r);
    }
    vi from = (vi){0} + a->keep_from, c = (vi)splat(a->c);
    for (long x = 0; x < count; x++) keep[j0 + x] = (vf)((__builtin_convertvector(r[x], vi) >= from) & c);
}

/* Row i's additive mask (0 or -inf per lane and key; untouched without a mask) and kept
 * weights (c or 0; untouched without dropout); returns 1 + the last key a real lane may see. */
static long row_tiles(const Attn *a, long b, long i, const Group *g, int groups, vf *bias,
                      vf *keep) {
    long lk = a->Lk, bound = a->mask ? 0 : lk;
    if (a->mask) {
        for (long j = 0; j < lk; j++) bias[j] = splat(0.0f);
        for (int k = 0; k < groups; k++) {
            const unsigned char *row = g[k].base + i * a->mst[2];
            vi inf = (vi)splat(-__builtin_inff()) & g[k].lanes;
            for (long j = 0; j < lk; j++) {
                if (row[j * a->mst[3]]) bound = j >= bound ? j + 1 : bound;
                else bias[j] = (vf)((vi)bias[j] | inf);
            }
        }
    }
    if (a->draws)
        for (long j0 = 0; j0 < bound; j0 += W) keep_tile(a, b, i, j0, keep);
    return bound;
}

/* Before a lane block's rows: the tiles a call without mask or dropout never changes. */
static void block_tiles(const Attn *a, vf *bias, vf *keep) {
    for (long j = 0; j < a->Lk; j++) {
        if (!a->mask) bias[j] = splat(0.0f);
        if (!a->draws) keep[j] = splat(a->c);
    }
}

/* One lane block's rows: out (L_q, d, W) and lse (L_q, W). */
static inline __attribute__((always_inline)) void fwd_rows(
    const Attn *a, long b, const float *q, const float *k, const float *v, float *out, float *lse,
    long d, vf *bias, vf *keep, vf *s) {
    Group g[W];
    int groups = mask_groups(a, b, g);
    block_tiles(a, bias, keep);
    for (long i = 0; i < a->Lq; i++) {
        vf qi[MAXD], o[MAXD], m = splat(-__builtin_inff()), sum = splat(0.0f);
        long bound = row_tiles(a, b, i, g, groups, bias, keep);
#pragma GCC unroll 64
        for (long c = 0; c < d; c++) { qi[c] = ld(q + (i * d + c) * W); o[c] = splat(0.0f); }
        for (long j = 0; j < bound; j++) {
            s[j] = score(qi, k + j * d * W, d) + bias[j];
            m = vmax(m, s[j]);
        }
        for (long j = 0; j < bound; j++) {
            s[j] = vexp(s[j] - m);
            sum += s[j];
        }
        vf inv = splat(1.0f) / sum;
        for (long j = 0; j < bound; j++) {
            vf w = s[j] * inv * keep[j];
#pragma GCC unroll 64
            for (long c = 0; c < d; c++) o[c] += w * ld(v + (j * d + c) * W);
        }
        store_row(out, i, o, d);
        float sl[W], ml[W];
        memcpy(sl, &sum, sizeof sl);
        memcpy(ml, &m, sizeof ml);
        for (int l = 0; l < W; l++) sl[l] = ml[l] + logf(sl[l]);
        st(lse + i * W, ld(sl));
    }
}

/* The backward of fwd_rows for output gradients go (L_q, d, W) and the outputs o: dq rows
 * into dq, d/dk and d/dv accumulated into dk, dv_ (all (L, d, W)). */
static inline __attribute__((always_inline)) void bwd_rows(
    const Attn *a, long b, const float *q, const float *k, const float *v, const float *o,
    const float *lse, const float *go, float *dq, float *dk, float *dv_, long d, vf *bias,
    vf *keep) {
    Group g[W];
    int groups = mask_groups(a, b, g);
    block_tiles(a, bias, keep);
    for (long i = 0; i < a->Lq; i++) {
        vf qi[MAXD], gi[MAXD], dqi[MAXD], rowdot = splat(0.0f), li = ld(lse + i * W);
        long bound = row_tiles(a, b, i, g, groups, bias, keep);
#pragma GCC unroll 64
        for (long c = 0; c < d; c++) {
            qi[c] = ld(q + (i * d + c) * W);
            gi[c] = ld(go + (i * d + c) * W);
            rowdot += gi[c] * ld(o + (i * d + c) * W);
            dqi[c] = splat(0.0f);
        }
        for (long j = 0; j < bound; j++) {
            const float *kj = k + j * d * W, *vj = v + j * d * W;
            float *dvj = dv_ + j * d * W, *dkj = dk + j * d * W;
            vf p = vexp(score(qi, kj, d) + bias[j] - li), pk = p * keep[j], dp = splat(0.0f);
#pragma GCC unroll 64
            for (long c = 0; c < d; c++) {
                dp += gi[c] * ld(vj + c * W);
                st(dvj + c * W, ld(dvj + c * W) + pk * gi[c]);
            }
            score_grad(p * (keep[j] * dp - rowdot), qi, kj, dqi, dkj, d);
        }
        store_row(dq, i, dqi, d);
    }
}

static void fwd_any(const Attn *a, long b, const float *q, const float *k, const float *v,
                    float *out, float *lse, vf *bias, vf *keep, vf *s) {
    fwd_rows(a, b, q, k, v, out, lse, a->p.d, bias, keep, s);
}

static void fwd_5(const Attn *a, long b, const float *q, const float *k, const float *v,
                  float *out, float *lse, vf *bias, vf *keep, vf *s) {
    fwd_rows(a, b, q, k, v, out, lse, 5, bias, keep, s);
}

static void fwd_10(const Attn *a, long b, const float *q, const float *k, const float *v,
                   float *out, float *lse, vf *bias, vf *keep, vf *s) {
    fwd_rows(a, b, q, k, v, out, lse, 10, bias, keep, s);
}

static void bwd_any(const Attn *a, long b, const float *q, const float *k, const float *v,
                    const float *o, const float *lse, const float *go, float *dq, float *dk,
                    float *dv_, vf *bias, vf *keep) {
    bwd_rows(a, b, q, k, v, o, lse, go, dq, dk, dv_, a->p.d, bias, keep);
}

static void bwd_5(const Attn *a, long b, const float *q, const float *k, const float *v,
                  const float *o, const float *lse, const float *go, float *dq, float *dk,
                  float *dv_, vf *bias, vf *keep) {
    bwd_rows(a, b, q, k, v, o, lse, go, dq, dk, dv_, 5, bias, keep);
}

static void bwd_10(const Attn *a, long b, const float *q, const float *k, const float *v,
                   const float *o, const float *lse, const float *go, float *dq, float *dk,
                   float *dv_, vf *bias, vf *keep) {
    bwd_rows(a, b, q, k, v, o, lse, go, dq, dk, dv_, 10, bias, keep);
}

static Attn attn_of(long B, long H, long Lq, long Lk, long d, const unsigned char *mask,
                    const long *mst, const int16_t *draws, int keep_from, float c) {
    Attn a = {{B, H, d}, Lq, Lk, mask, {0, 0, 0, 0}, draws, keep_from, c};
    if (mask) memcpy(a.mst, mst, sizeof a.mst);
    return a;
}

/* Scratch: `planes` (L, d, W) arrays of the longer length, then bias, keep and a score row. */
static float *scratch(const Attn *a, int planes) {
    long longest = a->Lq > a->Lk ? a->Lq : a->Lk;
    size_t n = (size_t)planes * longest * a->p.d * W + 3 * (size_t)(a->Lk + W) * W;
    return aligned_alloc(sizeof(vf), n * sizeof(float));
}

/* Forward over lane blocks [b0, b1). q (B, H, L_q, d), k and v (B, H, L_k, d): strides st[4 x 3]
 * (sample, head, row, feature). mask: bool bytes, strides mst (0 where broadcast), or NULL.
 * draws: see Attn, or NULL (no dropout); c = 1 / (1 - p). out: contiguous (B, H, L_q, d);
 * lse: (blocks, L_q, W). Returns 0, or 1 when d is out of range or memory is short. */
int attn_forward(const float *q, const float *k, const float *v, const long *st,
                 const unsigned char *mask, const long *mst, const int16_t *draws, int keep_from,
                 float c, float *out, float *lse, long B, long H, long Lq, long Lk, long d,
                 float scale, long b0, long b1) {
    Attn a = attn_of(B, H, Lq, Lk, d, mask, mst, draws, keep_from, c);
    long dense[4] = {H * Lq * d, Lq * d, d, 1}, pq = Lq * d * W, pk = Lk * d * W;
    int err = d < 1 || d > MAXD;
#pragma omp parallel if (!err) reduction(| : err)
    {
        float *x = err ? NULL : scratch(&a, 4);
        err |= !x;
#pragma omp for schedule(static)
        for (long b = b0; b < b1; b++) {
            if (!x) continue;
            float *qb = x, *kb = x + pq, *vb = kb + pk, *ob = vb + pk;
            vf *bias = (vf *)(ob + pq), *keep = bias + Lk + W, *s = keep + Lk + W;
            pack(q, st, scale, qb, &a.p, Lq, b);
            pack(k, st + 4, 1.0f, kb, &a.p, Lk, b);
            pack(v, st + 8, 1.0f, vb, &a.p, Lk, b);
            float *lb = lse + b * Lq * W;
            if (d == 5) fwd_5(&a, b, qb, kb, vb, ob, lb, bias, keep, s);
            else if (d == 10) fwd_10(&a, b, qb, kb, vb, ob, lb, bias, keep, s);
            else fwd_any(&a, b, qb, kb, vb, ob, lb, bias, keep, s);
            unpack(ob, 1.0f, out, dense, &a.p, Lq, b);
        }
        free(x);
    }
    return err;
}

/* Backward over lane blocks [b0, b1): out and lse from the forward, gout (B, H, L_q, d) with
 * strides gst; dq, dk, dv contiguous (B, H, L, d), overwritten for every real lane. */
int attn_backward(const float *q, const float *k, const float *v, const long *st,
                  const unsigned char *mask, const long *mst, const int16_t *draws, int keep_from,
                  float c, const float *out, const float *lse, const float *gout, const long *gst,
                  float *dq, float *dk, float *dv, long B, long H, long Lq, long Lk, long d,
                  float scale, long b0, long b1) {
    Attn a = attn_of(B, H, Lq, Lk, d, mask, mst, draws, keep_from, c);
    long dq4[4] = {H * Lq * d, Lq * d, d, 1}, dk4[4] = {H * Lk * d, Lk * d, d, 1};
    long pq = Lq * d * W, pk = Lk * d * W;
    int err = d < 1 || d > MAXD;
#pragma omp parallel if (!err) reduction(| : err)
    {
        float *x = err ? NULL : scratch(&a, 8);
        err |= !x;
#pragma omp for schedule(static)
        for (long b = b0; b < b1; b++) {
            if (!x) continue;
            float *qb = x, *ob = qb + pq, *gb = ob + pq, *dqb = gb + pq;
            float *kb = dqb + pq, *vb = kb + pk, *dkb = vb + pk, *dvb = dkb + pk;
            vf *bias = (vf *)(dvb + pk), *keep = bias + Lk + W;
            pack(q, st, scale, qb, &a.p, Lq, b);
            pack(k, st + 4, 1.0f, kb, &a.p, Lk, b);
            pack(v, st + 8, 1.0f, vb, &a.p, Lk, b);
            pack(out, dq4, 1.0f, ob, &a.p, Lq, b);
            pack(gout, gst, 1.0f, gb, &a.p, Lq, b);
            memset(dkb, 0, sizeof(float) * 2 * (size_t)pk);
            const float *lb = lse + b * Lq * W;
            if (d == 5) bwd_5(&a, b, qb, kb, vb, ob, lb, gb, dqb, dkb, dvb, bias, keep);
            else if (d == 10) bwd_10(&a, b, qb, kb, vb, ob, lb, gb, dqb, dkb, dvb, bias, keep);
            else bwd_any(&a, b, qb, kb, vb, ob, lb, gb, dqb, dkb, dvb, bias, keep);
            unpack(dqb, scale, dq, dq4, &a.p, Lq, b);
            unpack(dkb, 1.0f, dk, dk4, &a.p, Lk, b);
            unpack(dvb, 1.0f, dv, dk4, &a.p, Lk, b);
        }
        free(x);
    }
    return err;
}
