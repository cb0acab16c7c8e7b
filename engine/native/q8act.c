/* q8act.c — block-int8 weights times int8-quantized activations, for decode and verification
 * batches of up to 32 tokens. Builds: AVX-512 VNNI (zmm vpdpbusd), AVX-VNNI (ymm vpdpbusd),
 * AVX2 (vpmaddubsw + vpmaddwd) and portable C; all four give the same bits.
 *
 *   w[r, k] = q[r, k] * d[r, g] - m[r, g]           g = k / G, G = 16 or 32 (m = NULL: none)
 *   x[t, k] ~ qx[t, k] * dx[t, g]                    dx = max |x| over the group / 127, qx = rint(x / dx)
 *   out[t * ldo + r] = sum_g (d[r, g] * dx[t, g]) * I[t, r, g] - m[r, g] * (dx[t, g] * S[t, g])
 *       with I = sum_{k in g} q[r, k] * qx[t, k] and S = sum_{k in g} qx[t, k], both exact integers
 *
 * This is what llama.cpp's CPU backend does for the default model's Q4_K / Q6_K / Q8_0 matrices
 * (activations as Q8_K / Q8_0 blocks, integer dot products). The float-activation kernel
 * (rowint16.c, ts_blockint8_matmul) forms every weight as a float and pays two FMAs per 32
 * weights per token; here a 64-byte load serves 64 weights and one vpdpbusd per token does 64
 * multiply-adds. Napkin math per 512 weights: float path ~5 vector ops a chunk of 16 to form the
 * weights (160) + 64 a token; this path 8 loads + 8 xors (16) + ~14 a token. The LM head
 * (168M weights) at T = 1: ~85M vector ops -> ~10M, i.e. DRAM-bound instead of issue-bound, and
 * each extra verified token ~4.5x fewer ops. Measured (2026-12-05, Intel Xeon, 2 threads, whole
 * forward of the default model): c(T) -17..-20% for T = 1..6 and plain decode 33.6 -> 42.7 tok/s —
 * the rest of a token (attention, norms, Python) is unchanged. With pool.c splitting every
 * product over both cores (53 tok/s), prefetching PFD rows ahead also for one token (before,
 * only batches prefetched, 2 rows ahead) took the LM head from 8.8 to 6.5 ms: 66 tok/s.
 *
 * Layout: lanes are groups. A row's groups go in windows of up to 16; window w (groups 16w ..
 * 16w + W - 1) holds, for chunk j = 0 .. G/4 - 1, 4 bytes of each of its W groups:
 *   qv[r, 16 w G + 4 W j + 4 l + i] = q[r, (16 w + l) G + 4 j + i]     (l < W, i < 4)
 * so vpdpbusd lane l accumulates group 16w + l's integer sum over the window's G/4 chunks, and
 * the scales of 16 groups are one vector. The activations are quantized into the same layout.
 * vpdpbusd multiplies unsigned by signed bytes: the weights go in as q ^ 0x80 = q + 128 and
 * 128 * S is subtracted (exact integers; |I| <= 32 * 128 * 127 < 2^24, so its float is exact).
 *
 * PACKED tail windows: a window of W < 16 groups fills only 4W of each vector's 64 bytes, yet
 * ran all G/4 chunk steps: K = 640 at G = 32 (the LM head, attn_qkv, gate+up) is one full window
 * and one of W = 4, so the tail cost as much as the full window for a quarter of the work. When
 * W is 4 or 8 (AVX-512) / 4 (AVX2), 16 / W consecutive chunks are one contiguous vector: lane
 * W * c + l holds chunk c's partial sum of group l, and folding the vector's quarters / halves
 * (integer adds, exact) gives each group's I before the float steps, which are unchanged. With
 * AVX2 a window of W <= 8 also skips its all-zero upper half. AVX-512 passes over a row with up
 * to TB = 8 tokens (8 integer + 8 float accumulators of its 32 registers) instead of 4, so T = 6
 * verifies in one pass. Measured (2026-12-06, AMD EPYC Zen 4, 2 threads, medians of 30; the LM head
 * and 18 x layer 0's four products): T = 6 head 9.5 -> 7.4 ms, layers 5.7 -> 4.8 ms; T = 4 head
 * 6.4 -> 5.8 ms; T = 1 unchanged (DRAM-bound, ~3.8 ms = 50 GB/s).
 *
 * The float arithmetic is fixed, so every path and every batch gives the same bits: lane l of a
 * float accumulator (+0 at the start) adds, window by window, p = float(I) * (d * dx) (each
 * product rounded once; no FMA, -ffp-contract=off) and then subtracts m * (dx * float(S)); the
 * lanes are summed by the tree 8 + 8, 4 + 4, 2 + 2, 1 + 1. Lanes past W in a tail window add
 * +0. NumPy reference, bit for bit: engine/linear.py q8act_reference (tests/engine/test_q8act.py).
 * A token with a non-finite value gets NaN in every output.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define Q8A_VNNI 1
#define Q8A_Y 0
#define Q8A_ISA "avx512vnni"
#elif defined(__AVX2__)
#include <immintrin.h>
#define Q8A_VNNI 0
#define Q8A_Y 1 /* two 8-lane halves of a window (ymm) */
#if defined(__AVXVNNI__)
#define Q8A_ISA "avxvnni"
#else
#define Q8A_ISA "avx2"
#endif
#else
#define Q8A_VNNI 0
#define Q8A_Y 0
#define Q8A_ISA "portable"
#endif

#define TMAX 32
#if Q8A_VNNI
#define TB 8 /* tokens per pass over a row: 8 int + 8 float accumulators of the 32 zmm registers */
#else
#define TB 4 /* tokens per pass over a row (16 ymm registers) */
#endif
#ifndef PFD
#define PFD 8 /* rows ahead that the kernel prefetches (2: LM head 6.36 ms with 2 threads, 8: 5.84) */
#endif

const char* ts_q8act_isa(void) { return Q8A_ISA; }

/* byte offset of weight k of a row in the window layout */
static inline size_t vpos(size_t k, unsigned G, size_t ng) {
  const size_t g = k / G, w = g / 16, l = g % 16, j = (k % G) / 4, i = k % 4;
  const size_t W = ng - 16 * w < 16 ? ng - 16 * w : 16;
  return 16 * w * G + 4 * W * j + 4 * l + i;
}

/* rows [r0, r1) of q (rows, K) into qv in the window layout */
void ts_q8act_layout(const int8_t* q, long K_, long G_, long r0, long r1, int8_t* qv) {
  const size_t K = (size_t)K_, G = (size_t)G_, ng = K / G;
  for (long r = r0; r < r1; r++) {
    const int8_t* s = q + (size_t)r * K;
    int8_t* o = qv + (size_t)r * K;
    for (size_t k = 0; k < K; k += 4) memcpy(o + vpos(k, (unsigned)G, ng), s + k, 4);
  }
}

/* One token: qx (window layout), dx and S (per group) and dxs = dx * float(S). */
typedef struct {
  int8_t* qx;
  float* dx;
  int32_t* s128; /* 128 * S */
  float* dxs;
} qtok;

static void quantize_token(const float* x, size_t K, unsigned G, qtok* t) {
  const size_t ng = K / G;
  int bad = 0;
  for (size_t g = 0; g < ng; g++) {
    const float* xg = x + g * G;
    float amax = 0.f;
    for (unsigned k = 0; k < G; k++) {
      const float a = fabsf(xg[k]);
      if (!isfinite(a)) bad = 1;
      else if (a > amax) amax = a;
    }
    const float d = amax / 127.f;
    int32_t s = 0;
    for (unsigned k = 0; k < G; k += 4) {
      int8_t b[4];
      for (int i = 0; i < 4; i++) {
        const float v = (d > 0.f && isfinite(d)) ? rintf(xg[k + i] / d) : 0.f;
        b[i] = (int8_t)(v > 127.f ? 127 : v < -127.f ? -127 : (int)v);
        s += b[i];
      }
      memcpy(t->qx + vpos(g * G + k, G, ng), b, 4);
    }
    t->dx[g] = d;
    t->s128[g] = 128 * s;
    t->dxs[g] = d * (float)s;
  }
  if (bad)
    for (size_t g = 0; g < ng; g++) t->dx[g] = t->dxs[g] = NAN;
}

static inline float tree16(const float* a) {
  float b[8];
  for (int l = 0; l < 8; l++) b[l] = a[l] + a[l + 8];
  for (int l = 0; l < 4; l++) b[l] = b[l] + b[l + 4];
  b[0] = b[0] + b[2];
  b[1] = b[1] + b[3];
  return b[0] + b[1];
}

#if !Q8A_VNNI && !Q8A_Y
/* Portable row kernel: one row against nt tokens, the same operations lane by lane. */
static void row_portable(const int8_t* qv, const float* d, const float* m, size_t K, unsigned G, const qtok* tk,
                         size_t nt, float* o, size_t ldo) {
  const size_t ng = K / G;
  for (size_t t = 0; t < nt; t++) {
    float acc[16] = {0};
    for (size_t w0 = 0; w0 < ng; w0 += 16) {
      const size_t W = ng - w0 < 16 ? ng - w0 : 16;
      const int8_t* qw = qv + w0 * G;
      const int8_t* xw = tk[t].qx + w0 * G;
      for (size_t l = 0; l < 16; l++) {
        float p = 0.f, mm = 0.f;
        if (l < W) {
          int32_t I = 0;
          for (size_t j = 0; j < G / 4; j++)
            for (size_t i = 0; i < 4; i++) {
              const size_t b = 4 * W * j + 4 * l + i;
              I += (int32_t)(uint8_t)(qw[b] ^ 0x80) * (int32_t)xw[b];
            }
          I -= tk[t].s128[w0 + l];
          p = (float)I * (d[w0 + l] * tk[t].dx[w0 + l]);
          if (m) mm = m[w0 + l] * tk[t].dxs[w0 + l];
        } else {
          p = (float)0 * (0.f * 0.f);
          if (m) mm = 0.f * 0.f;
        }
        acc[l] = acc[l] + p;
        if (m) acc[l] = acc[l] - mm;
      }
    }
    o[t * ldo] = tree16(acc);
  }
}
#endif

#if Q8A_VNNI
static inline float hsum512(__m512 a) {
  __m256 lo = _mm512_castps512_ps256(a);
  __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  __m256 s8 = _mm256_add_ps(lo, hi);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

#define KV(NT, MIN)                                                                                   \
  static void kv_##NT##_##MIN(const int8_t* qv, const float* d, const float* m, size_t K, unsigned G, \
                              const qtok* tk, float* o, size_t ldo, const int8_t* pf) {               \
    const size_t ng = K / G, nj = G / 4;                                                              \
    const __m512i flip = _mm512_set1_epi8((char)0x80);                                                \
    __m512 acc[NT];                                                                                   \
    for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_ps();                                        \
    for (size_t w0 = 0; w0 < ng; w0 += 16) {                                                          \
      const size_t W = ng - w0 < 16 ? ng - w0 : 16;                                                   \
      const __mmask64 bm = W == 16 ? ~(__mmask64)0 : (((__mmask64)1 << (4 * W)) - 1);                 \
      const __mmask16 gm = (__mmask16)((1u << W) - 1);                                                \
      const int8_t* qw = qv + w0 * G;                                                                 \
      __m512i ia[NT];                                                                                 \
      for (int t = 0; t < NT; t++) ia[t] = _mm512_setzero_si512();                                    \
      if (W == 4 || W == 8) { /* a tail window: 16 / W chunks in one vector, then fold (PACKED) */     \
        for (size_t j = 0; j < nj; j += 16 / W) {                                                     \
          const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512(qw + 4 * W * j), flip);             \
          _mm_prefetch((const char*)(pf + w0 * G + 4 * W * j), _MM_HINT_T0);                          \
          for (int t = 0; t < NT; t++)                                                                \
            ia[t] = _mm512_dpbusd_epi32(ia[t], wv, _mm512_loadu_si512(tk[t].qx + w0 * G + 4 * W * j)); \
        }                                                                                             \
        for (int t = 0; t < NT; t++) {                                                                \
          __m512i s = _mm512_add_epi32(ia[t], _mm512_shuffle_i32x4(ia[t], ia[t], _MM_SHUFFLE(1, 0, 3, 2))); \
          if (W == 4) s = _mm512_add_epi32(s, _mm512_shuffle_i32x4(s, s, _MM_SHUFFLE(2, 3, 0, 1)));   \
          ia[t] = _mm512_maskz_mov_epi32(gm, s);                                                      \
        }                                                                                             \
      } else                                                                                          \
      for (size_t j = 0; j < nj; j++) {                                                               \
        const __m512i wv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(bm, qw + 4 * W * j), flip);       \
        _mm_prefetch((const char*)(pf + w0 * G + 4 * W * j), _MM_HINT_T0);                            \
        for (int t = 0; t < NT; t++)                                                                  \
          ia[t] = _mm512_dpbusd_epi32(ia[t], wv, _mm512_maskz_loadu_epi8(bm, tk[t].qx + w0 * G + 4 * W * j)); \
      }                                                                                               \
      const __m512 dw = _mm512_maskz_loadu_ps(gm, d + w0);                                            \
      __m512 mw = _mm512_setzero_ps();                                                                \
      if (MIN) mw = _mm512_maskz_loadu_ps(gm, m + w0);                                                \
      for (int t = 0; t < NT; t++) {                                                                  \
        const __m512i I = _mm512_sub_epi32(ia[t], _mm512_maskz_loadu_epi32(gm, tk[t].s128 + w0));     \
        const __m512 sc = _mm512_mul_ps(dw, _mm512_maskz_loadu_ps(gm, tk[t].dx + w0));                \
        acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(I), sc));                     \
        if (MIN) acc[t] = _mm512_sub_ps(acc[t], _mm512_mul_ps(mw, _mm512_maskz_loadu_ps(gm, tk[t].dxs + w0))); \
      }                                                                                               \
    }                                                                                                 \
    for (int t = 0; t < NT; t++) o[t * ldo] = hsum512(acc[t]);                                        \
  }
KV(1, 0) KV(2, 0) KV(3, 0) KV(4, 0) KV(5, 0) KV(6, 0) KV(7, 0) KV(8, 0)
KV(1, 1) KV(2, 1) KV(3, 1) KV(4, 1) KV(5, 1) KV(6, 1) KV(7, 1) KV(8, 1)
typedef void (*kvfn)(const int8_t*, const float*, const float*, size_t, unsigned, const qtok*, float*, size_t,
                     const int8_t*);
static const kvfn KVS[2][TB] = {{kv_1_0, kv_2_0, kv_3_0, kv_4_0, kv_5_0, kv_6_0, kv_7_0, kv_8_0},
                                 {kv_1_1, kv_2_1, kv_3_1, kv_4_1, kv_5_1, kv_6_1, kv_7_1, kv_8_1}};
#endif

#if Q8A_Y
/* The same window, lanes and float order in two 8-lane halves (lanes 0-7, 8-15); tail windows
 * load whole groups with 32-bit masks. The integer sums are exact either way: with AVX-VNNI
 * (ymm vpdpbusd) as above, q ^ 0x80 and 128 * S subtracted; with plain AVX2 by the sign trick
 * |q| * (x * sign q), whose byte pairs sum to at most 2 * 128 * 127 < 2^15, so vpmaddubsw never
 * saturates (|x| <= 127 by the clip; q may be -128, and |-128| is 128 unsigned). */
static inline float hsum2x256(__m256 a, __m256 b) {
  __m256 s8 = _mm256_add_ps(a, b);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

static inline __m256i lane_mask(size_t n) { /* the first n (0..8) int32 lanes */
  const __m256i ix = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), ix);
}

#if defined(__AVXVNNI__)
#define YPREP(w) _mm256_xor_si256((w), _mm256_set1_epi8((char)0x80))
#define YDOT(acc, wp, w, x) _mm256_dpbusd_avx_epi32((acc), (wp), (x))
#define YFIX(I, s) _mm256_sub_epi32((I), (s))
#else
#define YPREP(w) _mm256_abs_epi8(w)
#define YDOT(acc, wp, w, x) \
  _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((wp), _mm256_sign_epi8((x), (w))), _mm256_set1_epi16(1)))
#define YFIX(I, s) (I)
#endif

#define KY(NT, MIN)                                                                                   \
  static void ky_##NT##_##MIN(const int8_t* qv, const float* d, const float* m, size_t K, unsigned G, \
                              const qtok* tk, float* o, size_t ldo, const int8_t* pf) {               \
    const size_t ng = K / G, nj = G / 4;                                                              \
    __m256 acc[NT][2];                                                                                \
    for (int t = 0; t < NT; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();                         \
    for (size_t w0 = 0; w0 < ng; w0 += 16) {                                                          \
      const size_t W = ng - w0 < 16 ? ng - w0 : 16;                                                   \
      const __m256i ma = lane_mask(W < 8 ? W : 8), mb = lane_mask(W > 8 ? W - 8 : 0);                 \
      const int8_t* qw = qv + w0 * G;                                                                 \
      __m256i ia[NT][2];                                                                              \
      for (int t = 0; t < NT; t++) ia[t][0] = ia[t][1] = _mm256_setzero_si256();                      \
      if (W == 4) { /* a tail window of 4 groups: 2 chunks in one vector, then fold (PACKED) */        \
        for (size_t j = 0; j < nj; j += 2) {                                                          \
          const __m256i w_a = _mm256_loadu_si256((const __m256i*)(qw + 16 * j));                      \
          const __m256i p_a = YPREP(w_a);                                                             \
          _mm_prefetch((const char*)(pf + w0 * G + 16 * j), _MM_HINT_T0);                             \
          for (int t = 0; t < NT; t++)                                                                \
            ia[t][0] = YDOT(ia[t][0], p_a, w_a, _mm256_loadu_si256((const __m256i*)(tk[t].qx + w0 * G + 16 * j))); \
        }                                                                                             \
        for (int t = 0; t < NT; t++)                                                                  \
          ia[t][0] = _mm256_and_si256(ma, _mm256_add_epi32(ia[t][0], _mm256_permute2x128_si256(ia[t][0], ia[t][0], 1))); \
      } else                                                                                          \
      for (size_t j = 0; j < nj; j++) {                                                               \
        const int8_t* wj = qw + 4 * W * j;                                                            \
        const __m256i w_a = _mm256_maskload_epi32((const int*)wj, ma);                                \
        const __m256i w_b = _mm256_maskload_epi32((const int*)(wj + 32), mb);                         \
        const __m256i p_a = YPREP(w_a), p_b = YPREP(w_b);                                             \
        _mm_prefetch((const char*)(pf + w0 * G + 4 * W * j), _MM_HINT_T0);                            \
        for (int t = 0; t < NT; t++) {                                                                \
          const int8_t* xj = tk[t].qx + w0 * G + 4 * W * j;                                           \
          ia[t][0] = YDOT(ia[t][0], p_a, w_a, _mm256_maskload_epi32((const int*)xj, ma));             \
          if (W > 8) /* else the b half is all zero lanes: skipped, it adds +0 */                     \
            ia[t][1] = YDOT(ia[t][1], p_b, w_b, _mm256_maskload_epi32((const int*)(xj + 32), mb));    \
        }                                                                                             \
      }                                                                                               \
      for (int h = 0; h < (W > 8 ? 2 : 1); h++) { /* lanes past W add +0 (acc is never -0) */        \
        const __m256i gm = h ? mb : ma;                                                               \
        const size_t g0 = w0 + 8 * (size_t)h;                                                         \
        const __m256 dw = _mm256_maskload_ps(d + g0, gm);                                             \
        __m256 mw = _mm256_setzero_ps();                                                              \
        if (MIN) mw = _mm256_maskload_ps(m + g0, gm);                                                 \
        for (int t = 0; t < NT; t++) {                                                                \
          const __m256i I = YFIX(ia[t][h], _mm256_maskload_epi32(tk[t].s128 + g0, gm));               \
          const __m256 sc = _mm256_mul_ps(dw, _mm256_maskload_ps(tk[t].dx + g0, gm));                 \
          acc[t][h] = _mm256_add_ps(acc[t][h], _mm256_mul_ps(_mm256_cvtepi32_ps(I), sc));             \
          if (MIN) acc[t][h] = _mm256_sub_ps(acc[t][h], _mm256_mul_ps(mw, _mm256_maskload_ps(tk[t].dxs + g0, gm))); \
        }                                                                                             \
      }                                                                                               \
    }                                                                                                 \
    for (int t = 0; t < NT; t++) o[t * ldo] = hsum2x256(acc[t][0], acc[t][1]);                       \
  }
KY(1, 0) KY(2, 0) KY(3, 0) KY(4, 0)
KY(1, 1) KY(2, 1) KY(3, 1) KY(4, 1)
typedef void (*kyfn)(const int8_t*, const float*, const float*, size_t, unsigned, const qtok*, float*, size_t,
                     const int8_t*);
static const kyfn KYS[2][TB] = {{ky_1_0, ky_2_0, ky_3_0, ky_4_0}, {ky_1_1, ky_2_1, ky_3_1, ky_4_1}};
#endif

static inline void row(const int8_t* qv, const float* d, const float* m, size_t K, unsigned G, const qtok* tk,
                       size_t nt, float* o, size_t ldo, const int8_t* pf) {
#if Q8A_VNNI
  KVS[m != NULL][nt - 1](qv, d, m, K, G, tk, o, ldo, pf);
#elif Q8A_Y
  KYS[m != NULL][nt - 1](qv, d, m, K, G, tk, o, ldo, pf);
#else
  (void)pf;
  row_portable(qv, d, m, K, G, tk, nt, o, ldo);
#endif
}

/* Scratch for T tokens: qx K bytes, then dx / s128 / dxs ng each. */
static void* alloc_tokens(size_t T, size_t K, size_t ng, qtok* tk) {
  const size_t per = K + 3 * ng * 4 + 64;
  char* buf = (char*)malloc(T * per + 64);
  if (!buf) return NULL;
  for (size_t t = 0; t < T; t++) {
    char* p = buf + t * per;
    tk[t].qx = (int8_t*)p;
    tk[t].dx = (float*)(p + ((K + 63) & ~(size_t)63));
    tk[t].s128 = (int32_t*)(tk[t].dx + ng);
    tk[t].dxs = (float*)(tk[t].s128 + ng);
  }
  return buf;
}

/* Rows [r0, r1) of out (T rows of ldo floats). qv: the window layout of q. Returns 0, or -1
 * when G is not 16 or 32, K is not a multiple of G, T > 32, or scratch cannot be allocated. */
int ts_q8act_matmul(const int8_t* qv, const float* d, const float* m, long G_, long K_, const float* x, long T_,
                    float* out, long ldo_, long r0, long r1) {
  const size_t K = (size_t)K_, T = (size_t)T_, ldo = (size_t)ldo_, G = (size_t)G_;
  if ((G != 16 && G != 32) || K % G || T > TMAX || T == 0) return -1;
  const size_t ng = K / G;
  qtok tk[TMAX];
  void* buf = alloc_tokens(T, K, ng, tk);
  if (!buf) return -1;
  for (size_t t = 0; t < T; t++) quantize_token(x + t * K, K, (unsigned)G, &tk[t]);
  for (long r = r0; r < r1; r++) {
    const int8_t* qr = qv + (size_t)r * K;
    const int8_t* pf = r + PFD < r1 ? qr + PFD * K : qr;
    for (size_t t0 = 0; t0 < T; t0 += TB) {
      const size_t nt = T - t0 < TB ? T - t0 : TB;
      row(qr, d + (size_t)r * ng, m ? m + (size_t)r * ng : NULL, K, (unsigned)G, tk + t0, nt,
          out + t0 * ldo + (size_t)r, ldo, t0 == 0 ? pf : qr);
    }
  }
  free(buf);
  return 0;
}

/* out[i] = row idx[i] . h (one token) for the MTP head's routed candidates, with each row and its
 * scales prefetched 8 candidates ahead (scattered rows). */
int ts_q8act_gather(const int8_t* qv, const float* d, const float* m, long G_, long K_, const int64_t* idx, long n,
                    const float* h, float* out) {
  const size_t K = (size_t)K_, G = (size_t)G_;
  if ((G != 16 && G != 32) || K % G) return -1;
  const size_t ng = K / G;
  qtok tk[1];
  void* buf = alloc_tokens(1, K, ng, tk);
  if (!buf) return -1;
  quantize_token(h, K, (unsigned)G, &tk[0]);
  for (long i = 0; i < n; i++) {
    const size_t r = (size_t)idx[i];
#if Q8A_VNNI || Q8A_Y
    if (i + 8 < n) {
      const size_t rn = (size_t)idx[i + 8];
      for (size_t b = 0; b < K; b += 64) _mm_prefetch((const char*)(qv + rn * K) + b, _MM_HINT_T0);
      for (size_t b = 0; b < ng * sizeof(float); b += 64) _mm_prefetch((const char*)(d + rn * ng) + b, _MM_HINT_T0);
      if (m)
        for (size_t b = 0; b < ng * sizeof(float); b += 64) _mm_prefetch((const char*)(m + rn * ng) + b, _MM_HINT_T0);
    }
#endif
    row(qv + r * K, d + r * ng, m ? m + r * ng : NULL, K, (unsigned)G, tk, 1, out + i, 1, qv + r * K);
  }
  free(buf);
  return 0;
}
