// norm.cu — RMSNorm (rows or per-head Q/K norm) and the residual add fused with the post-norm.
#include "common.cuh"

// rmsnorm: out[r, :] = x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * w[:]
// grid = n_rows, block = 32..1024 (multiple of 32; 256 is the default). In-place allowed.
// Per-head Q/K norm: rows = tokens * heads, n = head_dim, w of length head_dim.
// Napkin (decode, n_embd 640): reads 640*4*2 B, writes 640*4 B, ~4 FLOP/elem — launch-bound;
// for Q norm 4 rows of 256. Pays only as part of a fused step (CUDA graph).
extern "C" __global__ void __launch_bounds__(1024)
rmsnorm(const float* __restrict__ x, const float* __restrict__ w, float* out, int n, float eps) {
  __shared__ float scratch[32];
  const long long row = blockIdx.x;
  const float* xr = x + row * n;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, scratch);
  const float inv = rsqrtf(ss / (float)n + eps);
  float* orow = out + row * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) orow[i] = xr[i] * inv * w[i];
}

// add_rmsnorm: x[r] += rmsnorm(y[r]) * w_post  (the Gemma post-attention / post-FFN norm)
// and, when w_next is not null, h[r] = rmsnorm(x[r]) * w_next (the next pre-norm), in one pass.
// grid = n_rows, block = 32..1024. y and h may alias.
// Napkin (n_embd 640): reads x, y, 2 weights (10 KiB), writes x, h (5 KiB); replaces 3 launches.
extern "C" __global__ void __launch_bounds__(1024)
add_rmsnorm(float* x, const float* y, const float* __restrict__ w_post,
            const float* __restrict__ w_next, float* h, int n, float eps) {
  __shared__ float scratch[32];
  const long long row = blockIdx.x;
  float* xr = x + row * n;
  const float* yr = y + row * n;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += yr[i] * yr[i];
  ss = block_sum(ss, scratch);
  const float inv = rsqrtf(ss / (float)n + eps);
  float ss2 = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = xr[i] + yr[i] * inv * w_post[i];
    xr[i] = v;
    ss2 += v * v;
  }
  if (w_next == nullptr) return;  // uniform over the block: no barrier below is skipped by a part
  ss2 = block_sum(ss2, scratch);
  const float inv2 = rsqrtf(ss2 / (float)n + eps);
  float* hr = h + row * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) hr[i] = xr[i] * inv2 * w_next[i];
}
