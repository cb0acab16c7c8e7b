// kv.cu — KV cache append for every cache type (f16, q8_0, q4_0, turbo4/3/2, turbo4lm).
#include "common.cuh"
#include "kvtypes.cuh"

// x: [n_tok, n_heads, D] f32 (K or V rows of n_tok new tokens); eq: [D] channel scales or null
// (K equalization "InnerQ": x * eq is stored); cache: [n_ctx, n_heads, row_bytes] at rows
// pos0 .. pos0 + n_tok - 1. D a multiple of 128.
// grid = (D / 128, n_heads, n_tok), block = 128: one turbo group, or 4 q8_0/q4_0 blocks (one
// per warp), or 128 f16 values per block.
// TurboQuant encode per group (DESIGN.md): n = ||x||; u = x / n (0 if n <= 1e-10);
// r = s2 * H(s1 * u) / sqrt(128) (WHT in shared memory, 7 barrier stages); idx = nearest centroid
// by midpoints (strict <); norm = n / ||c[idx]|| stored as f16.
// Napkin (decode, one token, K+V, D 256): reads 2 KiB, writes 2 x 100 B (turbo3); ~1.5 kFLOP
// per group — a launch-bound kernel, fused into the step by the graph.
extern "C" __global__ void __launch_bounds__(128)
kv_append(const float* __restrict__ x, const float* __restrict__ eq, u8* __restrict__ cache, int type,
          int pos0, int n_heads, int D, const int* __restrict__ pos_dev) {
  if (pos_dev != nullptr) pos0 = pos_dev[0];
  __shared__ float sm[128];
  __shared__ float sq[128];
  __shared__ int sidx[128];
  const int grp = blockIdx.x, head = blockIdx.y, tok = blockIdx.z, j = threadIdx.x;
  const int lane = j & 31, warp = j >> 5;
  const int d = grp * 128 + j;
  float v = x[((long long)tok * n_heads + head) * D + d];
  if (eq != nullptr) v *= eq[d];
  u8* row = cache + ((long long)(pos0 + tok) * n_heads + head) * kv_row_bytes(type, D);

  if (type == KV_F16) {
    st_u16(row + 2 * d, f2h(v));
    return;
  }
  if (type == KV_Q8_0) {  // == gguf/ggml quantize_row_q8_0
    const float amax = warp_max(fabsf(v));
    const float dd = amax / 127.0f;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    u8* b = row + (grp * 4 + warp) * 34;
    if (lane == 0) st_u16(b, f2h(dd));
    b[2 + lane] = (u8)(i8)(int)roundf(v * id);
    return;
  }
  if (type == KV_Q4_0) {  // == gguf/ggml quantize_row_q4_0 (signed max, d = max / -8)
    float av = fabsf(v);
    int ai = lane;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(TS_FULL_MASK, av, o);
      const int oi = __shfl_xor_sync(TS_FULL_MASK, ai, o);
      if (ov > av || (ov == av && oi < ai)) {
        av = ov;
        ai = oi;
      }
    }
    const float mx = __shfl_sync(TS_FULL_MASK, v, ai);
    const float dd = mx / -8.0f;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    const int q = min(15, (int)(v * id + 8.5f));
    const int q_hi = __shfl_down_sync(TS_FULL_MASK, q, 16);
    u8* b = row + (grp * 4 + warp) * 18;
    if (lane == 0) st_u16(b, f2h(dd));
    if (lane < 16) b[2 + lane] = (u8)(q | (q_hi << 4));
    return;
  }
  // TurboQuant. Sums of squares by halving (s[j] += s[j + h], h = 64..1): the order of
  // engine/kv/codecs.py, so the bytes match the NumPy codec exactly.
  const float n = sqrtf(tb_sumsq_halving(v, sq));
  sm[j] = n > 1e-10f ? v / n : 0.0f;
  __syncthreads();
  tb_rotate_shared(sm, 1, false);
  const int idx = tb_nearest(type, sm[j]);
  const float c = tb_book(type)[idx];
  const float cn = sqrtf(tb_sumsq_halving(c, sq));
  sidx[j] = idx;
  __syncthreads();
  u8* b = row + grp * kv_block_bytes(type);
  if (j == 0) st_u16(b, f2h(n / cn));
  if (type == KV_TURBO4 || type == KV_TURBO4LM) {
    if (j == 0) st_u16(b + 2, 0);  // rnorm
    if (j < 64) b[4 + j] = (u8)(sidx[2 * j] | (sidx[2 * j + 1] << 4));
  } else if (type == KV_TURBO3) {
    if (j < 32) {
      b[2 + j] = (u8)((sidx[4 * j] & 3) | ((sidx[4 * j + 1] & 3) << 2) | ((sidx[4 * j + 2] & 3) << 4) |
                      ((sidx[4 * j + 3] & 3) << 6));
    } else if (j < 48) {
      const int s = j - 32;
      int bits = 0;
      for (int k = 0; k < 8; ++k) bits |= ((sidx[8 * s + k] >> 2) & 1) << k;
      b[34 + s] = (u8)bits;
    }
  } else {
    if (j < 32)
      b[2 + j] = (u8)(sidx[4 * j] | (sidx[4 * j + 1] << 2) | (sidx[4 * j + 2] << 4) | (sidx[4 * j + 3] << 6));
  }
}
