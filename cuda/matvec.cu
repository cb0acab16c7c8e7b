// matvec.cu — y = W x over GGML-quantized weights, dequantized in registers, a small batched
// matmul for prefill (Y[t] = W X[t], up to 8 tokens per weight pass), and a gathered matvec
// (y[i] = W[ids[i]] x: the centroid-routed head scores only the tokens of the chosen clusters).
//
// Layout: W is row-major [rows, K] in GGML blocks (row r at r * row_bytes); x is [T, K] f32;
// y is [T, rows] f32. One warp per output row; each lane dequantizes 8-value chunks
// lane, lane + 32, ... so a warp's loads of a row are contiguous. 4 warps (128 threads) per
// block, grid.x = ceil(rows / 4), grid.y = ceil(T / TS_NB) for the batched kernel.
// Requirements: K a multiple of 32 (256 for the K-quants); x 32-byte aligned rows.
//
// Napkin (decode, default model per token): weights ~ 18 layers x (640x(4x256 + 256 + 256)
// + 1024x640 + 3 x 640x2048) ~ 100 M values ~ 60 MB at ~4.8 bpw, + the 262144x640 LM head
// (Q6_K/Q8_0 ~ 140-180 MB). At 4.8 TB/s (H200) that is ~45 us per token when bandwidth-bound;
// FLOPs 2 per weight (~0.5 GFLOP) are free. Prefill at T tokens reuses each dequantized chunk
// TS_NB times: weight traffic / TS_NB, FLOPs 2 * T per weight.
#include "common.cuh"
#include "quant.cuh"

#define TS_NB 8

template <int TYPE>
__device__ __forceinline__ void deq8(const u8* row, int c, const float* book, float* y) {
  if (TYPE == TS_Q8_0) deq8_q8_0(row, c, y);
  else if (TYPE == TS_Q5_0) deq8_q5_0(row, c, y);
  else if (TYPE == TS_Q4_K) deq8_q4_k(row, c, y);
  else if (TYPE == TS_Q6_K) deq8_q6_k(row, c, y);
  else if (TYPE == TS_TQ3_1S) deq8_tq3_1s(row, c, book, y);
  else if (TYPE == TS_TQ4_1S) deq8_tq4_1s(row, c, book, y);
  else if (TYPE == TS_F16) deq8_f16(row, c, y);
  else deq8_f32(row, c, y);
}

template <int TYPE, int NB>
__device__ __forceinline__ void mm_body(const u8* __restrict__ W, const int* __restrict__ ids,
                                        const float* __restrict__ x, float* __restrict__ y, int rows, int K,
                                        int T) {
  __shared__ float sbook[16];
  if (TYPE == TS_TQ3_1S || TYPE == TS_TQ4_1S) {
    if (threadIdx.x < 16)
      sbook[threadIdx.x] = TYPE == TS_TQ4_1S ? TQ4_BOOK[threadIdx.x] : (threadIdx.x < 8 ? TQ3_BOOK[threadIdx.x] : 0.0f);
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int t0 = blockIdx.y * NB;
  if (r >= rows) return;  // whole warps leave together: no block barrier below
  const long long wr = ids != nullptr ? (long long)ids[r] : (long long)r;  // gathered rows
  const u8* row = W + wr * row_bytes_w(TYPE, K);
  const int nch = K >> 3;
  float acc[NB];
#pragma unroll
  for (int b = 0; b < NB; ++b) acc[b] = 0.0f;
  for (int c = lane; c < nch; c += 32) {
    float w[8];
    deq8<TYPE>(row, c, sbook, w);
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      if (t0 + b < T) {
        const float* xc = x + (long long)(t0 + b) * K + c * 8;
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) s += w[k] * xc[k];
        acc[b] += s;
      }
    }
  }
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    const float s = warp_sum(acc[b]);
    if (lane == 0 && t0 + b < T) y[(long long)(t0 + b) * rows + r] = s;
  }
}

// get_rows: y[i, :] = scale * row ids[i] of W, dequantized (the token-embedding lookup on the
// device: only the ids travel). One warp per row; lane l dequantizes chunks l, l + 32, ...; TQ rows
// are un-rotated per 32-block in registers (lanes 4m..4m+3 hold one block: butterfly stages 1, 2, 4
// inside a lane, 8 and 16 across lanes by shuffles, then / sqrt(32) and the signs).
// grid = ceil(n / 4), block = 128. Napkin: a row of the Q8_0 640-wide embedding is 680 B.
template <int TYPE>
__device__ __forceinline__ void get_rows_body(const u8* __restrict__ W, const int* __restrict__ ids,
                                              float* __restrict__ y, int n, int K, float scale) {
  constexpr bool TQ = TYPE == TS_TQ3_1S || TYPE == TS_TQ4_1S;
  __shared__ float sbook[16];
  if (TQ) {
    if (threadIdx.x < 16)
      sbook[threadIdx.x] = TYPE == TS_TQ4_1S ? TQ4_BOOK[threadIdx.x] : (threadIdx.x < 8 ? TQ3_BOOK[threadIdx.x] : 0.0f);
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (r >= n) return;  // whole warps leave together
  const u8* row = W + (long long)ids[r] * row_bytes_w(TYPE, K);
  const int nch = K >> 3;
  for (int c0 = 0; c0 < nch; c0 += 32) {  // uniform over the warp (the shuffles need every lane)
    const int c = c0 + lane;
    float w[8];
    if (c < nch) {
      deq8<TYPE>(row, c, sbook, w);
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) w[k] = 0.0f;
    }
    if (TQ) {
#pragma unroll
      for (int h = 1; h < 8; h <<= 1) {
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          if (!(k & h)) {
            const float a = w[k], b = w[k + h];
            w[k] = a + b;
            w[k + h] = a - b;
          }
        }
      }
#pragma unroll
      for (int h = 1; h < 4; h <<= 1) {
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const float o = __shfl_xor_sync(TS_FULL_MASK, w[k], h);
          w[k] = (lane & h) ? o - w[k] : w[k] + o;
        }
      }
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int j = 8 * (lane & 3) + k;
        w[k] *= ((TQ_SIGN_MASK >> j) & 1u) ? -TQ_INV_SQRT32 : TQ_INV_SQRT32;
      }
    }
    if (c < nch) {
#pragma unroll
      for (int k = 0; k < 8; ++k) y[(long long)r * K + c * 8 + k] = w[k] * scale;
    }
  }
}

#define TS_MATVEC(NAME, TYPE)                                                                    \
  extern "C" __global__ void __launch_bounds__(128)                                              \
  matvec_##NAME(const u8* W, const float* x, float* y, int rows, int K) {                        \
    mm_body<TYPE, 1>(W, nullptr, x, y, rows, K, 1);                                              \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(128)                                              \
  matvec_rows_##NAME(const u8* W, const int* ids, const float* x, float* y, int n, int K) {      \
    mm_body<TYPE, 1>(W, ids, x, y, n, K, 1);                                                     \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(128)                                              \
  matmul_##NAME(const u8* W, const float* x, float* y, int rows, int K, int T) {                 \
    mm_body<TYPE, TS_NB>(W, nullptr, x, y, rows, K, T);                                          \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(128)                                              \
  get_rows_##NAME(const u8* W, const int* ids, float* y, int n, int K, float scale) {            \
    get_rows_body<TYPE>(W, ids, y, n, K, scale);                                                 \
  }

TS_MATVEC(q8_0, TS_Q8_0)
TS_MATVEC(q5_0, TS_Q5_0)
TS_MATVEC(q4_k, TS_Q4_K)
TS_MATVEC(q6_k, TS_Q6_K)
TS_MATVEC(tq3_1s, TS_TQ3_1S)  // x must be rotated by tq_rotate_x first
TS_MATVEC(tq4_1s, TS_TQ4_1S)
TS_MATVEC(f16, TS_F16)
TS_MATVEC(f32, TS_F32)

// xr = H(signs * x) / sqrt(32) per 32-value block (the TQ weights' rotation, applied to the input
// instead of un-rotating every weight). n a multiple of 32; one warp per block, grid-stride.
// Napkin: n x 8 B moved, 5 shuffles per value — negligible next to the weights.
extern "C" __global__ void __launch_bounds__(1024) tq_rotate_x(const float* __restrict__ x, float* __restrict__ xr,
                                                               int n) {
  const int lane = threadIdx.x & 31;
  const int warps = (gridDim.x * blockDim.x) >> 5;
  for (int b = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; b * 32 < n; b += warps) {
    float v = x[b * 32 + lane] * (((TQ_SIGN_MASK >> lane) & 1u) ? -1.0f : 1.0f);
#pragma unroll
    for (int h = 1; h < 32; h <<= 1) {
      const float o = __shfl_xor_sync(TS_FULL_MASK, v, h);
      v = (lane & h) ? o - v : v + o;
    }
    xr[b * 32 + lane] = v * TQ_INV_SQRT32;
  }
}
