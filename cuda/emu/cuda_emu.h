// cuda_emu.h — compile turbospec's .cu kernels as plain C++ (g++) and run them on the CPU.
//
// Included (with -include) before a .cu file when the harness builds it; defines TS_EMU.
// Model: blocks run one after another; inside a block every CUDA thread is a fiber with its own
// stack, scheduled cooperatively on one OS thread. __syncthreads() and the warp primitives are
// real barriers: a fiber parks and the scheduler resumes it only when every live thread of the
// block (or every live lane named in the warp mask) has arrived. A barrier that can never open
// (divergent __syncthreads, shuffle mask naming a lane that waits elsewhere) is reported as a
// deadlock instead of hanging. Exited threads count as arrived at __syncthreads (as on sm_70+).
// Between barriers threads run forward in one pass and backward in the next, so missing
// barriers show up as wrong results instead of passing by luck.
//
// Supported: threadIdx/blockIdx/blockDim/gridDim/warpSize, __global__/__device__/__host__/
// __forceinline__/__launch_bounds__/__restrict__, static __shared__ and dynamic shared memory
// (through TS_DYN_SMEM in common.cuh), __constant__, __syncthreads, __syncwarp,
// __shfl_sync/__shfl_xor_sync/__shfl_up_sync/__shfl_down_sync (width too), __ballot_sync/
// __any_sync/__all_sync, atomicAdd/atomicMax/atomicMin/atomicExch/atomicCAS (fibers never
// preempt each other, so plain read-modify-write is atomic), __half with __half2float/
// __float2half (round to nearest even)/__half_as_ushort/__ushort_as_half, the float intrinsics
// listed below, __popc/__clz/__ffs, __int_as_float and friends, min/max.
// Limits: at most 1024 threads per block, 64 KiB of stack per thread (keep local arrays small),
// one launch at a time per process (the launcher holds a mutex), no streams/graphs/cooperative
// groups/tensor cores/inline PTX (common.cuh keeps PTX under #ifndef TS_EMU).
#pragma once
#define TS_EMU 1

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#include <sys/mman.h>

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static
#define __constant__ static
#define __launch_bounds__(...)
#ifndef __restrict__
#define __restrict__ __restrict
#endif

namespace ts_emu {

enum State : int { RUN = 0, WAIT_BLOCK = 1, WAIT_WARP = 2, DONE = 3 };
constexpr int kMaxThreads = 1024;
constexpr size_t kStack = 64 * 1024;

struct Fiber {
  void* sp = nullptr;
  int state = RUN;
  unsigned mask = 0;  // for WAIT_WARP
  uint3 tid{0, 0, 0};
  unsigned lin = 0;
#if !defined(__x86_64__)
  ucontext_t uc;
#endif
};

struct Ctx {
  uint3 grid{1, 1, 1}, block{1, 1, 1}, bid{0, 0, 0};
  int nthreads = 0;
  Fiber* cur = nullptr;
  std::vector<Fiber> fibers;
  unsigned char* stacks = nullptr;
  size_t stacks_bytes = 0;
  void* sched_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t sched_uc;
#endif
  const std::function<void()>* body = nullptr;
  unsigned char* dyn_smem = nullptr;
  uint64_t xbuf[kMaxThreads / 32][32];
  const char* error = nullptr;
  char errmsg[256];
};

inline thread_local Ctx* g = nullptr;
inline std::mutex g_launch_mutex;

}  // namespace ts_emu

#define threadIdx (ts_emu::g->cur->tid)
#define blockIdx (ts_emu::g->bid)
#define blockDim (ts_emu::g->block)
#define gridDim (ts_emu::g->grid)
#define warpSize 32

// ---------------------------------------------------------------- context switch
#if defined(__x86_64__)
extern "C" void ts_emu_ctx_switch(void** save_sp, void* new_sp);
__asm__(
    ".text\n"
    ".globl ts_emu_ctx_switch\n"
    ".hidden ts_emu_ctx_switch\n"
    ".type ts_emu_ctx_switch,@function\n"
    "ts_emu_ctx_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size ts_emu_ctx_switch, .-ts_emu_ctx_switch\n");
#endif

namespace ts_emu {

[[noreturn]] inline void fiber_entry();

inline void to_scheduler(Fiber* f) {
#if defined(__x86_64__)
  ts_emu_ctx_switch(&f->sp, g->sched_sp);
#else
  swapcontext(&f->uc, &g->sched_uc);
#endif
}

inline void resume(Fiber* f) {
  g->cur = f;
#if defined(__x86_64__)
  ts_emu_ctx_switch(&g->sched_sp, f->sp);
#else
  swapcontext(&g->sched_uc, &f->uc);
#endif
}

[[noreturn]] inline void fiber_entry() {
  (*g->body)();
  Fiber* f = g->cur;
  f->state = DONE;
  to_scheduler(f);
  std::abort();  // never resumed
}

#if !defined(__x86_64__)
inline void fiber_entry_c() { fiber_entry(); }
#endif

inline void prepare(Fiber& f, unsigned char* stack) {
  f.state = RUN;
#if defined(__x86_64__)
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + kStack) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                              // fake return address of fiber_entry
  *--sp = reinterpret_cast<uint64_t>(&fiber_entry);       // ret target
  for (int i = 0; i < 6; ++i) *--sp = 0;                   // rbp rbx r12..r15
  uint32_t csr[2];
  __asm__ volatile("stmxcsr %0" : "=m"(csr[0]));
  __asm__ volatile("fnstcw %0" : "=m"(csr[1]));
  --sp;
  std::memcpy(sp, csr, 8);
  f.sp = sp;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = stack;
  f.uc.uc_stack.ss_size = kStack;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, fiber_entry_c, 0);
#endif
}

inline void fail(const char* msg) {
  if (!g->error) {
    std::snprintf(g->errmsg, sizeof g->errmsg, "%s (block %u,%u,%u thread %u,%u,%u)", msg, g->bid.x,
                  g->bid.y, g->bid.z, g->cur ? g->cur->tid.x : 0, g->cur ? g->cur->tid.y : 0,
                  g->cur ? g->cur->tid.z : 0);
    g->error = g->errmsg;
  }
}

// Park the current fiber until the scheduler releases it.
inline void park(int state, unsigned mask = 0) {
  Fiber* f = g->cur;
  f->state = state;
  f->mask = mask;
  to_scheduler(f);
}

inline unsigned lane_id() { return g->cur->lin & 31u; }
inline unsigned warp_id() { return g->cur->lin >> 5; }

// Scheduler for one block. Returns false on error (message in g->error).
inline bool run_block() {
  const int n = g->nthreads;
  for (int i = 0; i < n; ++i) prepare(g->fibers[i], g->stacks + size_t(i) * kStack);
  for (unsigned pass = 0;; ++pass) {
    // Alternate the order in which threads run between barriers (forward, backward): a kernel
    // that misses a barrier then sees its racing reads come out wrong in one of the two orders.
    const bool rev = (pass + g->bid.x + g->bid.y) & 1u;
    for (int k = 0; k < n; ++k) {
      Fiber* f = &g->fibers[rev ? n - 1 - k : k];
      if (f->state == RUN) resume(f);
      if (g->error) return false;
    }
    bool all_done = true, released = false;
    for (int i = 0; i < n; ++i) all_done &= g->fibers[i].state == DONE;
    if (all_done) return true;
    // warp barriers: release a waiting group when every live lane in its mask waits with it
    const int nwarps = (n + 31) / 32;
    for (int w = 0; w < nwarps; ++w) {
      for (int l = 0; l < 32 && w * 32 + l < n; ++l) {
        Fiber& f = g->fibers[w * 32 + l];
        if (f.state != WAIT_WARP) continue;
        const unsigned m = f.mask;
        bool ok = true;
        for (int k = 0; k < 32 && w * 32 + k < n && ok; ++k) {
          if (!(m >> k & 1u)) continue;
          const Fiber& o = g->fibers[w * 32 + k];
          if (o.state == DONE) continue;
          ok = o.state == WAIT_WARP && o.mask == m;
        }
        if (!ok) continue;
        for (int k = 0; k < 32 && w * 32 + k < n; ++k) {
          Fiber& o = g->fibers[w * 32 + k];
          if ((m >> k & 1u) && o.state == WAIT_WARP) o.state = RUN;
        }
        released = true;
      }
    }
    if (!released) {
      bool all_block = true, any_block = false;
      for (int i = 0; i < n; ++i) {
        const int s = g->fibers[i].state;
        all_block &= (s == WAIT_BLOCK || s == DONE);
        any_block |= s == WAIT_BLOCK;
      }
      if (all_block && any_block) {
        for (int i = 0; i < n; ++i)
          if (g->fibers[i].state == WAIT_BLOCK) g->fibers[i].state = RUN;
        released = true;
      }
    }
    if (!released) {
      g->cur = nullptr;
      std::snprintf(g->errmsg, sizeof g->errmsg,
                    "deadlock: threads wait at different barriers (divergent __syncthreads or a "
                    "warp mask naming a lane that waits elsewhere) in block %u,%u,%u",
                    g->bid.x, g->bid.y, g->bid.z);
      g->error = g->errmsg;
      return false;
    }
  }
}

// Run a whole grid. dims = {gx, gy, gz, bx, by, bz}.
inline int run_grid(const unsigned* dims, unsigned smem, const std::function<void()>& body,
                    char* err, int errlen) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  auto report = [&](const char* m) {
    if (err && errlen > 0) std::snprintf(err, size_t(errlen), "%s", m);
    return 1;
  };
  const unsigned long long nt = 1ull * dims[3] * dims[4] * dims[5];
  if (nt == 0 || nt > unsigned(kMaxThreads)) return report("threads per block must be 1..1024");
  if (dims[0] == 0 || dims[1] == 0 || dims[2] == 0) return report("grid dimension is zero");
  if (smem > 228u * 1024u) return report("dynamic shared memory above 228 KiB");
  Ctx* c = new Ctx();
  c->grid = {dims[0], dims[1], dims[2]};
  c->block = {dims[3], dims[4], dims[5]};
  c->nthreads = int(nt);
  c->fibers.resize(nt);
  c->stacks_bytes = size_t(nt) * kStack;
  void* st = mmap(nullptr, c->stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (st == MAP_FAILED) {
    delete c;
    return report("mmap of fiber stacks failed");
  }
  c->stacks = static_cast<unsigned char*>(st);
  std::vector<unsigned char> dyn(size_t(smem) + 16);
  c->dyn_smem = dyn.data();
  for (unsigned i = 0; i < nt; ++i) {
    Fiber& f = c->fibers[i];
    f.lin = i;
    f.tid = {i % dims[3], (i / dims[3]) % dims[4], i / (dims[3] * dims[4])};
  }
  c->body = &body;
  Ctx* saved = g;
  g = c;
  int rc = 0;
  for (unsigned bz = 0; bz < dims[2] && !rc; ++bz)
    for (unsigned by = 0; by < dims[1] && !rc; ++by)
      for (unsigned bx = 0; bx < dims[0] && !rc; ++bx) {
        c->bid = {bx, by, bz};
        std::memset(c->dyn_smem, 0xFF, dyn.size());  // poison: NaN floats, -1 ints
        if (!run_block()) rc = report(c->error ? c->error : "unknown harness error");
      }
  g = saved;
  munmap(c->stacks, c->stacks_bytes);
  delete c;
  return rc;
}

inline unsigned char* dyn_smem() { return g->dyn_smem; }

// ---------------------------------------------------------------- launch glue
template <class T>
struct ArgCode;
template <class T>
struct ArgCode<T*> { static constexpr char c = 'p'; };
template <>
struct ArgCode<int> { static constexpr char c = 'i'; };
template <>
struct ArgCode<unsigned> { static constexpr char c = 'u'; };
template <>
struct ArgCode<float> { static constexpr char c = 'f'; };
template <>
struct ArgCode<long long> { static constexpr char c = 'q'; };
template <>
struct ArgCode<long> { static constexpr char c = 'q'; };

template <class... A>
const char* signature(void (*)(A...)) {
  static const char s[] = {ArgCode<std::remove_cv_t<A>>::c..., '\0'};
  return s;
}

template <class... A, size_t... I>
void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
  k(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <class... A>
int launch(void (*k)(A...), const unsigned* dims, unsigned smem, void** args, char* err, int errlen) {
  std::function<void()> body = [&] { call_with(k, args, std::index_sequence_for<A...>{}); };
  return run_grid(dims, smem, body, err, errlen);
}

// ---------------------------------------------------------------- warp exchange
template <class T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Every lane in mask publishes v, then reads lane src (its own value when src is out of range).
template <class T>
inline T exchange(unsigned mask, T v, int src_lane) {
  const unsigned lane = lane_id(), w = warp_id();
  if (!(mask >> lane & 1u)) {
    fail("warp primitive called by a lane outside its mask");
    park(WAIT_WARP, mask);
  }
  g->xbuf[w][lane] = to_bits(v);
  park(WAIT_WARP, mask);
  T r = v;
  if (src_lane >= 0 && src_lane < 32 && (mask >> src_lane & 1u) &&
      int(w * 32 + unsigned(src_lane)) < g->nthreads)
    r = from_bits<T>(g->xbuf[w][src_lane]);
  park(WAIT_WARP, mask);
  return r;
}

inline unsigned vote(unsigned mask, int pred) {
  const unsigned lane = lane_id(), w = warp_id();
  g->xbuf[w][lane] = pred ? 1u : 0u;
  park(WAIT_WARP, mask);
  unsigned b = 0;
  for (int k = 0; k < 32; ++k)
    if ((mask >> k & 1u) && int(w * 32 + unsigned(k)) < g->nthreads && g->fibers[w * 32 + k].state != DONE &&
        g->xbuf[w][k])
      b |= 1u << k;
  park(WAIT_WARP, mask);
  return b;
}

}  // namespace ts_emu

// ---------------------------------------------------------------- CUDA API surface
inline void __syncthreads() { ts_emu::park(ts_emu::WAIT_BLOCK); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ts_emu::park(ts_emu::WAIT_WARP, mask); }
inline int __syncthreads_or(int p) {
  // not used by kernels yet; kept minimal
  (void)p;
  ts_emu::fail("__syncthreads_or is not supported by the harness");
  return 0;
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = int(ts_emu::lane_id());
  const int base = lane & ~(width - 1);
  return ts_emu::exchange(mask, v, base + (src & (width - 1)));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lm, int width = 32) {
  const int lane = int(ts_emu::lane_id());
  int s = lane ^ lm;
  if ((s & ~(width - 1)) != (lane & ~(width - 1))) s = lane;
  return ts_emu::exchange(mask, v, s);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
  const int lane = int(ts_emu::lane_id());
  int s = lane + int(d);
  if ((s & ~(width - 1)) != (lane & ~(width - 1))) s = lane;
  return ts_emu::exchange(mask, v, s);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
  const int lane = int(ts_emu::lane_id());
  int s = lane - int(d);
  if (s < (lane & ~(width - 1))) s = lane;
  return ts_emu::exchange(mask, v, s);
}
inline unsigned __ballot_sync(unsigned mask, int p) { return ts_emu::vote(mask, p); }
inline int __any_sync(unsigned mask, int p) { return ts_emu::vote(mask, p) != 0; }
inline int __all_sync(unsigned mask, int p) {
  // lanes of the mask that have exited do not vote
  unsigned live = 0;
  const unsigned w = ts_emu::warp_id();
  for (int k = 0; k < 32; ++k)
    if ((mask >> k & 1u) && int(w * 32 + unsigned(k)) < ts_emu::g->nthreads &&
        ts_emu::g->fibers[w * 32 + k].state != ts_emu::DONE)
      live |= 1u << k;
  return ts_emu::vote(mask, p) == live;
}

// atomics: fibers never preempt each other, so a plain read-modify-write is atomic.
template <class T>
inline T atomicAdd(T* a, T v) { T o = *a; *a = o + v; return o; }
template <class T>
inline T atomicMax(T* a, T v) { T o = *a; *a = o > v ? o : v; return o; }
template <class T>
inline T atomicMin(T* a, T v) { T o = *a; *a = o < v ? o : v; return o; }
template <class T>
inline T atomicExch(T* a, T v) { T o = *a; *a = v; return o; }
template <class T>
inline T atomicCAS(T* a, T cmp, T v) { T o = *a; if (o == cmp) *a = v; return o; }

// half
struct __half { unsigned short x; };
inline unsigned short ts_emu_f2h_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);
  if (ax < 0x38800000u) {  // half subnormal or zero: round(|f| * 2^24) to nearest even
    float v;
    std::memcpy(&v, &ax, 4);
    return (unsigned short)(sign | uint32_t(std::nearbyint(double(v) * 16777216.0)));
  }
  uint32_t r = ax - 0x38000000u;
  r += 0xfffu + ((r >> 13) & 1u);
  return (unsigned short)(sign | (r >> 13));
}
inline float ts_emu_h2f_bits(unsigned short h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t x;
  if (e == 0) {
    float v = float(m) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (e == 31) x = sign | 0x7f800000u | (m << 13);
  else x = sign | ((e + 112u) << 23) | (m << 13);
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline float __half2float(__half h) { return ts_emu_h2f_bits(h.x); }
inline __half __float2half(float f) { return __half{ts_emu_f2h_bits(f)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }

// float intrinsics
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline int __float2int_rn(float f) { return int(std::nearbyint(f)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
using std::max;
using std::min;
inline float max(float a, int b) { return a > float(b) ? a : float(b); }
inline int max(int a, unsigned b) { return a > int(b) ? a : int(b); }

#define TS_EMU_EXPORT(kernel)                                                                     \
  extern "C" __attribute__((visibility("default"))) int ts_launch_##kernel(                        \
      const unsigned* dims, unsigned smem, void** args, char* err, int errlen) {                   \
    return ts_emu::launch(&kernel, dims, smem, args, err, errlen);                                 \
  }                                                                                                \
  extern "C" __attribute__((visibility("default"))) const char* ts_sig_##kernel() {               \
    return ts_emu::signature(&kernel);                                                             \
  }
