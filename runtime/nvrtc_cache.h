/* nvrtc_cache.h: CUDA C to CUBIN through NVRTC, with an on-disk cache.
 *
 * The cache key hashes the source, the options, the architecture and NVRTC's
 * version (128 bits); a hit reads <dir>/<key>.cubin and skips the compiler. The
 * folder is $ZOO_CACHE_DIR, else $XDG_CACHE_HOME/zoo, else ~/.cache/zoo;
 * ZOO_NO_CACHE=1 turns the cache off. On a compile error the NVRTC log is
 * printed to stderr and the failing source is kept as <dir>/<key>.failed.cu, and
 * the returned message names that file.
 *
 * (Not named nvrtc.h: that would hide the toolkit header of the same name,
 * since runtime/ comes first on the include path.)
 *
 * NVRTC needs no GPU, so this works (and is tested) on machines without one.
 */
#ifndef ZOO_NVRTC_CACHE_H
#define ZOO_NVRTC_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct zoo_cubin {
  void *data; /* malloc'ed CUBIN image */
  size_t size;
  int cached;          /* 1 when it came from the disk cache */
  double compile_ms;   /* time spent in NVRTC (0 on a hit) */
  char key[33];        /* the cache key, hex */
} zoo_cubin;

/* Compiles `src` (a whole module, named `name` in messages) for `arch` ("sm_90").
 * Options always given: -arch=<arch> --std=c++17 -default-device; `opts` adds
 * more (NULL-terminated list, may be NULL), e.g. "-lineinfo". Returns 0 and fills
 * out, or -1 with the reason in err. */
int zoo_nvrtc_compile(const char *src, const char *name, const char *arch, const char *const *opts,
                      zoo_cubin *out, char *err, size_t errlen);
void zoo_cubin_free(zoo_cubin *c);

/* The same for a module split into up to `parts` sources (codegen_cuda.h's
 * zoo_cuda_split_module), compiled on as many threads as the machine has
 * cores, each source cached on its own. Fills out[0 .. *nout) (room for
 * ZOO_MODULE_PARTS_MAX), one CUBIN per source, each to be loaded as a module
 * of its own; every kernel of src is in exactly one. wall_ms (may be NULL)
 * gets the wall time, cache reads included. On an error no CUBIN is left and
 * err names the first failing part. ZOO_NVRTC_PARTS=n overrides `parts`. */
int zoo_nvrtc_compile_parts(const char *src, const char *name, const char *arch, const char *const *opts,
                            int parts, zoo_cubin *out, int *nout, double *wall_ms, char *err, size_t errlen);

/* A 128-bit hash for cache keys: two FNV-1a lanes from different starting
 * points, a separator after each field (so ("ab", "c") and ("a", "bc")
 * differ), each lane finished with a SplitMix64 mixer; 32 hex digits. The
 * kernel cache's keys and the stored GEMM picks' (gemm_choice.h) are made
 * with it. */
typedef struct zoo_key128 {
  uint64_t a, b;
} zoo_key128;
void zoo_key128_init(zoo_key128 *k);
void zoo_key128_add(zoo_key128 *k, const void *p, size_t n);
void zoo_key128_hex(const zoo_key128 *k, char out[33]);

/* The cache folder (made if missing) into buf; returns buf, or NULL if no folder
 * could be made. A compilation that finds no folder goes on without the cache
 * (a one-line note on stderr, once a process); one whose CUBIN cannot be
 * stored warns. */
char *zoo_nvrtc_cache_dir(char *buf, size_t n);

/* For filling the cache (zoorun bench --precompile): the folder into buf, made
 * if missing, and a file written into it and removed. Returns 0, or -1 with
 * the reason in err (the cache off, the folder not made or not writable). */
int zoo_nvrtc_cache_check(char *buf, size_t n, char *err, size_t errlen);

/* How many times in this process the cache could not be used: a compilation
 * without a folder, a CUBIN that could not be stored. A count that grows over
 * a precompilation means the cache did not get everything. */
int zoo_nvrtc_cache_failures(void);

/* "13.0" into buf (NVRTC's version), or -1 when NVRTC cannot be loaded. */
int zoo_nvrtc_version(char *buf, size_t n, char *err, size_t errlen);

#endif
