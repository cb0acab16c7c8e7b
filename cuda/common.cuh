// common.cuh — types, f16 conversion, reductions shared by every turbospec kernel.
//
// The same sources compile three ways: nvcc, NVRTC (through CuPy RawModule; no standard headers,
// so nothing here includes one), and g++ through the host harness (cuda/emu/cuda_emu.h, which
// defines TS_EMU). Half precision is kept as raw u16 bits and converted with one PTX cvt, so the
// kernels need neither cuda_fp16.h nor a CUDA include path at run time.
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define TS_NEG_BIG (-1.0e30f)
#define TS_FULL_MASK 0xffffffffu

#ifdef TS_EMU
__device__ __forceinline__ float h2f(u16 h) { return ts_emu_h2f_bits(h); }
__device__ __forceinline__ u16 f2h(float f) { return ts_emu_f2h_bits(f); }
#define TS_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(ts_emu::dyn_smem())
#else
__device__ __forceinline__ float h2f(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ u16 f2h(float f) {  // round to nearest even
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#define TS_DYN_SMEM(T, name)                                        \
  extern __shared__ __align__(16) unsigned char ts_dyn_smem_raw[]; \
  T* name = reinterpret_cast<T*>(ts_dyn_smem_raw)
#endif

// 16-bit loads/stores at byte addresses that must be 2-byte aligned (the GPU faults otherwise;
// the harness checks it, since x86 would not).
__device__ __forceinline__ u16 ld_u16(const u8* p) {
#ifdef TS_EMU
  if (reinterpret_cast<unsigned long long>(p) & 1ull) ts_emu::fail("misaligned 16-bit load");
#endif
  return *reinterpret_cast<const u16*>(p);
}
__device__ __forceinline__ void st_u16(u8* p, u16 v) {
#ifdef TS_EMU
  if (reinterpret_cast<unsigned long long>(p) & 1ull) ts_emu::fail("misaligned 16-bit store");
#endif
  *reinterpret_cast<u16*>(p) = v;
}
// f16 stored at a 2-byte aligned byte address
__device__ __forceinline__ float ld_h(const u8* p) { return h2f(ld_u16(p)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(TS_FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(TS_FULL_MASK, v, o));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `scratch` holds 32 floats of shared memory; the call ends with a barrier so it can be reused.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[w] = v;
  __syncthreads();
  float t = lane < nw ? scratch[lane] : 0.0f;
  t = warp_sum(t);
  __syncthreads();
  return t;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) scratch[w] = v;
  __syncthreads();
  float t = lane < nw ? scratch[lane] : TS_NEG_BIG;
  t = warp_max(t);
  __syncthreads();
  return t;
}
