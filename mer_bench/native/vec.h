/* Shared pieces of mer-bench's C kernels (included by each kernel source; see
 * mer_bench/native/__init__.py for how they are built and loaded).
 *
 * Layout ("lanes"): W = 16 independent (sample, head) pairs side by side, innermost, so every
 * operation is one 16-wide vector operation without horizontal reductions. A kernel copies a
 * lane block's q, k, v into (row, feature, lane) scratch (`pack`, its working set stays in the
 * L1/L2 caches) and scatters results back (`unpack`); lanes past B * H are padding and are
 * never written back.
 *
 * exp: a Cody-Waite reduction and a degree-6 polynomial (the Cephes expf coefficients), about
 * 1 ulp; arguments below -87.34 (results under float's normal range) are clamped, adding under
 * 1.2e-38 to a row sum of at least 1.
 */
#ifndef MER_BENCH_VEC_H
#define MER_BENCH_VEC_H

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define W 16
#define MAXD 64

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

static inline vf ld(const float *p) { vf x; memcpy(&x, p, sizeof x); return x; }
static inline void st(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline vf splat(float a) { return (vf){0} + a; }
static inline vf vmax(vf a, vf b) { vi m = a > b; return (vf)(((vi)a & m) | ((vi)b & ~m)); }
/* max(x, lo), but a NaN x stays NaN (so a NaN score reaches the outputs, as in PyTorch) */
static inline vf vfloor_at(vf x, vf lo) { vi m = x < lo; return (vf)(((vi)lo & m) | ((vi)x & ~m)); }
static inline vf vexp(vf x) {
    const vf magic = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    x = vfloor_at(x, splat(-87.33654f));
    vf n = (x * splat(1.44269504088896341f) + magic) - magic;
    vf r = x - n * splat(0.693359375f);
    r = r + n * splat(2.12194440e-4f);
    vf p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)bits;
}

/* s = q_i . k_j for the 16 lanes; q_i holds the row's d vectors */
static inline __attribute__((always_inline)) vf score(const vf *qi, const float *kj, long d) {
    vf a = qi[0] * ld(kj);
#pragma GCC unroll 64
    for (long c = 1; c < d; c++) a += qi[c] * ld(kj + c * W);
    return a;
}

/* A score's gradient ds for (q_i, k_j): into d/dq_i (registers) and d/dk_j (memory). */
static inline __attribute__((always_inline)) void score_grad(vf ds, const vf *qi, const float *kj,
                                                             vf *dqi, float *dkj, long d) {
#pragma GCC unroll 64
    for (long c = 0; c < d; c++) {
        dqi[c] += ds * ld(kj + c * W);
        st(dkj + c * W, ld(dkj + c * W) + ds * qi[c]);
    }
}

/* Row i of a (L, d, W) array <- the row's d vectors. */
static inline __attribute__((always_inline)) void store_row(float *x, long i, const vf *row, long d) {
#pragma GCC unroll 64
    for (long c = 0; c < d; c++) st(x + (i * d + c) * W, row[c]);
}

/* (sample, head) pairs: B samples of H heads of width d; lane l of block b is pair b * W + l. */
typedef struct {
    long B, H, d;
} Pairs;

static inline long lane_pair(const Pairs *pr, long b, int l) {
    long n = b * W + l;
    return n < pr->B * pr->H ? n : -1;
}

/* X (L, d, W) <- scale * the L rows of each lane's (sample, head) slice of src, read with
 * strides (sample, head, row, feature); padding lanes get zeros. */
static void pack(const float *src, const long *st4, float scale, float *X, const Pairs *pr,
                 long L, long b) {
    long d = pr->d;
    for (int l = 0; l < W; l++) {
        long n = lane_pair(pr, b, l);
        const float *p = n < 0 ? NULL : src + (n / pr->H) * st4[0] + (n % pr->H) * st4[1];
        for (long i = 0; i < L; i++)
            for (long c = 0; c < d; c++)
                X[(i * d + c) * W + l] = p ? p[i * st4[2] + c * st4[3]] * scale : 0.0f;
    }
}

/* The inverse of pack for real lanes: dst (strided like pack's src) <- scale * X. */
static void unpack(const float *X, float scale, float *dst, const long *st4, const Pairs *pr,
                   long L, long b) {
    long d = pr->d;
    for (int l = 0; l < W; l++) {
        long n = lane_pair(pr, b, l);
        if (n < 0) continue;
        float *p = dst + (n / pr->H) * st4[0] + (n % pr->H) * st4[1];
        for (long i = 0; i < L; i++)
            for (long c = 0; c < d; c++) p[i * st4[2] + c * st4[3]] = X[(i * d + c) * W + l] * scale;
    }
}

/* 1 when built with OpenMP: a kernel then spreads its [b0, b1) over the OpenMP threads
 * (torch's own pool: torch's libgomp is already loaded under the same soname), else 0 and the
 * caller splits the range over its own threads. */
int native_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* An address inside the OpenMP runtime this library calls (NULL without OpenMP): tests check
 * that it is torch's. */
void *native_openmp_runtime(void) {
#ifdef _OPENMP
    return (void *)&omp_get_max_threads;
#else
    return NULL;
#endif
}

#endif
