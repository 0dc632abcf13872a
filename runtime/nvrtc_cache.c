/* nvrtc_cache.c: NVRTC compilation with an on-disk CUBIN cache (see nvrtc_cache.h). */
#include "nvrtc_cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "codegen_cuda.h"
#include "cuda_api.h"

/* 64-bit FNV-1a over bytes, continuing from h. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

void zoo_key128_init(zoo_key128 *k) {
  k->a = 0xcbf29ce484222325ULL;
  k->b = 0x84222325cbf29ce4ULL;
}

void zoo_key128_add(zoo_key128 *k, const void *p, size_t n) {
  k->a = fnv1a(k->a, p, n);
  k->b = fnv1a(k->b ^ 0x9e3779b97f4a7c15ULL, p, n);
  /* a separator, so ("ab", "c") and ("a", "bc") differ */
  unsigned char sep = 0xff;
  k->a = fnv1a(k->a, &sep, 1);
  k->b = fnv1a(k->b, &sep, 1);
}

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void zoo_key128_hex(const zoo_key128 *k, char out[33]) {
  snprintf(out, 33, "%016llx%016llx", (unsigned long long)mix64(k->a), (unsigned long long)mix64(k->b));
}

/* mkdir -p for one path; 0 when the folder exists afterwards, else -1 with
 * errno (ENOTDIR when the path is something other than a folder). */
static int make_dirs(const char *path) {
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    mkdir(buf, 0755);
    *p = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
  struct stat st;
  if (stat(buf, &st) != 0) return -1;
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    return -1;
  }
  return 0;
}

/* The cache folder's path, as zoo_nvrtc_cache_dir picks it, into buf. */
static void cache_path(char *buf, size_t n) {
  const char *dir = getenv("ZOO_CACHE_DIR");
  const char *xdg = getenv("XDG_CACHE_HOME");
  const char *home = getenv("HOME");
  if (dir && dir[0]) snprintf(buf, n, "%s", dir);
  else if (xdg && xdg[0]) snprintf(buf, n, "%s/zoo", xdg);
  else if (home && home[0]) snprintf(buf, n, "%s/.cache/zoo", home);
  else snprintf(buf, n, "/tmp/zoo-cache");
}

char *zoo_nvrtc_cache_dir(char *buf, size_t n) {
  cache_path(buf, n);
  return make_dirs(buf) == 0 ? buf : NULL;
}

int zoo_nvrtc_cache_check(char *buf, size_t n, char *err, size_t errlen) {
  const char *off = getenv("ZOO_NO_CACHE");
  cache_path(buf, n);
  if (off && strcmp(off, "1") == 0) {
    snprintf(err, errlen, "the kernel cache is off (ZOO_NO_CACHE=1)");
    return -1;
  }
  if (make_dirs(buf) != 0) {
    snprintf(err, errlen, "cannot make the kernel cache folder %s: %s", buf, strerror(errno));
    return -1;
  }
  char probe[1200];
  snprintf(probe, sizeof probe, "%s/.probe.%d", buf, (int)getpid());
  FILE *f = fopen(probe, "wb");
  int bad = !f || fputs("zoo", f) == EOF;
  int e = errno;
  if (f && fclose(f) != 0 && !bad) bad = 1, e = errno;
  if (f) remove(probe);
  if (bad) {
    snprintf(err, errlen, "cannot write into the kernel cache folder %s: %s", buf, strerror(e));
    return -1;
  }
  return 0;
}

/* The cache writes that failed in this process, and whether the note that
 * compilation goes on without a cache folder was printed (once a process);
 * compile_source runs on several threads (zoo_nvrtc_compile_parts). */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static int cache_failures, cache_noted;

static void cache_failed(const char *note) {
  pthread_mutex_lock(&cache_lock);
  cache_failures++;
  if (note && !cache_noted) fprintf(stderr, "zoo: note: %s; compiling without the kernel cache\n", note);
  if (note) cache_noted = 1;
  pthread_mutex_unlock(&cache_lock);
}

int zoo_nvrtc_cache_failures(void) {
  pthread_mutex_lock(&cache_lock);
  int n = cache_failures;
  pthread_mutex_unlock(&cache_lock);
  return n;
}

/* Whether compilations read and write the cache, its folder into dir (n
 * bytes). A folder that cannot be made is noted on stderr and counted as a
 * failed cache write. */
static int cache_in_use(char *dir, size_t n) {
  const char *off = getenv("ZOO_NO_CACHE");
  if (off && strcmp(off, "1") == 0) return 0;
  if (zoo_nvrtc_cache_dir(dir, n)) return 1;
  char note[1200];
  snprintf(note, sizeof note, "cannot make the kernel cache folder %s: %s", dir, strerror(errno));
  cache_failed(note);
  return 0;
}

int zoo_nvrtc_version(char *buf, size_t n, char *err, size_t errlen) {
  if (zoo_nvrtc_load(err, errlen) != 0) return -1;
  int major = 0, minor = 0;
  ZOO_NVRTC_N(err, errlen, nvrtcVersion(&major, &minor));
  snprintf(buf, n, "%d.%d", major, minor);
  return 0;
}

/* Reads a whole regular file into malloc'ed memory; NULL if missing, empty or
 * something else (a folder where a cache file would be). */
static void *read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
    fclose(f);
    return NULL;
  }
  size_t len = (size_t)st.st_size;
  void *data = malloc(len);
  size_t got = data ? fread(data, 1, len, f) : 0;
  fclose(f);
  if (got != len) {
    free(data);
    return NULL;
  }
  *size = got;
  return data;
}

/* Writes a file under a temporary name, then renames it, so a reader never sees
 * half a file (several processes may share the cache). Returns 0, or -1 with
 * errno. */
static int write_file_atomic(const char *path, const void *data, size_t size) {
  char tmp[1200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) return -1;
  int bad = fwrite(data, 1, size, f) != size, e = errno;
  if (fclose(f) != 0 && !bad) bad = 1, e = errno;
  if (!bad && rename(tmp, path) != 0) bad = 1, e = errno;
  if (bad) {
    remove(tmp);
    errno = e;
    return -1;
  }
  return 0;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Runs NVRTC proper: source to CUBIN, or the log on failure (kept beside the
 * cached failing source). */
static int compile_now(const char *src, const char *name, const char **opts, int nopts,
                       const char *failed_path, zoo_cubin *out, char *err, size_t errlen) {
  nvrtcProgram prog;
  ZOO_NVRTC_N(err, errlen, nvrtcCreateProgram(&prog, src, name, 0, NULL, NULL));
  nvrtcResult r = zoo_nvrtc.nvrtcCompileProgram(prog, nopts, opts);
  size_t logsize = 0;
  zoo_nvrtc.nvrtcGetProgramLogSize(prog, &logsize);
  char *log = calloc(1, logsize + 1);
  if (logsize > 1) zoo_nvrtc.nvrtcGetProgramLog(prog, log);
  if (r != NVRTC_SUCCESS) {
    int kept = failed_path && write_file_atomic(failed_path, src, strlen(src)) == 0;
    fprintf(stderr, "zoo: NVRTC failed to compile %s (%s):\n%s\n", name,
            zoo_nvrtc.nvrtcGetErrorString(r), log);
    if (kept) fprintf(stderr, "zoo: the failing source is kept in %s\n", failed_path);
    snprintf(err, errlen, "NVRTC could not compile %s: %s; source kept in %s; log: %.300s", name,
             zoo_nvrtc.nvrtcGetErrorString(r), kept ? failed_path : "(not kept)", log);
    free(log);
    zoo_nvrtc.nvrtcDestroyProgram(&prog);
    return -1;
  }
  if (getenv("ZOO_NVRTC_LOG") && logsize > 1) fprintf(stderr, "zoo: NVRTC log for %s:\n%s\n", name, log);
  free(log);
  size_t size = 0;
  nvrtcResult r2 = zoo_nvrtc.nvrtcGetCUBINSize(prog, &size);
  if (r2 != NVRTC_SUCCESS || size == 0) {
    zoo_nvrtc.nvrtcDestroyProgram(&prog);
    snprintf(err, errlen, "nvrtcGetCUBINSize failed for %s (is the architecture a real sm_XX?)", name);
    return -1;
  }
  out->data = malloc(size);
  out->size = size;
  r2 = zoo_nvrtc.nvrtcGetCUBIN(prog, out->data);
  zoo_nvrtc.nvrtcDestroyProgram(&prog);
  if (r2 != NVRTC_SUCCESS) {
    free(out->data);
    out->data = NULL;
    return zoo_nvrtc_fail(r2, "nvrtcGetCUBIN(prog, data)", __FILE__, __LINE__, err, errlen);
  }
  return 0;
}

static int compile_source(const char *src, const char *name, const char *arch, const char *const *opts,
                          zoo_cubin *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  if (zoo_nvrtc_load(err, errlen) != 0) return -1;
  int major = 0, minor = 0;
  ZOO_NVRTC_N(err, errlen, nvrtcVersion(&major, &minor));

  char archopt[64];
  snprintf(archopt, sizeof archopt, "-arch=%s", arch);
  const char *all[64];
  int nall = 0;
  all[nall++] = archopt;
  all[nall++] = "--std=c++17";
  all[nall++] = "-default-device";
  for (int i = 0; opts && opts[i] && nall < 63; i++) all[nall++] = opts[i];

  zoo_key128 k;
  zoo_key128_init(&k);
  zoo_key128_add(&k, src, strlen(src));
  for (int i = 0; i < nall; i++) zoo_key128_add(&k, all[i], strlen(all[i]));
  int ver[2] = {major, minor};
  zoo_key128_add(&k, ver, sizeof ver);
  zoo_key128_hex(&k, out->key);

  char dir[1024], path[1100], failed[1100];
  int use_cache = cache_in_use(dir, sizeof dir);
  if (!use_cache) snprintf(dir, sizeof dir, "/tmp");
  snprintf(path, sizeof path, "%s/%s.cubin", dir, out->key);
  snprintf(failed, sizeof failed, "%s/%s.failed.cu", dir, out->key);

  if (use_cache) {
    out->data = read_file(path, &out->size);
    if (out->data) {
      out->cached = 1;
      return 0;
    }
  }
  double t0 = now_ms();
  if (compile_now(src, name, all, nall, failed, out, err, errlen) != 0) return -1;
  out->compile_ms = now_ms() - t0;
  if (use_cache && write_file_atomic(path, out->data, out->size) != 0) {
    fprintf(stderr, "zoo: warning: cannot write the kernel cache file %s: %s\n", path, strerror(errno));
    cache_failed(NULL);
  }
  return 0;
}

/* Every kernel gets its entry wait here (codegen_cuda.h), so that whoever
 * emitted the source, what runs is what zooc writes to generated/. */
int zoo_nvrtc_compile(const char *src, const char *name, const char *arch, const char *const *opts,
                      zoo_cubin *out, char *err, size_t errlen) {
  char *full = zoo_cuda_entry_waits(src);
  int r = compile_source(full, name, arch, opts, out, err, errlen);
  free(full);
  return r;
}

/* One source of a split module, compiled by whichever thread claims it. */
typedef struct part_job {
  char **srcs;
  int n, next;
  pthread_mutex_t lock;
  const char *name, *arch;
  const char *const *opts;
  zoo_cubin *out;
  int *status;
  char (*errs)[512];
} part_job;

static void *part_worker(void *arg) {
  part_job *j = arg;
  for (;;) {
    pthread_mutex_lock(&j->lock);
    int i = j->next < j->n ? j->next++ : -1;
    pthread_mutex_unlock(&j->lock);
    if (i < 0) return NULL;
    char name[300];
    snprintf(name, sizeof name, "%s (part %d of %d)", j->name, i + 1, j->n);
    j->status[i] = compile_source(j->srcs[i], j->n > 1 ? name : j->name, j->arch, j->opts, &j->out[i],
                                  j->errs[i], sizeof j->errs[i]);
  }
}

/* ZOO_NVRTC_PARTS=n: split into n sources instead of the caller's number (1:
 * the whole module at once, for measuring). The number decides what the
 * cache holds, so callers pass one that does not depend on the machine: a
 * module precompiled on one machine is found on another. */
static int parts_wanted(int parts) {
  const char *v = getenv("ZOO_NVRTC_PARTS");
  if (v && *v) parts = atoi(v);
  if (parts < 1) parts = 1;
  return parts > ZOO_MODULE_PARTS_MAX ? ZOO_MODULE_PARTS_MAX : parts;
}

int zoo_nvrtc_compile_parts(const char *src, const char *name, const char *arch, const char *const *opts,
                            int parts, zoo_cubin *out, int *nout, double *wall_ms, char *err, size_t errlen) {
  char *full = zoo_cuda_entry_waits(src);
  char *srcs[ZOO_MODULE_PARTS_MAX];
  int n = zoo_cuda_split_module(full, parts_wanted(parts), srcs);
  free(full);
  memset(out, 0, (size_t)n * sizeof *out);
  *nout = 0;
  int status[ZOO_MODULE_PARTS_MAX];
  char errs[ZOO_MODULE_PARTS_MAX][512];
  part_job j = {.srcs = srcs, .n = n, .name = name, .arch = arch, .opts = opts, .out = out,
                .status = status, .errs = errs};
  pthread_mutex_init(&j.lock, NULL);
  double t0 = now_ms();
  int r = zoo_nvrtc_load(err, errlen); /* once, before the threads */
  if (r == 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = cpus > 1 ? (int)(cpus < n ? cpus : n) : 1;
    pthread_t th[ZOO_MODULE_PARTS_MAX];
    int started = 0;
    for (int t = 1; t < nt; t++)
      if (pthread_create(&th[started], NULL, part_worker, &j) == 0) started++;
    part_worker(&j); /* this thread takes its share too */
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    for (int i = 0; i < n && r == 0; i++)
      if (status[i] != 0) {
        snprintf(err, errlen, "%s", errs[i]);
        r = -1;
      }
  }
  pthread_mutex_destroy(&j.lock);
  for (int i = 0; i < n; i++) free(srcs[i]);
  if (r != 0) {
    for (int i = 0; i < n; i++) zoo_cubin_free(&out[i]);
    return -1;
  }
  *nout = n;
  if (wall_ms) *wall_ms = now_ms() - t0;
  return 0;
}

void zoo_cubin_free(zoo_cubin *c) {
  free(c->data);
  c->data = NULL;
  c->size = 0;
}
