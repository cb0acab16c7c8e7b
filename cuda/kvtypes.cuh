// kvtypes.cuh — KV cache row formats (DESIGN.md "Cache types") and the TurboQuant tables.
//
// A cache is [n_ctx, n_kv_heads, row_bytes(type, head_dim)] bytes; a row is head_dim values in
// blocks (f16: 1 value / 2 B; q8_0: 32 / 34; q4_0: 32 / 18; turbo4: 128 / 68; turbo3: 128 / 50;
// turbo2: 128 / 34). turbo rows hold the rotated, normalised group quantized to a codebook and
// one f16 norm per 128 values; decode gives the rotated vector (c[idx] * norm).
#pragma once
#include "common.cuh"

#define KV_F16 0
#define KV_Q8_0 1
#define KV_Q4_0 2
#define KV_TURBO4 3
#define KV_TURBO3 4
#define KV_TURBO2 5
#define KV_TURBO4LM 6  // turbo4's layout with the Lloyd-Max 4-bit book (engine/kv/codecs.py)

#define TB_INV_SQRT_DIV 11.313708498984761f  // sqrt(128): values are divided by it (not multiplied)

__constant__ float TB_C2[4] = {-0.133462f, -0.039994f, 0.039994f, 0.133462f};
__constant__ float TB_C3[8] = {-0.190685f, -0.117832f, -0.065717f, -0.021460f,
                               0.021460f,  0.065717f,  0.117832f,  0.190685f};
__constant__ float TB_C4[16] = {-0.173926f, -0.117195f, -0.089527f, -0.068756f, -0.051262f, -0.035597f,
                                -0.020989f, -0.006938f, 0.006938f,  0.020989f,  0.035597f,  0.051262f,
                                0.068756f,  0.089527f,  0.117195f,  0.173926f};
__constant__ float TB_C4LM[16] = {-0.23715f, -0.18041f, -0.14148f, -0.11002f, -0.08264f, -0.05765f,
                                  -0.03407f, -0.01128f, 0.01128f,  0.03407f,  0.05765f,  0.08264f,
                                  0.11002f,  0.14148f,  0.18041f,  0.23715f};
// sign tables as bit masks: bit j set = sign -1 (DESIGN.md s1 / s2, index 0 first)
__constant__ u32 TB_S1[4] = {0xe46a0359u, 0x42f85949u, 0xa4c63bbbu, 0x49f250a9u};
__constant__ u32 TB_S2[4] = {0x16acee90u, 0x3f628fdcu, 0xb7a5357au, 0xbea56562u};

__device__ __forceinline__ float tb_sign(const u32* m, int j) {
  return ((m[j >> 5] >> (j & 31)) & 1u) ? -1.0f : 1.0f;
}

__device__ __forceinline__ bool kv_is_turbo(int t) { return t >= KV_TURBO4; }
__device__ __forceinline__ bool kv_is_4bit(int t) { return t == KV_TURBO4 || t == KV_TURBO4LM; }

__device__ __forceinline__ int kv_block_vals(int t) {
  return t == KV_F16 ? 1 : (t == KV_Q8_0 || t == KV_Q4_0) ? 32 : 128;
}

__device__ __forceinline__ int kv_block_bytes(int t) {
  switch (t) {
    case KV_F16: return 2;
    case KV_Q8_0: return 34;
    case KV_Q4_0: return 18;
    case KV_TURBO4: return 68;
    case KV_TURBO4LM: return 68;
    case KV_TURBO3: return 50;
    default: return 34;
  }
}

__device__ __forceinline__ long long kv_row_bytes(int t, int D) {
  return (long long)(D / kv_block_vals(t)) * kv_block_bytes(t);
}

__device__ __forceinline__ const float* tb_book(int t) {
  return t == KV_TURBO4 ? TB_C4 : t == KV_TURBO4LM ? TB_C4LM : (t == KV_TURBO3 ? TB_C3 : TB_C2);
}

__device__ __forceinline__ int tb_levels(int t) { return kv_is_4bit(t) ? 16 : (t == KV_TURBO3 ? 8 : 4); }

// Sum over a 128-thread block of v by halving in shared memory (s[j] += s[j + h], h = 64..1);
// every thread gets the result. `s` holds 128 floats; all 128 threads must call it.
__device__ __forceinline__ float tb_sumsq_halving(float v, float* s) {
  const int j = threadIdx.x;
  s[j] = v * v;
  __syncthreads();
  for (int h = 64; h >= 1; h >>= 1) {
    if (j < h) s[j] += s[j + h];
    __syncthreads();
  }
  const float r = s[0];
  __syncthreads();
  return r;
}

// Nearest centroid by midpoints, strict `<`: a value exactly on a midpoint takes the higher index.
__device__ __forceinline__ int tb_nearest(int t, float r) {
  const float* c = tb_book(t);
  const int n = tb_levels(t);
  int idx = 0;
  for (int i = 0; i + 1 < n; ++i) idx += ((c[i] + c[i + 1]) * 0.5f <= r) ? 1 : 0;
  return idx;
}

// Decode values j0..j0+7 of a row for head_dim 256 (lane = j0 / 8 of a warp), rotated domain
// for turbo types, with `book` the type's codebook (pass a copy in shared memory: lanes index it
// with different indices, which constant memory would serialize). Every load is at least 2-byte
// aligned (all row and block sizes are even).
__device__ __forceinline__ void kv_load8(int t, const u8* __restrict__ row, int lane, const float* book,
                                         float* y) {
  if (t == KV_F16) {
#pragma unroll
    for (int k = 0; k < 8; ++k) y[k] = h2f(ld_u16(row + lane * 16 + 2 * k));
  } else if (t == KV_Q8_0) {
    const u8* b = row + (lane >> 2) * 34;
    const float d = ld_h(b);
    const u8* q = b + 2 + (lane & 3) * 8;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const u16 v = ld_u16(q + 2 * k);
      y[2 * k] = d * (float)(i8)(v & 0xff);
      y[2 * k + 1] = d * (float)(i8)(v >> 8);
    }
  } else if (t == KV_Q4_0) {
    const u8* b = row + (lane >> 2) * 18;
    const float d = ld_h(b);
    const int j0 = (lane & 3) * 8;
    const u8* qs = b + 2 + (j0 & 15);
    const int sh = j0 >= 16 ? 4 : 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) y[k] = d * (float)(((qs[k] >> sh) & 15) - 8);
  } else if (kv_is_4bit(t)) {
    const u8* b = row + (lane >> 4) * 68;
    const float nrm = ld_h(b);
    const u8* q = b + 4 + (lane & 15) * 4;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const u16 w = ld_u16(q + 2 * k);
#pragma unroll
      for (int e = 0; e < 4; ++e) y[4 * k + e] = book[(w >> (4 * e)) & 15] * nrm;
    }
  } else if (t == KV_TURBO3) {
    const u8* b = row + (lane >> 4) * 50;
    const float nrm = ld_h(b);
    const u16 w = ld_u16(b + 2 + (lane & 15) * 2);
    const u8 sg = b[34 + (lane & 15)];
#pragma unroll
    for (int k = 0; k < 8; ++k) y[k] = book[((w >> (2 * k)) & 3) | (((sg >> k) & 1) << 2)] * nrm;
  } else {
    const u8* b = row + (lane >> 4) * 34;
    const float nrm = ld_h(b);
    const u16 w = ld_u16(b + 2 + (lane & 15) * 2);
#pragma unroll
    for (int k = 0; k < 8; ++k) y[k] = book[(w >> (2 * k)) & 3] * nrm;
  }
}

// In-place WHT-128 rotation of `n_groups` consecutive 128-value groups in shared memory by a
// block of >= 128 threads: forward r = s2 * H(s1 * x) / sqrt(128); inverse x = s1 * H(s2 * r) / sqrt(128).
// Every thread of the block must call it (it holds barriers).
__device__ __forceinline__ void tb_rotate_shared(float* sm, int n_groups, bool inverse) {
  const u32* first = inverse ? TB_S2 : TB_S1;
  const u32* last = inverse ? TB_S1 : TB_S2;
  const int n = n_groups * 128;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sm[i] *= tb_sign(first, i & 127);
  __syncthreads();
  for (int h = 1; h < 128; h <<= 1) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      if (!(i & h)) {
        const float a = sm[i], b = sm[i + h];
        sm[i] = a + b;
        sm[i + h] = a - b;
      }
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < n; i += blockDim.x) sm[i] = sm[i] / TB_INV_SQRT_DIV * tb_sign(last, i & 127);
  __syncthreads();
}
