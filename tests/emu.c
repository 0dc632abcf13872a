/* emu.c: a generated CUDA module run on the CPU (see emu.h). */
#include "emu.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../runtime/cuda_backend.h"

/* CUDA's built-ins for the host compiler. A block's threads are real threads
 * (a pool that grows to the largest block), so barriers and shuffles behave as
 * on the GPU for code without data races. */
static const char prelude[] =
    "// emu prelude (tests/emu.c)\n"
    "#include <math.h>\n"
    "#include <pthread.h>\n"
    "#include <stdint.h>\n"
    "#include <stdlib.h>\n"
    "#include <string.h>\n"
    "#include <type_traits>\n"
    "#include <utility>\n"
    "struct emu_uint3 { unsigned x, y, z; };\n"
    "static emu_uint3 blockIdx, gridDim, blockDim;\n"
    "static thread_local emu_uint3 threadIdx;\n"
    "static thread_local int emu_tid;\n"
    "static char *emu_dyn_smem;\n"
    "#define __global__\n"
    "#define __device__\n"
    "#define __host__\n"
    "#define __forceinline__ inline\n"
    "#define __launch_bounds__(...)\n"
    "#define __restrict__ __restrict\n"
    "#define __shared__ static\n"
    "#define __align__(n) alignas(n)\n"
    "struct emu_barrier { pthread_mutex_t m; pthread_cond_t c; int live, waiting; unsigned gen; };\n"
    "static emu_barrier emu_block_bar, emu_warp_bar[32];\n"
    "static unsigned long long emu_xch[32][32];\n"
    "static void emu_bar_set(emu_barrier *b, int live) {\n"
    "  static bool made[33];\n"
    "  int i = b == &emu_block_bar ? 32 : (int)(b - emu_warp_bar);\n"
    "  if (!made[i]) { pthread_mutex_init(&b->m, 0); pthread_cond_init(&b->c, 0); made[i] = true; }\n"
    "  b->live = live; b->waiting = 0;\n"
    "}\n"
    "static void emu_bar_wait(emu_barrier *b) {\n"
    "  pthread_mutex_lock(&b->m);\n"
    "  unsigned g = b->gen;\n"
    "  if (++b->waiting >= b->live) { b->waiting = 0; b->gen++; pthread_cond_broadcast(&b->c); }\n"
    "  else while (g == b->gen) pthread_cond_wait(&b->c, &b->m);\n"
    "  pthread_mutex_unlock(&b->m);\n"
    "}\n"
    "static void emu_bar_leave(emu_barrier *b) {\n"
    "  pthread_mutex_lock(&b->m);\n"
    "  b->live--;\n"
    "  if (b->waiting > 0 && b->waiting >= b->live) { b->waiting = 0; b->gen++; pthread_cond_broadcast(&b->c); }\n"
    "  pthread_mutex_unlock(&b->m);\n"
    "}\n"
    "static inline void __syncthreads() { emu_bar_wait(&emu_block_bar); }\n"
    "template <class T> static inline unsigned long long emu_bits(T v) { unsigned long long u = 0; memcpy(&u, &v, sizeof v); return u; }\n"
    "template <class T> static inline T emu_from(unsigned long long u) { T v; memcpy(&v, &u, sizeof v); return v; }\n"
    "template <class T> static inline T emu_shfl(T v, int src) {\n"
    "  int w = emu_tid / 32, l = emu_tid % 32;\n"
    "  emu_xch[w][l] = emu_bits(v);\n"
    "  emu_bar_wait(&emu_warp_bar[w]);\n"
    "  T r = emu_from<T>(emu_xch[w][src & 31]);\n"
    "  emu_bar_wait(&emu_warp_bar[w]);\n"
    "  return r;\n"
    "}\n"
    "template <class T> static inline T __shfl_xor_sync(unsigned, T v, int m, int width = 32) {\n"
    "  int l = emu_tid % 32; return emu_shfl(v, (l ^ m) < ((l / width) + 1) * width ? (l ^ m) : l);\n"
    "}\n"
    "template <class T> static inline T __shfl_up_sync(unsigned, T v, unsigned d, int width = 32) {\n"
    "  int l = emu_tid % 32; return emu_shfl(v, (l % width) >= (int)d ? l - (int)d : l);\n"
    "}\n"
    "template <class T> static inline T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {\n"
    "  int l = emu_tid % 32; return emu_shfl(v, (l % width) + (int)d < width ? l + (int)d : l);\n"
    "}\n"
    "template <class T> static inline T __shfl_sync(unsigned, T v, int src, int width = 32) {\n"
    "  int l = emu_tid % 32; return emu_shfl(v, (l / width) * width + src % width);\n"
    "}\n"
    "static inline void __syncwarp(unsigned = 0xffffffffu) { emu_bar_wait(&emu_warp_bar[emu_tid / 32]); }\n"
    "static inline int __popc(unsigned v) { return __builtin_popcount(v); }\n"
    "static inline unsigned __match_any_sync(unsigned, int v) {\n"
    "  int w = emu_tid / 32; unsigned m = 0;\n"
    "  emu_xch[w][emu_tid % 32] = (unsigned long long)(unsigned)v;\n"
    "  emu_bar_wait(&emu_warp_bar[w]);\n"
    "  for (int l = 0; l < 32; l++) if (emu_xch[w][l] == (unsigned long long)(unsigned)v) m |= 1u << l;\n"
    "  emu_bar_wait(&emu_warp_bar[w]);\n"
    "  return m;\n"
    "}\n"
    "static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }\n"
    "static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }\n"
    "static inline float __fdividef(float a, float b) { return a / b; }\n"
    "static inline float __fmul_rn(float a, float b) { return a * b; }\n"
    "/* mma.sync m16n8k8 with TF32 operands (poly_attention_mma.cu's zk_mma_tf32):\n"
    " * the warp's fragments through one exchange, the products in fp32. An\n"
    " * operand with any of its low 13 bits set is not TF32: the hardware would\n"
    " * drop those bits, here the kernel fails (emu_run_kernel returns -2). */\n"
    "static unsigned emu_mma_frag[32][32][6];\n"
    "static int emu_mma_not_tf32;\n"
    "static inline void emu_mma_tf32(float *d, const unsigned *a, const unsigned *b) {\n"
    "  int w = emu_tid / 32, l = emu_tid % 32, g = l >> 2, t = l & 3;\n"
    "  if (((a[0] | a[1] | a[2] | a[3] | b[0] | b[1]) & 0x1fffu) != 0) __atomic_store_n(&emu_mma_not_tf32, 1, __ATOMIC_RELAXED);\n"
    "  for (int i = 0; i < 4; i++) emu_mma_frag[w][l][i] = a[i];\n"
    "  emu_mma_frag[w][l][4] = b[0]; emu_mma_frag[w][l][5] = b[1];\n"
    "  emu_bar_wait(&emu_warp_bar[w]);\n"
    "  for (int k = 0; k < 8; k++) {\n"
    "    int h = k >> 2, src = 4 * g + (k & 3);\n"
    "    float a0 = __int_as_float((int)emu_mma_frag[w][src][2 * h]);\n"
    "    float a1 = __int_as_float((int)emu_mma_frag[w][src][2 * h + 1]);\n"
    "    float b0 = __int_as_float((int)emu_mma_frag[w][8 * t + (k & 3)][4 + h]);\n"
    "    float b1 = __int_as_float((int)emu_mma_frag[w][8 * t + 4 + (k & 3)][4 + h]);\n"
    "    d[0] = fmaf(a0, b0, d[0]); d[1] = fmaf(a0, b1, d[1]);\n"
    "    d[2] = fmaf(a1, b0, d[2]); d[3] = fmaf(a1, b1, d[3]);\n"
    "  }\n"
    "  emu_bar_wait(&emu_warp_bar[w]);\n"
    "}\n"
    "static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }\n"
    "static inline float atomicAdd(float *a, float v) {\n"
    "  unsigned *p = (unsigned *)a, old = __atomic_load_n(p, __ATOMIC_SEQ_CST), nw;\n"
    "  do { float f; memcpy(&f, &old, 4); f += v; memcpy(&nw, &f, 4); }\n"
    "  while (!__atomic_compare_exchange_n(p, &old, nw, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));\n"
    "  float f; memcpy(&f, &old, 4); return f;\n"
    "}\n"
    "static inline int atomicAdd(int *a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }\n"
    "static inline unsigned atomicAdd(unsigned *a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }\n"
    "static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }\n"
    "template <class T> static inline T __ldcg(const T *p) { return *p; }\n"
    "template <class A, class B> static inline typename std::common_type<A, B>::type min(A a, B b) { return a < b ? a : b; }\n"
    "template <class A, class B> static inline typename std::common_type<A, B>::type max(A a, B b) { return a > b ? a : b; }\n"
    "template <class... A, size_t... I>\n"
    "static void emu_call_i(void (*f)(A...), void **p, std::index_sequence<I...>) {\n"
    "  f(*reinterpret_cast<typename std::remove_cv<typename std::remove_reference<A>::type>::type *>(p[I])...);\n"
    "}\n"
    "template <class... A> static void emu_call(void (*f)(A...), void **p) { emu_call_i(f, p, std::index_sequence_for<A...>{}); }\n"
    "// ---- the module ----\n";

/* The runner, appended after the module: a thread pool that runs one block at
 * a time. */
static const char runner[] =
    "\n// ---- runner (tests/emu.c) ----\n"
    "typedef void (*emu_kernel)(void **);\n"
    "static struct { pthread_t th[1024]; int n; pthread_mutex_t m; pthread_cond_t go, done;\n"
    "  unsigned gen; int active, finished, quit; emu_kernel k; void **params; unsigned born[1024]; } emu_pool =\n"
    "  {{}, 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0, {}};\n"
    "static void *emu_worker(void *arg) {\n"
    "  int tid = (int)(intptr_t)arg;\n"
    "  pthread_mutex_lock(&emu_pool.m);\n"
    "  unsigned seen = emu_pool.born[tid]; /* the generation before its first block */\n"
    "  for (;;) {\n"
    "    while (emu_pool.gen == seen && !emu_pool.quit) pthread_cond_wait(&emu_pool.go, &emu_pool.m);\n"
    "    if (emu_pool.quit) break;\n"
    "    seen = emu_pool.gen;\n"
    "    if (tid >= emu_pool.active) continue;\n"
    "    emu_kernel k = emu_pool.k; void **params = emu_pool.params;\n"
    "    pthread_mutex_unlock(&emu_pool.m);\n"
    "    emu_tid = tid;\n"
    "    threadIdx.x = tid % blockDim.x; threadIdx.y = (tid / blockDim.x) % blockDim.y;\n"
    "    threadIdx.z = tid / (blockDim.x * blockDim.y);\n"
    "    k(params);\n"
    "    emu_bar_leave(&emu_warp_bar[tid / 32]);\n"
    "    emu_bar_leave(&emu_block_bar);\n"
    "    pthread_mutex_lock(&emu_pool.m);\n"
    "    if (++emu_pool.finished == emu_pool.active) pthread_cond_signal(&emu_pool.done);\n"
    "  }\n"
    "  pthread_mutex_unlock(&emu_pool.m);\n"
    "  return 0;\n"
    "}\n"
    "extern \"C\" int emu_run_kernel(emu_kernel k, const unsigned *grid, const unsigned *block, unsigned smem, void **params) {\n"
    "  int n = (int)(block[0] * block[1] * block[2]);\n"
    "  if (n < 1 || n > 1024) return -1;\n"
    "  while (emu_pool.n < n) {\n"
    "    emu_pool.born[emu_pool.n] = emu_pool.gen;\n"
    "    if (pthread_create(&emu_pool.th[emu_pool.n], 0, emu_worker, (void *)(intptr_t)emu_pool.n) != 0) return -1;\n"
    "    emu_pool.n++;\n"
    "  }\n"
    "  gridDim.x = grid[0]; gridDim.y = grid[1]; gridDim.z = grid[2];\n"
    "  blockDim.x = block[0]; blockDim.y = block[1]; blockDim.z = block[2];\n"
    "  emu_dyn_smem = (char *)realloc(emu_dyn_smem, smem + 16);\n"
    "  for (unsigned z = 0; z < grid[2]; z++)\n"
    "    for (unsigned y = 0; y < grid[1]; y++)\n"
    "      for (unsigned x = 0; x < grid[0]; x++) {\n"
    "        blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;\n"
    "        memset(emu_dyn_smem, 0, smem + 16);\n"
    "        emu_bar_set(&emu_block_bar, n);\n"
    "        for (int w = 0; w * 32 < n; w++) emu_bar_set(&emu_warp_bar[w], n - 32 * w < 32 ? n - 32 * w : 32);\n"
    "        pthread_mutex_lock(&emu_pool.m);\n"
    "        emu_pool.active = n; emu_pool.finished = 0; emu_pool.k = k; emu_pool.params = params;\n"
    "        emu_pool.gen++;\n"
    "        pthread_cond_broadcast(&emu_pool.go);\n"
    "        while (emu_pool.finished < emu_pool.active) pthread_cond_wait(&emu_pool.done, &emu_pool.m);\n"
    "        pthread_mutex_unlock(&emu_pool.m);\n"
    "      }\n"
    "  if (__atomic_exchange_n(&emu_mma_not_tf32, 0, __ATOMIC_RELAXED)) return -2;\n"
    "  return 0;\n"
    "}\n"
    "extern \"C\" void emu_shutdown(void) {\n"
    "  pthread_mutex_lock(&emu_pool.m);\n"
    "  emu_pool.quit = 1;\n"
    "  pthread_cond_broadcast(&emu_pool.go);\n"
    "  pthread_mutex_unlock(&emu_pool.m);\n"
    "  for (int i = 0; i < emu_pool.n; i++) pthread_join(emu_pool.th[i], 0);\n"
    "  emu_pool.n = 0;\n"
    "  emu_pool.quit = 0; /* dlclose may leave the library mapped (thread_local): a later load of the\n"
    "                        same module finds this pool and must start new workers */\n"
    "}\n";

struct emu_module {
  void *handle;
  int (*run_kernel)(void (*)(void **), const unsigned *, const unsigned *, unsigned, void **);
  void (*shutdown)(void);
};

static const char *cxx(void) {
  const char *c = getenv("CXX");
  return c && c[0] ? c : "c++";
}

int emu_available(char *why, size_t n) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "%s --version >/dev/null 2>&1", cxx());
  if (system(cmd) != 0) {
    snprintf(why, n, "no C++ compiler (%s) to run generated kernels on the CPU", cxx());
    return 0;
  }
  return 1;
}

/* Appends text to a growing buffer. */
static void put(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
  if (*len + n + 1 > *cap) {
    while (*len + n + 1 > *cap) *cap = *cap ? *cap * 2 : 65536;
    *buf = realloc(*buf, *cap);
    if (!*buf) abort();
  }
  memcpy(*buf + *len, s, n);
  *len += n;
  (*buf)[*len] = 0;
}

/* The module's text with each "extern __shared__ T NAME[];" (dynamic shared
 * memory) turned into a pointer to the launch's buffer. */
static void put_module(char **buf, size_t *len, size_t *cap, const char *src) {
  const char *p = src;
  const char *key = "extern __shared__";
  for (;;) {
    const char *at = strstr(p, key);
    if (!at) break;
    put(buf, len, cap, p, (size_t)(at - p));
    const char *semi = strchr(at, ';');
    const char *br = strstr(at, "[]");
    if (!semi || !br || br > semi) { /* not the form we know: leave it */
      put(buf, len, cap, at, strlen(key));
      p = at + strlen(key);
      continue;
    }
    /* "extern __shared__ float zk_sh[]" -> type "float", name "zk_sh" */
    const char *decl = at + strlen(key);
    const char *name_end = br;
    const char *name = name_end;
    while (name > decl && (name[-1] == '_' || (name[-1] >= 'a' && name[-1] <= 'z') ||
                           (name[-1] >= 'A' && name[-1] <= 'Z') || (name[-1] >= '0' && name[-1] <= '9')))
      name--;
    char line[512];
    snprintf(line, sizeof line, "%.*s *%.*s = (%.*s *)emu_dyn_smem;", (int)(name - decl), decl,
             (int)(name_end - name), name, (int)(name - decl), decl);
    put(buf, len, cap, line, strlen(line));
    p = semi + 1;
  }
  put(buf, len, cap, p, strlen(p));
}

static uint64_t fnv(const char *s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
  return h;
}

emu_module *emu_load(const zoo_cuda_emit *e, char *err, size_t n) {
  char *src = NULL;
  size_t len = 0, cap = 0;
  put(&src, &len, &cap, prelude, strlen(prelude));
  put_module(&src, &len, &cap, e->src.s);
  put(&src, &len, &cap, runner, strlen(runner));
  /* a wrapper per kernel the steps launch */
  put(&src, &len, &cap, "\n", 1);
  for (int i = 0; i < e->nsteps; i++) {
    const zoo_step *s = &e->steps[i];
    if (!s->func || (s->kind != ZOO_STEP_KERNEL && s->kind != ZOO_STEP_GEMM)) continue; /* GEMM: zoo's kernel */
    int seen = 0;
    for (int j = 0; j < i; j++)
      if (e->steps[j].func && !strcmp(e->steps[j].func, s->func)) seen = 1;
    if (seen) continue;
    char line[600];
    snprintf(line, sizeof line, "extern \"C\" void emu_k_%s(void **p) { emu_call(%s, p); }\n", s->func, s->func);
    put(&src, &len, &cap, line, strlen(line));
  }
  const char *opt[] = {"zoo_adamw", "zoo_accumulate", "zoo_metrics_accumulate"};
  for (int k = 0; k < 3; k++)
    if (strstr(e->src.s, opt[k])) {
      char line[300];
      snprintf(line, sizeof line, "extern \"C\" void emu_k_%s(void **p) { emu_call(%s, p); }\n", opt[k], opt[k]);
      put(&src, &len, &cap, line, strlen(line));
    }

  const char *tmp = getenv("TMPDIR");
  char dir[512], cpp[700], so[700], cmd[4000];
  snprintf(dir, sizeof dir, "%s/zoo-emu", tmp && tmp[0] ? tmp : "/tmp");
  mkdir(dir, 0755);
  uint64_t h = fnv(src);
  snprintf(cpp, sizeof cpp, "%s/%016llx.cpp", dir, (unsigned long long)h);
  snprintf(so, sizeof so, "%s/%016llx.so", dir, (unsigned long long)h);
  if (access(so, R_OK) != 0) {
    FILE *f = fopen(cpp, "w");
    if (!f) {
      snprintf(err, n, "cannot write %s", cpp);
      free(src);
      return NULL;
    }
    fputs(src, f);
    fclose(f);
    char tmp_so[720];
    snprintf(tmp_so, sizeof tmp_so, "%s.%d", so, (int)getpid());
    snprintf(cmd, sizeof cmd, "%s -std=c++17 -O1 -w -fPIC -shared -pthread -o %s %s 2>%s.log && mv %s %s",
             cxx(), tmp_so, cpp, cpp, tmp_so, so);
    if (system(cmd) != 0) {
      snprintf(err, n, "the host compiler rejected the module: see %s.log (source %s)", cpp, cpp);
      free(src);
      return NULL;
    }
  }
  free(src);
  emu_module *m = calloc(1, sizeof *m);
  m->handle = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  if (!m->handle) {
    snprintf(err, n, "dlopen %s: %s", so, dlerror());
    free(m);
    return NULL;
  }
  *(void **)&m->run_kernel = dlsym(m->handle, "emu_run_kernel");
  *(void **)&m->shutdown = dlsym(m->handle, "emu_shutdown");
  if (!m->run_kernel || !m->shutdown) {
    snprintf(err, n, "%s lacks the runner", so);
    dlclose(m->handle);
    free(m);
    return NULL;
  }
  return m;
}

void emu_unload(emu_module *m) {
  if (!m) return;
  m->shutdown();
  dlclose(m->handle);
  free(m);
}

void emu_mem_init(emu_mem *mem, const zoo_plan *p) {
  int64_t sizes[5] = {0, p->arena_bytes, p->param_bytes, p->param_bytes, p->input_bytes};
  for (int k = 0; k < 5; k++) {
    mem->base[k] = k ? calloc(1, (size_t)(sizes[k] > 0 ? sizes[k] : 256)) : NULL;
    if (k && !mem->base[k]) abort();
  }
}

void emu_mem_free(emu_mem *mem) {
  for (int k = 0; k < 5; k++) free(mem->base[k]);
  memset(mem, 0, sizeof *mem);
}

void *emu_ptr(const emu_mem *mem, const zoo_plan *p, int t) {
  if (t < 0 || p->mem[t] == ZOO_MEM_NONE) return NULL;
  return mem->base[p->mem[t]] + p->offset[t];
}

int emu_launch(emu_module *m, const char *name, const unsigned *grid, const unsigned *block,
               unsigned smem, void **params) {
  char sym[300];
  snprintf(sym, sizeof sym, "emu_k_%s", name);
  void (*k)(void **);
  *(void **)&k = dlsym(m->handle, sym);
  if (!k) return -1;
  return m->run_kernel(k, grid, block, smem, params);
}

/* C = alpha op(A) op(B) + beta C (+ bias), computed the way cuBLAS would be
 * asked to: through the column-major view. */
static void host_gemm(const zoo_gemm *gm, const float *a, const float *b, float *c, const float *bias) {
  zoo_colmajor_gemm g;
  zoo_cuda_gemm_colmajor(gm, &g);
  const float *A = b, *B = a; /* cuBLAS's A is our b */
  int64_t k = g.trans_a ? g.a_rows : g.a_cols;
  for (int64_t q = 0; q < g.batch; q++) {
    const float *aq = A + q * g.stride_a, *bq = B + q * g.stride_b;
    float *d = c + q * g.stride_c;
    for (int64_t j = 0; j < g.c_cols; j++)
      for (int64_t i = 0; i < g.c_rows; i++) {
        double acc = 0;
        for (int64_t p = 0; p < k; p++) {
          double av = g.trans_a ? aq[p + i * g.lda] : aq[i + p * g.lda];
          double bv = g.trans_b ? bq[j + p * g.ldb] : bq[p + j * g.ldb];
          acc += av * bv;
        }
        double v = gm->alpha * acc + (gm->beta != 0 ? gm->beta * d[i + j * g.ldc] : 0.0);
        if (bias) v += bias[i];
        d[i + j * g.ldc] = (float)v;
      }
  }
}

/* One kernel argument's value. */
typedef union emu_arg {
  void *ptr;
  long long i;
  float f;
  unsigned long long u;
} emu_arg;

/* The values of step i's arguments (of the plan whose first step is `first`)
 * into vals, their addresses into params. */
static int step_args(const zoo_step *s, int i, int first, const zoo_plan *p, emu_mem *mem, uint64_t seed,
                     emu_arg *vals, void **params, char *err, size_t errlen) {
  for (int a = 0; a < s->nargs; a++) {
    const zoo_arg *x = &s->args[a];
    memset(&vals[a], 0, sizeof vals[a]);
    switch (x->kind) {
    case ZOO_ARG_TENSOR:
      vals[a].ptr = emu_ptr(mem, p, x->tensor);
      if (!vals[a].ptr) {
        snprintf(err, errlen, "step %d (%s): argument %d, tensor %d, has no memory", i, s->func, a, x->tensor);
        return -1;
      }
      break;
    case ZOO_ARG_SCRATCH:
      if (p->scratch[i - first] < 0) {
        snprintf(err, errlen, "step %d (%s): no scratch planned", i, s->func);
        return -1;
      }
      vals[a].ptr = mem->base[ZOO_MEM_ARENA] + p->scratch[i - first] + x->i;
      break;
    case ZOO_ARG_I64: vals[a].i = x->i; break;
    case ZOO_ARG_F32: vals[a].f = x->f; break;
    case ZOO_ARG_SEED: vals[a].u = seed; break;
    case ZOO_ARG_COUNTER:
      vals[a].ptr = mem->base[ZOO_MEM_INPUT] + p->counter_offset + 4 * (x->i - p->counter_first);
      break;
    }
    params[a] = &vals[a];
  }
  return 0;
}

int emu_run(emu_module *m, const zoo_cuda_emit *e, const zoo_plan *p, emu_mem *mem, int first,
            int n, uint64_t seed, char *err, size_t errlen) {
  for (int i = first; i < first + n; i++) {
    const zoo_step *s = &e->steps[i];
    emu_arg vals[ZOO_MAX_ARGS];
    if (s->kind == ZOO_STEP_GEMM) {
      const zoo_gemm *gm = &s->gemm;
      float *A = emu_ptr(mem, p, gm->a), *B = emu_ptr(mem, p, gm->b), *C = emu_ptr(mem, p, gm->c);
      if (!A || !B || !C) {
        snprintf(err, errlen, "step %d: a GEMM operand has no memory", i);
        return -1;
      }
      const char *own = getenv("ZOO_GEMM_OWN");
      if (s->func && own && strcmp(own, "1") == 0) { /* zoo's kernel, as the backend runs it then */
        float *bias = gm->bias >= 0 ? emu_ptr(mem, p, gm->bias) : A;
        void *params[ZOO_MAX_ARGS + 4] = {&A, &B, &bias, &C};
        if (step_args(s, i, first, p, mem, seed, vals, params + 4, err, errlen) != 0) return -1;
        if (emu_launch(m, s->func, s->grid, s->block, 0, params) != 0) {
          snprintf(err, errlen, "step %d: kernel %s missing", i, s->func);
          return -1;
        }
        continue;
      }
      host_gemm(gm, A, B, C, gm->bias >= 0 ? emu_ptr(mem, p, gm->bias) : NULL);
      continue;
    }
    if (s->kind == ZOO_STEP_ZERO) {
      void *C = emu_ptr(mem, p, s->gemm.c);
      if (!C) {
        snprintf(err, errlen, "step %d: cleared tensor has no memory", i);
        return -1;
      }
      memset(C, 0, (size_t)p->bytes[s->gemm.c]);
      continue;
    }
    void *params[ZOO_MAX_ARGS];
    if (step_args(s, i, first, p, mem, seed, vals, params, err, errlen) != 0) return -1;
    if (getenv("ZOO_EMU_TRACE"))
      fprintf(stderr, "emu: step %d %s <<<(%u,%u,%u), (%u,%u,%u), %u>>>\n", i, s->func, s->grid[0], s->grid[1],
              s->grid[2], s->block[0], s->block[1], s->block[2], s->smem);
    int rc = emu_launch(m, s->func, s->grid, s->block, s->smem, params);
    if (rc == -2) {
      snprintf(err, errlen, "step %d: kernel %s gave mma.sync an operand that is not TF32 (low 13 bits set)", i,
               s->func);
      return -1;
    }
    if (rc != 0) {
      snprintf(err, errlen, "step %d: kernel %s missing or block too large", i, s->func);
      return -1;
    }
  }
  return 0;
}
