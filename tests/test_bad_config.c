/* test_bad_config.c: bad configs, flags and checkpoints that once ran wrong or
 * said the wrong thing: a model shorter or narrower than the data, model.params
 * errors located at a made-up command line, resumes refused over a path's
 * spelling, a directory where a file belongs, lax numeric flags, "did you mean"
 * the option itself, a mixer list that forgot rwkv, checkpoint shapes that
 * overflow, and batches larger than the data. Whole messages are in
 * tests/golden/cfgx_*.err. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../runtime/checkpoint.h"
#include "../runtime/config.h"
#include "test.h"

/* Loads path (or, with text, that text named path), applies flags, finishes.
 * Diagnostics go to *out (caller frees); *c is kept (caller frees). Shared with
 * test_bad_cli.c (test.h). */
int zoo_test_config(const char *path, const char *text, const char **flags, int nflags,
                    zoo_config *c, char **out) {
  size_t len;
  FILE *f = open_memstream(out, &len);
  zoo_diag d;
  zoo_diag_init(&d, f);
  int rc = text ? zoo_config_load_string(c, path, text, &d) : zoo_config_load(c, path, &d);
  for (int i = 0; !rc && i < nflags; i++) rc = zoo_config_override(c, flags[i], &d);
  if (!rc) rc = zoo_config_finish(c, &d, NULL);
  fclose(f);
  return rc;
}

/* What the trainer does after the config: compile the model (its defines
 * located in the config) and check it against the data. Diagnostics to *out. */
static int bx_compile_check(zoo_config *c, char **out) {
  size_t len;
  FILE *f = open_memstream(out, &len);
  zoo_diag d;
  zoo_diag_init(&d, f);
  zoo_program *p = NULL;
  zoo_compile_opts o = {.path = c->model_file, .defines = c->defines, .ndefines = c->ndefines,
                        .define_at = c->define_at, .std_dir = "models"};
  int rc = zoo_config_check_model(c, &d);
  if (!rc) rc = zoo_compile(&o, &d, &p);
  if (!rc) rc = zoo_config_check_program(c, p, &d);
  zoo_program_free(p);
  fclose(f);
  return rc;
}

/* A fixture that must load and then fail at compile-and-check, with the golden text. */
static void bx_golden_program(zoo_test_ctx *t, const char *name) {
  char path[256], golden[256], *text;
  snprintf(path, sizeof path, "tests/bad/%s.yaml", name);
  snprintf(golden, sizeof golden, "tests/golden/%s.err", name);
  zoo_config c;
  int rc = zoo_test_config(path, NULL, NULL, 0, &c, &text);
  CHECKF(rc == 0, "%s", text);
  free(text);
  rc = bx_compile_check(&c, &text);
  zoo_config_free(&c);
  if (rc != -1) free(text);
  CHECK(rc == -1);
  zoo_test_golden(t, golden, text);
  free(text);
}

/* ---- 1: the model's seq_len and vocab_size against the data's ---- */

TEST(bad_config_model_seq_len_shorter) { bx_golden_program(t, "cfgx_seq_len"); }
TEST(bad_config_model_vocab_smaller) { bx_golden_program(t, "cfgx_vocab_size"); }

/* Set by the model's own default (no model.params entry): reported at the data's key. */
TEST(bad_config_model_default_seq_len) {
  const char *text = "data:\n  input_seq_len: 256\n  vocab_size: 512\n"
                     "model:\n  file: models/conv_attention.zoo\n"
                     "  params: {vocab_size: 512, d_model: 16}\n";
  zoo_config c;
  char *out;
  CHECK(zoo_test_config("default.yaml", text, NULL, 0, &c, &out) == 0);
  free(out);
  CHECK(bx_compile_check(&c, &out) == -1);
  zoo_config_free(&c);
  CHECKF(strstr(out, "default.yaml:2:18: error: data.input_seq_len: the model's seq_len 128 is "
                     "shorter than data.input_seq_len 256; bind it in model.params.seq_len") &&
             zoo_test_count(out, "error:") == 1,
         "%s", out);
  free(out);
}

/* Model and data that agree pass; a model without such parameters is not checked. */
TEST(bad_config_model_fits_data) {
  zoo_config c;
  char *out;
  CHECK(zoo_test_config("configs/tiny_mqar.yaml", NULL, NULL, 0, &c, &out) == 0);
  free(out);
  CHECKF(bx_compile_check(&c, &out) == 0, "%s", out);
  free(out);
  zoo_program none = {0};
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  CHECK(zoo_config_check_program(&c, &none, &d) == 0 && d.nerrors == 0);
  zoo_config_free(&c);
}

/* ---- 2: model.params errors carry the YAML's location ---- */

TEST(bad_config_param_unknown_located) { bx_golden_program(t, "cfgx_param_unknown"); }
TEST(bad_config_param_type_located) { bx_golden_program(t, "cfgx_param_type"); }

/* From a flag: at the flag itself, not at a "-D" nobody typed. */
TEST(bad_config_param_flag_located) {
  const char *flags[] = {"--model.params.d_modle=32"};
  zoo_config c;
  char *out;
  CHECK(zoo_test_config("configs/tiny_mqar.yaml", NULL, flags, 1, &c, &out) == 0);
  free(out);
  CHECK(bx_compile_check(&c, &out) == -1);
  zoo_config_free(&c);
  CHECKF(strstr(out, "<command line>:1:1: error: model conv_attention has no parameter 'd_modle'; "
                     "did you mean 'd_model'?\n    --model.params.d_modle=32\n") &&
             !strstr(out, "-D "),
         "%s", out);
  free(out);
}

/* ---- 3: the model hash is of the model, not of how its path and params are written ---- */

static uint64_t bx_model_hash(const char *file, const char *params) {
  char text[512];
  snprintf(text, sizeof text, "data:\n  input_seq_len: 16\n  vocab_size: 64\n"
           "model:\n  file: %s\n  params: %s\n", file, params);
  zoo_config c;
  char *out;
  uint64_t h = 0;
  if (zoo_test_config("hash.yaml", text, NULL, 0, &c, &out) == 0 && zoo_config_check_model(&c, &(zoo_diag){.out = stderr}) == 0)
    h = zoo_config_model_hash(&c);
  free(out);
  zoo_config_free(&c);
  return h;
}

TEST(bad_config_model_hash_spelling) {
  char cwd[1024], abs_path[1200];
  CHECK(getcwd(cwd, sizeof cwd) != NULL);
  snprintf(abs_path, sizeof abs_path, "%s/models/conv_attention.zoo", cwd);
  const char *params = "{vocab_size: 64, d_model: 32, seq_len: 16, num_heads: 1}";
  uint64_t h = bx_model_hash("models/conv_attention.zoo", params);
  CHECK(h != 0);
  CHECK(bx_model_hash("./models/conv_attention.zoo", params) == h);
  CHECK(bx_model_hash("models//std/../conv_attention.zoo", params) == h);
  CHECK(bx_model_hash(abs_path, params) == h);
  CHECK(bx_model_hash("models/conv_attention.zoo",
                      "{num_heads: 1, seq_len: 16, d_model: 32, vocab_size: 64}") == h);
  /* what differs is another model */
  CHECK(bx_model_hash("models/conv_attention.zoo",
                      "{vocab_size: 64, d_model: 16, seq_len: 16, num_heads: 1}") != h);
  CHECK(bx_model_hash("models/attention.zoo", params) != h);
  /* numbers written one way */
  CHECK(bx_model_hash("models/rebased.zoo", "{eps: 1e-5, d_model: 32}") ==
        bx_model_hash("models/rebased.zoo", "{d_model: 32, eps: 0.000010}"));
  CHECK(bx_model_hash("models/rebased.zoo", "{d_model: 32, eps: 2.0}") !=
        bx_model_hash("models/rebased.zoo", "{d_model: 32, eps: 2}"));
}

/* ---- 4: model.file naming a directory ---- */

TEST(bad_config_model_file_directory) {
  const char *flags[] = {"--model.file=models"};
  zoo_config c;
  char *out;
  CHECK(zoo_test_config("configs/tiny_mqar.yaml", NULL, flags, 1, &c, &out) == 0);
  free(out);
  CHECK(bx_compile_check(&c, &out) == -1);
  zoo_config_free(&c);
  CHECKF(strstr(out, "<command line>:1:14: error: model.file: 'models' is a directory, not a "
                     ".zoo file\n") && zoo_test_count(out, "error:") == 1,
         "%s", out);
  free(out);
}

/* ---- 5: zoorun's numeric flags are parsed strictly ---- */

/* Runs bin/zoorun with args; its stderr and stdout to *out. Returns the exit status. */
static int bx_zoorun(const char *args, char **out) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "bin/zoorun %s 2>&1", args);
  return zoo_test_sh(cmd, out);
}

TEST(bad_config_stop_after_epochs) {
  if (access("bin/zoorun", X_OK)) SKIP("no bin/zoorun (make all)");
  const char *bad[] = {"abc", "-1", "0", "2x", "", " 3", "99999999999"};
  for (int i = 0; i < 7; i++) {
    char args[256], *out, want[128];
    snprintf(args, sizeof args, "--config configs/tiny_mqar.yaml --device cpu --quiet "
             "--out /tmp/zoo_test_bx_%d '--stop-after-epochs=%s'", (int)getpid(), bad[i]);
    int rc = bx_zoorun(args, &out);
    snprintf(want, sizeof want,
             "zoorun: error: --stop-after-epochs must be a positive integer (got '%s')\n", bad[i]);
    CHECKF(rc == 1 && !strcmp(out, want), "'%s': rc %d: %s", bad[i], rc, out);
    free(out);
  }
  char *out; /* a good count passes the flag (and stops at the missing config) */
  CHECK(bx_zoorun("--config tests/bad/cfgx_absent.yaml --stop-after-epochs 2", &out) == 1);
  CHECKF(!strstr(out, "stop-after-epochs") && strstr(out, "cfgx_absent.yaml"), "%s", out);
  free(out);
}

/* ---- 6: a section given as a key ---- */

TEST(bad_config_override_section) {
  const char *flags[][1] = {{"--data=5"}, {"--data.builder.kwargs=3"}, {"--model.sequence_mixer=x"}};
  const char *want[] = {
      "<command line>:1:1: error: --data is a section, not a key; override one of its keys "
      "(--data.KEY=VALUE): builder.*, seed, num_train_examples, num_test_examples, input_seq_len, "
      "vocab_size, batch_size, cache_dir, caching, force_cache\n",
      "error: --data.builder.kwargs is a section, not a key; override one of its keys "
      "(--data.builder.kwargs.KEY=VALUE): num_kv_pairs, train_power_a, test_power_a, "
      "random_non_queries\n",
      "error: --model.sequence_mixer is a section, not a key; override one of its keys "
      "(--model.sequence_mixer.KEY=VALUE): name, kwargs\n"};
  for (int i = 0; i < 3; i++) {
    zoo_config c;
    char *out;
    CHECK(zoo_test_config("configs/tiny_mqar.yaml", NULL, flags[i], 1, &c, &out) == -1);
    zoo_config_free(&c);
    CHECKF(strstr(out, want[i]) && !strstr(out, "did you mean"), "%s", out);
    free(out);
  }
  /* the model section lists a dozen keys, then "..." */
  zoo_config c;
  char *out;
  const char *model[] = {"--model=1"};
  CHECK(zoo_test_config("configs/tiny_mqar.yaml", NULL, model, 1, &c, &out) == -1);
  zoo_config_free(&c);
  CHECKF(strstr(out, "(--model.KEY=VALUE): file, params, sequence_mixer.*, state_mixer.*, "
                     "d_model, ") && strstr(out, ", ...\n"), "%s", out);
  free(out);
}

TEST(bad_config_sweep_section) {
  size_t len;
  char *out;
  FILE *f = open_memstream(&out, &len);
  zoo_diag d;
  zoo_diag_init(&d, f);
  zoo_sweep s;
  CHECK(zoo_sweep_load(&s, "tests/bad/cfgx_sweep_section.yaml", &d) == -1);
  zoo_sweep_free(&s);
  fclose(f);
  zoo_test_golden(t, "tests/golden/cfgx_sweep_section.err", out);
  free(out);
}

/* ---- 7: the mixers zoo has, rwkv included ---- */

TEST(bad_config_mixer_list) {
  const char *bad_name[] = {"--model.sequence_mixer.name=Foo-x"};
  zoo_config c;
  char *out;
  CHECK(zoo_test_config("configs/config_mqar.yaml", NULL, bad_name, 1, &c, &out) == -1);
  zoo_config_free(&c);
  CHECKF(strstr(out, "'Foo-x' is not a mixer name (zoo has attention, based, conv_attention, "
                     "rebased, rwkv") != NULL, "%s", out);
  free(out);
  const char *missing[] = {"--model.sequence_mixer.name=foo"};
  CHECK(zoo_test_config("configs/config_mqar.yaml", NULL, missing, 1, &c, &out) == 0);
  free(out);
  CHECK(bx_compile_check(&c, &out) == -1);
  zoo_config_free(&c);
  CHECKF(strstr(out, "no model for sequence mixer 'foo': models/foo.zoo does not exist (zoo has "
                     "attention, based, conv_attention, rebased, rwkv") != NULL, "%s", out);
  free(out);
  /* and rwkv itself is a mixer the reference form runs */
  const char *rwkv[] = {"--model.sequence_mixer.name=rwkv", "--data.input_seq_len=16",
                        "--data.vocab_size=64", "--model.vocab_size=64", "--model.d_model=16"};
  CHECK(zoo_test_config("configs/config_mqar.yaml", NULL, rwkv, 5, &c, &out) == 0);
  free(out);
  CHECKF(bx_compile_check(&c, &out) == 0, "%s", out);
  zoo_config_free(&c);
  free(out);
}

/* ---- 8: checkpoints ---- */

static const char *bx_ckpt_path(const char *name) {
  static char buf[256];
  snprintf(buf, sizeof buf, "/tmp/zoo_test_bx_%d_%s", (int)getpid(), name);
  return buf;
}

/* A file with a hand-written header (8-byte length, JSON) and n zero data bytes. */
static void bx_ckpt_raw(const char *path, const char *json, size_t data_bytes) {
  size_t hl = strlen(json), total = 8 + hl + data_bytes;
  char *buf = calloc(1, total);
  for (int k = 0; k < 8; k++) buf[k] = (char)((uint64_t)hl >> (8 * k));
  memcpy(buf + 8, json, hl);
  FILE *f = fopen(path, "wb");
  if (f) {
    fwrite(buf, 1, total, f);
    fclose(f);
  }
  free(buf);
}

/* Loads a hand-written file; returns the error text (static), or NULL if it loaded. */
static const char *bx_ckpt_error(const char *json, size_t data_bytes) {
  static char err[600];
  const char *path = bx_ckpt_path("bad.safetensors");
  bx_ckpt_raw(path, json, data_bytes);
  zoo_ckpt ck;
  int rc = zoo_ckpt_load(path, &ck, err, sizeof err);
  unlink(path);
  if (rc == 0) {
    zoo_ckpt_free(&ck);
    return NULL;
  }
  return strchr(err, ' ') + 1; /* after "<path>: " */
}

TEST(bad_config_checkpoint_shape_overflow) {
  const char *e = bx_ckpt_error(
      "{\"w\": {\"dtype\": \"F32\", \"shape\": [1099511627776, 1099511627776], "
      "\"data_offsets\": [0, 8192]}}", 8192);
  CHECKF(e && !strcmp(e, "corrupt header: tensor 'w' has a shape too large (more than 2^40 "
                         "elements)"), "%s", e ? e : "(loaded)");
  e = bx_ckpt_error("{\"w\": {\"dtype\": \"F32\", \"shape\": [65536, 65536, 65536, 65536], "
                    "\"data_offsets\": [0, 8]}}", 8);
  CHECKF(e && strstr(e, "has a shape too large"), "%s", e ? e : "(loaded)");
  /* a zero dimension is not large: an empty tensor */
  e = bx_ckpt_error("{\"w\": {\"dtype\": \"F32\", \"shape\": [0, 1099511627776], "
                    "\"data_offsets\": [0, 0]}}", 0);
  CHECKF(e == NULL, "%s", e);
}

TEST(bad_config_checkpoint_directory) {
  const char *dir = bx_ckpt_path("dir.safetensors");
  CHECK(mkdir(dir, 0755) == 0);
  zoo_ckpt ck;
  char err[600], want[400];
  int rc = zoo_ckpt_load(dir, &ck, err, sizeof err);
  rmdir(dir);
  CHECK(rc == -1);
  snprintf(want, sizeof want, "%s: is a directory, not a checkpoint file", dir);
  CHECKF(!strcmp(err, want), "%s", err);
}

TEST(bad_config_checkpoint_duplicate_key) {
  const char *e = bx_ckpt_error("{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": "
                                "[0, 4]}, \"x\": {\"dtype\": \"F32\", \"shape\": [1], "
                                "\"data_offsets\": [4, 8]}}", 8);
  CHECKF(e && !strcmp(e, "corrupt header: tensor 'x' appears twice"), "%s", e ? e : "(loaded)");
  e = bx_ckpt_error("{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                    "\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4);
  CHECKF(e && !strcmp(e, "corrupt header: tensor 'x' appears twice"), "%s", e ? e : "(loaded)");
  e = bx_ckpt_error("{\"__metadata__\": {\"a\": \"1\", \"a\": \"2\"}}", 0);
  CHECKF(e && !strcmp(e, "corrupt header: metadata 'a' appears twice"), "%s", e ? e : "(loaded)");
  e = bx_ckpt_error("{\"__metadata__\": {}, \"__metadata__\": {}}", 0);
  CHECKF(e && !strcmp(e, "corrupt header: __metadata__ appears twice"), "%s", e ? e : "(loaded)");
}

/* ---- 9: batches of distinct examples ---- */

TEST(bad_config_batch_larger_than_data) {
  const char *flags[] = {"--data.num_train_examples=256", "--data.batch_size=100000"};
  zoo_config c;
  char *out;
  CHECK(zoo_test_config("configs/tiny_mqar.yaml", NULL, flags, 2, &c, &out) == -1);
  zoo_config_free(&c);
  CHECKF(!strcmp(out, "<command line>:1:19: error: data.batch_size: must be at most "
                      "data.num_train_examples (256)\n    --data.batch_size=100000\n"
                      "                      ^~~~~~\n"),
         "%s", out);
  free(out);
  /* the whole set in one batch is fine */
  const char *whole[] = {"--data.num_train_examples=256", "--data.batch_size=256"};
  CHECK(zoo_test_config("configs/tiny_mqar.yaml", NULL, whole, 2, &c, &out) == 0);
  zoo_config_free(&c);
  free(out);
}

/* More micro-batches accumulated than an epoch has: refused at the key, before training. */
TEST(bad_config_accumulation_beyond_epoch) {
  const char *flags[] = {"--data.num_train_examples=256", "--gradient_accumulation_steps=5"};
  zoo_config c;
  char *out;
  CHECK(zoo_test_config("configs/tiny_mqar.yaml", NULL, flags, 2, &c, &out) == -1);
  zoo_config_free(&c);
  CHECKF(strstr(out, "<command line>:1:31: error: gradient_accumulation_steps: an epoch of 256 "
                     "examples is 4 micro-batches of 64, fewer than the 5 accumulated in an "
                     "optimiser step\n") != NULL,
         "%s", out);
  free(out);
}

/* model.vocab_size (the reference form's) does not bind a native model: a large
 * data vocabulary is checked against the model's own (zoo_config_check_program). */
TEST(bad_config_native_ignores_model_vocab_size) {
  const char *flags[] = {"--data.vocab_size=9000", "--model.params.vocab_size=9000"};
  zoo_config c;
  char *out;
  CHECKF(zoo_test_config("configs/tiny_mqar.yaml", NULL, flags, 2, &c, &out) == 0, "%s", out);
  zoo_config_free(&c);
  free(out);
}
