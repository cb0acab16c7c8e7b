/* kvcodec.c — the quantized KV cache types' block codecs: q8_0 and turbo2/3/4 (DESIGN.md's
 * table), encode and decode, bit-identical to their NumPy references.
 *
 *   q8_0   block of 32:  d = max|x| / 127,  q = roundf(x * (1/d)),  [f16 d][32 x int8]
 *   turbo  block of 128: n = |x| (sum of squares by halving), u = x / n, r = s2 ⊙ H128(s1 ⊙ u) / sqrt(128),
 *          idx = #{midpoints m_k <= r}, norm = n / |book[idx]|, [f16 norm][packed indices]
 *          (turbo4: [f16 norm][2 B unused][64 B nibbles]; turbo3: [f16][32 B low 2 bits][16 B bit 2];
 *           turbo2: [f16][32 B of 2-bit indices])
 *   decode: q8_0 x = q * d;  turbo x = book[idx] * norm (rotated domain, as the NumPy decode)
 *
 * NumPy references: Q8_0Codec / TurboCodec._encode_blocks and _decode_blocks in engine/kv/codecs.py
 * (the butterfly in engine/kv/rotation.py). This file performs the same float32 operations in the
 * same order — products rounded to float before the double-precision round-half-away, the halving
 * sums, the butterfly's stage order, a true division by sqrt(128) — and the build has
 * -ffp-contract=off and no -ffast-math, so every byte and every decoded value is the same
 * (tests/engine/test_kv_codecs.py compares them on fresh random blocks, zeros, tiny and huge
 * blocks and values on the midpoints). The f16 conversion is round-to-nearest-even like NumPy's
 * (subnormals included); a scale or norm that would round to inf returns 1 and the caller runs
 * the NumPy reference, which names the offending block.
 *
 * Napkin math, the default model's q8_0-K / turbo3-V cache (1 KV head of 256, 18 layers): a
 * decode token encodes 8 q8_0 blocks and 2 turbo3 blocks a layer (~3k flops: nothing), but the
 * NumPy encoders are ~40 small ufunc calls each (~60 us a layer, ~2 ms a token), and decoding
 * 200 cells is 2 x 51k values through fancy-index gathers (~25 us a layer). Here an encode is
 * ~1 us and a decode ~0.3 ns a value.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

float ts_half_to_float(uint16_t h);

/* float -> IEEE half, round to nearest even; NaN keeps its top payload bits and stays NaN. */
static uint16_t float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
  if (ax < 0x38800000u) {                                     /* below 2^-14: a half subnormal (or 0) */
    if (ax < 0x33000000u) return (uint16_t)sign;              /* <= 2^-25 after rounding: 0 */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126u - e; /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t q = (((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13), rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++; /* a carry moves into the exponent: right */
  return (uint16_t)(sign | q);
}

/* test hook: the conversion above over n floats */
void ts_f32_to_f16(const float* in, uint16_t* out, long n) {
  for (long i = 0; i < n; i++) out[i] = float_to_half(in[i]);
}

static inline void put16(uint8_t* p, uint16_t h) { p[0] = (uint8_t)(h & 0xff), p[1] = (uint8_t)(h >> 8); }
static inline uint16_t get16(const uint8_t* p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* ---- q8_0 ------------------------------------------------------------------------------------ */

int ts_q8_0_encode(const float* x, long m, uint8_t* out) {
  for (long b = 0; b < m; b++, x += 32, out += 34) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
      float a = fabsf(x[j]);
      if (a > amax) amax = a;
    }
    float d = amax / 127.0f, inv = d != 0.0f ? 1.0f / d : 0.0f;
    if (d >= 65520.0f) return 1;
    put16(out, float_to_half(d));
    for (int j = 0; j < 32; j++) {
      double v = (double)(x[j] * inv); /* the product rounded in float first, as in ggml */
      out[2 + j] = (uint8_t)(int8_t)trunc(v + copysign(0.5, v));
    }
  }
  return 0;
}

void ts_q8_0_decode(const uint8_t* p, long m, float* out) {
  for (long b = 0; b < m; b++, p += 34, out += 32) {
    float d = ts_half_to_float(get16(p));
    const int8_t* q = (const int8_t*)(p + 2);
    for (int j = 0; j < 32; j++) out[j] = (float)q[j] * d;
  }
}

/* ---- turbo ----------------------------------------------------------------------------------- */

/* rotation.py's sign tables, index 0 first */
static const float S1[128] = {
  -1.f, 1.f, 1.f, -1.f, -1.f, 1.f, -1.f, 1.f, -1.f, -1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f,
  1.f, -1.f, 1.f, -1.f, 1.f, -1.f, -1.f, 1.f, 1.f, 1.f, -1.f, 1.f, 1.f, -1.f, -1.f, -1.f,
  -1.f, 1.f, 1.f, -1.f, 1.f, 1.f, -1.f, 1.f, -1.f, 1.f, 1.f, -1.f, -1.f, 1.f, -1.f, 1.f,
  1.f, 1.f, 1.f, -1.f, -1.f, -1.f, -1.f, -1.f, 1.f, -1.f, 1.f, 1.f, 1.f, 1.f, -1.f, 1.f,
  -1.f, -1.f, 1.f, -1.f, -1.f, -1.f, 1.f, -1.f, -1.f, -1.f, 1.f, -1.f, -1.f, -1.f, 1.f, 1.f,
  1.f, -1.f, -1.f, 1.f, 1.f, 1.f, -1.f, -1.f, 1.f, 1.f, -1.f, 1.f, 1.f, -1.f, 1.f, -1.f,
  -1.f, 1.f, 1.f, -1.f, 1.f, -1.f, 1.f, -1.f, 1.f, 1.f, 1.f, 1.f, -1.f, 1.f, -1.f, 1.f,
  1.f, -1.f, 1.f, 1.f, -1.f, -1.f, -1.f, -1.f, -1.f, 1.f, 1.f, -1.f, 1.f, 1.f, -1.f, 1.f};
static const float S2[128] = {
  1.f, 1.f, 1.f, 1.f, -1.f, 1.f, 1.f, -1.f, 1.f, -1.f, -1.f, -1.f, 1.f, -1.f, -1.f, -1.f,
  1.f, 1.f, -1.f, -1.f, 1.f, -1.f, 1.f, -1.f, 1.f, -1.f, -1.f, 1.f, -1.f, 1.f, 1.f, 1.f,
  1.f, 1.f, -1.f, -1.f, -1.f, 1.f, -1.f, -1.f, -1.f, -1.f, -1.f, -1.f, 1.f, 1.f, 1.f, -1.f,
  1.f, -1.f, 1.f, 1.f, 1.f, -1.f, -1.f, 1.f, -1.f, -1.f, -1.f, -1.f, -1.f, -1.f, 1.f, 1.f,
  1.f, -1.f, 1.f, -1.f, -1.f, -1.f, -1.f, 1.f, -1.f, 1.f, -1.f, 1.f, -1.f, -1.f, 1.f, 1.f,
  -1.f, 1.f, -1.f, 1.f, 1.f, -1.f, 1.f, -1.f, -1.f, -1.f, -1.f, 1.f, -1.f, -1.f, 1.f, -1.f,
  1.f, -1.f, 1.f, 1.f, 1.f, -1.f, -1.f, 1.f, -1.f, 1.f, -1.f, 1.f, 1.f, -1.f, -1.f, 1.f,
  -1.f, 1.f, -1.f, 1.f, 1.f, -1.f, 1.f, -1.f, 1.f, -1.f, -1.f, -1.f, -1.f, -1.f, 1.f, -1.f};

/* the sum of squares of 128 values by halving: s[j] += s[j + h] for h = 64, 32, ..., 1 */
static float sumsq128(const float* v) {
  float s[128];
  for (int j = 0; j < 128; j++) s[j] = v[j] * v[j];
  for (int h = 64; h >= 1; h >>= 1)
    for (int j = 0; j < h; j++) s[j] = s[j] + s[j + h];
  return s[0];
}

int ts_turbo_encode(const float* x, long m, int bits, const float* book, const float* mids, long nmid,
                    uint8_t* out) {
  const int tsz = bits == 4 ? 68 : bits == 3 ? 50 : bits == 2 ? 34 : 0;
  if (!tsz || nmid != (1L << bits) - 1) return -1;
  const float sqrt128 = sqrtf(128.0f); /* rotation.SQRT128 */
  for (long b = 0; b < m; b++, x += 128, out += tsz) {
    float u[128], t[128], c[128];
    uint8_t idx[128];
    float n = sqrtf(sumsq128(x)), div = n <= 1e-10f ? 1.0f : n;
    const float zero = n <= 1e-10f ? 0.0f : 1.0f;
    for (int j = 0; j < 128; j++) u[j] = (x[j] / div) * zero * S1[j]; /* (the * 1, * -1 are exact) */
    float *src = u, *dst = t;
    for (int h = 1; h < 128; h <<= 1) { /* the butterfly's stages in rotation.butterfly_columns' order */
      for (int i = 0; i < 128; i += 2 * h)
        for (int j = 0; j < h; j++) {
          float a = src[i + j], c2 = src[i + h + j];
          dst[i + j] = a + c2;
          dst[i + h + j] = a - c2;
        }
      float* s = src;
      src = dst, dst = s;
    }
    for (int j = 0; j < 128; j++) t[j] = src[j] / sqrt128 * S2[j]; /* r (src may be t: in place) */
    for (int j = 0; j < 128; j++) idx[j] = 0;
    for (long k = 0; k < nmid; k++) /* idx = #{m_k <= r}: the midpoints ascend */
      for (int j = 0; j < 128; j++) idx[j] += (uint8_t)(t[j] >= mids[k]);
    for (int j = 0; j < 128; j++) c[j] = book[idx[j]];
    float norm = n / sqrtf(sumsq128(c));
    if (norm >= 65520.0f) return 1;
    put16(out, float_to_half(norm));
    if (bits == 4) {
      out[2] = out[3] = 0; /* rnorm, unused */
      for (int k = 0; k < 64; k++) out[4 + k] = (uint8_t)(idx[2 * k] | (idx[2 * k + 1] << 4));
    } else {
      for (int k = 0; k < 32; k++)
        out[2 + k] = (uint8_t)((idx[4 * k] & 3) | ((idx[4 * k + 1] & 3) << 2) | ((idx[4 * k + 2] & 3) << 4) |
                               ((idx[4 * k + 3] & 3) << 6));
      if (bits == 3)
        for (int k = 0; k < 16; k++) {
          uint8_t hi = 0;
          for (int l = 0; l < 8; l++) hi |= (uint8_t)(((idx[8 * k + l] >> 2) & 1) << l);
          out[34 + k] = hi;
        }
    }
  }
  return 0;
}

int ts_turbo_decode(const uint8_t* p, long m, int bits, const float* book, float* out) {
  const int tsz = bits == 4 ? 68 : bits == 3 ? 50 : bits == 2 ? 34 : 0;
  if (!tsz) return -1;
  for (long b = 0; b < m; b++, p += tsz, out += 128) {
    float norm = ts_half_to_float(get16(p)), nb[16];
    for (int i = 0; i < (1 << bits); i++) nb[i] = book[i] * norm; /* the reference's product, per value */
    if (bits == 4) {
      for (int k = 0; k < 64; k++) {
        out[2 * k] = nb[p[4 + k] & 15];
        out[2 * k + 1] = nb[p[4 + k] >> 4];
      }
    } else if (bits == 3) { /* value 4k + l: bits 2l of qs byte k, bit 2 from bit 4(k & 1) + l of sign byte k / 2 */
      for (int k = 0; k < 32; k++) {
        unsigned q = p[2 + k], sg = (unsigned)p[34 + (k >> 1)] >> (4 * (k & 1));
        out[4 * k] = nb[(q & 3) | ((sg & 1) << 2)];
        out[4 * k + 1] = nb[((q >> 2) & 3) | ((sg & 2) << 1)];
        out[4 * k + 2] = nb[((q >> 4) & 3) | (sg & 4)];
        out[4 * k + 3] = nb[((q >> 6) & 3) | ((sg & 8) >> 1)];
      }
    } else {
      for (int k = 0; k < 32; k++) {
        unsigned q = p[2 + k];
        out[4 * k] = nb[q & 3], out[4 * k + 1] = nb[(q >> 2) & 3];
        out[4 * k + 2] = nb[(q >> 4) & 3], out[4 * k + 3] = nb[q >> 6];
      }
    }
  }
  return 0;
}
