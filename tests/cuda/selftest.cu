// Kernels that exercise the host harness itself (tests/cuda/test_harness.py). Also compiled by
// nvcc/NVRTC in test_compile.py, so they stay valid CUDA.
#include "../../cuda/common.cuh"

// out[i] = value written by thread (i + 1) % n before the barrier: wrong without a real barrier.
extern "C" __global__ void barrier_rotate(int* out) {
  __shared__ int sm[1024];
  const int n = blockDim.x * blockDim.y * blockDim.z;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  sm[t] = 1000 * (int)blockIdx.x + 2 * t;
  __syncthreads();
  const int v = sm[(t + 1) % n];
  __syncthreads();  // everyone read before anyone overwrites
  sm[t] = -1;
  out[blockIdx.x * n + t] = v;
}

// per lane: shfl(src = 31 - lane), xor 5, down 3 (width 16), up 2, ballot(lane odd), any, all
extern "C" __global__ void warp_ops(const float* x, float* out, unsigned* votes) {
  const int t = threadIdx.x, lane = t & 31;
  const float v = x[t];
  out[t * 4 + 0] = __shfl_sync(TS_FULL_MASK, v, 31 - lane);
  out[t * 4 + 1] = __shfl_xor_sync(TS_FULL_MASK, v, 5);
  out[t * 4 + 2] = __shfl_down_sync(TS_FULL_MASK, v, 3, 16);
  out[t * 4 + 3] = __shfl_up_sync(TS_FULL_MASK, v, 2);
  const unsigned b = __ballot_sync(TS_FULL_MASK, lane & 1);
  const int an = __any_sync(TS_FULL_MASK, v > 100.0f);
  const int al = __all_sync(TS_FULL_MASK, v > -100.0f);
  if (lane == 0) {
    votes[(t >> 5) * 3 + 0] = b;
    votes[(t >> 5) * 3 + 1] = (unsigned)an;
    votes[(t >> 5) * 3 + 2] = (unsigned)al;
  }
}

// half the warp shuffles among itself with a partial mask; block sum through warp_sum/block_sum
extern "C" __global__ void partial_mask_and_sum(const float* x, float* out) {
  __shared__ float scratch[32];
  const int t = threadIdx.x, lane = t & 31;
  float v = x[blockIdx.x * blockDim.x + t];
  if (lane < 16) out[blockIdx.x * blockDim.x + t] = __shfl_xor_sync(0x0000ffffu, v, 1);
  else out[blockIdx.x * blockDim.x + t] = v;
  const float s = block_sum(v, scratch);
  if (t == 0) out[gridDim.x * blockDim.x + blockIdx.x] = s;
}

extern "C" __global__ void atomics(int* counter, float* fsum, int* imax) {
  atomicAdd(counter, 1);
  atomicAdd(fsum, 0.5f);
  atomicMax(imax, (int)(blockIdx.x * blockDim.x + threadIdx.x));
}

// reverse through dynamic shared memory
extern "C" __global__ void dyn_reverse(const float* x, float* out) {
  TS_DYN_SMEM(float, sm);
  const int n = blockDim.x, t = threadIdx.x;
  sm[t] = x[blockIdx.x * n + t];
  __syncthreads();
  out[blockIdx.x * n + t] = sm[n - 1 - t];
}

// half of each warp waits at __syncthreads, the other half at a full-warp __syncwarp: a
// deadlock the harness must report (a real GPU hangs or is undefined here)
extern "C" __global__ void divergent_barrier(int* out) {
  if ((threadIdx.x & 31) < 16) __syncthreads();
  else __syncwarp();
  out[threadIdx.x] = 1;
}

// writes one element past the end
extern "C" __global__ void oob_write(float* out, int n) {
  if (threadIdx.x == 0) out[n] = 1.0f;
}

extern "C" __global__ void half_roundtrip(const float* x, u16* h, float* back, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    h[i] = f2h(x[i]);
    back[i] = h2f(h[i]);
  }
}

// a 16-bit load at an odd address: the GPU faults, the harness must say so
extern "C" __global__ void misaligned_load(const u8* p, float* out) {
  if (threadIdx.x == 0) out[0] = ld_h(p + 1);
}

// reads a neighbour's shared value without a barrier: wrong in at least one thread order
extern "C" __global__ void missing_barrier(int* out) {
  __shared__ int sm[64];
  const int t = threadIdx.x;
  sm[t] = t + 1;
  out[t] = sm[(t + 32) % 64];  // no __syncthreads between the write and the read
  __syncthreads();
  sm[t] = 0;
}
