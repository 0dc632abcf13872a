/* cuda_api.c: dlopen()s the CUDA driver, NVRTC and cuBLASLt and fills the
 * function tables of cuda_api.h. */
#include "cuda_api.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

zoo_cu_api zoo_cu;
zoo_nvrtc_api zoo_nvrtc;
zoo_cublaslt_api zoo_cublaslt;

#define ZOO_STR_(x) #x
#define ZOO_STR(x) ZOO_STR_(x) /* stringify after macro expansion: cuMemAlloc_v2 */

/* A library opened once; the result (and its message) is remembered so every
 * caller sees the same answer. */
typedef struct lib_state {
  pthread_mutex_t lock;
  int done;   /* 1 once tried */
  int status; /* 0 loaded, -1 failed */
  char why[512];
  void *handle;
} lib_state;

static lib_state cu_lib = {PTHREAD_MUTEX_INITIALIZER, 0, 0, "", NULL};
static lib_state nvrtc_lib = {PTHREAD_MUTEX_INITIALIZER, 0, 0, "", NULL};
static lib_state cublaslt_lib = {PTHREAD_MUTEX_INITIALIZER, 0, 0, "", NULL};

/* Tries each name in turn with dlopen; returns the handle, or NULL with every
 * name tried and the last dlerror in why. */
static void *open_first(const char *const *names, int count, char *why, size_t n) {
  size_t used = (size_t)snprintf(why, n, "cannot load any of:");
  for (int i = 0; i < count; i++) {
    if (!names[i] || !names[i][0]) continue;
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h) return h;
    const char *e = dlerror();
    if (used < n) used += (size_t)snprintf(why + used, n - used, " %s (%s);", names[i], e ? e : "?");
  }
  return NULL;
}

/* Looks up one symbol; records the first missing name in why. */
static void *sym(void *h, const char *name, int *missing, char *why, size_t n) {
  void *p = dlsym(h, name);
  if (!p && !*missing) {
    snprintf(why, n, "symbol %s not found in the library (driver or toolkit too old?)", name);
    *missing = 1;
  }
  return p;
}

/* Candidate paths for a toolkit library: plain names first (the loader's
 * search path), then $CUDA_HOME/lib64 and /usr/local/cuda/lib64. */
static int toolkit_names(const char *base, const char *major, char names[][256], int max) {
  int k = 0;
  const char *home = getenv("CUDA_HOME");
  const char *dirs[] = {home, "/usr/local/cuda", "/usr/local/cuda-13.0"};
  if (k < max) snprintf(names[k++], 256, "%s.so.%s", base, major);
  if (k < max) snprintf(names[k++], 256, "%s.so", base);
  for (int d = 0; d < 3; d++) {
    if (!dirs[d] || !dirs[d][0]) continue;
    if (k < max) snprintf(names[k++], 256, "%s/lib64/%s.so.%s", dirs[d], base, major);
    if (k < max) snprintf(names[k++], 256, "%s/lib64/%s.so", dirs[d], base);
  }
  return k;
}

static int finish(lib_state *s, char *err, size_t n) {
  s->done = 1;
  if (s->status != 0 && err) snprintf(err, n, "%s", s->why);
  return s->status;
}

/* Opens libcuda.so.1 and runs cuInit(0). */
int zoo_cu_load(char *err, size_t n) {
  lib_state *s = &cu_lib;
  pthread_mutex_lock(&s->lock);
  if (s->done) {
    int r = finish(s, err, n);
    pthread_mutex_unlock(&s->lock);
    return r;
  }
  const char *names[] = {"libcuda.so.1", "libcuda.so"};
  s->status = -1;
  s->handle = open_first(names, 2, s->why, sizeof s->why);
  if (s->handle) {
    int missing = 0;
#define LOAD(f) zoo_cu.f = (__typeof__(zoo_cu.f))sym(s->handle, ZOO_STR(f), &missing, s->why, sizeof s->why);
    ZOO_CU_FUNCS(LOAD)
#undef LOAD
    if (!missing) {
      CUresult r = zoo_cu.cuInit(0);
      if (r == CUDA_SUCCESS) {
        s->status = 0;
      } else {
        const char *name = "?", *what = "?";
        zoo_cu.cuGetErrorName(r, &name);
        zoo_cu.cuGetErrorString(r, &what);
        snprintf(s->why, sizeof s->why, "cuInit(0) failed: %s: %s", name, what);
      }
    }
  }
  int r = finish(s, err, n);
  pthread_mutex_unlock(&s->lock);
  return r;
}

/* Opens libnvrtc (13, unversioned, then the toolkit folders). */
int zoo_nvrtc_load(char *err, size_t n) {
  lib_state *s = &nvrtc_lib;
  pthread_mutex_lock(&s->lock);
  if (!s->done) {
    char names[8][256];
    const char *ptrs[8];
    int k = toolkit_names("libnvrtc", "13", names, 8);
    for (int i = 0; i < k; i++) ptrs[i] = names[i];
    s->status = -1;
    s->handle = open_first(ptrs, k, s->why, sizeof s->why);
    if (s->handle) {
      int missing = 0;
#define LOAD(f) zoo_nvrtc.f = (__typeof__(zoo_nvrtc.f))sym(s->handle, ZOO_STR(f), &missing, s->why, sizeof s->why);
      ZOO_NVRTC_FUNCS(LOAD)
#undef LOAD
      if (!missing) s->status = 0;
    }
  }
  int r = finish(s, err, n);
  pthread_mutex_unlock(&s->lock);
  return r;
}

/* Opens libcublasLt (13, unversioned, then the toolkit folders). */
int zoo_cublaslt_load(char *err, size_t n) {
  lib_state *s = &cublaslt_lib;
  pthread_mutex_lock(&s->lock);
  if (!s->done) {
    char names[8][256];
    const char *ptrs[8];
    int k = toolkit_names("libcublasLt", "13", names, 8);
    for (int i = 0; i < k; i++) ptrs[i] = names[i];
    s->status = -1;
    s->handle = open_first(ptrs, k, s->why, sizeof s->why);
    if (s->handle) {
      int missing = 0;
#define LOAD(f) zoo_cublaslt.f = (__typeof__(zoo_cublaslt.f))sym(s->handle, ZOO_STR(f), &missing, s->why, sizeof s->why);
      ZOO_CUBLASLT_FUNCS(LOAD)
#undef LOAD
      if (!missing) s->status = 0;
    }
  }
  int r = finish(s, err, n);
  pthread_mutex_unlock(&s->lock);
  return r;
}

static void *preload_main(void *arg) {
  (void)arg;
  zoo_nvrtc_load(NULL, 0); /* NVRTC first: the module's compilation waits for it */
  zoo_cublaslt_load(NULL, 0);
  return NULL;
}

static void preload_start(void) {
  pthread_attr_t attr;
  pthread_t thread;
  if (pthread_attr_init(&attr) != 0) return;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_create(&thread, &attr, preload_main, NULL); /* on failure the loads happen where first needed */
  pthread_attr_destroy(&attr);
}

void zoo_cuda_preload(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, preload_start);
}

void zoo_cuda_api_set(const zoo_cu_api *cu, const zoo_cublaslt_api *lt) {
  lib_state *libs[2] = {&cu_lib, &cublaslt_lib};
  for (int k = 0; k < 2; k++) {
    pthread_mutex_lock(&libs[k]->lock);
    libs[k]->done = cu != NULL;
    libs[k]->status = 0;
    libs[k]->handle = NULL;
    libs[k]->why[0] = 0;
    pthread_mutex_unlock(&libs[k]->lock);
  }
  if (cu) zoo_cu = *cu;
  else memset(&zoo_cu, 0, sizeof zoo_cu);
  if (lt) zoo_cublaslt = *lt;
  else memset(&zoo_cublaslt, 0, sizeof zoo_cublaslt);
}

int zoo_cu_fail(CUresult r, const char *call, const char *file, int line, char *err, size_t n) {
  const char *name = NULL, *what = NULL;
  if (zoo_cu.cuGetErrorName) zoo_cu.cuGetErrorName(r, &name);
  if (zoo_cu.cuGetErrorString) zoo_cu.cuGetErrorString(r, &what);
  snprintf(err, n, "%s failed at %s:%d: %s (%d): %s", call, file, line, name ? name : "CUDA error",
           (int)r, what ? what : "no description");
  return -1;
}

int zoo_nvrtc_fail(nvrtcResult r, const char *call, const char *file, int line, char *err,
                   size_t n) {
  const char *what = zoo_nvrtc.nvrtcGetErrorString ? zoo_nvrtc.nvrtcGetErrorString(r) : NULL;
  snprintf(err, n, "%s failed at %s:%d: %s (%d)", call, file, line, what ? what : "NVRTC error",
           (int)r);
  return -1;
}

int zoo_cublaslt_fail(cublasStatus_t r, const char *call, const char *file, int line, char *err,
                      size_t n) {
  const char *what =
      zoo_cublaslt.cublasLtGetStatusString ? zoo_cublaslt.cublasLtGetStatusString(r) : NULL;
  snprintf(err, n, "%s failed at %s:%d: %s (%d)", call, file, line, what ? what : "cuBLAS error",
           (int)r);
  return -1;
}
