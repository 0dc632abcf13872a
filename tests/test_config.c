/* test_config.c: run configs and sweeps (config.h): the reference's files load
 * unchanged, the reference trainer's rewrites are printed, and bad configs and
 * flags give the located messages held in tests/golden/cfg_*.err. */
#include <stdlib.h>
#include <string.h>

#include "../runtime/config.h"
#include "test.h"

/* Loads path, applies flags, finishes; the diagnostics and the log go to *text
 * (caller frees). Returns what the first failing step returned. */
static int cfg_run(const char *path, const char **flags, int nflags, char **text,
                   zoo_config *keep) {
  size_t len;
  FILE *out = open_memstream(text, &len);
  zoo_diag d;
  zoo_diag_init(&d, out);
  zoo_config c;
  int rc = zoo_config_load(&c, path, &d);
  for (int i = 0; !rc && i < nflags; i++) rc = zoo_config_override(&c, flags[i], &d);
  if (!rc) rc = zoo_config_finish(&c, &d, out);
  fclose(out);
  if (keep && !rc) *keep = c;
  else zoo_config_free(&c);
  return rc;
}

TEST(config_reference_simple_mqar) {
  char *text;
  zoo_config c;
  CHECK(cfg_run("configs/simple_mqar.yaml", NULL, 0, &text, &c) == 0);
  CHECKF(strstr(text, "override: model.num_heads 2 -> 12 (reference trainer: 12 heads for mixers "
                      "without \"attention\"/\"rwkv\")\n") != NULL,
         "%s", text);
  CHECK(strstr(text, "override: model.max_position_embeddings 64 -> 48") != NULL);
  CHECK(strstr(text, "num_kv_pairs") == NULL); /* 48 / 4 = 12: as written, so not printed */
  CHECK(strstr(text, "note: 'logger' is accepted and ignored") != NULL);
  CHECK(c.input_seq_len == 48 && c.batch_size == 512 && c.gradient_accumulation_steps == 1);
  CHECK(c.num_kv_pairs == 12 && c.num_heads == 12 && c.d_model == 32 && c.n_layers == 2);
  CHECK(c.max_epochs == 64 && c.learning_rate == 3e-3 && c.weight_decay == 0.1);
  CHECK(c.seed == 44 && c.data_seed == 42 && c.vocab_size == 8192);
  CHECK(c.num_train_examples == 100000 && c.num_test_examples == 3000);
  CHECK(c.random_non_queries == 0 && c.early_stopping && c.early_stopping_threshold == 0.99);
  CHECK(!strcmp(c.run_id, "mqar_rebased") && c.ntags == 1 && !strcmp(c.tags[0], "simple_run"));
  CHECK(!strcmp(c.model_file, "models/rebased.zoo") && !strcmp(c.mixer, "rebased"));
  CHECK(c.ndefines == 4 && !strcmp(c.defines[2].name, "seq_len") &&
        !strcmp(c.defines[2].value, "48"));
  CHECK(zoo_config_check_model(&c, &(zoo_diag){.out = stderr}) == 0);
  zoo_config_free(&c);
  free(text);
}

/* config_mqar.yaml is the sweep's base: it names no mixer, so alone it is
 * refused with a hint, and with one it runs at the reference's defaults. */
TEST(config_reference_config_mqar) {
  char *text;
  CHECK(cfg_run("configs/config_mqar.yaml", NULL, 0, &text, NULL) == -1);
  CHECKF(strstr(text, "configs/config_mqar.yaml:9:1: error: the config names no model") != NULL,
         "%s", text);
  free(text);
  const char *flags[] = {"--model.sequence_mixer.name=based", "--data.input_seq_len=1024",
                         "--data.batch_size=512"};
  zoo_config c;
  CHECK(cfg_run("configs/config_mqar.yaml", flags, 3, &text, &c) == 0);
  CHECK(strstr(text, "override: data.batch_size 512 -> 128, gradient_accumulation_steps 1 -> 4") !=
        NULL);
  CHECK(strstr(text, "override: data.builder.kwargs.num_kv_pairs 4 -> 256") != NULL);
  CHECK(c.batch_size == 128 && c.gradient_accumulation_steps == 4 && c.num_kv_pairs == 256);
  CHECK(c.d_model == 128 && c.max_epochs == 64 && !strcmp(c.run_id, "mqar_sweep"));
  zoo_config_free(&c);
  free(text);
}

/* The attention mixers get one head; L = 128 gets 16 pairs. */
TEST(config_reference_rewrites) {
  char *text;
  zoo_config c;
  const char *flags[] = {"--model.sequence_mixer.name=conv_attention", "--data.input_seq_len=128",
                         "--model.num_heads=12"};
  CHECK(cfg_run("configs/config_mqar.yaml", flags, 3, &text, &c) == 0);
  CHECK(strstr(text, "override: model.num_heads 12 -> 1") != NULL);
  CHECK(c.num_heads == 1 && c.num_kv_pairs == 16 && c.batch_size == 32);
  zoo_config_free(&c);
  free(text);
}

TEST(config_reference_sweep) {
  size_t len;
  char *text;
  FILE *out = open_memstream(&text, &len);
  zoo_diag d;
  zoo_diag_init(&d, out);
  zoo_sweep s;
  CHECK(zoo_sweep_load(&s, "configs/main_fig_sweep.yaml", &d) == 0);
  CHECK(s.nruns == 4 * 5 * 5 * 4 * 5 && s.nparams == 6 && !strcmp(s.name, "main_fig"));
  zoo_config c;
  CHECK(zoo_sweep_run_config(&s, 0, &c, &d) == 0);
  CHECK(c.learning_rate == 5e-4 && !strcmp(c.mixer, "rebased") && c.seed == 42);
  CHECK(c.d_model == 64 && c.input_seq_len == 128 && c.batch_size == 512);
  zoo_config_free(&c);
  CHECK(zoo_sweep_run_config(&s, s.nruns - 1, &c, &d) == 0);
  CHECK(c.learning_rate == 1e-2 && !strcmp(c.mixer, "conv_attention") && c.seed == 46);
  CHECK(c.d_model == 512 && c.input_seq_len == 2048 && c.batch_size == 64 &&
        c.gradient_accumulation_steps == 8);
  zoo_config_free(&c);
  CHECK(zoo_sweep_list(&s, out, &d) == 0);
  fclose(out);
  CHECK(strstr(text, "run 2000/2000: --learning_rate=1e-2 --model.sequence_mixer.name="
                     "conv_attention --seed=46 --model.d_model=512 --data.input_seq_len=2048") !=
        NULL);
  zoo_sweep_free(&s);
  free(text);
}

/* The effective YAML reads back to itself (and the same hash). */
TEST(config_effective_round_trip) {
  char *text, *first, *second;
  size_t len;
  zoo_config c;
  const char *flags[] = {"--max_epochs=3", "--tags=[a, \"b c\"]", "--learning_rate=1e-3",
                         "--data.input_seq_len=512"};
  CHECK(cfg_run("configs/simple_mqar.yaml", flags, 4, &text, &c) == 0);
  free(text);
  FILE *f = open_memstream(&first, &len);
  zoo_config_write(f, &c);
  fclose(f);
  uint64_t h = zoo_config_hash(&c);
  zoo_config_free(&c);
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  CHECK(zoo_config_load_string(&c, "effective.yaml", first, &d) == 0);
  CHECK(zoo_config_finish(&c, &d, NULL) == 0);
  f = open_memstream(&second, &len);
  zoo_config_write(f, &c);
  fclose(f);
  CHECK(c.max_epochs == 3 && c.ntags == 2 && !strcmp(c.tags[1], "b c"));
  CHECK(c.batch_size == 256 && c.gradient_accumulation_steps == 2);
  CHECK(zoo_config_hash(&c) == h);
  CHECKF(!strcmp(strchr(first, '\n'), strchr(second, '\n')), "first:\n%s\nsecond:\n%s", first,
         second);
  zoo_config_free(&c);
  free(first);
  free(second);
}

/* The native form binds a .zoo model's own parameters. */
TEST(config_native_form) {
  const char *text = "data:\n  input_seq_len: 16\n  vocab_size: 64\n"
                     "model:\n  file: models/rebased.zoo\n"
                     "  params: {vocab_size: 64, d_model: 24, seq_len: 16, eps: 1e-5, "
                     "name: x, flag: true, dims: [1, 2]}\n";
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_config c;
  CHECK(zoo_config_load_string(&c, "native.yaml", text, &d) == 0);
  CHECK(zoo_config_override(&c, "--model.params.d_model=48", &d) == 0);
  CHECK(zoo_config_finish(&c, &d, NULL) == 0);
  CHECK(c.mixer == NULL && !strcmp(c.model_file, "models/rebased.zoo") && c.ndefines == 7);
  CHECK(!strcmp(c.defines[1].name, "d_model") && !strcmp(c.defines[1].value, "48"));
  CHECK(!strcmp(c.defines[3].value, "1e-5") && !strcmp(c.defines[4].value, "\"x\""));
  CHECK(!strcmp(c.defines[5].value, "true") && !strcmp(c.defines[6].value, "[1, 2]"));
  CHECK(c.num_kv_pairs == 4 && c.num_heads == 1); /* no rewrites in the native form */
  zoo_config_free(&c);
}

/* precision: fp32 by default; tf32 and bf16 accepted and written back */
TEST(config_precision) {
  const char *vals[3] = {NULL, "tf32", "bf16"}, *want[3] = {"fp32", "tf32", "bf16"};
  for (int k = 0; k < 3; k++) {
    char text[256];
    snprintf(text, sizeof text, "data:\n  input_seq_len: 16\n  vocab_size: 64\nmodel:\n"
             "  file: models/rebased.zoo\n%s%s\n", vals[k] ? "precision: " : "", vals[k] ? vals[k] : "");
    zoo_diag d;
    zoo_diag_init(&d, stderr);
    zoo_config c;
    CHECK(zoo_config_load_string(&c, "p.yaml", text, &d) == 0);
    CHECK(zoo_config_finish(&c, &d, NULL) == 0);
    CHECK(!strcmp(c.precision, want[k]));
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    zoo_config_write(f, &c);
    fclose(f);
    char line[32];
    snprintf(line, sizeof line, "\nprecision: %s\n", want[k]);
    CHECKF(strstr(out, line) != NULL, "%s", out);
    free(out);
    zoo_config_free(&c);
  }
}

/* One golden file per bad input: the whole diagnostic text. */
static void cfg_golden(zoo_test_ctx *t, const char *name, const char **flags, int nflags,
                       const char *base) {
  char path[256], golden[256], *text;
  snprintf(path, sizeof path, base ? "%s" : "tests/bad/%s.yaml", base ? base : name);
  snprintf(golden, sizeof golden, "tests/golden/%s.err", name);
  CHECK(cfg_run(path, flags, nflags, &text, NULL) == -1);
  zoo_test_golden(t, golden, text);
  free(text);
}

TEST(config_error_unknown_key) { cfg_golden(t, "cfg_unknown_key", NULL, 0, NULL); }
TEST(config_error_wrong_type) { cfg_golden(t, "cfg_wrong_type", NULL, 0, NULL); }
TEST(config_error_bad_value) { cfg_golden(t, "cfg_bad_value", NULL, 0, NULL); }
TEST(config_error_bad_range) { cfg_golden(t, "cfg_bad_range", NULL, 0, NULL); }
TEST(config_error_yaml_syntax) { cfg_golden(t, "cfg_yaml_syntax", NULL, 0, NULL); }
TEST(config_error_duplicate) { cfg_golden(t, "cfg_duplicate", NULL, 0, NULL); }

TEST(config_error_override_type) {
  const char *flags[] = {"--model.d_model=abc"};
  cfg_golden(t, "cfg_override_type", flags, 1, "configs/simple_mqar.yaml");
}

TEST(config_error_override_unknown) {
  const char *flags[] = {"--data.batch_sise=64"};
  cfg_golden(t, "cfg_override_unknown", flags, 1, "configs/simple_mqar.yaml");
}

TEST(config_error_override_value) {
  const char *flags[] = {"--model.n_layers=3"};
  cfg_golden(t, "cfg_override_value", flags, 1, "configs/simple_mqar.yaml");
}

TEST(config_error_override_syntax) {
  const char *flags[] = {"--tags=[a, b"};
  cfg_golden(t, "cfg_override_syntax", flags, 1, "configs/simple_mqar.yaml");
}
