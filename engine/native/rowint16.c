/* rowint16.c — the CPU engine's native products over row-scaled int16 weights (and, at the end of
 * the file, over the GGUF's block-scaled int8 blocks).
 *
 *   out[t * ldo + r] = s[r] * sum_k q[r * K + k] * x[t * K + k]      r in [r0, r1), t in [0, T)
 *
 * The NumPy reference is ``x @ (q * s[:, None]).T`` (engine/linear.py, tests/engine/test_native.py).
 *
 * Batch invariance by construction: every output element is computed by the same sequence of
 * float operations whatever T is, whichever token slot it sits in and however the rows are split
 * across threads — 16 lane accumulators, lane l summing q[k] * x[k] for k = l, l + 16, l + 32, ...
 * in ascending k with one fused multiply-add each (a zero-padded tail chunk when K % 16 != 0),
 * then one fixed tree over the lanes (8 + 8, 4 + 4, 2 + 2, 1 + 1), then the row scale. So a token
 * verified among drafts gets the bits it gets decoded alone, and plain decoding is verification of
 * zero drafts (DESIGN.md: greedy speculative output must be token-identical to plain decoding).
 * The AVX-512, AVX2 and portable paths perform that same sequence, so they agree bit for bit too.
 *
 * Napkin math, the default model's tied LM head (262144 x 640 int16 = 336 MB): one token streams
 * 336 MB and does 168M FMAs; two cores stream ~30-40 GB/s here, so T = 1 takes ~8-11 ms, against
 * ~18 ms for NumPy's cast-to-float32-then-gemv tiles. Each extra token adds 168M FMAs but no bytes.
 * This EPYC (Zen 4) runs a 512-bit FMA as two 256-bit halves and loads x from L1 for every FMA, so
 * an extra token costs ~2-4 ms, not the ~1 ms of its FMA count: measured 2026-12-04 (2 threads,
 * the head alone, medians) T = 1 9.5 ms, 2 13.9, 3 14.6, 4 19.1, 6 21.7, 8 28.2 — with the
 * software prefetch below; the NumPy path (one gemv per token on the cast tile) costs ~1.9x at
 * T = 4. The row (1.3 KB) stays in L1 while the token blocks pass over it.
 */
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#define LANES 16
/* Software prefetch two rows ahead (one 64-byte line per 32 weights, the main loop's step) when a
 * row serves >= 2 tokens: the hardware prefetcher alone keeps up with one token per row (DRAM-bound,
 * LM head ~9-12 ms) but not once each row also pays T FMA passes. LM head, 2 threads, median of 12
 * interleaved: T = 3 21.3 -> 17.2 ms, T = 4 23.2 -> 19.4, T = 6 32.9 -> 22.1; T = 1, 2 unchanged
 * within noise. Distances of 1-16 rows measured alike. Prefetch is a hint: no effect on results. */
#define PF_ROWS 2
/* The gather prefetches the row GATHER_PF candidates ahead, whole (20 lines for K = 640): the
 * MTP head's 4096 routed rows lie scattered over the 336 MB head, so each row is a DRAM miss the
 * hardware cannot predict. 4096 random rows: 1.4-2.0 ms without, 0.29 ms at 8 ahead (0.41 at 2). */
#ifndef GATHER_PF
#define GATHER_PF 8
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define PREFETCH(p) _mm_prefetch((const char*)(p), _MM_HINT_T0)
#else
#define PREFETCH(p) ((void)(p))
#endif
#define TBLK 4 /* tokens per pass over a row (2 sets x 4 tokens = 8 accumulators in registers). Rows go
 * one at a time: two rows interleaved (each x chunk loaded into a register once for both) ran at
 * ~20 ms for the LM head whatever T = 2..6 — the two interleaved streams starve the hardware
 * prefetcher (28 ms without software prefetch) — against 13-15 ms for one row at T = 2, 3 */

#if defined(__AVX512F__)
#define TS_ISA "avx512"
typedef __m512 acc_t;
static inline acc_t acc_zero(void) { return _mm512_setzero_ps(); }
static inline acc_t load_w(const int16_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i*)p)));
}
static inline acc_t fma_x(acc_t w, const float* x, acc_t a) { return _mm512_fmadd_ps(w, _mm512_loadu_ps(x), a); }
static inline acc_t load_w8(const int8_t* p, float d) {
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p))), _mm512_set1_ps(d));
}
static inline acc_t acc_add(acc_t a, acc_t b) { return _mm512_add_ps(a, b); }
static inline acc_t acc_sub1(acc_t a, float m) { return _mm512_sub_ps(a, _mm512_set1_ps(m)); }
static inline float hsum(acc_t a) {
  __m256 lo = _mm512_castps512_ps256(a);
  __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  __m256 s8 = _mm256_add_ps(lo, hi);                                   /* l + (l + 8) */
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1)); /* + 4 */
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                   /* + 2 */
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));               /* + 1 */
  return _mm_cvtss_f32(s1);
}
#elif defined(__AVX2__) && defined(__FMA__)
#define TS_ISA "avx2"
typedef struct { __m256 lo, hi; } acc_t; /* lanes 0..7, 8..15 */
static inline acc_t acc_zero(void) { acc_t a = {_mm256_setzero_ps(), _mm256_setzero_ps()}; return a; }
static inline acc_t load_w(const int16_t* p) {
  __m256i v = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i*)p));
  __m256i u = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i*)(p + 8)));
  acc_t a = {_mm256_cvtepi32_ps(v), _mm256_cvtepi32_ps(u)};
  return a;
}
static inline acc_t fma_x(acc_t w, const float* x, acc_t a) {
  acc_t r = {_mm256_fmadd_ps(w.lo, _mm256_loadu_ps(x), a.lo), _mm256_fmadd_ps(w.hi, _mm256_loadu_ps(x + 8), a.hi)};
  return r;
}
static inline acc_t load_w8(const int8_t* p, float d) {
  __m256 dv = _mm256_set1_ps(d);
  acc_t a = {_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p))), dv),
             _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8)))), dv)};
  return a;
}
static inline acc_t acc_add(acc_t a, acc_t b) {
  acc_t r = {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
  return r;
}
static inline acc_t acc_sub1(acc_t a, float m) {
  __m256 mv = _mm256_set1_ps(m);
  acc_t r = {_mm256_sub_ps(a.lo, mv), _mm256_sub_ps(a.hi, mv)};
  return r;
}

static inline float hsum(acc_t a) {
  __m256 s8 = _mm256_add_ps(a.lo, a.hi);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}
#else
#define TS_ISA "portable"
typedef struct { float v[LANES]; } acc_t;
static inline acc_t acc_zero(void) { acc_t a; for (int l = 0; l < LANES; l++) a.v[l] = 0.f; return a; }
static inline acc_t load_w(const int16_t* p) { acc_t a; for (int l = 0; l < LANES; l++) a.v[l] = (float)p[l]; return a; }
static inline acc_t load_w8(const int8_t* p, float d) {
  acc_t a;
  for (int l = 0; l < LANES; l++) a.v[l] = (float)p[l] * d;
  return a;
}
static inline acc_t fma_x(acc_t w, const float* x, acc_t a) {
  for (int l = 0; l < LANES; l++) a.v[l] = fmaf(w.v[l], x[l], a.v[l]);
  return a;
}
static inline acc_t acc_add(acc_t a, acc_t b) {
  for (int l = 0; l < LANES; l++) a.v[l] = a.v[l] + b.v[l];
  return a;
}
static inline acc_t acc_sub1(acc_t a, float m) {
  for (int l = 0; l < LANES; l++) a.v[l] = a.v[l] - m;
  return a;
}

static inline float hsum(acc_t a) {
  float b[8];
  for (int l = 0; l < 8; l++) b[l] = a.v[l] + a.v[l + 8];
  for (int l = 0; l < 4; l++) b[l] = b[l] + b[l + 4];
  b[0] = b[0] + b[2];
  b[1] = b[1] + b[3];
  return b[0] + b[1];
}
#endif

/* One row x NT tokens. Chunk c (16 values) goes to accumulator set c % 2, so two independent FMA
 * chains per token hide the FMA latency (one chain ran at a quarter of the FMA throughput at T = 1);
 * the tail chunk (zero-padded copies wt/xt) is chunk kfull / 16. Then set 0 + set 1, lane by lane,
 * and the lane tree. NT is a compile-time constant in every instance. */
#define KERNEL(NT)                                                                                    \
  static void k_##NT(const int16_t* q, size_t K, size_t kfull, const int16_t* wt, const float* x,     \
                     const float* xt, float s, float* o, size_t ldo, const int16_t* pf) {             \
    acc_t a[NT], b[NT];                                                                               \
    for (int t = 0; t < NT; t++) a[t] = b[t] = acc_zero();                                            \
    size_t k = 0;                                                                                     \
    for (; k + 2 * LANES <= kfull; k += 2 * LANES) {                                                  \
      acc_t w0 = load_w(q + k), w1 = load_w(q + k + LANES);                                           \
      if (NT >= 2) PREFETCH(pf + k); /* pf: the row PF_ROWS ahead (or this one at the end) */      \
      for (int t = 0; t < NT; t++) {                                                                  \
        a[t] = fma_x(w0, x + t * K + k, a[t]);                                                        \
        b[t] = fma_x(w1, x + t * K + k + LANES, b[t]);                                                \
      }                                                                                               \
    }                                                                                                 \
    int odd = 0; /* the next chunk goes to set b */                                                   \
    if (k < kfull) {                                                                                  \
      acc_t w0 = load_w(q + k);                                                                       \
      for (int t = 0; t < NT; t++) a[t] = fma_x(w0, x + t * K + k, a[t]);                             \
      odd = 1;                                                                                        \
    }                                                                                                 \
    if (wt) {                                                                                         \
      acc_t w0 = load_w(wt);                                                                          \
      for (int t = 0; t < NT; t++) {                                                                  \
        if (odd) b[t] = fma_x(w0, xt + t * LANES, b[t]);                                              \
        else a[t] = fma_x(w0, xt + t * LANES, a[t]);                                                  \
      }                                                                                               \
    }                                                                                                 \
    for (int t = 0; t < NT; t++) o[t * ldo] = hsum(acc_add(a[t], b[t])) * s;                          \
  }

KERNEL(1) KERNEL(2) KERNEL(3) KERNEL(4)

typedef void (*kfn)(const int16_t*, size_t, size_t, const int16_t*, const float*, const float*, float, float*,
                    size_t, const int16_t*);
static const kfn KERNELS[TBLK] = {k_1, k_2, k_3, k_4};

const char* ts_rowint16_isa(void) { return TS_ISA; }

/* Rows [r0, r1) of out (T rows of ldo floats) = x (T, K) @ (q (rows, K) * s[:, None]).T.
 * Returns 0, or -1 when T exceeds the tail buffers (T > 32 is the caller's BLAS path). */
int ts_rowint16_matmul(const int16_t* q, const float* s, long K_, const float* x, long T_, float* out,
                       long ldo_, long r0, long r1) {
  const size_t K = (size_t)K_, T = (size_t)T_, ldo = (size_t)ldo_;
  const size_t kfull = K / LANES * LANES, rem = K - kfull;
  enum { TMAX = 32 };
  if (T > TMAX) return -1;
  float xt[TMAX * LANES];    /* each token's tail, zero-padded to 16 */
  int16_t wt[LANES];         /* the current row's tail */
  if (rem) {
    for (size_t t = 0; t < T; t++)
      for (size_t l = 0; l < LANES; l++) xt[t * LANES + l] = l < rem ? x[t * K + kfull + l] : 0.f;
  }
  for (long r = r0; r < r1; r++) {
    const int16_t* qr = q + (size_t)r * K;
    if (rem)
      for (size_t l = 0; l < LANES; l++) wt[l] = l < rem ? qr[kfull + l] : 0;
    for (size_t t0 = 0; t0 < T; t0 += TBLK) {
      const size_t nt = T - t0 < TBLK ? T - t0 : TBLK;
      KERNELS[nt - 1](qr, K, kfull, rem ? wt : NULL, x + t0 * K, xt + t0 * LANES, s[r], out + t0 * ldo + (size_t)r,
                      ldo, t0 == 0 && r + PF_ROWS < r1 ? qr + PF_ROWS * K : qr);
    }
  }
  return 0;
}

/* out[i] = s[idx[i]] * q[idx[i]] . h for i < n: the MTP head's routed candidates (4096 rows of
 * the target's LM head per draft step), the T = 1 kernel on gathered rows. The ids come from a
 * validated token_ordering (a permutation of the vocabulary), so they are in range. */
void ts_rowint16_gather(const int16_t* q, const float* s, long K_, const int64_t* idx, long n, const float* h,
                        float* out) {
  const size_t K = (size_t)K_, kfull = K / LANES * LANES, rem = K - kfull;
  float ht[LANES];
  int16_t wt[LANES];
  if (rem)
    for (size_t l = 0; l < LANES; l++) ht[l] = l < rem ? h[kfull + l] : 0.f;
  for (long i = 0; i < n; i++) {
    const int16_t* qr = q + (size_t)idx[i] * K;
#if GATHER_PF
    if (i + GATHER_PF < n) { /* scattered rows: no stream for the hardware prefetcher to follow */
      const char* p = (const char*)(q + (size_t)idx[i + GATHER_PF] * K);
      for (size_t b = 0; b < K * sizeof(int16_t); b += 64) PREFETCH(p + b);
    }
#endif
    if (rem)
      for (size_t l = 0; l < LANES; l++) wt[l] = l < rem ? qr[kfull + l] : 0;
    k_1(qr, K, kfull, rem ? wt : NULL, h, ht, s[idx[i]], out + i, 1, qr);
  }
}


/* ---- block-scaled int8: the GGUF's own blocks, exact -------------------------------------------
 *
 *   w[r, k] = q[r, k] * d[r, k / G] - m[r, k / G]      (m = NULL: no minimum)
 *   out[t * ldo + r] = sum_k w[r, k] * x[t * K + k]
 *
 * q int8 (rows, K), d and m float32 (rows, K / G), G = 16 or 32: Q8_0 / Q5_0 / Q4_0 (G = 32, an
 * int8 times its f16 scale, no minimum), Q4_K (G = 32: 0..15 times d * sc minus dmin * m) and
 * Q6_K (G = 16: -32..31 times d * sc). Each weight is formed with the float32 operations the
 * NumPy dequantizer performs (one product, one difference; the build has -ffp-contract=off), so
 * the kernel multiplies bit for bit what the GGUF dequantizes to. NumPy reference:
 * ``x @ BlockInt8.dense().T`` (engine/linear.py, tests/engine/test_blockint8.py).
 * Same batch invariance as above: chunk c (16 values) to accumulator set c % 2, one FMA each in
 * ascending k, then a + b and the lane tree; the T tokens share the formed weights but never an
 * accumulator. K must be a multiple of 32 (the caller checks).
 *
 * Napkin math, the default model's tied LM head (Q8_0, 262144 x 640): 168 MB of int8 + 21 MB of
 * scales = 189 MB a token against 336 MB as int16 (measured 9.8 -> 6.0 ms at T = 1, 2 threads);
 * its Q4_K / Q6_K attn_output and ffn_down: 1.25 bytes a weight against 2. An extra token adds
 * two FMAs per 32 weights; widening and scaling are paid once per row whatever T is. */
#define KERNEL8(NT, MIN)                                                                              \
  static void k8_##NT##_##MIN(const int8_t* q, const float* d, const float* m, unsigned gs, size_t K,   \
                              const float* x, float* o, size_t ldo, const int8_t* pf) {               \
    acc_t a[NT], b[NT];                                                                               \
    for (int t = 0; t < NT; t++) a[t] = b[t] = acc_zero();                                            \
    for (size_t k = 0; k < K; k += 2 * LANES) {                                                       \
      const size_t g0 = k >> gs, g1 = (k + LANES) >> gs;                                              \
      acc_t w0 = load_w8(q + k, d[g0]), w1 = load_w8(q + k + LANES, d[g1]);                           \
      if (MIN) { w0 = acc_sub1(w0, m[g0]); w1 = acc_sub1(w1, m[g1]); }                                \
      if (NT >= 2 && !(k & 32)) PREFETCH(pf + k); /* one 64-byte line per 64 weights */              \
      for (int t = 0; t < NT; t++) {                                                                  \
        a[t] = fma_x(w0, x + t * K + k, a[t]);                                                        \
        b[t] = fma_x(w1, x + t * K + k + LANES, b[t]);                                                \
      }                                                                                               \
    }                                                                                                 \
    for (int t = 0; t < NT; t++) o[t * ldo] = hsum(acc_add(a[t], b[t]));                              \
  }

KERNEL8(1, 0) KERNEL8(2, 0) KERNEL8(3, 0) KERNEL8(4, 0)
KERNEL8(1, 1) KERNEL8(2, 1) KERNEL8(3, 1) KERNEL8(4, 1)

typedef void (*k8fn)(const int8_t*, const float*, const float*, unsigned, size_t, const float*, float*, size_t,
                     const int8_t*);
static const k8fn KERNELS8[2][TBLK] = {{k8_1_0, k8_2_0, k8_3_0, k8_4_0}, {k8_1_1, k8_2_1, k8_3_1, k8_4_1}};

static int group_shift(long G) { return G == 16 ? 4 : G == 32 ? 5 : -1; }

/* Rows [r0, r1) of out (T rows of ldo floats) = x (T, K) @ w.T. Returns 0, or -1 when K is not a
 * multiple of 32, G is not 16 or 32, or T > 32 (the caller's NumPy path). */
int ts_blockint8_matmul(const int8_t* q, const float* d, const float* m, long G, long K_, const float* x, long T_,
                        float* out, long ldo_, long r0, long r1) {
  const size_t K = (size_t)K_, T = (size_t)T_, ldo = (size_t)ldo_;
  const int gs = group_shift(G);
  if (K % (2 * LANES) || gs < 0 || T > 32) return -1;
  const size_t ng = K / (size_t)G;
  const k8fn* ks = KERNELS8[m != NULL];
  for (long r = r0; r < r1; r++) {
    const int8_t* qr = q + (size_t)r * K;
    const float* dr = d + (size_t)r * ng;
    const float* mr = m ? m + (size_t)r * ng : NULL;
    for (size_t t0 = 0; t0 < T; t0 += TBLK) {
      const size_t nt = T - t0 < TBLK ? T - t0 : TBLK;
      ks[nt - 1](qr, dr, mr, (unsigned)gs, K, x + t0 * K, out + t0 * ldo + (size_t)r, ldo,
                 t0 == 0 && r + PF_ROWS < r1 ? qr + PF_ROWS * K : qr);
    }
  }
  return 0;
}

/* out[i] = w[idx[i]] . h for i < n (the MTP head's routed candidates), with the row and its
 * scales prefetched GATHER_PF candidates ahead (scattered rows, see above). */
int ts_blockint8_gather(const int8_t* q, const float* d, const float* m, long G, long K_, const int64_t* idx, long n,
                        const float* h, float* out) {
  const size_t K = (size_t)K_;
  const int gs = group_shift(G);
  if (K % (2 * LANES) || gs < 0) return -1;
  const size_t ng = K / (size_t)G;
  const k8fn k1 = KERNELS8[m != NULL][0];
  for (long i = 0; i < n; i++) {
    const size_t r = (size_t)idx[i];
#if GATHER_PF
    if (i + GATHER_PF < n) {
      const size_t rn = (size_t)idx[i + GATHER_PF];
      for (size_t b = 0; b < K; b += 64) PREFETCH((const char*)(q + rn * K) + b);
      for (size_t b = 0; b < ng * sizeof(float); b += 64) PREFETCH((const char*)(d + rn * ng) + b);
    }
#endif
    k1(q + r * K, d + r * ng, m ? m + r * ng : NULL, (unsigned)gs, K, h, out + i, 1, q + r * K);
  }
  return 0;
}
