/* zoorun.c: the training command.
 *
 *   zoorun --config FILE [--device auto|cpu|cuda] [--resume] [--out DIR] [--KEY=VALUE]...
 *   zoorun --sweep FILE --dry-run
 *   zoorun bench ...
 *
 * Every --KEY=VALUE (or --KEY VALUE) that is not one of zoorun's own options
 * overrides the config (dotted keys: --model.d_model=64), checked like the file
 * itself.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "config.h"
#include "train.h"

static void zoorun_usage(FILE *out) {
  fputs("usage: zoorun --config FILE [--device auto|cpu|cuda] [--resume] [--out DIR]\n"
        "              [--KEY=VALUE]...\n"
        "       zoorun --sweep FILE --dry-run\n"
        "       zoorun bench [options]\n"
        "\n"
        "Trains the model a YAML config names on MQAR data and writes runs/<run_id>/\n"
        "(config.yaml, metrics.jsonl, checkpoint.safetensors, summary.json).\n"
        "\n"
        "  --config FILE      a run config: the reference's format (configs/simple_mqar.yaml)\n"
        "                     or the native one (model: {file: ..., params: {...}})\n"
        "  --device D         auto (CUDA when a GPU is usable, else the CPU), cpu or cuda\n"
        "  --resume           continue from the run folder's checkpoint\n"
        "  --out DIR          the run folder (default runs/<run_id>)\n"
        "  --KEY=VALUE        override a config key, e.g. --model.d_model=64 --max_epochs=1\n"
        "                     (or --KEY VALUE, where VALUE does not start with --)\n"
        "  --stop-after-epochs=N  stop after N epochs as if interrupted (to test --resume)\n"
        "  --quiet            no progress output\n"
        "  --sweep FILE       a grid sweep (the reference's format); with --dry-run, list its\n"
        "                     runs and check each one's config and model (it takes no\n"
        "                     other option: running sweeps is not implemented yet)\n"
        "  bench              GPU benchmarks (see zoorun bench --help)\n",
        out);
}

/* The value of "--name VALUE" or "--name=VALUE" at argv[*i]; NULL if argv[*i] is
 * not that option. Advances *i past a separate value. */
static const char *zoorun_opt(int argc, char **argv, int *i, const char *name) {
  size_t n = strlen(name);
  const char *a = argv[*i];
  if (strncmp(a, name, n)) return NULL;
  if (a[n] == '=') return a + n + 1;
  if (a[n] != 0) return NULL;
  if (*i + 1 >= argc) {
    fprintf(stderr, "zoorun: error: %s needs a value\n", name);
    exit(1);
  }
  return argv[++*i];
}

/* The value of a count option: a positive integer, all of the text ("2x", "-1",
 * "0" and "" are refused). Returns 0 and *out, or -1 after saying why. */
static int zoorun_count(const char *name, const char *v, int *out) {
  char *end = (char *)v;
  long n = 0;
  errno = 0;
  if (isdigit((unsigned char)v[0])) n = strtol(v, &end, 10); /* no sign, no spaces */
  if (end == v || *end || errno || n < 1 || n > INT_MAX) {
    fprintf(stderr, "zoorun: error: %s must be a positive integer (got '%s')\n", name, v);
    return -1;
  }
  *out = (int)n;
  return 0;
}

static int zoorun_sweep(const char *path, int dry_run) {
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_sweep s;
  if (zoo_sweep_load(&s, path, &d)) {
    zoo_sweep_free(&s);
    return 1;
  }
  int rc = 0;
  if (dry_run) {
    rc = zoo_sweep_list(&s, stdout, &d) ? 1 : 0;
  } else {
    fprintf(stderr,
            "zoorun: error: running sweeps is not implemented yet; --dry-run lists the %lld "
            "runs of %s\n",
            (long long)s.nruns, path);
    rc = 1;
  }
  zoo_sweep_free(&s);
  return rc;
}

int main(int argc, char **argv) {
  /* The CPU kernels run many small OpenMP loops; with libgomp's default of
   * spinning between them, a busy machine loses most of its time to the spinning
   * (measured: 47 s instead of 4 s for configs/tiny_mqar.yaml on 2 loaded cores).
   * libgomp reads OMP_WAIT_POLICY before main runs, so set it and start again. */
  if (!getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv); /* on failure, carry on as we are */
  }
  if (argc >= 2 && !strcmp(argv[1], "bench")) return zoo_bench_main(argc - 1, argv + 1);
  const char *config = NULL, *sweep = NULL;
  zoo_train_opts o = {.device = "auto"};
  int dry_run = 0;
  /* the options of a run, for --sweep's refusal: which were given */
  static const char *run_opts[] = {"--device", "--out", "--stop-after-epochs", "--resume",
                                   "--quiet"};
  int given[5] = {0}, ngiven = 0;
  const char **flags = calloc((size_t)argc + 1, sizeof *flags);
  int nflags = 0;
  for (int i = 1; i < argc; i++) {
    const char *v, *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      zoorun_usage(stdout);
      return 0;
    } else if ((v = zoorun_opt(argc, argv, &i, "--config"))) {
      config = v;
    } else if ((v = zoorun_opt(argc, argv, &i, "--sweep"))) {
      sweep = v;
    } else if ((v = zoorun_opt(argc, argv, &i, "--device"))) {
      o.device = v;
      given[0] = 1;
    } else if ((v = zoorun_opt(argc, argv, &i, "--out"))) {
      o.out_dir = v;
      given[1] = 1;
    } else if ((v = zoorun_opt(argc, argv, &i, "--stop-after-epochs"))) {
      if (zoorun_count("--stop-after-epochs", v, &o.stop_after_epochs)) return 1;
      given[2] = 1;
    } else if (!strcmp(a, "--resume")) {
      o.resume = 1;
      given[3] = 1;
    } else if (!strcmp(a, "--dry-run")) {
      dry_run = 1;
    } else if (!strcmp(a, "--quiet")) {
      o.quiet = 1;
      given[4] = 1;
    } else if (!strncmp(a, "--", 2) && a[2] && strchr(a, '=')) {
      flags[nflags++] = a;
    } else if (!strncmp(a, "--", 2) && a[2] && i + 1 < argc && strncmp(argv[i + 1], "--", 2)) {
      /* --KEY VALUE: the override --KEY=VALUE (a VALUE starting with -- needs the '=') */
      size_t n = strlen(a) + strlen(argv[i + 1]) + 2;
      char *kv = malloc(n);
      snprintf(kv, n, "%s=%s", a, argv[++i]);
      flags[nflags++] = kv;
    } else if (!strncmp(a, "--", 2) && zoo_config_known_key(a + 2)) {
      fprintf(stderr, "zoorun: error: %s needs a value: %s=VALUE or %s VALUE\n", a, a, a);
      return 1;
    } else {
      fprintf(stderr, "zoorun: error: unknown argument '%s' (zoorun --help)\n", a);
      return 1;
    }
  }
  if (strcmp(o.device, "auto") && strcmp(o.device, "cpu") && strcmp(o.device, "cuda")) {
    fprintf(stderr, "zoorun: error: --device must be auto, cpu or cuda (got '%s')\n", o.device);
    return 1;
  }
  if (sweep) {
    if (config || nflags) {
      fprintf(stderr, "zoorun: error: --sweep takes no --config or overrides\n");
      return 1;
    }
    for (int k = 0; k < 5; k++) ngiven += given[k];
    if (ngiven) { /* a dry run trains nothing; running sweeps is not implemented */
      fprintf(stderr, "zoorun: error: --sweep takes no ");
      for (int k = 0, n = 0; k < 5; k++) {
        if (!given[k]) continue;
        n++;
        fprintf(stderr, "%s%s", n == 1 ? "" : n == ngiven ? " or " : ", ", run_opts[k]);
      }
      fprintf(stderr, " (options of a run: zoorun --config FILE); --sweep FILE --dry-run "
                      "lists and checks a grid\n");
      return 1;
    }
    return zoorun_sweep(sweep, dry_run);
  }
  if (dry_run) {
    fprintf(stderr, "zoorun: error: --dry-run goes with --sweep (zoorun --sweep FILE --dry-run); "
                    "with --config, zoorun trains\n");
    return 1;
  }
  if (!config) {
    zoorun_usage(stderr);
    return 1;
  }
  /* A reader that goes away (zoorun ... | head) must not kill a run: writes to
   * stdout then fail quietly and the run folder is still written. Only here: a
   * sweep's listing and bench's table stop with their reader, as listings do.
   * (The exec above comes first; it would keep an ignored signal ignored.) */
  signal(SIGPIPE, SIG_IGN);

  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_config c;
  int rc = zoo_config_load(&c, config, &d);
  for (int i = 0; !rc && i < nflags; i++) rc = zoo_config_override(&c, flags[i], &d);
  if (!rc) rc = zoo_config_finish(&c, &d, stdout);
  if (rc) {
    zoo_config_free(&c);
    return 1;
  }
  if (!o.quiet) {
    zoo_config_write(stdout, &c);
    fflush(stdout);
  }
  zoo_train_result r;
  rc = zoo_train(&c, &o, &r, &d);
  zoo_config_free(&c);
  free(flags);
  /* Everything the run writes is closed (the checkpoint synced and renamed);
   * leaving without the exit handlers skips the CUDA libraries' teardown,
   * which took 0.2 s of a 1.2 s two-epoch run on the H200 (ZOO_TIMING=1). */
  fflush(NULL);
  _exit(!rc ? 0 : r.signal ? 128 + r.signal : 1); /* a signal's as a shell reports it */
}
