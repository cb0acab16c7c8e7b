// sample.cu — vocab-row softmax and argmax (only the id leaves the device), top-k over centroid
// logits, and the gather / fill / scatter of the centroid-routed MTP head.
#include "common.cuh"

#define TS_NEG_INF __int_as_float(0xff800000)

// (value, index) pair reduction: larger value wins, ties go to the lower index, index < 0 = empty.
__device__ __forceinline__ void pair_take(float& v, int& i, float ov, int oi) {
  if (oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i))) {
    v = ov;
    i = oi;
  }
}

__device__ __forceinline__ void block_argmax(float& v, int& i, float* sv, int* si) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(TS_FULL_MASK, v, o);
    const int oi = __shfl_xor_sync(TS_FULL_MASK, i, o);
    pair_take(v, i, ov, oi);
  }
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) {
    sv[w] = v;
    si[w] = i;
  }
  __syncthreads();
  v = lane < nw ? sv[lane] : 0.0f;
  i = lane < nw ? si[lane] : -1;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(TS_FULL_MASK, v, o);
    const int oi = __shfl_xor_sync(TS_FULL_MASK, i, o);
    pair_take(v, i, ov, oi);
  }
  __syncthreads();
}

// Stage 1 of argmax over x[n]: block b reduces a grid-stride slice to (pv[b], pi[b]).
// grid = G (e.g. 2 x SMs), block = 256. NaN entries never win.
// Napkin (vocab 262144): 1 MiB read once at full bandwidth (~0.3 us on H200) + one tiny launch.
extern "C" __global__ void __launch_bounds__(1024)
argmax_partial(const float* __restrict__ x, int n, float* __restrict__ pv, int* __restrict__ pi) {
  __shared__ float sv[32];
  __shared__ int si[32];
  float v = TS_NEG_INF;
  int i = -1;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < n; j += gridDim.x * blockDim.x) {
    const float xj = x[j];
    if (xj == xj) pair_take(v, i, xj, j);
  }
  block_argmax(v, i, sv, si);
  if (threadIdx.x == 0) {
    pv[blockIdx.x] = v;
    pi[blockIdx.x] = i;
  }
}

// Stage 2: one block over the m partials; out[0] = index (or ids[index] when ids is not null,
// e.g. the token id of the best gathered candidate). grid = 1, block = 32..1024.
extern "C" __global__ void __launch_bounds__(1024)
argmax_final(const float* __restrict__ pv, const int* __restrict__ pi, int m, const int* __restrict__ ids,
             int* __restrict__ out) {
  __shared__ float sv[32];
  __shared__ int si[32];
  float v = TS_NEG_INF;
  int i = -1;
  for (int j = threadIdx.x; j < m; j += blockDim.x) pair_take(v, i, pv[j], pi[j]);
  block_argmax(v, i, sv, si);
  if (threadIdx.x == 0) out[0] = (ids != nullptr && i >= 0) ? ids[i] : i;
}

// out[r] = softmax(x[r] * inv_temp). grid = rows, block = 32..1024 (multiple of 32).
// Napkin (vocab 262144): 3 passes over 1 MiB from one SM per row (~20 us): only for sampling.
extern "C" __global__ void __launch_bounds__(1024)
softmax(const float* __restrict__ x, float* __restrict__ out, int n, float inv_temp) {
  __shared__ float scratch[32];
  const float* xr = x + (long long)blockIdx.x * n;
  float* orow = out + (long long)blockIdx.x * n;
  float m = TS_NEG_BIG;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, xr[j] * inv_temp);
  m = block_max(m, scratch);
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += __expf(xr[j] * inv_temp - m);
  s = block_sum(s, scratch);
  const float inv = 1.0f / s;
  for (int j = threadIdx.x; j < n; j += blockDim.x) orow[j] = __expf(xr[j] * inv_temp - m) * inv;
}

// Top-k of x[n] (values descending, ties to the lower index): k rounds of a block argmax over
// the entries not yet taken. Dynamic shared memory: n bytes of flags. grid = 1, block = 256.
// Napkin (2048 centroids, k 32): 32 x 2048 compares from shared memory, ~10 us; fine for a
// drafter step, a bitonic sort would do it in one pass if it ever shows up.
extern "C" __global__ void __launch_bounds__(1024)
topk(const float* __restrict__ x, int n, int k, int* __restrict__ out_idx, float* __restrict__ out_val) {
  __shared__ float sv[32];
  __shared__ int si[32];
  TS_DYN_SMEM(u8, taken);
  for (int j = threadIdx.x; j < n; j += blockDim.x) taken[j] = 0;
  __syncthreads();
  for (int r = 0; r < k; ++r) {
    float v = TS_NEG_INF;
    int i = -1;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
      if (!taken[j] && x[j] == x[j]) pair_take(v, i, x[j], j);
    block_argmax(v, i, sv, si);
    if (threadIdx.x == 0) {
      out_idx[r] = i;
      out_val[r] = v;
      if (i >= 0) taken[i] = 1;
    }
    __syncthreads();
  }
}

// ids[c * per + j] = token_ordering[clusters[c] * per + j]: the token ids of the chosen clusters
// (token_ordering viewed as [n_centroids, per]). grid-stride over k * per.
extern "C" __global__ void __launch_bounds__(1024)
gather_cluster_ids(const int* __restrict__ clusters, const int* __restrict__ token_ordering, int per, int k,
                   int* __restrict__ ids) {
  for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < k * per; t += gridDim.x * blockDim.x)
    ids[t] = token_ordering[(long long)clusters[t / per] * per + t % per];
}

// out[0..n) = value (grid-stride), then scatter_f32 writes out[ids[i]] = vals[i].
// Napkin: a full -1e30 row of 262144 floats is 1 MiB written (~0.3 us) — only when a full row
// is wanted (sampling); greedy takes argmax_final with ids instead.
extern "C" __global__ void __launch_bounds__(1024) fill_f32(float* __restrict__ out, int n, float value) {
  for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x) out[t] = value;
}

extern "C" __global__ void __launch_bounds__(1024)
scatter_f32(const int* __restrict__ ids, const float* __restrict__ vals, int m, float* __restrict__ out) {
  for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < m; t += gridDim.x * blockDim.x) out[ids[t]] = vals[t];
}
