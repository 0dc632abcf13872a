/* test_bad_cli.c: zoorun's command line and the config checks behind it, where
 * bad input once ran wrong or said the wrong thing: --dry-run without --sweep
 * training for real, a sweep's dry run ignoring run options, a closed stdout
 * killing the run (SIGPIPE), "--KEY VALUE" refused, a sweep file given as a
 * config, run_ids that break summary.json and config.yaml, strings that
 * config.yaml did not read back as written, sweep grids that overflow, hide
 * parameters, list a run twice or never check the model, learning rates a float
 * cannot hold, negative early-stopping thresholds, and messages about the wrong
 * thing. Whole messages are in tests/golden/clix_*.err. */
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../runtime/config.h"
#include "test.h"

/* One flag on configs/tiny_mqar.yaml: finish's return, its messages in *out. */
static int cl_flag(const char *flag, char **out) {
  zoo_config c;
  int rc = zoo_test_config("configs/tiny_mqar.yaml", NULL, &flag, 1, &c, out);
  zoo_config_free(&c);
  return rc;
}

/* Runs `sh -c cmd` (bin/zoorun ...) with stdout and stderr to *out. Returns the
 * exit status (-1: killed). */
static int cl_sh(const char *cmd, char **out) {
  char *full = malloc(strlen(cmd) + 8);
  sprintf(full, "%s 2>&1", cmd);
  int st = zoo_test_sh(full, out);
  free(full);
  return st;
}

static int cl_zoorun(const char *args, char **out) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "bin/zoorun %s", args);
  return cl_sh(cmd, out);
}

/* A folder for a run's output, /tmp/zoo_test_clix_<pid>_<name>, removed first. */
static const char *cl_dir(const char *name) {
  static char buf[256], cmd[300];
  snprintf(buf, sizeof buf, "/tmp/zoo_test_clix_%d_%s", (int)getpid(), name);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", buf);
  int rc = system(cmd);
  (void)rc;
  return buf;
}

static int cl_exists(const char *dir, const char *file) {
  char path[512];
  snprintf(path, sizeof path, "%s%s%s", dir, file ? "/" : "", file ? file : "");
  return access(path, F_OK) == 0;
}

#define TINY "--config configs/tiny_mqar.yaml --device cpu --quiet " \
             "--data.num_train_examples=256 --data.num_test_examples=64 --max_epochs=2"

/* ---- 1: --dry-run goes with --sweep; it does not train ---- */

TEST(bad_cli_dry_run_without_sweep) {
  if (access("bin/zoorun", X_OK)) SKIP("no bin/zoorun (make all)");
  const char *dir = cl_dir("dry");
  char args[512], *out;
  snprintf(args, sizeof args, TINY " --dry-run --out %s", dir);
  int rc = cl_zoorun(args, &out);
  CHECKF(rc == 1 && !strcmp(out, "zoorun: error: --dry-run goes with --sweep (zoorun --sweep "
                                 "FILE --dry-run); with --config, zoorun trains\n"),
         "rc %d: %s", rc, out);
  free(out);
  CHECK(!cl_exists(dir, NULL));
}

/* ---- 2: a sweep's dry run refuses the options of a run ---- */

TEST(bad_cli_sweep_run_options) {
  if (access("bin/zoorun", X_OK)) SKIP("no bin/zoorun (make all)");
  char *out;
  int rc = cl_zoorun("--sweep configs/main_fig_sweep.yaml --dry-run --resume --out /nonexistent/x "
                     "--stop-after-epochs=3", &out);
  CHECKF(rc == 1 && !strcmp(out, "zoorun: error: --sweep takes no --out, --stop-after-epochs or "
                                 "--resume (options of a run: zoorun --config FILE); --sweep "
                                 "FILE --dry-run lists and checks a grid\n"),
         "rc %d: %s", rc, out);
  free(out);
  const char *one[] = {"--device cpu", "--device=auto", "--quiet", "--resume", "--out x"};
  for (int i = 0; i < 5; i++) {
    char args[256];
    snprintf(args, sizeof args, "--sweep configs/main_fig_sweep.yaml --dry-run %s", one[i]);
    rc = cl_zoorun(args, &out);
    CHECKF(rc == 1 && strstr(out, "zoorun: error: --sweep takes no --") &&
               !strstr(out, "run 1/"),
           "%s: rc %d: %s", one[i], rc, out);
    free(out);
  }
  rc = cl_zoorun("--sweep configs/main_fig_sweep.yaml --dry-run", &out); /* alone: fine */
  CHECKF(rc == 0 && strstr(out, "run 2000/2000:"), "rc %d: %s", rc, out);
  free(out);
}

/* ---- 3: a reader that closes stdout does not kill the run ---- */

TEST(bad_cli_closed_stdout) {
  if (access("bin/zoorun", X_OK)) SKIP("no bin/zoorun (make all)");
  const char *dir = cl_dir("pipe");
  int fd[2];
  CHECK(pipe(fd) == 0);
  close(fd[0]); /* nobody reads: every write to stdout fails (EPIPE, or SIGPIPE) */
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    signal(SIGPIPE, SIG_DFL); /* the runner's own setting is not inherited */
    unsetenv("OMP_WAIT_POLICY"); /* so that zoorun re-executes itself, as it does in a shell */
    int null = open("/dev/null", O_WRONLY);
    dup2(fd[1], 1);
    dup2(null, 2);
    execl("bin/zoorun", "bin/zoorun", "--config", "configs/tiny_mqar.yaml", "--device", "cpu",
          "--data.num_train_examples=256", "--data.num_test_examples=64", "--max_epochs=2",
          "--out", dir, (char *)NULL);
    _exit(127);
  }
  close(fd[1]);
  int st;
  CHECK(waitpid(pid, &st, 0) == pid);
  CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d%s", WIFEXITED(st) ? WEXITSTATUS(st)
         : WTERMSIG(st), WIFEXITED(st) ? "" : " (signal)");
  CHECK(cl_exists(dir, "summary.json") && cl_exists(dir, "checkpoint.safetensors"));
  char path[512];
  snprintf(path, sizeof path, "%s/summary.json", dir);
  char *summary = zoo_test_read(path, NULL);
  CHECKF(summary && strstr(summary, "\"status\": \"finished\""), "%s", summary);
  free(summary);
  cl_dir("pipe"); /* removes it */
}

/* ---- 4: --KEY VALUE for config overrides ---- */

TEST(bad_cli_override_space_form) {
  if (access("bin/zoorun", X_OK)) SKIP("no bin/zoorun (make all)");
  const char *dir = cl_dir("space");
  char args[512], *out;
  snprintf(args, sizeof args, "--config configs/tiny_mqar.yaml --device cpu --quiet "
           "--data.num_train_examples 256 --data.num_test_examples=64 --max_epochs 2 "
           "--weight_decay -0.0 --out %s", dir);
  int rc = cl_zoorun(args, &out);
  CHECKF(rc == 0, "rc %d: %s", rc, out);
  free(out);
  char path[512];
  snprintf(path, sizeof path, "%s/config.yaml", dir);
  char *cfg = zoo_test_read(path, NULL);
  CHECKF(cfg && strstr(cfg, "\nmax_epochs: 2\n") && strstr(cfg, "  num_train_examples: 256\n"),
         "%s", cfg);
  free(cfg);
  /* no value: a config key says so; anything else is an unknown argument */
  rc = cl_zoorun("--config configs/tiny_mqar.yaml --max_epochs", &out);
  CHECKF(rc == 1 && !strcmp(out, "zoorun: error: --max_epochs needs a value: --max_epochs=VALUE "
                                 "or --max_epochs VALUE\n"), "rc %d: %s", rc, out);
  free(out);
  rc = cl_zoorun("--config configs/tiny_mqar.yaml --run_id --quiet", &out);
  CHECKF(rc == 1 && strstr(out, "--run_id needs a value"), "rc %d: %s", rc, out);
  free(out);
  rc = cl_zoorun("--config configs/tiny_mqar.yaml --resum", &out);
  CHECKF(rc == 1 && !strcmp(out, "zoorun: error: unknown argument '--resum' (zoorun --help)\n"),
         "rc %d: %s", rc, out);
  free(out);
  /* a misspelt key with a value is the override's "did you mean" */
  rc = cl_zoorun("--config configs/tiny_mqar.yaml --max_epoch 3", &out);
  CHECKF(rc == 1 && strstr(out, "error: unknown option --max_epoch (did you mean --max_epochs?)"),
         "rc %d: %s", rc, out);
  free(out);
  CHECK(zoo_config_known_key("max_epochs") && zoo_config_known_key("data") &&
        zoo_config_known_key("model.params.x") && !zoo_config_known_key("model.params.") &&
        !zoo_config_known_key("resume"));
  cl_dir("space"); /* removes it */
}

/* ---- 5: a sweep file where a run config belongs ---- */

TEST(bad_cli_sweep_file_as_config) {
  zoo_config c;
  char *out;
  CHECK(zoo_test_config("configs/main_fig_sweep.yaml", NULL, NULL, 0, &c, &out) == -1);
  zoo_config_free(&c);
  CHECKF(!strcmp(out, "configs/main_fig_sweep.yaml:1:1: error: this is a sweep file, not a run "
                      "config: zoorun --sweep configs/main_fig_sweep.yaml --dry-run\n"
                      "    program: src/train.py\n    ^~~~~~~\n"),
         "%s", out);
  free(out);
  /* a run config with a key named parameters is not taken for one */
  const char *text = "parameters: 1\nmodel:\n  file: models/rebased.zoo\n";
  CHECK(zoo_test_config("p.yaml", text, NULL, 0, &c, &out) == -1);
  zoo_config_free(&c);
  CHECKF(strstr(out, "unknown key 'parameters'") && !strstr(out, "sweep"), "%s", out);
  free(out);
}

/* ---- 6: run_id, and strings that config.yaml reads back as written ---- */

TEST(bad_cli_run_id) {
  static const struct {
    const char *yaml, *why;
  } bad[] = {
      {"'a\"b\\c'", "must not hold quotes or backslashes"},
      {"\"it's\"", "must not hold quotes or backslashes"},
      {"\"a\\nb\"", "must not hold control characters (a newline, a tab)"},
      {"\"a\\tb\"", "must not hold control characters (a newline, a tab)"},
      {"\"  \"", "must not be blank"},
      {"\"\"", "must not be empty"},
      {"\" a\"", "must not start or end with a space"},
      {"\"a \"", "must not start or end with a space"},
      {"a/b", "must be a plain name"},
      {"..", "must be a plain name"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char text[256], want[256], *out;
    snprintf(text, sizeof text, "model:\n  file: models/rebased.zoo\nrun_id: %s\n", bad[i].yaml);
    snprintf(want, sizeof want, "r.yaml:3:9: error: run_id: %s (it names the folder "
             "runs/<run_id>)\n", bad[i].why);
    zoo_config c;
    int rc = zoo_test_config("r.yaml", text, NULL, 0, &c, &out);
    zoo_config_free(&c);
    CHECKF(rc == -1 && !strncmp(out, want, strlen(want)) && zoo_test_count(out, "error:") == 1,
           "%s: %s", bad[i].yaml, out);
    free(out);
  }
  char *out; /* odd but valid */
  CHECKF(cl_flag("--run_id=\"run #1: a-b (x)\"", &out) == 0, "%s", out);
  free(out);
  CHECKF(cl_flag("--run_id='a\"b'", &out) == -1 && strstr(out, "quotes or backslashes"), "%s",
         out);
  free(out);
}

/* Writes c's effective YAML to *text (caller frees). */
static void cl_write(const zoo_config *c, char **text) {
  size_t len = 0;
  FILE *f = open_memstream(text, &len);
  zoo_config_write(f, c);
  fclose(f);
}

TEST(bad_cli_config_write_round_trip) {
  const char *text =
      "data:\n  input_seq_len: 16\n  vocab_size: 64\n"
      "model:\n  file: \"models/odd: #dir/x.zoo\"\n"
      "  params: {vocab_size: 64, note: \"a: \\\"b\\\" #c\\nd\\\\e\", \"odd key\": 1, "
      "list: [1, \"x, y]\", '2'], flag: \"true\", yes: no, null_text: \"~\"}\n"
      "run_id: \"run #1: a-b\"\n"
      "tags: [\"a: b\", \"# c\", \"q\\\"uote\", \"back\\\\slash\", \"new\\nline\", \"tab\\tx\", "
      "Null_, \"Null\", \"NULL\", \"~\", \"true\", \"off\", \"123\", \"1e-3\", \"\", \" lead\", "
      "\"trail \", \"\\u00e9t\\u00e9\", \"nel\\u0085x\", \"ls\\u2028x\", \"bell\\a\\x7f\", "
      "\"{a: 1}\", \"[x]\", \"- x\", \"&a\", \"*a\", \"!t\", \"|\", \">\", \"%\", \"@\", \"`\"]\n";
  zoo_config c;
  char *out;
  CHECKF(zoo_test_config("odd.yaml", text, NULL, 0, &c, &out) == 0, "%s", out);
  free(out);
  char *first, *second;
  cl_write(&c, &first);
  zoo_config again;
  int rc = zoo_test_config("effective.yaml", first, NULL, 0, &again, &out);
  CHECKF(rc == 0, "%s\nfrom:\n%s", out, first);
  free(out);
  cl_write(&again, &second);
  CHECKF(!strcmp(strchr(first, '\n'), strchr(second, '\n')), "first:\n%s\nsecond:\n%s", first,
         second);
  CHECK(again.ntags == c.ntags && c.ntags == 32);
  for (int i = 0; i < c.ntags; i++) CHECKF(!strcmp(again.tags[i], c.tags[i]), "tag %d", i);
  CHECK(!strcmp(again.run_id, c.run_id) && !strcmp(again.model_file, c.model_file));
  CHECK(again.ndefines == c.ndefines);
  for (int i = 0; i < c.ndefines; i++)
    CHECKF(!strcmp(again.defines[i].name, c.defines[i].name) &&
               !strcmp(again.defines[i].value, c.defines[i].value),
           "%s: %s against %s", c.defines[i].name, again.defines[i].value, c.defines[i].value);
  CHECK(zoo_config_hash(&again) == zoo_config_hash(&c));
  CHECK(zoo_config_model_hash(&again) == zoo_config_model_hash(&c));
  zoo_config_free(&again);
  zoo_config_free(&c);
  free(first);
  free(second);
  /* plain names stay plain */
  CHECK(zoo_test_config("configs/tiny_mqar.yaml", NULL, NULL, 0, &c, &out) == 0);
  free(out);
  cl_write(&c, &first);
  CHECKF(strstr(first, "\nrun_id: tiny_mqar\n") && strstr(first, "\nprecision: fp32\n") &&
             strstr(first, "  file: models/conv_attention.zoo\n") &&
             strstr(first, "    d_model: 32\n"),
         "%s", first);
  free(first);
  zoo_config_free(&c);
}

/* ---- 7: sweeps' dry runs ---- */

/* Loads and lists a sweep: *out holds the listing then the diagnostics. Returns
 * load's -1, or list's. */
static int cl_sweep(const char *path, char **out) {
  char *listing = NULL, *msgs = NULL;
  size_t n1 = 0, n2 = 0;
  FILE *lf = open_memstream(&listing, &n1), *mf = open_memstream(&msgs, &n2);
  zoo_diag d;
  zoo_diag_init(&d, mf);
  zoo_sweep s;
  int rc = zoo_sweep_load(&s, path, &d);
  if (!rc) rc = zoo_sweep_list(&s, lf, &d);
  zoo_sweep_free(&s);
  fclose(lf);
  fclose(mf);
  size_t n = strlen(listing) + strlen(msgs) + 16;
  *out = malloc(n);
  snprintf(*out, n, "%s---\n%s", listing, msgs);
  free(listing);
  free(msgs);
  return rc;
}

/* A sweep file with nparams parameters model.params.pK, each of nvalues values. */
static const char *cl_grid_file(int nparams, int nvalues) {
  static char path[256];
  snprintf(path, sizeof path, "/tmp/zoo_test_clix_%d_grid.yaml", (int)getpid());
  FILE *f = fopen(path, "w");
  if (!f) return path;
  fprintf(f, "command: [python3, train.py, --config_path, tests/bad/clix_base.yaml]\n"
             "method: grid\nparameters:\n");
  for (int p = 0; p < nparams; p++) {
    fprintf(f, "  model.params.p%d:\n    values: [", p + 1);
    for (int v = 0; v < nvalues; v++) fprintf(f, "%s%d", v ? ", " : "", v);
    fprintf(f, "]\n");
  }
  fclose(f);
  return path;
}

/* (a) the run count: no overflow to 0 runs, and at most ZOO_SWEEP_MAX_RUNS */
TEST(bad_cli_sweep_too_many_runs) {
  char *out, want[256];
  const char *path = cl_grid_file(16, 16); /* 16^16 = 2^64 runs */
  CHECK(cl_sweep(path, &out) == -1);
  snprintf(want, sizeof want, "---\n%s:3:1: error: the grid has 1.84e+19 runs (16 parameters); "
           "zoo takes at most 1000000 runs a sweep\n", path);
  CHECKF(!strncmp(out, want, strlen(want)) && !strstr(out, " 0 runs"), "%s", out);
  free(out);
  path = cl_grid_file(3, 101);
  CHECK(cl_sweep(path, &out) == -1);
  CHECKF(strstr(out, "error: the grid has 1030301 runs (3 parameters)"), "%s", out);
  free(out);
  path = cl_grid_file(2, 1000); /* exactly the most */
  char *msgs = NULL;
  size_t n = 0;
  FILE *mf = open_memstream(&msgs, &n);
  zoo_diag d;
  zoo_diag_init(&d, mf);
  zoo_sweep s;
  int rc = zoo_sweep_load(&s, path, &d);
  fclose(mf);
  CHECKF(rc == 0 && s.nruns == 1000000, "%s", msgs);
  free(msgs);
  zoo_sweep_free(&s);
  unlink(path);
}

/* (b) each run's model compiled and checked against its data, once per model */
TEST(bad_cli_sweep_model_checked) {
  char *out;
  CHECK(cl_sweep("tests/bad/clix_sweep_model.yaml", &out) == -1);
  zoo_test_golden(t, "tests/golden/clix_sweep_model.err", out);
  free(out);
  CHECK(cl_sweep("tests/bad/clix_sweep_param.yaml", &out) == -1);
  zoo_test_golden(t, "tests/golden/clix_sweep_param.err", out);
  free(out);
  CHECK(cl_sweep("tests/bad/clix_sweep_ok.yaml", &out) == 0);
  CHECKF(!strstr(out, "[") && strstr(out, "run 4/4:") && strstr(out, "---\n") &&
             !strcmp(strstr(out, "---\n"), "---\n"),
         "%s", out);
  free(out);
}

/* (c) from another working directory the model is found where training finds it */
TEST(bad_cli_sweep_other_directory) {
  if (access("bin/zoorun", X_OK)) SKIP("no bin/zoorun (make all)");
  char cwd[PATH_MAX], cmd[3 * PATH_MAX + 512], *out;
  CHECK(getcwd(cwd, sizeof cwd) != NULL);
  const char *dir = cl_dir("cwd");
  CHECK(mkdir(dir, 0755) == 0);
  snprintf(cmd, sizeof cmd, "cd %s && %s/bin/zoorun --sweep %s/tests/bad/clix_sweep_ok.yaml "
           "--dry-run", dir, cwd, cwd);
  int rc = cl_sh(cmd, &out);
  rmdir(dir);
  CHECKF(rc == 0 && strstr(out, "run 4/4:") && !strstr(out, "no model") &&
             !strstr(out, "error"),
         "rc %d: %s", rc, out);
  free(out);
}

/* (d) every parameter of a run is listed, past the 64th */
TEST(bad_cli_sweep_many_parameters) {
  const char *path = cl_grid_file(70, 1);
  char *out;
  cl_sweep(path, &out);
  unlink(path);
  CHECKF(strstr(out, "run 1/1: --model.params.p1=0 --model.params.p2=0 ") &&
             strstr(out, " --model.params.p64=0 --model.params.p65=0 ") &&
             strstr(out, " --model.params.p70=0  (run_id clix"),
         "%s", out);
  free(out);
}

/* (e) a value listed twice in one parameter */
TEST(bad_cli_sweep_duplicate_values) {
  char *out;
  CHECK(cl_sweep("tests/bad/clix_sweep_duplicate.yaml", &out) == -1);
  zoo_test_golden(t, "tests/golden/clix_sweep_duplicate.err", out);
  free(out);
}

/* ---- 8: a learning rate a float holds; no negative stopping threshold ---- */

TEST(bad_cli_learning_rate_float) {
  char *out;
  CHECK(cl_flag("--learning_rate=1e-50", &out) == -1);
  CHECKF(!strcmp(out, "<command line>:1:17: error: learning_rate: 1e-50 is too small: the "
                      "optimiser computes in float, whose smallest normal value is 1.17549e-38\n"
                      "    --learning_rate=1e-50\n                    ^~~~~\n"),
         "%s", out);
  free(out);
  CHECK(cl_flag("--learning_rate=1e39", &out) == -1);
  CHECKF(strstr(out, "learning_rate: 1e+39 is too large: the optimiser computes in float, whose "
                     "largest normal value is 3.40282e+38"), "%s", out);
  free(out);
  CHECK(cl_flag("--learning_rate=1.2e-38", &out) == 0);
  free(out);
  CHECK(cl_flag("--learning_rate=0", &out) == -1 && strstr(out, "learning_rate: must be positive"));
  free(out);
}

TEST(bad_cli_early_stopping_threshold) {
  char *out;
  CHECK(cl_flag("--early_stopping_threshold=-1", &out) == -1);
  CHECKF(strstr(out, "<command line>:1:28: error: early_stopping_threshold: must not be "
                     "negative: it is the validation accuracy that stops the run (above 1: "
                     "never)\n"), "%s", out);
  free(out);
  const char *good[] = {"--early_stopping_threshold=0", "--early_stopping_threshold=2",
                        "--early_stopping_threshold=0.5"};
  for (int i = 0; i < 3; i++) {
    CHECKF(cl_flag(good[i], &out) == 0, "%s: %s", good[i], out);
    free(out);
  }
}

/* ---- 9: messages that say what is wrong ---- */

TEST(bad_cli_messages) {
  char *out;
  CHECK(cl_flag("--seed= ", &out) == -1);
  CHECKF(strstr(out, "error: seed: expected an integer, got nothing (null)\n"), "%s", out);
  free(out);
  CHECK(cl_flag("--seed=# x", &out) == -1);
  CHECKF(strstr(out, "error: seed: expected an integer, got nothing (null)\n"), "%s", out);
  free(out);
  CHECK(cl_flag("--run_id=...", &out) == -1);
  CHECKF(!strcmp(out, "<command line>:1:10: error: --run_id: '...' marks a YAML document's end, "
                      "not a value; for the text, quote it: --run_id='\"...\"'\n"
                      "    --run_id=...\n             ^~~\n"),
         "%s", out);
  free(out);
  CHECK(cl_flag("--run_id=---", &out) == -1);
  CHECKF(strstr(out, "'---' marks a YAML document's start, not a value"), "%s", out);
  free(out);
  CHECK(cl_flag("--run_id=\"...\"", &out) == 0); /* quoted, it is text */
  free(out);
  /* a subnormal is a number, in (0, 1] */
  zoo_config c;
  const char *tiny[] = {"--data.builder.kwargs.train_power_a=4.9e-324"};
  CHECKF(zoo_test_config("configs/tiny_mqar.yaml", NULL, tiny, 1, &c, &out) == 0, "%s", out);
  CHECK(c.train_power_a > 0);
  zoo_config_free(&c);
  free(out);
  CHECK(cl_flag("--data.builder.kwargs.train_power_a=1e-400", &out) == -1);
  CHECKF(strstr(out, "error: data.builder.kwargs.train_power_a: 1e-400 is too close to 0 for a "
                     "double (it would read as 0)\n"), "%s", out);
  free(out);
  CHECK(cl_flag("--data.builder.kwargs.test_power_a=1e400", &out) == -1);
  CHECKF(strstr(out, "error: data.builder.kwargs.test_power_a: 1e400 is too large for a "
                     "double\n"), "%s", out);
  free(out);
  CHECK(cl_flag("--data.builder.kwargs.test_power_a=0", &out) == -1);
  CHECKF(strstr(out, "test_power_a: must be in (0, 1]"), "%s", out);
  free(out);
  CHECK(cl_flag("--learning_rate=abc", &out) == -1);
  CHECKF(strstr(out, "learning_rate: expected a number, got 'abc'"), "%s", out);
  free(out);
}

/* ---- SIGTERM: the run stops after its step with the shell's status for it ---- */

TEST(bad_cli_sigterm_exit_status) {
  if (access("bin/zoorun", X_OK)) SKIP("no bin/zoorun (make all)");
  const char *dir = cl_dir("sigterm");
  char cmd[1024], *out;
  snprintf(cmd, sizeof cmd,
           "bin/zoorun --config configs/tiny_mqar.yaml --device cpu --quiet --out %s "
           "--early_stopping_threshold=2 --max_epochs=100000 2>&1 & pid=$!; "
           "for i in $(seq 2000); do [ -f %s/checkpoint.safetensors ] && break; sleep 0.01; done; "
           "kill -TERM $pid; wait $pid",
           dir, dir);
  int st = cl_sh(cmd, &out);
  CHECKF(st == 128 + SIGTERM && strstr(out, "error: stopped by SIGTERM at step ") &&
             cl_exists(dir, "checkpoint.safetensors"),
         "status %d: %s", st, out);
  free(out);
  cl_dir("sigterm"); /* removes it */
}
