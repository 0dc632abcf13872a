/* test_gemm_choice.c: the stored cuBLASLt picks (runtime/gemm_choice.h): the
 * key, the files' round trip, what a garbled file gives, ZOO_NO_CACHE. No GPU. */
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../runtime/gemm_choice.h"
#include "test.h"

/* Three made-up candidates of 64 bytes each (cublasLtMatmulAlgo_t's size) and a
 * GEMM that uses them. */
typedef struct key_case {
  uint64_t cand[3][8];
  char device[32];
  zoo_gemm_choice_in in;
} key_case;

static void key_case_init(key_case *c) {
  memset(c, 0, sizeof *c);
  for (int a = 0; a < 3; a++)
    for (int w = 0; w < 8; w++) c->cand[a][w] = 0x0123456789abcdefULL * (uint64_t)(a * 8 + w + 1);
  snprintf(c->device, sizeof c->device, "NVIDIA H200");
  c->in = (zoo_gemm_choice_in){.device = c->device, .sms = 132, .lt_version = 130100, .precision = 1,
                               .m = 8192, .n = 8192, .k = 64, .batch = 1, .stride_a = 0, .stride_b = 0,
                               .stride_c = 0, .trans_a = 0, .trans_b = 1, .bias = 0, .accumulate = 0,
                               .workspace = 32u << 20, .cand = c->cand, .cand_size = sizeof c->cand[0],
                               .ncand = 3};
}

static void key_of(key_case *c, char key[33]) {
  c->in.device = c->device;
  c->in.cand = c->cand;
  zoo_gemm_choice_key(&c->in, key);
}

TEST(gemm_choice_key) {
  key_case a, b;
  key_case_init(&a);
  key_case_init(&b);
  char ka[33], kb[33];
  key_of(&a, ka);
  key_of(&b, kb);
  CHECK(strlen(ka) == 32 && strspn(ka, "0123456789abcdef") == 32);
  CHECK(strcmp(ka, kb) == 0); /* equal inputs in different memory */

  /* every field changes it */
  for (int f = 0; f < 19; f++) {
    key_case_init(&b);
    zoo_gemm_choice_in *in = &b.in;
    switch (f) {
    case 0: b.device[11] = '!'; break;
    case 1: in->sms = 114; break;
    case 2: in->lt_version = 130101; break;
    case 3: in->precision = 2; break;
    case 4: in->m = 8193; break;
    case 5: in->n = 4096; break;
    case 6: in->k = 128; break;
    case 7: in->batch = 2; break;
    case 8: in->stride_a = 64; break;
    case 9: in->stride_b = 64; break;
    case 10: in->stride_c = 64; break;
    case 11: in->trans_a = 1; break;
    case 12: in->trans_b = 0; break;
    case 13: in->bias = 1; break;
    case 14: in->accumulate = 1; break;
    case 15: in->workspace = 16u << 20; break;
    case 16: in->ncand = 2; break; /* a shorter list */
    case 17: in->m = 8192 * 2, in->n = 8192 / 2; break; /* same product, other shape */
    case 18: in->k = 64 + (1ll << 32); break;        /* a high byte */
    }
    key_of(&b, kb);
    CHECKF(strcmp(ka, kb) != 0, "field %d does not change the key", f);
  }
  /* every byte of every candidate changes it */
  for (size_t byte = 0; byte < sizeof a.cand; byte++) {
    key_case_init(&b);
    ((unsigned char *)b.cand)[byte] ^= 0x01;
    key_of(&b, kb);
    CHECKF(strcmp(ka, kb) != 0, "candidate byte %zu does not change the key", byte);
  }
  /* the candidates' order counts */
  key_case_init(&b);
  memcpy(b.cand[0], a.cand[1], sizeof b.cand[0]);
  memcpy(b.cand[1], a.cand[0], sizeof b.cand[1]);
  key_of(&b, kb);
  CHECK(strcmp(ka, kb) != 0);
}

/* A fresh folder under $TMPDIR (or /tmp) into dir; 0 on success. */
static int temp_dir(char *dir, size_t n) {
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, n, "%s/zoo-gemm-choice-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  return mkdtemp(dir) ? 0 : -1;
}

/* Files in dir (not . and ..); with rm, removes them and the folder. */
static int dir_files(const char *dir, int rm) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    n++;
    if (rm) {
      char path[1200];
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      remove(path);
    }
  }
  closedir(d);
  if (rm) rmdir(dir);
  return n;
}

/* Writes text (len bytes) as key's file. */
static int write_choice(const char *key, const char *text, size_t len) {
  char path[1100];
  if (zoo_gemm_choice_path(key, path, sizeof path) != 0) return -1;
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t put = fwrite(text, 1, len, f);
  return fclose(f) == 0 && put == len ? 0 : -1;
}

TEST(gemm_choice_round_trip) {
  char dir[600];
  CHECK(temp_dir(dir, sizeof dir) == 0);
  char *saved_dir = zoo_test_env_set("ZOO_CACHE_DIR", dir);
  char *saved_off = zoo_test_env_set("ZOO_NO_CACHE", NULL);
  key_case c;
  key_case_init(&c);
  char key[33], other[33], path[1100];
  key_of(&c, key);
  c.in.k = 32;
  key_of(&c, other);
  int missing = zoo_gemm_choice_load(key, 8);
  int path_ok = zoo_gemm_choice_path(key, path, sizeof path) == 0;
  int put = zoo_gemm_choice_save(key, 3, 0, 8);
  int files_after_one = dir_files(dir, 0); /* no temporary left behind */
  int got = zoo_gemm_choice_load(key, 8);
  int got_other = zoo_gemm_choice_load(other, 8); /* another key's file is not read */
  int tight = zoo_gemm_choice_load(key, 4), out = zoo_gemm_choice_load(key, 3);
  /* a second process that timed the GEMM gets the first one's pick */
  int second = zoo_gemm_choice_save(key, 5, 0, 8), got2 = zoo_gemm_choice_load(key, 8);
  int files_after_two = dir_files(dir, 0);
  /* a retune overwrites it */
  int retuned = zoo_gemm_choice_save(key, 0, 1, 8), got3 = zoo_gemm_choice_load(key, 8);
  char *text = zoo_test_read(path, NULL);
  /* a stored index the candidates no longer reach is replaced */
  int five = zoo_gemm_choice_save(key, 5, 1, 8);
  int short_list = zoo_gemm_choice_save(key, 1, 0, 2), got4 = zoo_gemm_choice_load(key, 8);
  int neg = zoo_gemm_choice_save(other, -1, 0, 8), over = zoo_gemm_choice_save(other, 8, 1, 8);
  zoo_test_env_restore("ZOO_NO_CACHE", saved_off);
  zoo_test_env_restore("ZOO_CACHE_DIR", saved_dir);
  int files = dir_files(dir, 1);
  CHECK(missing == -1);
  CHECK(path_ok && strncmp(path, dir, strlen(dir)) == 0 && strstr(path, key) != NULL);
  CHECK(put == 3 && files_after_one == 1);
  CHECK(got == 3 && got_other == -1);
  CHECK(tight == 3 && out == -1); /* an index is trusted only below ncand */
  CHECKF(second == 3 && got2 == 3 && files_after_two == 1, "second save gave %d, then %d stored", second, got2);
  CHECK(retuned == 0 && got3 == 0);
  CHECKF(text && strcmp(text, "0\n") == 0, "the file holds \"%s\"", text ? text : "(none)");
  free(text);
  CHECKF(five == 5 && short_list == 1 && got4 == 1, "save over an index out of range gave %d, then %d stored", short_list, got4);
  CHECK(neg == -1 && over == -1);
  CHECK(files == 1);
}

TEST(gemm_choice_garbled_files) {
  char dir[600];
  CHECK(temp_dir(dir, sizeof dir) == 0);
  char *saved_dir = zoo_test_env_set("ZOO_CACHE_DIR", dir);
  char *saved_off = zoo_test_env_set("ZOO_NO_CACHE", NULL);
  key_case c;
  key_case_init(&c);
  char key[33];
  key_of(&c, key);
  static const struct {
    const char *text;
    size_t len;
    int want; /* with ncand 8 */
  } cases[] = {
      {"2", 1, 2},          {"2\n", 2, 2},        {"7\n", 2, 7},        {"8\n", 2, -1},
      {"", 0, -1},          {"\n", 1, -1},        {"x\n", 2, -1},       {"-1\n", 3, -1},
      {"+2\n", 3, -1},      {" 2\n", 3, -1},      {"2 \n", 3, -1},      {"2\n\n", 3, -1},
      {"2x", 2, -1},        {"0x2\n", 4, -1},     {"99999\n", 6, -1},   {"4294967298\n", 11, -1},
      {"\0\n", 2, -1},      {"2\0", 2, -1},       {"\xff\xfe\x02", 3, -1},
      {"1\n2\n3\n4\n5\n6\n7\n8\n9\n", 18, -1},
  };
  int n = (int)(sizeof cases / sizeof cases[0]), bad = -1, got = 0, written = 0;
  for (int i = 0; i < n && bad < 0; i++) {
    written = write_choice(key, cases[i].text, cases[i].len) == 0;
    got = zoo_gemm_choice_load(key, 8);
    if (!written || got != cases[i].want) bad = i;
  }
  /* a garbled file does not stop a pick being stored over it */
  int replaced = -2, after = -2;
  if (write_choice(key, "x\n", 2) == 0) {
    replaced = zoo_gemm_choice_save(key, 4, 0, 8);
    after = zoo_gemm_choice_load(key, 8);
  }
  zoo_test_env_restore("ZOO_NO_CACHE", saved_off);
  zoo_test_env_restore("ZOO_CACHE_DIR", saved_dir);
  int files = dir_files(dir, 1);
  CHECK(replaced == 4 && after == 4 && files == 1);
  CHECKF(bad < 0, "case %d: written %d, load gave %d, want %d", bad, written, got, cases[bad].want);
}

TEST(gemm_choice_no_cache) {
  char dir[600];
  CHECK(temp_dir(dir, sizeof dir) == 0);
  char *saved_dir = zoo_test_env_set("ZOO_CACHE_DIR", dir);
  char *saved_off = zoo_test_env_set("ZOO_NO_CACHE", NULL);
  key_case c;
  key_case_init(&c);
  char key[33], path[1100];
  key_of(&c, key);
  int put = zoo_gemm_choice_save(key, 5, 0, 8); /* stored while the cache is on */
  zoo_test_env_set("ZOO_NO_CACHE", "1");
  int got = zoo_gemm_choice_load(key, 8);  /* ... but not read with it off */
  int put_off = zoo_gemm_choice_save(key, 6, 1, 8);
  int path_off = zoo_gemm_choice_path(key, path, sizeof path);
  zoo_test_env_set("ZOO_NO_CACHE", NULL);
  int got_on = zoo_gemm_choice_load(key, 8); /* nor written */
  /* a cache folder that cannot be made: nothing stored, nothing read */
  char file[700];
  snprintf(file, sizeof file, "%s/gemm-%s.txt", dir, key);
  zoo_test_env_set("ZOO_CACHE_DIR", file); /* a file, not a folder */
  int put_bad = zoo_gemm_choice_save(key, 1, 1, 8), got_bad = zoo_gemm_choice_load(key, 8);
  zoo_test_env_restore("ZOO_NO_CACHE", saved_off);
  zoo_test_env_restore("ZOO_CACHE_DIR", saved_dir);
  int files = dir_files(dir, 1);
  CHECK(put == 5);
  CHECK(got == -1 && put_off == -1 && path_off == -1);
  CHECK(got_on == 5);
  CHECK(put_bad == -1 && got_bad == -1);
  CHECK(files == 1);
}
