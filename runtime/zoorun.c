/* zoorun.c: the training command.
 *
 *   zoorun --config FILE [--device auto|cpu|cuda] [--resume] [--out DIR] [--KEY=VALUE]...
 *   zoorun --sweep FILE --dry-run
 *   zoorun bench ...
 *
 * Every --KEY=VALUE that is not one of zoorun's own options overrides the config
 * (dotted keys: --model.d_model=64), checked like the file itself.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
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
        "  --stop-after-epochs=N  stop after N epochs as if interrupted (to test --resume)\n"
        "  --quiet            no progress output\n"
        "  --sweep FILE       a grid sweep (the reference's format); with --dry-run, list its\n"
        "                     runs and check each one's config\n"
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
  const char **flags = calloc((size_t)argc + 1, sizeof *flags);
  int nflags = 0;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      zoorun_usage(stdout);
      return 0;
    } else if ((v = zoorun_opt(argc, argv, &i, "--config"))) {
      config = v;
    } else if ((v = zoorun_opt(argc, argv, &i, "--sweep"))) {
      sweep = v;
    } else if ((v = zoorun_opt(argc, argv, &i, "--device"))) {
      o.device = v;
    } else if ((v = zoorun_opt(argc, argv, &i, "--out"))) {
      o.out_dir = v;
    } else if ((v = zoorun_opt(argc, argv, &i, "--stop-after-epochs"))) {
      if (zoorun_count("--stop-after-epochs", v, &o.stop_after_epochs)) return 1;
    } else if (!strcmp(argv[i], "--resume")) {
      o.resume = 1;
    } else if (!strcmp(argv[i], "--dry-run")) {
      dry_run = 1;
    } else if (!strcmp(argv[i], "--quiet")) {
      o.quiet = 1;
    } else if (!strncmp(argv[i], "--", 2) && strchr(argv[i], '=')) {
      flags[nflags++] = argv[i];
    } else {
      fprintf(stderr, "zoorun: error: unknown argument '%s' (zoorun --help)\n", argv[i]);
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
    return zoorun_sweep(sweep, dry_run);
  }
  if (!config) {
    zoorun_usage(stderr);
    return 1;
  }

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
  _exit(rc ? 1 : 0);
}
