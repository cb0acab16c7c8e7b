/* f16.c — IEEE half -> single conversion for the f16 KV cache.
 *
 *   out[i] = (float) in[i]      (exact: every half is a float)
 *
 * The NumPy reference is the 65536-entry table of engine/kv/codecs.py (``_f16_table``; NumPy's
 * own half -> single cast), compared over all 65536 bit patterns in tests/engine/test_native.py.
 *
 * Napkin math: one decode step of the default model reads every visible K and V cell of 18
 * layers — at 200 tokens of context 18 x 2 x 200 x 256 = 1.8M halves a token. The table costs
 * ~1.1 ns a value here (a gather from a 256 KB table), ~2 ms a token, and grows with the context;
 * the F16C/AVX-512 instruction converts 16 values per instruction, bound by the 2-byte loads and
 * 4-byte stores (~0.05-0.1 ns a value). Verification decodes the same cells for every token of a
 * batch (they attend token by token, DESIGN.md), so this cost is paid per verified token too.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

/* Portable, bit-exact: normal, subnormal, zero, infinity and NaN (payload kept, quiet bit as is). */
static inline float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man) { /* subnormal: normalize */
    int e = -1;
    do {
      man <<= 1;
      e++;
    } while (!(man & 0x400u));
    bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
  } else {
    bits = sign;
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* the conversion above for the other kernels (kvcodec.c) */
float ts_half_to_float(uint16_t h) { return half_to_float(h); }

const char* ts_f16_isa(void) {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__F16C__)
  return "f16c";
#else
  return "portable";
#endif
}

void ts_f16_to_f32(const uint16_t* in, float* out, long n_) {
  size_t n = (size_t)n_, i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(in + i))));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(in + i))));
#endif
  for (; i < n; i++) out[i] = half_to_float(in[i]);
}
