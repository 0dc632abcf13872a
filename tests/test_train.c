/* test_train.c: the trainer end to end on the CPU (configs/tiny_mqar.yaml), resume
 * against an uninterrupted run, a loss that turns nan, and the CPU backend's
 * AdamW against the formula. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../runtime/backend.h"
#include "../runtime/checkpoint.h"
#include "../runtime/config.h"
#include "../runtime/train.h"
#include "test.h"

/* Loads tiny_mqar.yaml with flags. */
static int tr_config(zoo_config *c, const char **flags, int n) {
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  if (zoo_config_load(c, "configs/tiny_mqar.yaml", &d)) return -1;
  for (int i = 0; i < n; i++)
    if (zoo_config_override(c, flags[i], &d)) return -1;
  return zoo_config_finish(c, &d, NULL);
}

static const char *tr_dir(const char *name) {
  static char buf[4][256];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "/tmp/zoo_test_train_%d/%s", (int)getpid(), name);
  return buf[k];
}

/* Trains; the diagnostics go to *text. One thread: the numbers do not depend on
 * the machine, and a busy machine does not slow the suite down. */
static int tr_train(zoo_config *c, const char *dir, int resume, int stop_after,
                    zoo_train_result *r, char **text) {
  size_t len;
  FILE *out = open_memstream(text, &len);
  zoo_diag d;
  zoo_diag_init(&d, out);
  zoo_train_opts o = {.device = "cpu", .out_dir = dir, .resume = resume,
                      .stop_after_epochs = stop_after, .quiet = 1, .out = out};
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  int rc = zoo_train(c, &o, r, &d);
  omp_set_num_threads(threads);
  fclose(out);
  return rc;
}

static int tr_exists(const char *dir, const char *file) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  return access(p, R_OK) == 0;
}

static void tr_rmdir(const char *dir) {
  const char *files[] = {"config.yaml", "metrics.jsonl", "summary.json",
                         "checkpoint.safetensors", "checkpoint.safetensors.tmp"};
  char p[512];
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, files[i]);
    unlink(p);
  }
  rmdir(dir);
  snprintf(p, sizeof p, "/tmp/zoo_test_train_%d", (int)getpid());
  rmdir(p); /* the tests' parent folder, once the last test's run has gone */
}

TEST(train_tiny_mqar_reaches_099) {
  zoo_config c;
  CHECK(tr_config(&c, NULL, 0) == 0);
  const char *dir = tr_dir("tiny");
  zoo_train_result r;
  char *text;
  int rc = tr_train(&c, dir, 0, 0, &r, &text);
  CHECKF(rc == 0, "%s", text);
  free(text);
  printf("  tiny_mqar: best valid accuracy %.4f after %d epochs, %lld steps, %.1f steps/s, "
         "%.2f s\n",
         r.best_accuracy, r.epochs, (long long)r.steps, r.steps_per_s, r.wall_s);
  CHECK(r.best_accuracy >= 0.99 && r.early_stopped);
  CHECK(r.epochs < c.max_epochs && r.steps == r.epochs * ((8000 + 63) / 64));
  CHECK(tr_exists(dir, "config.yaml") && tr_exists(dir, "metrics.jsonl") &&
        tr_exists(dir, "summary.json") && !tr_exists(dir, "checkpoint.safetensors.tmp"));
  /* metrics: one line per step, one per epoch */
  char p[512];
  snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
  char *m = zoo_test_read(p, NULL);
  int steps = 0, epochs = 0;
  for (char *s = m; (s = strstr(s, "{\"step\": ")); s++) steps++;
  for (char *s = m; (s = strstr(s, "\"valid_accuracy\": ")); s++) epochs++;
  free(m);
  CHECK(steps == r.steps && epochs == r.epochs);
  /* the checkpoint: every parameter, the optimiser state, the progress */
  zoo_ckpt ck;
  char err[600];
  snprintf(p, sizeof p, "%s/checkpoint.safetensors", dir);
  CHECKF(zoo_ckpt_load(p, &ck, err, sizeof err) == 0, "%s", err);
  CHECK(atoi(zoo_ckpt_meta_get(&ck, "epoch")) == r.epochs);
  CHECK(atoll(zoo_ckpt_meta_get(&ck, "step")) == r.steps);
  CHECK(!strcmp(zoo_ckpt_meta_get(&ck, "finished"), "1"));
  CHECK(zoo_ckpt_find(&ck, "backbone.embeddings.word_embeddings.weight") != NULL);
  CHECK(zoo_ckpt_find(&ck, "optim.m.backbone.embeddings.word_embeddings.weight") != NULL);
  zoo_ckpt_free(&ck);
  /* resuming a finished run does nothing and succeeds */
  zoo_train_result first = r;
  CHECK(tr_train(&c, dir, 1, 0, &r, &text) == 0);
  free(text);
  CHECK(r.epochs == first.epochs && r.steps == first.steps && r.best_accuracy >= 0.99);
  zoo_config_free(&c);
  tr_rmdir(dir);
}

/* The step losses of metrics.jsonl, in order. */
static int tr_losses(const char *dir, double *out, int cap) {
  char p[512];
  snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
  char *m = zoo_test_read(p, NULL);
  int n = 0;
  for (char *s = m; m && (s = strstr(s, "\"loss\": ")) && n < cap; s++) out[n++] = atof(s + 8);
  free(m);
  return n;
}

/* Three epochs straight, or one, a stop and --resume: the same parameters, the
 * same optimiser state, the same losses. */
TEST(train_resume_matches_uninterrupted) {
  const char *flags[] = {"--data.num_train_examples=640", "--data.num_test_examples=128", "--max_epochs=3",
                         "--early_stopping_threshold=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 4) == 0);
  const char *a = tr_dir("straight"), *b = tr_dir("resumed");
  zoo_train_result ra, rb;
  char *text;
  CHECK(tr_train(&c, a, 0, 0, &ra, &text) == 0);
  free(text);
  CHECK(tr_train(&c, b, 0, 1, &rb, &text) == 0);
  free(text);
  CHECK(rb.epochs == 1 && ra.epochs == 3);
  /* as if killed mid-epoch: lines past the checkpoint, which resuming drops */
  char pm[512];
  snprintf(pm, sizeof pm, "%s/metrics.jsonl", b);
  FILE *f = fopen(pm, "a");
  CHECK(f != NULL);
  fprintf(f, "{\"step\": 9999, \"epoch\": 1, \"loss\": 123, \"lr\": 0, \"elapsed_s\": 0}\n");
  fclose(f);
  CHECK(tr_train(&c, b, 1, 0, &rb, &text) == 0);
  CHECKF(rb.epochs == 3 && rb.steps == ra.steps, "%s", text);
  free(text);
  CHECK(rb.best_accuracy == ra.best_accuracy && rb.last_accuracy == ra.last_accuracy);

  zoo_ckpt ka, kb;
  char pa[512], pb[512], err[600];
  snprintf(pa, sizeof pa, "%s/checkpoint.safetensors", a);
  snprintf(pb, sizeof pb, "%s/checkpoint.safetensors", b);
  CHECK(zoo_ckpt_load(pa, &ka, err, sizeof err) == 0 && zoo_ckpt_load(pb, &kb, err, sizeof err) == 0);
  CHECK(ka.ntensors == kb.ntensors && ka.ntensors > 0);
  for (int i = 0; i < ka.ntensors; i++) {
    const zoo_ckpt_tensor *tb = zoo_ckpt_find(&kb, ka.tensors[i].name);
    CHECKF(tb && tb->numel == ka.tensors[i].numel, "%s", ka.tensors[i].name);
    CHECKF(!memcmp(tb->data, ka.tensors[i].data, (size_t)tb->numel * sizeof(float)),
           "tensor %s differs after resume", ka.tensors[i].name);
  }
  zoo_ckpt_free(&ka);
  zoo_ckpt_free(&kb);
  double la[200], lb[200];
  int na = tr_losses(a, la, 200), nb = tr_losses(b, lb, 200);
  CHECK(na == nb && na == ra.steps);
  for (int i = 0; i < na; i++) CHECKF(la[i] == lb[i], "step %d: %g vs %g", i + 1, la[i], lb[i]);
  zoo_config_free(&c);
  tr_rmdir(a);
  tr_rmdir(b);
}

/* An absurd learning rate: the run stops at the first non-finite loss, says
 * where, exits with an error, and the previous epoch's checkpoint survives. */
TEST(train_nan_loss_keeps_checkpoint) {
  const char *flags[] = {"--data.num_train_examples=640", "--data.num_test_examples=128", "--max_epochs=3",
                         "--early_stopping_threshold=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 4) == 0);
  const char *dir = tr_dir("nan");
  zoo_train_result r;
  char *text;
  CHECK(tr_train(&c, dir, 0, 1, &r, &text) == 0);
  free(text);
  zoo_config_free(&c);

  const char *bad[] = {"--data.num_train_examples=640", "--data.num_test_examples=128", "--max_epochs=3",
                       "--early_stopping_threshold=2", "--learning_rate=1e30"};
  CHECK(tr_config(&c, bad, 5) == 0);
  CHECK(tr_train(&c, dir, 1, 0, &r, &text) == -1);
  char ckpt[512], want[700];
  snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", dir);
  snprintf(want, sizeof want, "(epoch 2/3); the last good checkpoint is kept at %s\n", ckpt);
  CHECKF((strstr(text, "error: loss is nan at step ") || strstr(text, "error: loss is inf at step ")) &&
             strstr(text, want),
         "%s", text);
  free(text);
  zoo_ckpt ck;
  char err[600];
  CHECKF(zoo_ckpt_load(ckpt, &ck, err, sizeof err) == 0, "%s", err);
  CHECK(!strcmp(zoo_ckpt_meta_get(&ck, "epoch"), "1"));
  for (int i = 0; i < ck.ntensors; i++)
    for (int64_t k = 0; k < ck.tensors[i].numel; k++) CHECK(isfinite(ck.tensors[i].data[k]));
  zoo_ckpt_free(&ck);
  char p[512];
  snprintf(p, sizeof p, "%s/summary.json", dir);
  char *summary = zoo_test_read(p, NULL);
  CHECK(summary && strstr(summary, "\"status\": \"failed\""));
  free(summary);
  zoo_config_free(&c);

  /* from the start: nothing to keep */
  const char *dir2 = tr_dir("nan_fresh");
  CHECK(tr_config(&c, bad, 5) == 0);
  CHECK(tr_train(&c, dir2, 0, 0, &r, &text) == -1);
  CHECKF(strstr(text, "(epoch 1/3); no checkpoint was written yet"), "%s", text);
  CHECK(!tr_exists(dir2, "checkpoint.safetensors"));
  free(text);
  zoo_config_free(&c);
  tr_rmdir(dir);
  tr_rmdir(dir2);
}

/* A bad resume: no checkpoint, or a checkpoint of another model. */
TEST(train_resume_refused) {
  const char *flags[] = {"--data.num_train_examples=640", "--max_epochs=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 2) == 0);
  const char *dir = tr_dir("refused");
  zoo_train_result r;
  char *text;
  CHECK(tr_train(&c, dir, 1, 0, &r, &text) == -1);
  CHECKF(strstr(text, "nothing to resume: there is no checkpoint at"), "%s", text);
  free(text);
  CHECK(tr_train(&c, dir, 0, 1, &r, &text) == 0);
  free(text);
  zoo_config_free(&c);
  const char *other[] = {"--data.num_train_examples=640", "--max_epochs=2",
                         "--model.params.d_model=16"};
  CHECK(tr_config(&c, other, 3) == 0);
  CHECK(tr_train(&c, dir, 1, 0, &r, &text) == -1);
  CHECKF(strstr(text, "was written for another model"), "%s", text);
  free(text);
  zoo_config_free(&c);
  tr_rmdir(dir);
}

/* The run folder's files, read whole (NULL where absent). */
enum { TR_NFILES = 4 };
static const char *const tr_files[TR_NFILES] = {"config.yaml", "metrics.jsonl", "summary.json",
                                                 "checkpoint.safetensors"};

static void tr_read_all(const char *dir, char **text, size_t *len) {
  for (int i = 0; i < TR_NFILES; i++) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, tr_files[i]);
    text[i] = zoo_test_read(p, &len[i]);
  }
}

/* A run started over in the folder of a finished one that fails before its first
 * checkpoint leaves every file of the earlier run as it was; one that gets to its
 * first checkpoint replaces them all. */
TEST(train_failed_restart_keeps_earlier_run) {
  const char *flags[] = {"--data.num_train_examples=640", "--data.num_test_examples=128",
                         "--max_epochs=2", "--early_stopping_threshold=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 4) == 0);
  const char *dir = tr_dir("restart");
  zoo_train_result r;
  char *text;
  CHECK(tr_train(&c, dir, 0, 0, &r, &text) == 0);
  free(text);
  zoo_config_free(&c);
  char *before[TR_NFILES], *after[TR_NFILES];
  size_t nbefore[TR_NFILES], nafter[TR_NFILES];
  tr_read_all(dir, before, nbefore);
  for (int i = 0; i < TR_NFILES; i++) CHECKF(before[i], "%s/%s missing", dir, tr_files[i]);

  const char *bad[] = {"--data.num_train_examples=640", "--data.num_test_examples=128",
                       "--max_epochs=2", "--early_stopping_threshold=2", "--learning_rate=1e30"};
  CHECK(tr_config(&c, bad, 5) == 0);
  CHECK(tr_train(&c, dir, 0, 0, &r, &text) == -1);
  char want[600];
  snprintf(want, sizeof want, "note: the earlier run in %s is kept as it was", dir);
  CHECKF(strstr(text, "no checkpoint was written yet") && strstr(text, want), "%s", text);
  free(text);
  zoo_config_free(&c);
  tr_read_all(dir, after, nafter);
  for (int i = 0; i < TR_NFILES; i++) {
    CHECKF(after[i] && nafter[i] == nbefore[i] && !memcmp(after[i], before[i], nbefore[i]),
           "%s changed", tr_files[i]);
    free(after[i]);
  }
  CHECK(!tr_exists(dir, "config.yaml.new") && !tr_exists(dir, "metrics.jsonl.new"));

  /* a restart that writes its first checkpoint takes the folder over */
  const char *other[] = {"--data.num_train_examples=640", "--data.num_test_examples=128",
                         "--max_epochs=2", "--early_stopping_threshold=2", "--learning_rate=2e-3"};
  CHECK(tr_config(&c, other, 5) == 0);
  CHECK(tr_train(&c, dir, 0, 1, &r, &text) == 0);
  free(text);
  zoo_config_free(&c);
  CHECK(!tr_exists(dir, "config.yaml.new") && !tr_exists(dir, "metrics.jsonl.new"));
  tr_read_all(dir, after, nafter);
  CHECKF(after[0] && strstr(after[0], "0.002"), "%s", after[0] ? after[0] : "no config.yaml");
  CHECKF(after[1] && strstr(after[1], "{\"epoch\": 0,") && !strstr(after[1], "{\"epoch\": 1,"),
         "%s", after[1] ? after[1] : "no metrics.jsonl");
  CHECK(after[2] && strstr(after[2], "\"status\": \"interrupted\""));
  for (int i = 0; i < TR_NFILES; i++) free(before[i]), free(after[i]);
  tr_rmdir(dir);
}

/* Rewrites the checkpoint in dir with one metadata value changed; returns the
 * value it had (caller frees), or NULL with the reason in err. */
static char *tr_set_meta(const char *dir, const char *key, const char *value, char *err, size_t n) {
  char path[512];
  snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
  zoo_ckpt ck;
  if (zoo_ckpt_load(path, &ck, err, n)) return NULL;
  zoo_ckpt_meta meta[32];
  int k = 0;
  for (int i = 0; i < ck.nmeta && k < 32; i++, k++)
    meta[k] = (zoo_ckpt_meta){ck.meta[i].key, strcmp(ck.meta[i].key, key) ? ck.meta[i].value : value};
  char *old = strdup(zoo_ckpt_meta_get(&ck, key));
  if (zoo_ckpt_save(path, ck.tensors, ck.ntensors, meta, k, err, n)) free(old), old = NULL;
  zoo_ckpt_free(&ck);
  return old;
}

/* A checkpoint whose progress counters are not numbers a run could have written
 * is refused by name, not resumed from. */
TEST(train_resume_bad_metadata) {
  const char *flags[] = {"--data.num_train_examples=640", "--data.num_test_examples=128",
                         "--max_epochs=4", "--early_stopping_threshold=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 4) == 0);
  const char *dir = tr_dir("meta");
  zoo_train_result r;
  char *text;
  CHECK(tr_train(&c, dir, 0, 1, &r, &text) == 0);
  free(text);
  static const char *const cases[][2] = {
      {"epoch", "abc"}, {"epoch", "-5"},          {"epoch", "99999999999"},  {"step", "-1"},
      {"step", "7x"},   {"best_accuracy", "nan"}, {"last_accuracy", "2"},    {"finished", "yes"}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char err[600], *old = tr_set_meta(dir, cases[i][0], cases[i][1], err, sizeof err);
    CHECKF(old, "%s", err);
    CHECK(tr_train(&c, dir, 1, 1, &r, &text) == -1);
    char want[128];
    snprintf(want, sizeof want, "has a bad %s in its metadata ('%s')", cases[i][0], cases[i][1]);
    CHECKF(strstr(text, want), "%s: %s", cases[i][1], text);
    free(text);
    char *bad = tr_set_meta(dir, cases[i][0], old, err, sizeof err);
    CHECKF(bad, "%s", err);
    free(bad);
    free(old);
  }
  CHECK(tr_train(&c, dir, 1, 1, &r, &text) == 0); /* the file put back resumes */
  free(text);
  CHECK(r.epochs == 2);
  zoo_config_free(&c);
  tr_rmdir(dir);
}

/* A run folder that is a file, or a metrics file that cannot be written, stops the
 * run before it trains. */
TEST(train_unwritable_run_folder) {
  const char *flags[] = {"--data.num_train_examples=640", "--max_epochs=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 2) == 0);
  const char *file = tr_dir("a_file");
  char parent[256];
  snprintf(parent, sizeof parent, "/tmp/zoo_test_train_%d", (int)getpid());
  mkdir(parent, 0755);
  FILE *f = fopen(file, "w");
  CHECK(f);
  fclose(f);
  zoo_train_result r;
  char *text;
  CHECK(tr_train(&c, file, 0, 0, &r, &text) == -1);
  CHECKF(strstr(text, "as the run folder: Not a directory") && r.steps == 0, "%s", text);
  free(text);
  unlink(file);

  const char *dir = tr_dir("metrics_dir");
  char p[512];
  snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
  CHECK(mkdir(dir, 0755) == 0 && mkdir(p, 0755) == 0);
  CHECK(tr_train(&c, dir, 0, 0, &r, &text) == -1);
  CHECKF(strstr(text, "cannot write ") && strstr(text, "metrics.jsonl: Is a directory") && r.steps == 0,
         "%s", text);
  free(text);
  rmdir(p);
  zoo_config_free(&c);
  tr_rmdir(dir);
}

/* Writes text to dir/name. */
static void tr_write(const char *dir, const char *name, const char *text) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  if (f) fputs(text, f), fclose(f);
}

/* One run a folder: a second start while the folder is locked is refused. */
TEST(train_folder_locked) {
  const char *flags[] = {"--data.num_train_examples=640", "--max_epochs=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 2) == 0);
  const char *dir = tr_dir("locked");
  zoo_train_result r;
  char *text;
  CHECK(tr_train(&c, dir, 0, 1, &r, &text) == 0);
  free(text);
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  CHECK(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0); /* as another zoorun would */
  CHECK(tr_train(&c, dir, 1, 0, &r, &text) == -1);
  CHECKF(strstr(text, "another run is writing ") && r.steps == 0, "%s", text);
  free(text);
  close(fd);
  CHECK(tr_train(&c, dir, 1, 0, &r, &text) == 0);
  free(text);
  zoo_config_free(&c);
  tr_rmdir(dir);
}

/* A restart killed around its first checkpoint leaves config.yaml.new and
 * metrics.jsonl.new: the next start moves them in when the checkpoint is that
 * run's (its tag in the checkpoint and the staged config), else removes them. */
TEST(train_recovers_killed_restart) {
  const char *flags[] = {"--data.num_train_examples=640", "--data.num_test_examples=128",
                         "--max_epochs=3", "--early_stopping_threshold=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 4) == 0);
  const char *dir = tr_dir("recover");
  zoo_train_result r;
  char *text, err[600];
  CHECK(tr_train(&c, dir, 0, 1, &r, &text) == 0);
  free(text);

  /* killed before its first checkpoint: the checkpoint is not its own */
  tr_write(dir, "config.yaml.new", "# zoo run 1.2.3\nseed: 7\n");
  tr_write(dir, "metrics.jsonl.new", "{\"step\": 1, \"epoch\": 0, \"loss\": 9}\n");
  CHECK(tr_train(&c, dir, 1, 1, &r, &text) == 0);
  CHECKF(strstr(text, "removed the config and metrics of a run that was stopped"), "%s", text);
  free(text);
  CHECK(!tr_exists(dir, "config.yaml.new") && !tr_exists(dir, "metrics.jsonl.new"));

  /* killed after its first checkpoint's rename: the checkpoint is its own */
  char *old = tr_set_meta(dir, "run", "4.5.6", err, sizeof err);
  CHECKF(old, "%s", err);
  free(old);
  tr_write(dir, "config.yaml.new", "# zoo run 4.5.6\nseed: 7\n");
  tr_write(dir, "metrics.jsonl.new", "{\"step\": 1, \"epoch\": 0, \"loss\": 9}\n");
  CHECK(tr_train(&c, dir, 1, 1, &r, &text) == 0);
  CHECKF(strstr(text, "moved in the config and metrics of the run whose first checkpoint"), "%s",
         text);
  free(text);
  CHECK(!tr_exists(dir, "config.yaml.new") && !tr_exists(dir, "metrics.jsonl.new"));
  char p[512];
  snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
  char *m = zoo_test_read(p, NULL);
  CHECKF(m && !strncmp(m, "{\"step\": 1, \"epoch\": 0, \"loss\": 9}\n", 35), "%s", m ? m : "none");
  free(m);
  zoo_config_free(&c);
  tr_rmdir(dir);
}

/* A kill that cut metrics.jsonl's last line short: --resume drops the torn line. */
TEST(train_resume_drops_torn_line) {
  const char *flags[] = {"--data.num_train_examples=640", "--data.num_test_examples=128",
                         "--max_epochs=3", "--early_stopping_threshold=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 4) == 0);
  const char *dir = tr_dir("torn");
  zoo_train_result r;
  char *text;
  CHECK(tr_train(&c, dir, 0, 1, &r, &text) == 0);
  free(text);
  char p[512];
  snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
  FILE *f = fopen(p, "a");
  CHECK(f);
  fputs("{\"step\": 7", f);
  fclose(f);
  CHECK(tr_train(&c, dir, 1, 1, &r, &text) == 0);
  free(text);
  char *m = zoo_test_read(p, NULL);
  CHECK(m != NULL);
  int lines = 0, whole = 1;
  for (char *line = m; line && *line; lines++) {
    char *nl = strchr(line, '\n');
    char *second = strchr(line + 1, '{');
    whole &= nl && line[0] == '{' && nl[-1] == '}' && (!second || second > nl);
    line = nl ? nl + 1 : NULL;
  }
  CHECKF(whole && lines == 2 * (10 + 1), "%d lines: %s", lines, m);
  free(m);
  zoo_config_free(&c);
  tr_rmdir(dir);
}

/* SIGTERM (as SIGINT) stops a run after the step in flight: an error naming the
 * signal, the last checkpoint kept, summary.json "interrupted", and --resume
 * goes on from there. */
TEST(train_sigterm_stops_cleanly) {
  const char *flags[] = {"--data.num_train_examples=640", "--data.num_test_examples=128",
                         "--max_epochs=3", "--early_stopping_threshold=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 4) == 0);
  const char *dir = tr_dir("sigterm");
  zoo_train_result r;
  char *text;
  CHECK(tr_train(&c, dir, 0, 1, &r, &text) == 0); /* one epoch: a checkpoint */
  free(text);
  char p[512];
  snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
  pid_t self = getpid();
  pid_t child = fork(); /* signals once the resumed run has logged two more epochs */
  if (child == 0) {
    for (int i = 0; i < 4000; i++) {
      usleep(5000);
      FILE *f = fopen(p, "r");
      int lines = 0;
      for (int ch; f && (ch = fgetc(f)) != EOF;) lines += ch == '\n';
      if (f) fclose(f);
      if (lines >= 3 * (10 + 1)) break;
    }
    kill(self, SIGTERM);
    _exit(0);
  }
  c.max_epochs = 1000000; /* long enough to be stopped */
  int rc = tr_train(&c, dir, 1, 0, &r, &text);
  waitpid(child, NULL, 0);
  CHECKF(rc == -1 && r.signal == SIGTERM && strstr(text, "error: stopped by SIGTERM at step ") &&
             strstr(text, "the last checkpoint is kept at "),
         "rc %d signal %d: %s", rc, r.signal, text);
  free(text);
  snprintf(p, sizeof p, "%s/summary.json", dir);
  char *summary = zoo_test_read(p, NULL);
  CHECK(summary && strstr(summary, "\"status\": \"interrupted\""));
  free(summary);
  c.max_epochs = 3;
  CHECK(tr_train(&c, dir, 1, 0, &r, &text) == 0);
  CHECKF(r.epochs == 3, "%s", text);
  free(text);
  zoo_config_free(&c);
  tr_rmdir(dir);
}

/* --resume of a complete run rewrites nothing; with settings that would not have
 * stopped it there (a higher max_epochs), it goes on. */
TEST(train_resume_complete_run) {
  const char *flags[] = {"--data.num_train_examples=640", "--data.num_test_examples=128",
                         "--max_epochs=2", "--early_stopping_threshold=2"};
  zoo_config c;
  CHECK(tr_config(&c, flags, 4) == 0);
  const char *dir = tr_dir("complete");
  zoo_train_result r;
  char *text, *before[TR_NFILES], *after[TR_NFILES];
  size_t nbefore[TR_NFILES], nafter[TR_NFILES];
  CHECK(tr_train(&c, dir, 0, 0, &r, &text) == 0);
  free(text);
  tr_read_all(dir, before, nbefore);
  c.learning_rate = 5e-3; /* another config, which a complete run does not take */
  CHECK(tr_train(&c, dir, 1, 0, &r, &text) == 0);
  CHECKF(r.epochs == 2 && r.steps == 20, "%s", text);
  free(text);
  tr_read_all(dir, after, nafter);
  for (int i = 0; i < TR_NFILES; i++) {
    if (i != 2) /* summary.json is written again, with this call's wall time */
      CHECKF(after[i] && nafter[i] == nbefore[i] && !memcmp(after[i], before[i], nbefore[i]),
             "%s changed", tr_files[i]);
    free(after[i]);
    free(before[i]);
  }
  c.max_epochs = 3;
  CHECK(tr_train(&c, dir, 1, 0, &r, &text) == 0);
  CHECKF(r.epochs == 3 && r.steps == 30, "%s", text);
  free(text);
  zoo_config_free(&c);
  tr_rmdir(dir);
}

/* The CPU backend on a one-op model (logits = embedding rows): two micro-batches
 * accumulated with the seed 1/2, then one AdamW step, against the formulas. */
TEST(train_cpu_backend_adamw) {
  enum { V = 5, B = 2, T = 3 };
  zoo_graph g;
  zoo_graph_init(&g);
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_dim Bd = {1, 1u << zoo_graph_symbol(&g, "B")}, Td = {1, 1u << zoo_graph_symbol(&g, "T")};
  int tokens = zoo_graph_input(&g, "tokens", (zoo_type){ZOO_I32, 2, {Bd, Td}});
  int w = zoo_graph_param(&g, "w", (zoo_type){ZOO_F32, 2, {{V, 0}, {V, 0}}},
                          (zoo_init){.kind = ZOO_INIT_NORMAL, .a = 0.5});
  int in[2] = {w, tokens};
  g.output = zoo_graph_node(&g, ZOO_OP_EMBEDDING, 2, in, &(zoo_attrs){0}, zoo_nospan, &d);
  CHECK(g.output >= 0 && zoo_train_graph(&g, &d) == 0);
  char err[300];
  zoo_backend *be = zoo_cpu_backend_init(&g, B, T, err, sizeof err);
  CHECKF(be != NULL, "%s", err);
  float p0[V * V];
  float *pp[] = {p0};
  zoo_train_init_params(&g, 7, pp);
  CHECK(be->set_state(be, pp, NULL, NULL, 0) == 0);

  /* micro-batch 0: two rows; micro-batch 1: one row (the other padded) */
  int32_t tok0[B * T] = {1, 2, 3, 4, 0, 1}, tgt0[B * T] = {2, -100, 4, 0, 1, -100};
  int32_t tok1[B * T] = {3, 3, 2}, tgt1[B * T] = {1, 2, -100};
  const int32_t *toks[] = {tok0, tok1}, *tgts[] = {tgt0, tgt1};
  int rows[] = {2, 1};
  zoo_adamw opt = {0.01f, 0.9f, 0.999f, 1e-8f, 0.1f};
  zoo_metrics m;
  CHECK(be->train_step(be, 2, toks, tgts, rows, &opt, 1, &m) == 0);

  /* expected: g = sum over micro-batches of (1/2) mean over labelled (softmax - onehot) */
  double grad[V * V] = {0}, loss[2] = {0};
  for (int mb = 0; mb < 2; mb++) {
    const int32_t *tk = toks[mb], *tg = tgts[mb];
    int labelled = 0;
    for (int i = 0; i < rows[mb] * T; i++) labelled += tg[i] != -100;
    for (int i = 0; i < rows[mb] * T; i++) {
      if (tg[i] == -100) continue;
      const float *row = p0 + tk[i] * V;
      double mx = row[0], z = 0;
      for (int k = 1; k < V; k++) mx = row[k] > mx ? row[k] : mx;
      for (int k = 0; k < V; k++) z += exp(row[k] - mx);
      loss[mb] += (log(z) + mx - row[tg[i]]) / labelled;
      for (int k = 0; k < V; k++)
        grad[tk[i] * V + k] += 0.5 * (exp(row[k] - mx) / z - (k == tg[i])) / labelled;
    }
  }
  CHECKF(fabs(m.loss - (loss[0] + loss[1]) / 2) < 1e-5, "loss %g, want %g", m.loss,
         (loss[0] + loss[1]) / 2);
  CHECK(m.labelled == 4 + 2);
  float p1[V * V], m1[V * V], v1[V * V];
  float *pp1[] = {p1}, *mm[] = {m1}, *vv[] = {v1};
  int64_t step;
  CHECK(be->get_state(be, pp1, mm, vv, &step) == 0 && step == 1);
  for (int i = 0; i < V * V; i++) {
    double gi = grad[i];
    double mi = 0.1 * gi, vi = 0.001 * gi * gi;
    double want = p0[i] * (1 - 0.01 * 0.1) - 0.01 * (mi / 0.1) / (sqrt(vi / 0.001) + 1e-8);
    CHECKF(fabs(m1[i] - mi) < 1e-7 && fabs(v1[i] - vi) < 1e-9, "moment %d", i);
    CHECKF(fabs(p1[i] - want) < 2e-6, "param %d: %g, want %g (grad %g)", i, p1[i], want, gi);
  }
  /* eval sees the new parameters and does not train */
  zoo_metrics e;
  CHECK(be->eval_batch(be, tok0, tgt0, 2, &e) == 0 && e.labelled == 4);
  float p2[V * V];
  float *pp2[] = {p2};
  CHECK(be->get_state(be, pp2, NULL, NULL, &step) == 0 && step == 1);
  CHECK(!memcmp(p1, p2, sizeof p1));
  be->free(be);
  zoo_graph_free(&g);
}
