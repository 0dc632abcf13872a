/* train.c: the trainer (see train.h). */
#include "train.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../compiler/compile.h"
#include "backend.h"
#include "checkpoint.h"
#include "mqar.h"
#include "rng.h"

static double train_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- init */

void zoo_train_init_params(const zoo_graph *g, uint64_t seed, float **params) {
  for (int i = 0; i < g->nparams; i++) {
    const zoo_tensor *t = &g->tensors[g->params[i]];
    int64_t n = zoo_type_numel(&t->type, NULL);
    float *p = params[i];
    uint64_t s = zoo_rng_mix(seed ^ 0x696e6974ULL) + 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1);
    double a = t->init.a;
    for (int64_t k = 0; k < n; k++) {
      switch (t->init.kind) {
      case ZOO_INIT_ZEROS: p[k] = 0; break;
      case ZOO_INIT_ONES: p[k] = 1; break;
      case ZOO_INIT_CONST: p[k] = (float)a; break;
      case ZOO_INIT_RAMP:
        p[k] = (float)(t->init.d + t->init.c * pow((double)k / a, t->init.b));
        break;
      case ZOO_INIT_ZIGZAG: p[k] = (float)(t->init.b + a * (double)((k + 1) % 3 - 1)); break;
      case ZOO_INIT_UNIFORM: {
        double u = (double)(zoo_rng_mix(s += 0x9e3779b97f4a7c15ULL) >> 11) * 0x1p-53;
        p[k] = (float)(a * (2 * u - 1));
        break;
      }
      case ZOO_INIT_NORMAL: { /* Box-Muller, one of the pair */
        double u1 = ((double)(zoo_rng_mix(s += 0x9e3779b97f4a7c15ULL) >> 11) + 1) * 0x1p-53;
        double u2 = (double)(zoo_rng_mix(s += 0x9e3779b97f4a7c15ULL) >> 11) * 0x1p-53;
        p[k] = (float)(a * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
        break;
      }
      }
    }
  }
}

/* ---------------------------------------------------------------- pieces */

/* A checkpoint being written by a thread of its own (train_save). */
#define CKPT_NMETA 14
typedef struct ckpt_writer {
  pthread_t thread;
  int running;
  int done; /* set by the thread when it ends (read with __atomic_load_n) */
  int rc;
  char err[600];
  /* what the thread reads, fixed until it is joined */
  const char *path;
  const char *dir; /* with unstage: the run folder whose NAME.new files to rename */
  int unstage;
  const zoo_graph *g;
  const zoo_alias *aliases;
  int naliases;
  zoo_ckpt_state state;
  char values[CKPT_NMETA][40];
  zoo_ckpt_meta meta[CKPT_NMETA];
} ckpt_writer;

typedef struct trainer {
  zoo_config *c;
  const zoo_train_opts *o;
  zoo_diag *d;
  FILE *out;
  zoo_program *prog;
  const zoo_graph *g;
  zoo_backend *be;
  zoo_mqar train_gen, test_gen;
  int32_t *test_tokens, *test_targets; /* [ntest, T] */
  char dir[1024], ckpt_path[1100], metrics_path[1100];
  FILE *metrics;
  int tty;
  int have_ckpt; /* a checkpoint of this run exists on disk */
  int staged;    /* this run's config and metrics are NAME.new until its first checkpoint */
  char run_tag[40]; /* this start's name, in its checkpoints and its staged config.yaml */
  int lock_fd;      /* the run folder, flock'ed while this run writes it */
  /* progress */
  int epoch, start_epoch;
  int64_t step, start_step;
  double best, last_acc, last_vloss;
  double t0, elapsed_base; /* elapsed_s = elapsed_base + now - t0 */
  double last_draw, last_flush;
  int early_stopped;
  float **params, **m, **v; /* host copies for checkpoints */
  ckpt_writer writer;
} trainer;

static int train_mkdirs(const char *path) {
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(buf, 0755) && errno != EEXIST) return -1;
      *p = '/';
    }
  if (mkdir(buf, 0755) && errno != EEXIST) return -1;
  struct stat st;
  if (stat(buf, &st)) return -1;
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    return -1;
  }
  return access(buf, W_OK | X_OK);
}

/* A run started over in a folder that holds an earlier run's checkpoint writes its
 * config and metrics beside the earlier ones, as NAME.new, until its own first
 * checkpoint has replaced the earlier run's (then the writer renames them); a run
 * that fails before that leaves the folder as it was. */
static const char *const staged_names[] = {"config.yaml", "metrics.jsonl"};
enum { NSTAGED = sizeof staged_names / sizeof *staged_names };

/* The path this run writes the folder's file NAME at. */
static void train_file(const trainer *tr, char *buf, size_t n, const char *name) {
  snprintf(buf, n, "%s/%s%s", tr->dir, name, tr->staged ? ".new" : "");
}

static int unstage(const char *dir, char *err, size_t n) {
  for (int i = 0; i < NSTAGED; i++) {
    char from[1100], to[1100];
    snprintf(from, sizeof from, "%s/%s.new", dir, staged_names[i]);
    snprintf(to, sizeof to, "%s/%s", dir, staged_names[i]);
    if (rename(from, to)) {
      snprintf(err, n, "cannot rename %s.new to %s in %.400s: %s", staged_names[i],
               staged_names[i], dir, strerror(errno));
      return -1;
    }
  }
  char summary[1100]; /* the earlier run's */
  snprintf(summary, sizeof summary, "%s/summary.json", dir);
  remove(summary);
  return 0;
}

/* Removes dir's NAME.new files (a staged run's, which failed or was killed). */
static void drop_staged(const char *dir) {
  for (int i = 0; i < NSTAGED; i++) {
    char path[1100];
    snprintf(path, sizeof path, "%s/%s.new", dir, staged_names[i]);
    remove(path);
  }
}

/* Closes a file this run wrote; says so if any of its writes failed. */
static int train_close(trainer *tr, FILE *f, const char *path) {
  int bad = ferror(f);
  if (fclose(f) || bad) {
    zoo_error(tr->d, zoo_nospan, "cannot write %s: %s", path, strerror(errno ? errno : EIO));
    return -1;
  }
  return 0;
}

/* ZOO_TIMING=1: where a run's wall time goes, on stderr (seconds since start). */
static void train_mark(double t_start, const char *what) {
  if (zoo_env_on("ZOO_TIMING")) fprintf(stderr, "timing: %-28s %.3f s\n", what, train_now() - t_start);
}

/* Picks and makes the backend; says which and why. */
static zoo_backend *train_backend(trainer *tr, int64_t B, int64_t T, char *chosen) {
  const char *dev = tr->o->device ? tr->o->device : "auto";
  char err[512] = "", why[256] = "";
  int want_cuda = !strcmp(dev, "cuda");
  if (strcmp(dev, "auto") && strcmp(dev, "cpu") && !want_cuda) {
    zoo_error(tr->d, zoo_nospan, "unknown device '%s' (auto, cpu or cuda)", dev);
    return NULL;
  }
  if (!strcmp(dev, "auto")) want_cuda = zoo_cuda_available(why, sizeof why);
  zoo_backend *be = NULL;
  zoo_precision prec = zoo_precision_of(tr->c->precision);
  if (want_cuda) {
    be = zoo_cuda_backend_init(tr->g, B, T, 0, prec, err, sizeof err);
    /* auto: a GPU whose NVRTC or cuBLASLt would not load leaves the run to the CPU */
    if (!be && !strcmp(dev, "auto") && !zoo_cuda_libraries(why, sizeof why)) want_cuda = 0;
    else if (!be) {
      zoo_error(tr->d, zoo_nospan, "cannot use CUDA: %s", err);
      return NULL;
    }
  }
  if (want_cuda) {
    snprintf(chosen, 16, "cuda");
    if (!tr->o->quiet)
      fprintf(tr->out, "device: cuda (%s%s), %s matmuls\n",
              !strcmp(dev, "auto") ? "auto: " : "--device cuda", !strcmp(dev, "auto") ? why : "",
              zoo_precision_name(prec));
    return be;
  }
  be = zoo_cpu_backend_init(tr->g, B, T, err, sizeof err);
  if (!be) {
    zoo_error(tr->d, zoo_nospan, "cannot start the CPU backend: %s", err);
    return NULL;
  }
  snprintf(chosen, 16, "cpu");
  if (!tr->o->quiet)
    fprintf(tr->out, "device: cpu (%s%s)\n", !strcmp(dev, "auto") ? "auto: " : "--device cpu",
            !strcmp(dev, "auto") ? why : "");
  if (strcmp(tr->c->precision, "fp32") && !tr->o->quiet)
    fprintf(tr->out, "note: precision: %s applies to CUDA; the CPU backend computes in fp32\n",
            tr->c->precision);
  return be;
}

static void train_alloc_state(trainer *tr) {
  const zoo_graph *g = tr->g;
  tr->params = calloc((size_t)g->nparams + 1, sizeof *tr->params);
  tr->m = calloc((size_t)g->nparams + 1, sizeof *tr->m);
  tr->v = calloc((size_t)g->nparams + 1, sizeof *tr->v);
  for (int i = 0; i < g->nparams; i++) {
    int64_t n = zoo_type_numel(&g->tensors[g->params[i]].type, NULL);
    tr->params[i] = calloc((size_t)(n ? n : 1), sizeof(float));
    tr->m[i] = calloc((size_t)(n ? n : 1), sizeof(float));
    tr->v[i] = calloc((size_t)(n ? n : 1), sizeof(float));
  }
}

static void train_free_state(trainer *tr) {
  for (int i = 0; tr->g && i < tr->g->nparams; i++) {
    if (tr->params) free(tr->params[i]);
    if (tr->m) free(tr->m[i]);
    if (tr->v) free(tr->v[i]);
  }
  free(tr->params);
  free(tr->m);
  free(tr->v);
}

static double train_elapsed(const trainer *tr) { return tr->elapsed_base + train_now() - tr->t0; }

/* Checkpoints are written by a thread of their own, so that the GPU trains the
 * next epoch while the file is written, synced and renamed. train_save copies the
 * state out of the backend, then starts the writer; the next save, a failure
 * and the end of the run wait for it (train_save_wait), so one write at most is
 * in flight, the host copies stay untouched while it runs, and a run that ends
 * has its last checkpoint on disk. A failed write fails the run at that wait. */
static void *ckpt_write(void *arg) {
  ckpt_writer *w = arg;
  w->rc = zoo_ckpt_save_model(w->path, w->g, w->aliases, w->naliases, &w->state, w->meta, CKPT_NMETA,
                              w->err, sizeof w->err);
  if (!w->rc && w->unstage) w->rc = unstage(w->dir, w->err, sizeof w->err);
  __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

/* After a write: its result. */
static int ckpt_written(trainer *tr) {
  ckpt_writer *w = &tr->writer;
  if (w->rc) {
    zoo_error(tr->d, zoo_nospan, "cannot save the checkpoint: %s", w->err);
    return -1;
  }
  tr->have_ckpt = 1;
  if (w->unstage) tr->staged = 0;
  return 0;
}

static int train_save_wait(trainer *tr) {
  ckpt_writer *w = &tr->writer;
  if (!w->running) return 0;
  pthread_join(w->thread, NULL);
  w->running = 0;
  return ckpt_written(tr);
}

/* Saves the state after tr->epoch complete epochs (written in the background). */
static int train_save(trainer *tr, int finished) {
  if (train_save_wait(tr)) return -1;
  int64_t step;
  if (tr->be->get_state(tr->be, tr->params, tr->m, tr->v, &step)) {
    zoo_error(tr->d, zoo_nospan, "cannot read the backend's state: %s", tr->be->err);
    return -1;
  }
  ckpt_writer *w = &tr->writer;
  static const char *keys[CKPT_NMETA] = {"format",      "version",         "epoch",      "step",
                                         "best_accuracy", "last_accuracy", "last_valid_loss",
                                         "seed",        "data_seed",       "config_hash", "model_hash",
                                         "elapsed_s",   "finished",        "run"};
  snprintf(w->values[0], sizeof w->values[0], "zoo");
  snprintf(w->values[1], sizeof w->values[1], "1");
  snprintf(w->values[2], sizeof w->values[2], "%d", tr->epoch);
  snprintf(w->values[3], sizeof w->values[3], "%lld", (long long)step);
  snprintf(w->values[4], sizeof w->values[4], "%.17g", tr->best);
  snprintf(w->values[5], sizeof w->values[5], "%.17g", tr->last_acc);
  snprintf(w->values[6], sizeof w->values[6], "%.17g", tr->last_vloss);
  snprintf(w->values[7], sizeof w->values[7], "%lld", (long long)tr->c->seed);
  snprintf(w->values[8], sizeof w->values[8], "%lld", (long long)tr->c->data_seed);
  snprintf(w->values[9], sizeof w->values[9], "%016llx", (unsigned long long)zoo_config_hash(tr->c));
  snprintf(w->values[10], sizeof w->values[10], "%016llx", (unsigned long long)zoo_config_model_hash(tr->c));
  snprintf(w->values[11], sizeof w->values[11], "%.3f", train_elapsed(tr));
  snprintf(w->values[12], sizeof w->values[12], "%s", finished ? "1" : "0");
  snprintf(w->values[13], sizeof w->values[13], "%s", tr->run_tag);
  for (int i = 0; i < CKPT_NMETA; i++) w->meta[i] = (zoo_ckpt_meta){keys[i], w->values[i]};
  w->path = tr->ckpt_path;
  w->g = tr->g;
  w->aliases = tr->prog->aliases;
  w->naliases = tr->prog->naliases;
  w->state = (zoo_ckpt_state){tr->params, tr->m, tr->v};
  w->dir = tr->dir;
  w->unstage = tr->staged;
  if (tr->staged && tr->metrics) fflush(tr->metrics);
  w->done = 0;
  if (pthread_create(&w->thread, NULL, ckpt_write, w) != 0) { /* no thread: write it here */
    ckpt_write(w);
    return ckpt_written(tr);
  }
  w->running = 1;
  return 0;
}

/* Drops the lines of metrics.jsonl written after the checkpoint (a run killed
 * mid-epoch logged steps that the resumed run makes again), and a last line the
 * kill cut short. */
static int train_trim_metrics(trainer *tr) {
  FILE *f = fopen(tr->metrics_path, "r");
  if (!f) return 0;
  char *kept = NULL, *line = NULL;
  size_t klen = 0, cap = 0;
  FILE *k = open_memstream(&kept, &klen);
  ssize_t len;
  while ((len = getline(&line, &cap, f)) > 0) {
    if (len < 2 || line[len - 1] != '\n' || line[len - 2] != '}')
      continue; /* torn: the run stopped mid-line */
    long long step = -1, epoch = -1;
    int is_step = sscanf(line, "{\"step\": %lld", &step) == 1;
    int is_epoch = !is_step && sscanf(line, "{\"epoch\": %lld", &epoch) == 1;
    if ((is_step && step <= tr->step) || (is_epoch && epoch < tr->epoch)) fputs(line, k);
  }
  free(line);
  fclose(f);
  fclose(k);
  f = fopen(tr->metrics_path, "w");
  int rc = 0;
  if (!f) {
    zoo_error(tr->d, zoo_nospan, "cannot write %s: %s", tr->metrics_path, strerror(errno));
    rc = -1;
  } else {
    fwrite(kept, 1, klen, f);
    rc = train_close(tr, f, tr->metrics_path);
  }
  free(kept);
  return rc;
}

/* A whole number in [lo, hi] from a checkpoint's metadata. */
static int meta_int(const char *s, long long lo, long long hi, long long *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

/* A finite number in [lo, hi] from a checkpoint's metadata; absent: 0. */
static int meta_real(const char *s, double lo, double hi, double *out) {
  *out = 0;
  if (!s) return 0;
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || !(v >= lo && v <= hi)) return -1;
  *out = v;
  return 0;
}

/* The progress counters from a checkpoint's metadata; returns NULL, or the key
 * whose value is not what a checkpoint of zoo's holds (its value in *what). */
static const char *train_read_progress(trainer *tr, const zoo_ckpt *ck, const char **what) {
  long long epoch, step;
  static const char *const reals[] = {"best_accuracy", "last_accuracy", "last_valid_loss",
                                      "elapsed_s"};
  double *to[] = {&tr->best, &tr->last_acc, &tr->last_vloss, &tr->elapsed_base};
  double most[] = {1, 1, HUGE_VAL, HUGE_VAL};
  *what = zoo_ckpt_meta_get(ck, "epoch");
  if (meta_int(*what, 0, INT_MAX / 2, &epoch)) return "epoch";
  *what = zoo_ckpt_meta_get(ck, "step");
  if (meta_int(*what, epoch, INT64_MAX / 2, &step)) return "step"; /* an epoch is a step or more */
  for (int i = 0; i < 4; i++) {
    *what = zoo_ckpt_meta_get(ck, reals[i]);
    if (meta_real(*what, 0, most[i], to[i])) return reals[i];
  }
  *what = zoo_ckpt_meta_get(ck, "finished");
  if (*what && strcmp(*what, "0") && strcmp(*what, "1")) return "finished";
  tr->epoch = tr->start_epoch = (int)epoch;
  tr->step = tr->start_step = step;
  tr->early_stopped = *what && !strcmp(*what, "1");
  return NULL;
}

/* Loads the run's checkpoint into the backend and the progress counters.
 * Returns 0, 1 when the run had already finished, or -1. */
static int train_resume(trainer *tr) {
  zoo_ckpt ck;
  char err[600];
  if (access(tr->ckpt_path, F_OK) != 0) {
    zoo_error(tr->d, zoo_nospan, "nothing to resume: there is no checkpoint at %s", tr->ckpt_path);
    return -1;
  }
  if (zoo_ckpt_load(tr->ckpt_path, &ck, err, sizeof err)) {
    zoo_error(tr->d, zoo_nospan, "cannot resume: %s", err);
    return -1;
  }
  const char *format = zoo_ckpt_meta_get(&ck, "format"), *version = zoo_ckpt_meta_get(&ck, "version");
  const char *epoch = zoo_ckpt_meta_get(&ck, "epoch"), *step = zoo_ckpt_meta_get(&ck, "step");
  const char *mhash = zoo_ckpt_meta_get(&ck, "model_hash"), *hash = zoo_ckpt_meta_get(&ck, "config_hash");
  int rc = 0;
  if (!format || strcmp(format, "zoo") || !version || strcmp(version, "1") || !epoch || !step) {
    zoo_error(tr->d, zoo_nospan,
              "cannot resume: %s is not a zoo training checkpoint (format zoo, version 1, epoch "
              "and step in its metadata)",
              tr->ckpt_path);
    rc = -1;
  }
  char want[24];
  snprintf(want, sizeof want, "%016llx", (unsigned long long)zoo_config_model_hash(tr->c));
  if (!rc && (!mhash || strcmp(mhash, want))) {
    zoo_error(tr->d, zoo_nospan,
              "cannot resume: %s was written for another model (model hash %s, this config's "
              "%s)",
              tr->ckpt_path, mhash ? mhash : "none", want);
    rc = -1;
  }
  snprintf(want, sizeof want, "%016llx", (unsigned long long)zoo_config_hash(tr->c));
  int differs = hash && strcmp(hash, want);
  zoo_ckpt_state s = {tr->params, tr->m, tr->v};
  if (!rc && zoo_ckpt_restore_model(&ck, tr->ckpt_path, tr->g, tr->prog->aliases,
                                    tr->prog->naliases, &s, err, sizeof err)) {
    zoo_error(tr->d, zoo_nospan, "cannot resume: %s", err);
    rc = -1;
  }
  const char *bad = NULL, *what = NULL;
  if (!rc && (bad = train_read_progress(tr, &ck, &what))) {
    zoo_error(tr->d, zoo_nospan, "cannot resume: %s has a bad %s in its metadata ('%.40s')",
              tr->ckpt_path, bad, what);
    rc = -1;
  }
  if (!rc) {
    if (tr->be->set_state(tr->be, tr->params, tr->m, tr->v, tr->step)) {
      zoo_error(tr->d, zoo_nospan, "cannot load the state into the backend: %s", tr->be->err);
      rc = -1;
    } else {
      tr->have_ckpt = 1;
      /* complete when the settings now in force would have stopped it there */
      const zoo_config *c = tr->c;
      int stops = c->early_stopping && tr->last_acc > c->early_stopping_threshold;
      if (tr->epoch >= c->max_epochs || (tr->early_stopped && stops)) {
        rc = 1;
      } else {
        if (tr->early_stopped && !tr->o->quiet)
          fprintf(tr->out, "note: the run had stopped early at accuracy %.4f; with these settings "
                           "it goes on\n", tr->last_acc);
        tr->early_stopped = 0;
        if (differs && !tr->o->quiet)
          fprintf(tr->out, "note: the config differs from the one that wrote the checkpoint (hash "
                           "%s, now %s); resuming with the new settings\n", hash, want);
        if (train_trim_metrics(tr)) rc = -1;
        if (!rc && !tr->o->quiet)
          fprintf(tr->out, "resuming %s: %d epochs and %lld steps done, best accuracy %.4f\n",
                  tr->ckpt_path, tr->epoch, (long long)tr->step, tr->best);
      }
    }
  }
  zoo_ckpt_free(&ck);
  return rc;
}

static void train_fmt_time(char *buf, size_t n, double s) {
  if (!(s >= 0) || s > 1e7) {
    snprintf(buf, n, "?");
    return;
  }
  long t = (long)(s + 0.5);
  if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

/* The progress bar (terminals only), redrawn at most ten times a second. */
static void train_progress(trainer *tr, int64_t done, int64_t per_epoch, const zoo_metrics *m,
                           double rate, int force) {
  if (!tr->tty || tr->o->quiet) return;
  double now = train_now();
  if (!force && now - tr->last_draw < 0.1) return;
  tr->last_draw = now;
  int width = 24, fill = per_epoch ? (int)(width * done / per_epoch) : width;
  char bar[32];
  for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
  bar[width] = 0;
  int64_t left = per_epoch - done + (int64_t)(tr->c->max_epochs - tr->epoch - 1) * per_epoch;
  char eta_epoch[24], eta_all[24];
  train_fmt_time(eta_epoch, sizeof eta_epoch, rate > 0 ? (double)(per_epoch - done) / rate : -1);
  train_fmt_time(eta_all, sizeof eta_all, rate > 0 ? (double)left / rate : -1);
  fprintf(tr->out, "\r\033[Kepoch %d/%d [%s] %lld/%lld loss %.4f acc %.4f (valid %.4f, best %.4f) "
                   "%.1f steps/s, left %s (all epochs %s)",
          tr->epoch + 1, tr->c->max_epochs, bar, (long long)done, (long long)per_epoch, m->loss,
          m->labelled > 0 ? m->correct / m->labelled : 0.0, tr->last_acc, tr->best, rate,
          eta_epoch, eta_all);
  fflush(tr->out);
}

static void train_log_step(trainer *tr, int64_t step, double loss, double lr) {
  if (!tr->metrics) return;
  double now = train_now();
  fprintf(tr->metrics, "{\"step\": %lld, \"epoch\": %d, \"loss\": %.9g, \"lr\": %.9g, "
                       "\"elapsed_s\": %.3f}\n",
          (long long)step, tr->epoch, loss, lr, train_elapsed(tr));
  if (now - tr->last_flush > 1) { /* readable while the run goes on */
    fflush(tr->metrics);
    tr->last_flush = now;
  }
}

/* The loss was not finite: says so, keeps the last checkpoint, fails the run. */
static int train_nan(trainer *tr, int64_t step, double loss) {
  train_save_wait(tr);
  if (tr->tty && !tr->o->quiet) fputc('\n', tr->out);
  fflush(tr->out);
  if (tr->have_ckpt)
    zoo_error(tr->d, zoo_nospan,
              "loss is %s at step %lld (epoch %d/%d); the last good checkpoint is kept at %s",
              isnan(loss) ? "nan" : "inf", (long long)step, tr->epoch + 1, tr->c->max_epochs,
              tr->ckpt_path);
  else
    zoo_error(tr->d, zoo_nospan,
              "loss is %s at step %lld (epoch %d/%d); no checkpoint was written yet",
              isnan(loss) ? "nan" : "inf", (long long)step, tr->epoch + 1, tr->c->max_epochs);
  return -1;
}

/* Validation on the whole test split: accuracy = correct / labelled; loss = mean
 * of the batches' losses (the reference's). */
static int train_validate(trainer *tr, double *acc, double *loss) {
  int64_t B = tr->c->batch_size, T = tr->c->input_seq_len, n = tr->c->num_test_examples;
  double correct = 0, labelled = 0, lsum = 0;
  int batches = 0;
  for (int64_t i = 0; i < n; i += B) {
    int rows = (int)(n - i < B ? n - i : B);
    zoo_metrics m;
    if (tr->be->eval_batch(tr->be, tr->test_tokens + i * T, tr->test_targets + i * T, rows, &m)) {
      zoo_error(tr->d, zoo_nospan, "validation failed: %s", tr->be->err);
      return -1;
    }
    correct += m.correct;
    labelled += m.labelled;
    lsum += m.loss;
    batches++;
  }
  *acc = labelled > 0 ? correct / labelled : 0;
  *loss = batches ? lsum / batches : 0;
  return 0;
}

/* s as a JSON string. */
static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; s && *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
    else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
    else fputc(ch, f);
  }
  fputc('"', f);
}

static int train_summary(trainer *tr, zoo_train_result *r, const char *status) {
  char path[1100];
  snprintf(path, sizeof path, "%s/summary.json", tr->dir);
  FILE *f = fopen(path, "w");
  if (!f) {
    zoo_error(tr->d, zoo_nospan, "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  fputs("{\n  \"run_id\": ", f);
  json_string(f, tr->c->run_id);
  fprintf(f,
          ",\n  \"status\": \"%s\",\n  \"best_valid_accuracy\": %.6f,\n"
          "  \"last_valid_accuracy\": %.6f,\n  \"last_valid_loss\": %.6f,\n  \"epochs\": %d,\n"
          "  \"max_epochs\": %d,\n  \"early_stopped\": %s,\n  \"steps\": %lld,\n"
          "  \"wall_s\": %.3f,\n  \"steps_per_s\": %.3f,\n  \"device\": \"%s\",\n"
          "  \"parameters\": %lld,\n  \"model\": ",
          status, tr->best, tr->last_acc, tr->last_vloss, tr->epoch, tr->c->max_epochs,
          tr->early_stopped ? "true" : "false", (long long)tr->step, train_elapsed(tr),
          r->steps_per_s, r->device, (long long)r->parameters);
  json_string(f, tr->c->model_file);
  fputs("\n}\n", f);
  return train_close(tr, f, path);
}

/* The run's config.yaml and its metrics.jsonl (appended to on --resume); a
 * finished run's are left as they are. */
static int train_open_files(trainer *tr, int finished) {
  if (finished) return 0; /* its config.yaml stays the one that ran */
  char path[1100];
  train_file(tr, path, sizeof path, "config.yaml");
  FILE *f = fopen(path, "w");
  if (!f) {
    zoo_error(tr->d, zoo_nospan, "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  if (tr->staged) fprintf(f, "# zoo run %s\n", tr->run_tag); /* train_recover reads it */
  zoo_config_write(f, tr->c);
  if (train_close(tr, f, path)) return -1;
  train_file(tr, path, sizeof path, "metrics.jsonl");
  tr->metrics = fopen(path, tr->o->resume ? "a" : "w");
  if (!tr->metrics) {
    zoo_error(tr->d, zoo_nospan, "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

/* SIGINT or SIGTERM, caught while a run trains (a second one ends the process). */
static volatile sig_atomic_t train_signal;

static void train_on_signal(int sig) {
  train_signal = sig;
  signal(sig, SIG_DFL);
}

/* Catches SIGINT and SIGTERM, keeping the earlier handlers in was[0] and was[1];
 * a signal the process was started ignoring (SIGINT in a background job) stays
 * ignored. */
static void train_catch_signals(struct sigaction was[2]) {
  static const int sigs[2] = {SIGINT, SIGTERM};
  struct sigaction on = {.sa_handler = train_on_signal};
  sigemptyset(&on.sa_mask);
  train_signal = 0;
  for (int i = 0; i < 2; i++) {
    sigaction(sigs[i], NULL, &was[i]);
    if (was[i].sa_handler != SIG_IGN) sigaction(sigs[i], &on, NULL);
  }
}

/* A start that finds NAME.new files, left by a run that was killed while staged:
 * if the checkpoint is that run's (its first was written, the renames were not
 * done), the renames are finished; else that run stopped before its first
 * checkpoint, and its files go. */
static int train_recover(trainer *tr) {
  char path[1100], line[128], tag[40] = "", err[600];
  snprintf(path, sizeof path, "%s/config.yaml.new", tr->dir);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  if (fgets(line, sizeof line, f)) sscanf(line, "# zoo run %39s", tag);
  fclose(f);
  zoo_ckpt ck;
  int theirs = 0;
  if (tag[0] && access(tr->ckpt_path, F_OK) == 0 &&
      !zoo_ckpt_load(tr->ckpt_path, &ck, err, sizeof err)) {
    const char *ran = zoo_ckpt_meta_get(&ck, "run");
    theirs = ran && !strcmp(ran, tag);
    zoo_ckpt_free(&ck);
  }
  if (theirs) {
    if (unstage(tr->dir, err, sizeof err)) {
      zoo_error(tr->d, zoo_nospan, "%s", err);
      return -1;
    }
    zoo_note(tr->d, zoo_nospan, "%s: moved in the config and metrics of the run whose first "
             "checkpoint is there (it was stopped before it did)", tr->dir);
    return 0;
  }
  drop_staged(tr->dir);
  zoo_note(tr->d, zoo_nospan, "%s: removed the config and metrics of a run that was stopped "
           "before its first checkpoint", tr->dir);
  return 0;
}

/* Makes and locks the run folder (one run writes a folder at a time), names this
 * start, and finishes what a killed run left half done. */
static int train_folder(trainer *tr) {
  const zoo_train_opts *o = tr->o;
  char def[512];
  snprintf(def, sizeof def, "runs/%s", tr->c->run_id);
  const char *dir = o->out_dir ? o->out_dir : def;
  if (strlen(dir) > sizeof tr->dir - 40) {
    zoo_error(tr->d, zoo_nospan, "the run folder's path is %zu characters long, more than %zu",
              strlen(dir), sizeof tr->dir - 40);
    return -1;
  }
  snprintf(tr->dir, sizeof tr->dir, "%s", dir);
  if (train_mkdirs(tr->dir)) {
    zoo_error(tr->d, zoo_nospan, "cannot use %s as the run folder: %s", tr->dir, strerror(errno));
    return -1;
  }
  tr->lock_fd = open(tr->dir, O_RDONLY | O_DIRECTORY);
  if (tr->lock_fd < 0 || flock(tr->lock_fd, LOCK_EX | LOCK_NB)) {
    if (errno == EWOULDBLOCK)
      zoo_error(tr->d, zoo_nospan, "another run is writing %s (one run a folder: --out names "
                "another)", tr->dir);
    else
      zoo_error(tr->d, zoo_nospan, "cannot lock the run folder %s: %s", tr->dir, strerror(errno));
    return -1;
  }
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  snprintf(tr->run_tag, sizeof tr->run_tag, "%llx.%lx.%d", (unsigned long long)now.tv_sec,
           (unsigned long)now.tv_nsec, (int)getpid());
  snprintf(tr->ckpt_path, sizeof tr->ckpt_path, "%s/checkpoint.safetensors", tr->dir);
  snprintf(tr->metrics_path, sizeof tr->metrics_path, "%s/metrics.jsonl", tr->dir);
  return train_recover(tr);
}

/* ---------------------------------------------------------------- the loop */

static int train_run(trainer *tr, zoo_train_result *r) {
  zoo_config *c = tr->c;
  int64_t B = c->batch_size, T = c->input_seq_len, ntrain = c->num_train_examples;
  int accum = c->gradient_accumulation_steps;
  int64_t micro = (ntrain + B - 1) / B, per_epoch = micro / accum;
  if (per_epoch < 1) {
    zoo_error(tr->d, zoo_nospan,
              "an epoch of %lld examples in micro-batches of %lld has fewer than %d "
              "micro-batches: no optimiser step",
              (long long)ntrain, (long long)B, accum);
    return -1;
  }
  int64_t *order = malloc((size_t)ntrain * sizeof *order);
  int32_t **tok = calloc((size_t)accum, sizeof *tok), **tgt = calloc((size_t)accum, sizeof *tgt);
  int *rows = calloc((size_t)accum, sizeof *rows);
  for (int k = 0; k < accum; k++) {
    tok[k] = malloc((size_t)(B * T) * sizeof **tok);
    tgt[k] = malloc((size_t)(B * T) * sizeof **tgt);
  }
  zoo_adamw opt = {(float)c->learning_rate, 0.9f, 0.999f, 1e-8f, (float)c->weight_decay};
  int rc = 0, epochs_this_call = 0;
  double steps_time = 0;
  int64_t steps_this_call = 0;

  for (; tr->epoch < c->max_epochs && !rc; tr->epoch++) {
    int e = tr->epoch;
    double lr = c->learning_rate * (1 + cos(M_PI * e / c->max_epochs)) / 2;
    opt.lr = (float)lr;
    zoo_mqar_shuffle(order, ntrain, (uint64_t)c->seed, (uint64_t)e);
    double epoch_t0 = train_now(), loss_sum = 0;
    int64_t logged = tr->step; /* steps whose metrics were logged */
    zoo_metrics m = {0};
    for (int64_t s = 0; s < per_epoch; s++) {
      for (int k = 0; k < accum; k++) {
        int64_t first = (s * accum + k) * B;
        rows[k] = (int)(ntrain - first < B ? ntrain - first : B);
        zoo_mqar_batch(&tr->train_gen, (uint64_t)c->data_seed, order + first, 0, rows[k], tok[k],
                       tgt[k]);
      }
      uint64_t seed = zoo_rng_mix((uint64_t)c->seed * 0x9e3779b97f4a7c15ULL + (uint64_t)tr->step);
      int got = tr->be->train_step(tr->be, accum, (const int32_t *const *)tok,
                                   (const int32_t *const *)tgt, rows, &opt, seed, &m);
      if (got < 0) {
        zoo_error(tr->d, zoo_nospan, "training step %lld failed: %s", (long long)tr->step + 1,
                  tr->be->err);
        rc = -1;
        break;
      }
      tr->step++;
      steps_this_call++;
      if (train_signal) { /* SIGINT, SIGTERM: stop after this step, keep the last checkpoint */
        rc = -1;
        break;
      }
      if (tr->writer.running && __atomic_load_n(&tr->writer.done, __ATOMIC_ACQUIRE) &&
          train_save_wait(tr)) { /* the last checkpoint's write failed: stop now */
        rc = -1;
        break;
      }
      int64_t which = got == 0 ? tr->step : tr->step - 1; /* the step m belongs to */
      if (which > logged) {
        if (!isfinite(m.loss)) {
          rc = train_nan(tr, which, m.loss);
          break;
        }
        train_log_step(tr, which, m.loss, lr);
        loss_sum += m.loss;
        logged = which;
      }
      double rate = (double)(s + 1) / (train_now() - epoch_t0);
      train_progress(tr, s + 1, per_epoch, &m, rate, 0);
    }
    if (rc) break;
    if (tr->be->sync(tr->be, &m)) {
      zoo_error(tr->d, zoo_nospan, "the backend failed: %s", tr->be->err);
      rc = -1;
      break;
    }
    if (tr->step > logged) {
      if (!isfinite(m.loss)) {
        rc = train_nan(tr, tr->step, m.loss);
        break;
      }
      train_log_step(tr, tr->step, m.loss, lr);
      loss_sum += m.loss;
    }
    double train_s = train_now() - epoch_t0;
    steps_time += train_s;
    double acc, vloss;
    if (train_validate(tr, &acc, &vloss)) {
      rc = -1;
      break;
    }
    tr->last_acc = acc;
    tr->last_vloss = vloss;
    if (acc > tr->best) tr->best = acc;
    if (tr->metrics) {
      fprintf(tr->metrics, "{\"epoch\": %d, \"valid_loss\": %.9g, \"valid_accuracy\": %.9g, "
                           "\"train_loss\": %.9g, \"lr\": %.9g, \"elapsed_s\": %.3f}\n",
              e, vloss, acc, loss_sum / (double)per_epoch, lr, train_elapsed(tr));
      fflush(tr->metrics);
    }
    tr->early_stopped = c->early_stopping && acc > c->early_stopping_threshold;
    int done = tr->epoch + 1;
    if (!tr->o->quiet) {
      if (tr->tty) fputs("\r\033[K", tr->out);
      fprintf(tr->out,
              "epoch %d/%d: train loss %.4f, valid loss %.4f, valid accuracy %.4f (best %.4f), "
              "%.1f steps/s, %.1f s\n",
              done, c->max_epochs, loss_sum / (double)per_epoch, vloss, acc, tr->best,
              (double)per_epoch / train_s, train_elapsed(tr));
      fflush(tr->out);
    }
    tr->epoch = done; /* the checkpoint holds completed epochs */
    if (train_save(tr, tr->early_stopped)) {
      rc = -1;
      break;
    }
    tr->epoch = done - 1;
    epochs_this_call++;
    if (tr->early_stopped) {
      if (!tr->o->quiet)
        fprintf(tr->out, "early stop at epoch %d: valid accuracy %.4f > %g\n", done, acc,
                c->early_stopping_threshold);
      tr->epoch++;
      break;
    }
    if (tr->o->stop_after_epochs > 0 && epochs_this_call >= tr->o->stop_after_epochs) {
      tr->epoch++;
      break;
    }
  }
  r->steps_per_s = steps_time > 0 ? (double)steps_this_call / steps_time : 0;
  for (int k = 0; k < accum; k++) free(tok[k]), free(tgt[k]);
  free(tok);
  free(tgt);
  free(rows);
  free(order);
  return rc;
}

int zoo_train(zoo_config *c, const zoo_train_opts *o, zoo_train_result *r, zoo_diag *d) {
  memset(r, 0, sizeof *r);
  trainer tr = {.c = c, .o = o, .d = d, .out = o->out ? o->out : stdout, .lock_fd = -1};
  tr.tty = isatty(fileno(tr.out));
  int rc = -1;
  double t_start = train_now();
  tr.t0 = t_start;

  if (zoo_config_check_model(c, d)) return -1;
  zoo_compile_opts co = {.path = c->model_file, .defines = c->defines, .ndefines = c->ndefines,
                         .define_at = c->define_at};
  if (zoo_compile(&co, d, &tr.prog)) return -1;
  if (zoo_config_check_program(c, tr.prog, d)) goto done;
  /* The LM head over labelled rows only: on the CPU fused (linear_cross_entropy,
   * no logits at all); on CUDA compacted (the labelled rows gathered, then
   * cuBLAS GEMMs over them), sized by the pairs per sequence, each of which
   * labels one position. */
  const char *dev = o->device ? o->device : "auto";
  char why[256];
  int on_cuda = !strcmp(dev, "cuda") || (!strcmp(dev, "auto") && zoo_cuda_available(why, sizeof why));
  int tc = zoo_precision_of(c->precision) != ZOO_FP32; /* tf32, bf16: tensor-core products */
  if ((on_cuda ? zoo_train_graph_tc(&tr.prog->graph, ZOO_HEAD_COMPACT, c->num_kv_pairs, tc, d)
               : zoo_train_graph(&tr.prog->graph, d)))
    goto done;
  tr.g = &tr.prog->graph;
  r->parameters = zoo_graph_param_count(tr.g);
  if (!o->quiet) {
    fprintf(tr.out, "model: %s %s(", c->model_file, tr.prog->model_name ? tr.prog->model_name : "");
    for (int i = 0; i < tr.prog->nbindings; i++)
      fprintf(tr.out, "%s%s=%s", i ? ", " : "", tr.prog->bindings[i].name, tr.prog->bindings[i].value);
    fprintf(tr.out, "): %lld parameters\n", (long long)r->parameters);
  }

  char err[512];
  zoo_mqar_opts mo = {c->vocab_size, c->input_seq_len, c->num_kv_pairs, c->train_power_a,
                      c->random_non_queries};
  if (zoo_mqar_init(&tr.train_gen, &mo, err, sizeof err)) {
    zoo_error(d, zoo_nospan, "%s: cannot make the data: %s", c->path, err);
    goto done;
  }
  mo.power_a = c->test_power_a;
  if (zoo_mqar_init(&tr.test_gen, &mo, err, sizeof err)) {
    zoo_error(d, zoo_nospan, "%s: cannot make the data: %s", c->path, err);
    goto done;
  }
  int64_t T = c->input_seq_len, ntest = c->num_test_examples;
  tr.test_tokens = malloc((size_t)(ntest * T) * sizeof *tr.test_tokens);
  tr.test_targets = malloc((size_t)(ntest * T) * sizeof *tr.test_targets);
  double tg = train_now();
  zoo_mqar_batch(&tr.test_gen, (uint64_t)c->data_seed + 10, NULL, 0, ntest, tr.test_tokens,
                 tr.test_targets);
  if (!o->quiet)
    fprintf(tr.out,
            "data: MQAR, %lld train (made per batch) and %lld test examples (%.2f s), "
            "L = %d, %d pairs, V = %d, batch %d x %d\n",
            (long long)c->num_train_examples, (long long)ntest, train_now() - tg,
            c->input_seq_len, c->num_kv_pairs, c->vocab_size, c->batch_size,
            c->gradient_accumulation_steps);

  /* the run folder before the backend, whose start may take seconds */
  if (train_folder(&tr)) goto done;
  snprintf(r->run_dir, sizeof r->run_dir, "%s", tr.dir);

  train_mark(t_start, "model and data ready");
  tr.be = train_backend(&tr, c->batch_size, T, r->device);
  fflush(tr.out);
  if (!tr.be) goto done;
  train_mark(t_start, "backend ready");
  train_alloc_state(&tr);


  int finished = 0;
  if (o->resume) {
    int got = train_resume(&tr);
    if (got < 0) goto done;
    finished = got == 1;
  } else {
    tr.staged = access(tr.ckpt_path, F_OK) == 0;
    if (tr.staged && !o->quiet)
      fprintf(tr.out, "note: starting over in %s; its earlier run stays until this one's first "
                      "checkpoint (--resume continues it instead)\n", tr.dir);
    zoo_train_init_params(tr.g, (uint64_t)c->seed, tr.params);
    if (tr.be->set_state(tr.be, tr.params, NULL, NULL, 0)) {
      zoo_error(d, zoo_nospan, "cannot load the parameters into the backend: %s", tr.be->err);
      goto done;
    }
  }

  if (train_open_files(&tr, finished)) goto done;
  if (finished) {
    if (!o->quiet)
      fprintf(tr.out, "the run is complete: %d epochs, best valid accuracy %.4f\n", tr.epoch,
              tr.best);
    rc = 0;
  } else {
    tr.t0 = train_now();
    train_mark(t_start, "training starts");
    struct sigaction was[2];
    train_catch_signals(was);
    rc = train_run(&tr, r);
    sigaction(SIGINT, &was[0], NULL);
    sigaction(SIGTERM, &was[1], NULL);
    r->signal = train_signal;
    train_mark(t_start, "training ends");
    if (train_save_wait(&tr)) rc = -1;
    train_mark(t_start, "last checkpoint written");
    char path[1100];
    train_file(&tr, path, sizeof path, "metrics.jsonl");
    if (train_close(&tr, tr.metrics, path)) rc = -1;
    tr.metrics = NULL;
  }
  r->best_accuracy = tr.best;
  r->last_accuracy = tr.last_acc;
  r->last_valid_loss = tr.last_vloss;
  r->epochs = tr.epoch;
  r->steps = tr.step;
  r->early_stopped = tr.early_stopped;
  r->wall_s = train_now() - t_start;
  int kept = tr.have_ckpt && !tr.staged;
  if (r->signal)
    zoo_error(d, zoo_nospan, "stopped by %s at step %lld (epoch %d/%d); %s%s%s",
              r->signal == SIGINT ? "SIGINT" : "SIGTERM", (long long)tr.step, tr.epoch + 1,
              c->max_epochs, kept ? "the last checkpoint is kept at " : "no checkpoint was written yet",
              kept ? tr.ckpt_path : "", kept ? " (--resume continues from it)" : "");
  if (tr.staged) /* failed before its first checkpoint: the earlier run stays */
    zoo_note(d, zoo_nospan, "the earlier run in %s is kept as it was", tr.dir);
  else if (train_summary(&tr, r, r->signal || (!rc && tr.epoch < c->max_epochs && !tr.early_stopped)
                                     ? "interrupted"
                                 : rc                ? "failed"
                                 : tr.early_stopped  ? "early stopped"
                                                     : "finished"))
    rc = -1;
  if (!o->quiet && !rc && !finished)
    fprintf(tr.out,
            "done: best valid accuracy %.4f after %d epochs%s; %lld steps, %.1f steps/s "
            "(%.1f ms/step) on %s; %s/\n",
            tr.best, tr.epoch, tr.early_stopped ? " (early stop)" : "", (long long)tr.step,
            r->steps_per_s, r->steps_per_s > 0 ? 1000 / r->steps_per_s : 0.0, r->device, tr.dir);

done:
  if (tr.metrics) fclose(tr.metrics);
  if (tr.lock_fd >= 0) close(tr.lock_fd);
  if (tr.staged) drop_staged(tr.dir);
  if (tr.be) tr.be->free(tr.be);
  train_mark(t_start, "backend freed");
  train_free_state(&tr);
  zoo_mqar_free(&tr.train_gen);
  zoo_mqar_free(&tr.test_gen);
  free(tr.test_tokens);
  free(tr.test_targets);
  zoo_program_free(tr.prog);
  return rc;
}
