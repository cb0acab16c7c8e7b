/* attn.c — one decode token's attention over an f16 KV cache (the default cache type).
 *
 *   for each query head h (KV head h / g):
 *     s[j] = sum_d (q[h, d] * scale) * K[cell_j, h / g, d]          j = 0..n-1, cells in order
 *     w[j] = exp(s[j] - max_j s[j])
 *     out[h, :] = (sum_j w[j] * V[cell_j, h / g, :]) / sum_j w[j]
 *
 * NumPy reference: LayerKV._attend_step in engine/kv/cache.py (the same formula with matmuls over
 * the decoded cells); tests/engine/test_native_attn.py compares them on fresh random caches, global
 * and sliding, to float32 rounding. The results are not bit-identical to NumPy (other summation
 * orders, libm's expf), but within a process every decode token and every verified token takes this
 * same path (verification attends token by token, engine/kv/cache.py), so speculative decoding stays
 * token-identical to plain decoding. Fixed orders: each dot in 16 lane partials (lane l sums
 * d = l, l + 16, ... with a multiply and then an add: the build has -ffp-contract=off), then the
 * tree 8 + 8, 4 + 4, 2 + 2, 1 + 1; the weighted V sum and sum_j w[j] in ascending j; libm's expf.
 * The AVX-512 paths (4 query heads a KV head, the default model's grouping) do that same lane
 * arithmetic in registers, the portable loops in memory, so every build agrees bit for bit (a test
 * compares the portable and F16C builds with this one).
 *
 * Napkin math, the default model (4 query heads over 1 KV head of 256, 18 layers): at 200 cells a
 * layer reads 2 x 200 x 256 halves (200 KB, in L2) and does 2 x 4 x 200 x 256 = 410k multiplies
 * and as many adds. Measured (one core, Zen 4): the kernel ~5 / 16 / 40 us at 60 / 200 / 500 cells,
 * against 47-60 us for the NumPy step (~25 small calls); a layer's whole step with the encode and
 * the write 25 / 37 / 60 us at 60 / 200 / 500 cells against 48 / 63 / 154 us. Per token of the
 * default model: attention 2.3 -> 1.0 ms at short context, paid once per decoded and once per
 * verified token. Without the register paths (one head's dot alone waits on its adds' latency, 16
 * in a row per 256 values; a store-then-reload lane tree) the kernel took ~40 us at 200 cells.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define ALANES 16

/* f16.c: half -> single, exact (F16C / AVX-512 or the portable conversion); the portable paths
 * below decode a cell's row with it */
void ts_f16_to_f32(const uint16_t* in, float* out, long n);

static inline void halves(const uint16_t* in, float* out, size_t n) { ts_f16_to_f32(in, out, (long)n); }

#if defined(__AVX512F__)
/* the lane tree 8 + 8, 4 + 4, 2 + 2, 1 + 1 of one 16-lane partial sum, in registers */
static inline float tree16(__m512 v) {
  __m256 t8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
  __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
  return _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)));
}
#endif

/* s[h * n + j] = qs_h . K[cell_j] for the g query heads of one KV head (qs: g x hd, already scaled,
 * hd % 16 == 0), each dot as 16 lane partials (lane l: d = l, l + 16, ... ascending, a multiply then
 * an add) and the lane tree. The AVX-512 path does the same lane arithmetic for 4 heads x 2 cells
 * at once (8 independent add chains: one dot alone waits on its adds, 16 in a row per 256 values). */
static void scores(const uint16_t* K, size_t stride, const int64_t* cells, size_t c0, size_t n, const float* qs,
                   size_t g, size_t hd, float* s, float* row) {
  size_t j = 0;
#if defined(__AVX512F__)
  if (g == 4) {
    for (; j + 2 <= n; j += 2) {
      const uint16_t* k0 = K + (cells ? (size_t)cells[j] : c0 + j) * stride;
      const uint16_t* k1 = K + (cells ? (size_t)cells[j + 1] : c0 + j + 1) * stride;
      __m512 a[4][2];
      for (int h = 0; h < 4; h++) a[h][0] = a[h][1] = _mm512_setzero_ps();
      for (size_t d = 0; d < hd; d += ALANES) {
        const __m512 x0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(k0 + d)));
        const __m512 x1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(k1 + d)));
        for (int h = 0; h < 4; h++) {
          const __m512 qv = _mm512_loadu_ps(qs + h * hd + d);
          a[h][0] = _mm512_add_ps(a[h][0], _mm512_mul_ps(qv, x0));
          a[h][1] = _mm512_add_ps(a[h][1], _mm512_mul_ps(qv, x1));
        }
      }
      for (int h = 0; h < 4; h++) {
        s[h * n + j] = tree16(a[h][0]);
        s[h * n + j + 1] = tree16(a[h][1]);
      }
    }
  }
#endif
  for (; j < n; j++) {
    halves(K + (cells ? (size_t)cells[j] : c0 + j) * stride, row, hd);
    for (size_t h = 0; h < g; h++) {
      float acc[ALANES] = {0};
      for (size_t d = 0; d < hd; d += ALANES)
        for (int l = 0; l < ALANES; l++) acc[l] += qs[h * hd + d + l] * row[d + l];
      for (int w = ALANES / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
      s[h * n + j] = acc[0];
    }
  }
}

/* o[h, :] += w[h, j] * V[cell_j, :] in ascending j for the g heads (o starts at zero). The AVX-512
 * path keeps a 64-value slice of every head's output in registers while it walks the cells (same
 * per-element order: a multiply, then an add, cell after cell); the portable path decodes a cell's
 * row once and updates the g outputs in memory. */
static void wsum(const uint16_t* V, size_t stride, const int64_t* cells, size_t c0, size_t n, const float* w,
                 size_t g, size_t hd, float* o, float* row) {
#if defined(__AVX512F__)
  if (g == 4 && hd % 64 == 0) {
    for (size_t d = 0; d < hd; d += 64) {
      __m512 a[4][4];
      for (int h = 0; h < 4; h++)
        for (int c = 0; c < 4; c++) a[h][c] = _mm512_setzero_ps();
      for (size_t j = 0; j < n; j++) {
        const uint16_t* v = V + (cells ? (size_t)cells[j] : c0 + j) * stride + d;
        __m512 x[4];
        for (int c = 0; c < 4; c++) x[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(v + 16 * c)));
        for (int h = 0; h < 4; h++) {
          const __m512 wv = _mm512_set1_ps(w[h * n + j]);
          for (int c = 0; c < 4; c++) a[h][c] = _mm512_add_ps(a[h][c], _mm512_mul_ps(wv, x[c]));
        }
      }
      for (int h = 0; h < 4; h++)
        for (int c = 0; c < 4; c++) _mm512_storeu_ps(o + h * hd + d + 16 * c, a[h][c]);
    }
    return;
  }
#endif
  for (size_t i = 0; i < g * hd; i++) o[i] = 0.f;
  for (size_t j = 0; j < n; j++) {
    halves(V + (cells ? (size_t)cells[j] : c0 + j) * stride, row, hd);
    for (size_t h = 0; h < g; h++) {
      const float wj = w[h * n + j];
      for (size_t d = 0; d < hd; d++) o[h * hd + d] += wj * row[d];
    }
  }
}

/* One decode token at position p over one layer's f16 cache.
 * K, V: cap cells of hkv heads x hd halves (cell c's head k at c * stride + k * hd, stride = hkv * hd).
 * pos NULL (a global layer, slot = position): cells lo..hi. pos given (a sliding ring): the slots s
 * with lo <= pos[s] <= hi in ascending slot order, then new_slot (the token itself, written first by
 * the caller; hi = p - 1). q (n_head, hd) float32, out (n_head, hd).
 * Returns 0; 1 when a score is not finite (the caller takes its general path, which guards it);
 * -1 on bad shapes (hd % 16, n_head % hkv, no cells) or no memory. */
int ts_attn_f16(const uint16_t* K, const uint16_t* V, long stride, const int64_t* pos, long cap, long lo, long hi,
                long new_slot, const float* q, long n_head, long hkv, long hd_, float scale, float* out) {
  const size_t hd = (size_t)hd_;
  if (hd % ALANES || hkv <= 0 || n_head % hkv || cap <= 0) return -1;
  const size_t g = (size_t)(n_head / hkv);
  size_t n = pos ? (size_t)cap + 1 : (hi >= lo ? (size_t)(hi - lo + 1) : 0);
  if (n == 0) return -1;
  const size_t ncell = pos ? n : 0;
  int64_t* buf = malloc(sizeof(int64_t) * ncell + sizeof(float) * (g * hd + g * n + hd));
  if (!buf) return -1;
  float *qs = (float*)(buf + ncell), *s = qs + g * hd, *row = s + g * n;
  int64_t* cells = NULL;
  size_t c0 = (size_t)lo;
  if (pos) {
    cells = buf;
    n = 0;
    for (long c = 0; c < cap; c++)
      if (pos[c] >= lo && pos[c] <= hi) cells[n++] = c;
    if (new_slot >= 0) cells[n++] = new_slot;
    c0 = 0;
    if (n == 0) {
      free(buf);
      return -1;
    }
  }
  int rc = 0;
  for (long k = 0; k < hkv && !rc; k++) {
    for (size_t h = 0; h < g; h++)
      for (size_t d = 0; d < hd; d++) qs[h * hd + d] = q[((size_t)k * g + h) * hd + d] * scale;
    scores(K + (size_t)k * hd, (size_t)stride, cells, c0, n, qs, g, hd, s, row);
    for (size_t h = 0; h < g && !rc; h++) {
      float* sh = s + h * n;
      float m = sh[0];
      for (size_t j = 1; j < n; j++) m = sh[j] > m ? sh[j] : m;
      if (!isfinite(m)) rc = 1;
      for (size_t j = 0; j < n && !rc; j++) {
        if (!isfinite(sh[j])) rc = 1;
        sh[j] = expf(sh[j] - m);
      }
    }
    if (rc) break;
    wsum(V + (size_t)k * hd, (size_t)stride, cells, c0, n, s, g, hd, out + (size_t)k * g * hd, row);
    for (size_t h = 0; h < g; h++) {
      float z = 0.f;
      for (size_t j = 0; j < n; j++) z += s[h * n + j];
      float* o = out + ((size_t)k * g + h) * hd;
      for (size_t d = 0; d < hd; d++) o[d] /= z;
    }
  }
  free(buf);
  return rc;
}

/* A verification batch: T tokens at positions qpos[0..T-1] (ascending, consecutive), each one's
 * attention exactly as ts_attn_f16 computes it for that token decoded alone — the same cells in the
 * same order, the same arithmetic — so a verified token's output is bit-identical to the decoded
 * one's. The caller has written all T tokens' cells first: a later token's cell is never visible
 * to an earlier one (a global layer reads cells 0..p; a sliding ring reads positions up to p - 1
 * and then the token's own slot), and on a ring of window + slack cells the slots the batch
 * overwrites hold positions outside every batch token's window while T <= slack + 1.
 * window > 0: a sliding layer (pos given, cells at positions p - window + 1 .. p - 1, then slot
 * p % cap); window <= 0: a global layer (cells 0..p). q, out (T, n_head, hd).
 * One call instead of T: per token and layer this saves the ~40 us of Python around a ~5-16 us
 * kernel (18 layers: ~0.7 ms of each verified token's ~1.5 ms beyond the first).
 * Returns 0; 1 + t when token t has a non-finite score (the caller then redoes the batch token
 * by token, whose guards handle it); -1 as ts_attn_f16. */
int ts_attn_f16_batch(const uint16_t* K, const uint16_t* V, long stride, const int64_t* pos, long cap, long window,
                      const int64_t* qpos, long T, const float* q, long n_head, long hkv, long hd, float scale,
                      float* out) {
  for (long t = 0; t < T; t++) {
    const long p = (long)qpos[t];
    const float* qt = q + (size_t)t * n_head * hd;
    float* ot = out + (size_t)t * n_head * hd;
    int rc;
    if (window > 0) {
      const long lo = p - window + 1 > 0 ? p - window + 1 : 0;
      rc = ts_attn_f16(K, V, stride, pos, cap, lo, p - 1, p % cap, qt, n_head, hkv, hd, scale, ot);
    } else {
      rc = ts_attn_f16(K, V, stride, NULL, cap, 0, p, -1, qt, n_head, hkv, hd, scale, ot);
    }
    if (rc < 0) return rc;
    if (rc > 0) return (int)(1 + t);
  }
  return 0;
}
