// attn.cu — decode attention over a quantized KV cache, split over the sequence (flash-decoding)
// with a reduce kernel. head_dim 256 (Gemma 3 / the MTP head); up to 4 Q heads per KV head.
#include "common.cuh"
#include "kvtypes.cuh"

#define ATT_D 256
#define ATT_GMAX 4
#define ATT_WARPS 4

// q: [T, n_kv_heads * G, 256] f32, un-rotated (and already divided by the K equalization
// scales, if any); kc / vc: caches [n_ctx, n_kv_heads, row_bytes]. Query t (blockIdx.z) attends
// cells [start_t, kv_end + t) with start_t = kv_start, or max(kv_start, kv_end + t - window) when
// window > 0 (causal prefill of T tokens whose K/V are already appended; decode is T = 1).
// Split s covers cells [kv_start + s * chunk, kv_start + (s + 1) * chunk) of every query.
// For turbo K, Q is rotated in shared memory first (<Rq, Rk> = <q, k>); V stays in its domain
// (turbo V: the output is rotated back by attn_reduce).
// Out: o_part [n_split, T, n_q_heads, 256] un-normalised sums, ml_part [n_split, T, n_q_heads, 2]
// (running max, sum of exp) per split.
// end_dev: null, or a device int whose value replaces kv_end; then kv_start (moved up by the window)
// and chunk are derived here from it and gridDim.x = n_split (a CUDA graph of the decode step reads
// the position from memory; splits past the end write empty partials).
// grid = (n_split, n_kv_heads, T), block = 128 (4 warps; a warp owns one cell at a time, a lane
// 8 of the 256 dims, all G Q heads at once so each K/V row is read once per query).
// Napkin per layer and token of context: K + V row bytes (f16 1024, q8_0 544, q4_0 288,
// turbo4 272, turbo3 200, turbo2 136) and 4 x 2 x 2 x 256 = 4 kFLOP: decode is bandwidth-bound;
// a 32k turbo3 context is 6.4 MB per layer = ~1.3 us at 4.8 TB/s if the splits fill the GPU.
// Prefill of T tokens re-reads the (L2-resident) rows per query: T^2/2 x 4 kFLOP on CUDA cores
// (512 tokens: ~0.5 GFLOP per layer) — a tensor-core tile kernel is the upgrade path.
extern "C" __global__ void __launch_bounds__(128)
attn_decode(const float* __restrict__ q, const u8* __restrict__ kc, const u8* __restrict__ vc,
            float* __restrict__ o_part, float* __restrict__ ml_part, int ktype, int vtype, int n_kv_heads,
            int G, int kv_start, int kv_end, int chunk, float scale, int window, const int* __restrict__ end_dev) {
  __shared__ float sq[ATT_GMAX * ATT_D];
  __shared__ float sacc[ATT_WARPS][ATT_GMAX][ATT_D];
  __shared__ float sml[ATT_WARPS][ATT_GMAX][2];
  __shared__ float sbook[2][16];  // K and V codebooks (turbo types)
  const int split = blockIdx.x, hk = blockIdx.y, qt = blockIdx.z, nqt = gridDim.z;
  if (end_dev != nullptr) {
    kv_end = end_dev[0];
    if (window > 0) kv_start = max(kv_start, kv_end - window);
    chunk = max(1, (kv_end + nqt - 1 - kv_start + (int)gridDim.x - 1) / (int)gridDim.x);
  }
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int nq = n_kv_heads * G;
  const int q_end = kv_end + qt;
  const int q_start = window > 0 ? max(kv_start, q_end - window) : kv_start;
  for (int i = tid; i < G * ATT_D; i += blockDim.x) sq[i] = q[((long long)qt * nq + hk * G) * ATT_D + i];
  if (tid < 16) {
    sbook[0][tid] = kv_is_turbo(ktype) && tid < tb_levels(ktype) ? tb_book(ktype)[tid] : 0.0f;
    sbook[1][tid] = kv_is_turbo(vtype) && tid < tb_levels(vtype) ? tb_book(vtype)[tid] : 0.0f;
  }
  __syncthreads();
  if (kv_is_turbo(ktype)) tb_rotate_shared(sq, G * (ATT_D / 128), false);

  // Q stays in shared memory (pre-scaled): registers go to the accumulators and loads in flight
  for (int i = tid; i < G * ATT_D; i += blockDim.x) sq[i] *= scale;
  for (int i = G * ATT_D + tid; i < ATT_GMAX * ATT_D; i += blockDim.x) sq[i] = 0.0f;
  __syncthreads();
  float acc[ATT_GMAX][8], m[ATT_GMAX], l[ATT_GMAX];
#pragma unroll
  for (int g = 0; g < ATT_GMAX; ++g) {
    m[g] = TS_NEG_BIG;
    l[g] = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[g][k] = 0.0f;
  }
  const float* qlane = sq + lane * 8;
  const long long krb = kv_row_bytes(ktype, ATT_D), vrb = kv_row_bytes(vtype, ATT_D);
  const int t0 = max(kv_start + split * chunk, q_start);
  const int t1 = min(kv_start + (split + 1) * chunk, q_end);
  // Two cells per warp and iteration (t and t + 4): twice the K/V loads in flight per warp.
  // A missing second cell re-reads the first (cached) and gets a score of -1e30 (weight 0).
  for (int t = t0 + warp; t < t1; t += 2 * ATT_WARPS) {
    const bool has_b = t + ATT_WARPS < t1;  // uniform over the warp
    const long long ca = (long long)t * n_kv_heads + hk;
    const long long cb = has_b ? ca + (long long)ATT_WARPS * n_kv_heads : ca;
    float xa[8], xb[8], sa[ATT_GMAX], sb[ATT_GMAX];
    kv_load8(ktype, kc + ca * krb, lane, sbook[0], xa);
    kv_load8(ktype, kc + cb * krb, lane, sbook[0], xb);
#pragma unroll
    for (int g = 0; g < ATT_GMAX; ++g) {
      float pa = 0.0f, pb = 0.0f;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        pa += qlane[g * ATT_D + k] * xa[k];
        pb += qlane[g * ATT_D + k] * xb[k];
      }
      sa[g] = warp_sum(pa);
      sb[g] = has_b ? warp_sum(pb) : TS_NEG_BIG;
    }
    kv_load8(vtype, vc + ca * vrb, lane, sbook[1], xa);
    kv_load8(vtype, vc + cb * vrb, lane, sbook[1], xb);
#pragma unroll
    for (int g = 0; g < ATT_GMAX; ++g) {
      const float mn = fmaxf(m[g], fmaxf(sa[g], sb[g]));
      const float corr = __expf(m[g] - mn), pa = __expf(sa[g] - mn), pb = __expf(sb[g] - mn);
      l[g] = l[g] * corr + pa + pb;
#pragma unroll
      for (int k = 0; k < 8; ++k) acc[g][k] = acc[g][k] * corr + pa * xa[k] + pb * xb[k];
      m[g] = mn;
    }
  }
#pragma unroll
  for (int g = 0; g < ATT_GMAX; ++g) {
#pragma unroll
    for (int k = 0; k < 8; ++k) sacc[warp][g][lane * 8 + k] = acc[g][k];
    if (lane == 0) {
      sml[warp][g][0] = m[g];
      sml[warp][g][1] = l[g];
    }
  }
  __syncthreads();
  for (int i = tid; i < G * ATT_D; i += blockDim.x) {
    const int g = i / ATT_D, d = i % ATT_D;
    float M = TS_NEG_BIG;
    for (int w = 0; w < ATT_WARPS; ++w) M = fmaxf(M, sml[w][g][0]);
    float L = 0.0f, O = 0.0f;
    for (int w = 0; w < ATT_WARPS; ++w) {
      const float e = __expf(sml[w][g][0] - M);
      L += sml[w][g][1] * e;
      O += sacc[w][g][d] * e;
    }
    const long long hq = ((long long)split * nqt + qt) * nq + hk * G + g;
    o_part[hq * ATT_D + d] = O;
    if (d == 0) {
      ml_part[hq * 2] = M;
      ml_part[hq * 2 + 1] = L;
    }
  }
}

// out[t, h] = sum_s o_s * e^(m_s - M) / sum_s l_s * e^(m_s - M); rotated back for turbo V.
// n_q_heads here counts T x heads (rows of o_part per split). grid = T * n_q_heads, block = 256.
// Napkin: n_split x n_q_heads x 1 KiB read — small next to the cache unless n_split is huge.
extern "C" __global__ void __launch_bounds__(256)
attn_reduce(const float* __restrict__ o_part, const float* __restrict__ ml_part, float* __restrict__ out,
            int n_split, int n_q_heads, int vtype) {
  __shared__ float so[ATT_D];
  const int h = blockIdx.x, d = threadIdx.x;
  float M = TS_NEG_BIG;
  for (int s = 0; s < n_split; ++s) M = fmaxf(M, ml_part[((long long)s * n_q_heads + h) * 2]);
  float L = 0.0f, O = 0.0f;
  for (int s = 0; s < n_split; ++s) {
    const long long hq = (long long)s * n_q_heads + h;
    const float e = __expf(ml_part[hq * 2] - M);
    L += ml_part[hq * 2 + 1] * e;
    O += o_part[hq * ATT_D + d] * e;
  }
  so[d] = L > 0.0f ? O / L : 0.0f;
  __syncthreads();
  if (kv_is_turbo(vtype)) tb_rotate_shared(so, ATT_D / 128, true);
  out[(long long)h * ATT_D + d] = so[d];
}
