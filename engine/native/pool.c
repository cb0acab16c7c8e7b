/* pool.c — the row-parallel products' thread pool, in C: one ctypes call runs a whole product
 * with its rows split over n threads (the caller included).
 *
 * Why: the Python crew (engine/linear.py _Crew) hands a range to a helper through two locks and
 * the GIL, ~16-50 µs a split, so only products of >= 2M weights were split and the default
 * model's q+k+v, attn_output and ffn_down (0.66-1.3M weights, 50-80 µs each) streamed their
 * weights with one core. One core reads ~13 GB/s from DRAM here, two ~22-32 GB/s. Here a split
 * costs a store, an atomic increment and a spin: ~1 µs while the helpers are awake.
 *
 * Helpers spin on a generation counter for up to SPIN_NS after their last job (a decode step
 * issues a product every ~20-300 µs, so they stay awake through a forward), then sleep on a
 * condition variable; the caller wakes sleepers with a broadcast. Sequentially consistent
 * atomics: a helper announces it sleeps (sleeping++) before it rechecks the generation, the
 * caller bumps the generation before it reads sleeping, so one of them sees the other (no lost
 * wake-up); the check and the wait happen under the mutex the broadcast takes.
 *
 * Results do not depend on the split: every kernel computes each output row on its own, in a
 * fixed order (rowint16.c, q8act.c). A second thread that calls while the pool is busy (the
 * drafter beside the target) runs its product alone in its own thread, as the Python crew did.
 * After a fork the child starts a fresh pool (the helpers do not survive a fork).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define MAX_THREADS 64
#define SPIN_NS 200000L /* a helper spins this long after a job before it sleeps */
#define ALIGN 16        /* row ranges start at multiples of 16 (as linear.SPLIT_ALIGN) */

int ts_rowint16_matmul(const int16_t* q, const float* s, long K_, const float* x, long T_, float* out, long ldo_,
                       long r0, long r1);
int ts_blockint8_matmul(const int8_t* q, const float* d, const float* m, long G, long K_, const float* x, long T_,
                        float* out, long ldo_, long r0, long r1);
int ts_q8act_matmul(const int8_t* qv, const float* d, const float* m, long G_, long K_, const float* x, long T_,
                    float* out, long ldo_, long r0, long r1);

typedef struct {
  int kind; /* 0 rowint16, 1 blockint8, 2 q8act */
  const void* q;
  const float* s; /* rowint16 s, or d */
  const float* m;
  long G, K, T, ldo, rows, step;
  const float* x;
  float* out;
} job_t;

static int run_range(const job_t* j, long r0, long r1) {
  if (r0 >= r1) return 0;
  switch (j->kind) {
    case 0: return ts_rowint16_matmul((const int16_t*)j->q, j->s, j->K, j->x, j->T, j->out, j->ldo, r0, r1);
    case 1: return ts_blockint8_matmul((const int8_t*)j->q, j->s, j->m, j->G, j->K, j->x, j->T, j->out, j->ldo, r0, r1);
    default: return ts_q8act_matmul((const int8_t*)j->q, j->s, j->m, j->G, j->K, j->x, j->T, j->out, j->ldo, r0, r1);
  }
}

static struct {
  int n;     /* threads, the caller included; 0 = not started */
  pid_t pid; /* the process that started the helpers */
  pthread_t th[MAX_THREADS];
  atomic_long gen;
  long gen0; /* the generation when the helpers started: each waits for the next one */
  atomic_int done, rc, sleeping, stop;
  atomic_flag busy;
  const job_t* job;
  pthread_mutex_t mu;
  pthread_cond_t cv;
} P = {.busy = ATOMIC_FLAG_INIT, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long)t.tv_sec * 1000000000L + t.tv_nsec;
}

static void* helper(void* arg) {
  const long w = (long)(intptr_t)arg; /* helper w computes range w; the caller the last one */
  long seen = P.gen0;
  for (;;) {
    long t0 = now_ns();
    int spins = 0;
    while (atomic_load(&P.gen) == seen) {
      CPU_RELAX();
      if (++spins % 64 == 0 && now_ns() - t0 > SPIN_NS) {
        pthread_mutex_lock(&P.mu);
        atomic_fetch_add(&P.sleeping, 1);
        while (atomic_load(&P.gen) == seen) pthread_cond_wait(&P.cv, &P.mu);
        atomic_fetch_sub(&P.sleeping, 1);
        pthread_mutex_unlock(&P.mu);
      }
    }
    seen = atomic_load(&P.gen);
    if (atomic_load(&P.stop)) return NULL;
    const job_t* j = P.job;
    const long r0 = w * j->step, r1 = r0 + j->step < j->rows ? r0 + j->step : j->rows;
    if (run_range(j, r0, r1)) atomic_store(&P.rc, -1);
    atomic_fetch_add(&P.done, 1);
  }
}

static void wake_all(void) {
  if (atomic_load(&P.sleeping) > 0) {
    pthread_mutex_lock(&P.mu);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
  }
}

/* Stop the helpers (joined) and forget them; 0. */
int ts_pool_stop(void) {
  while (atomic_flag_test_and_set(&P.busy)) CPU_RELAX();
  if (P.n > 1 && P.pid == getpid()) {
    atomic_store(&P.stop, 1);
    atomic_fetch_add(&P.gen, 1);
    pthread_mutex_lock(&P.mu);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    for (int i = 0; i < P.n - 1; i++) pthread_join(P.th[i], NULL);
  }
  P.n = 0;
  atomic_store(&P.stop, 0);
  atomic_store(&P.sleeping, 0);
  atomic_flag_clear(&P.busy);
  return 0;
}

/* Start n threads (the caller included; 1 = no helpers). 0, or -1 when a thread cannot start. */
static int start(int n) {
  if (n > MAX_THREADS) n = MAX_THREADS;
  P.n = 1;
  P.pid = getpid();
  P.gen0 = atomic_load(&P.gen);
  atomic_store(&P.sleeping, 0);
  for (int i = 0; i < n - 1; i++) {
    if (pthread_create(&P.th[i], NULL, helper, (void*)(intptr_t)i)) {
      P.n = i + 1; /* the helpers already started stay in use */
      return -1;
    }
    P.n = i + 2;
  }
  return 0;
}

/* Threads the pool runs now (0 before the first product). */
int ts_pool_threads(void) { return P.pid == getpid() ? P.n : 0; }

/* One product over n threads. Returns the kernel's rc (0, or -1 for arguments it rejects). */
static int run(job_t* j, int n) {
  if (n <= 1 || j->rows <= ALIGN || atomic_flag_test_and_set(&P.busy)) return run_range(j, 0, j->rows);
  if (P.pid != getpid()) P.n = 0; /* a forked child: the helpers are the parent's */
  if (P.n != n) {
    if (P.n > 1) {
      atomic_flag_clear(&P.busy);
      ts_pool_stop();
      while (atomic_flag_test_and_set(&P.busy)) CPU_RELAX();
    }
    start(n);
  }
  const int nt = P.n;
  long step = (j->rows + nt - 1) / nt;
  step = (step + ALIGN - 1) / ALIGN * ALIGN;
  j->step = step;
  P.job = j;
  atomic_store(&P.done, 0);
  atomic_store(&P.rc, 0);
  atomic_fetch_add(&P.gen, 1);
  wake_all();
  const long r0 = (long)(nt - 1) * step;
  int rc = run_range(j, r0 < j->rows ? r0 : j->rows, j->rows);
  while (atomic_load(&P.done) < nt - 1) CPU_RELAX();
  if (atomic_load(&P.rc)) rc = -1;
  atomic_flag_clear(&P.busy);
  return rc;
}

int ts_pool_rowint16(const int16_t* q, const float* s, long K, const float* x, long T, float* out, long ldo,
                     long rows, long n) {
  job_t j = {.kind = 0, .q = q, .s = s, .K = K, .T = T, .ldo = ldo, .rows = rows, .x = x, .out = out};
  return run(&j, (int)n);
}

int ts_pool_blockint8(const int8_t* q, const float* d, const float* m, long G, long K, const float* x, long T,
                      float* out, long ldo, long rows, long n) {
  job_t j = {.kind = 1, .q = q, .s = d, .m = m, .G = G, .K = K, .T = T, .ldo = ldo, .rows = rows, .x = x, .out = out};
  return run(&j, (int)n);
}

int ts_pool_q8act(const int8_t* qv, const float* d, const float* m, long G, long K, const float* x, long T,
                  float* out, long ldo, long rows, long n) {
  job_t j = {.kind = 2, .q = qv, .s = d, .m = m, .G = G, .K = K, .T = T, .ldo = ldo, .rows = rows, .x = x, .out = out};
  return run(&j, (int)n);
}
