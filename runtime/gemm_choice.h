/* gemm_choice.h: cuBLASLt algorithm picks kept on disk, so runs repeat.
 *
 * The CUDA backend times the candidates cuBLASLt's heuristic offers for each
 * GEMM and keeps the fastest (gemm_tune in cuda.c). A pick by timing can differ
 * from run to run, and with it the GEMM's rounding, so two runs of one config
 * would not give the same numbers bit for bit. The pick is therefore saved, one
 * small file per GEMM, <dir>/gemm-<key>.txt holding the candidate's index, in
 * the kernel cache's folder (nvrtc_cache.h: $ZOO_CACHE_DIR, else ...;
 * ZOO_NO_CACHE=1 turns it off), and a later run with the same key reuses it.
 *
 * The key hashes everything the choice depends on: the device (name and SM
 * count), cuBLASLt's version, the GEMM (precision, shape, strides, transposes,
 * bias, accumulation, workspace) and the raw bytes of every candidate the
 * heuristic returned, in order, so a heuristic that answers differently gives a
 * new key instead of an index into another list.
 *
 * Nothing here needs a GPU; a file that cannot be read or written is skipped, a
 * file whose contents are not a valid index is ignored (and replaced).
 */
#ifndef ZOO_GEMM_CHOICE_H
#define ZOO_GEMM_CHOICE_H

#include <stddef.h>
#include <stdint.h>

/* Bumped when the key's inputs or the file's form change. */
#define ZOO_GEMM_CHOICE_VERSION 1

/* What a pick depends on. */
typedef struct zoo_gemm_choice_in {
  const char *device;  /* cuDeviceGetName's */
  int sms;             /* CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT */
  size_t lt_version;   /* cublasLtGetVersion() */
  int precision;       /* zoo_precision (backend.h) */
  int64_t m, n, k, batch;
  int64_t stride_a, stride_b, stride_c;
  int trans_a, trans_b;
  int bias;            /* 1 with the bias epilogue */
  int accumulate;      /* 1 when beta != 0 (C is read) */
  const char *own;     /* zoo's own kernel offered as candidate ncand (its template
                          arguments), or NULL */
  uint64_t workspace;  /* cuBLASLt's workspace limit, bytes */
  const void *cand;    /* the heuristic's candidates, ncand of cand_size bytes each */
  size_t cand_size;
  int ncand;
} zoo_gemm_choice_in;

/* The key: 32 hex digits and a NUL into key. */
void zoo_gemm_choice_key(const zoo_gemm_choice_in *in, char key[33]);

/* The file of a key into buf; -1 when the cache is off (ZOO_NO_CACHE=1) or has
 * no folder. */
int zoo_gemm_choice_path(const char *key, char *buf, size_t n);

/* The stored candidate index for key, in [0, ncand), or -1 when there is none
 * (no file, cache off, unreadable, not a number, out of range). */
int zoo_gemm_choice_load(const char *key, int ncand);

/* Stores index for key, through a temporary file, so a reader in another
 * process never sees half a file. With replace 0 a valid pick already stored
 * stands (the first process to store wins, and the others adopt its pick: the
 * processes of a sweep that tune one GEMM at once then agree); with replace 1
 * (a retune) index goes over it. Returns the index stored now, index or the
 * earlier one, or -1 when nothing is stored (cache off, folder not writable). */
int zoo_gemm_choice_save(const char *key, int index, int replace, int ncand);

#endif
