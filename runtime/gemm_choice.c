/* gemm_choice.c: cuBLASLt algorithm picks kept on disk (see gemm_choice.h). */
#include "gemm_choice.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nvrtc_cache.h"

/* Adds a number (every field is widened to 64 bits, so types may change). */
static void hash_i64(zoo_key128 *h, int64_t v) { zoo_key128_add(h, &v, sizeof v); }

void zoo_gemm_choice_key(const zoo_gemm_choice_in *in, char key[33]) {
  zoo_key128 h;
  zoo_key128_init(&h);
  hash_i64(&h, ZOO_GEMM_CHOICE_VERSION);
  const char *dev = in->device ? in->device : "";
  zoo_key128_add(&h, dev, strlen(dev));
  hash_i64(&h, in->sms);
  hash_i64(&h, (int64_t)in->lt_version);
  hash_i64(&h, in->precision);
  int64_t shape[] = {in->m, in->n, in->k, in->batch, in->stride_a, in->stride_b, in->stride_c};
  for (size_t i = 0; i < sizeof shape / sizeof shape[0]; i++) hash_i64(&h, shape[i]);
  int64_t flags[] = {in->trans_a, in->trans_b, in->bias, in->accumulate};
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) hash_i64(&h, flags[i]);
  hash_i64(&h, (int64_t)in->workspace);
  if (in->own) zoo_key128_add(&h, in->own, strlen(in->own)); /* zoo's kernel: candidate ncand */
  hash_i64(&h, in->ncand);
  hash_i64(&h, (int64_t)in->cand_size);
  const unsigned char *cand = in->cand;
  for (int c = 0; c < in->ncand; c++) zoo_key128_add(&h, cand + (size_t)c * in->cand_size, in->cand_size);
  zoo_key128_hex(&h, key);
}

int zoo_gemm_choice_path(const char *key, char *buf, size_t n) {
  /* read as the kernel cache reads it (nvrtc_cache.c), so one switch turns both off */
  const char *off = getenv("ZOO_NO_CACHE");
  char dir[1024];
  if ((off && strcmp(off, "1") == 0) || !zoo_nvrtc_cache_dir(dir, sizeof dir)) return -1;
  int len = snprintf(buf, n, "%s/gemm-%s.txt", dir, key);
  return len > 0 && (size_t)len < n ? 0 : -1;
}

int zoo_gemm_choice_load(const char *key, int ncand) {
  char path[1100];
  if (zoo_gemm_choice_path(key, path, sizeof path) != 0) return -1;
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  char text[16];
  size_t len = fread(text, 1, sizeof text, f);
  fclose(f);
  /* exactly: 1 to 4 digits, then an optional newline */
  if (len > 0 && text[len - 1] == '\n') len--;
  if (len < 1 || len > 4) return -1;
  int index = 0;
  for (size_t i = 0; i < len; i++) {
    if (text[i] < '0' || text[i] > '9') return -1;
    index = index * 10 + (text[i] - '0');
  }
  return index < ncand ? index : -1;
}

int zoo_gemm_choice_save(const char *key, int index, int replace, int ncand) {
  char path[1100], tmp[1200];
  if (index < 0 || index >= ncand || zoo_gemm_choice_path(key, path, sizeof path) != 0) return -1;
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) return -1;
  int put = fprintf(f, "%d\n", index);
  if (fclose(f) != 0 || put < 0) {
    remove(tmp);
    return -1;
  }
  if (!replace) {
    /* link() makes the final name only where there is none, atomically */
    if (link(tmp, path) == 0) {
      remove(tmp);
      return index;
    }
    int earlier = errno == EEXIST ? zoo_gemm_choice_load(key, ncand) : -1;
    if (earlier >= 0) {
      remove(tmp);
      return earlier;
    }
    /* a garbled file, or a file system without hard links: replace */
  }
  if (rename(tmp, path) != 0) {
    remove(tmp);
    return -1;
  }
  return index;
}
