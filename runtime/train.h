/* train.h: the trainer, the reference's training loop on any backend.
 *
 *   compile the config's model, add the training graph, pick a backend
 *   per epoch e:  lr = lr0 * (1 + cos(pi * e / max_epochs)) / 2
 *                 reshuffle the training examples (seed, e); micro-batches of
 *                 data.batch_size rows; one AdamW step per accum micro-batches
 *                 (a trailing incomplete group is dropped, as the reference's
 *                 zero_grad at the end of the epoch does)
 *                 validate on the test split; keep the best accuracy; save the
 *                 checkpoint; stop early when accuracy > threshold
 *
 * Everything random is a function of (seed, epoch, step), so a run resumed from
 * its checkpoint ends with the same parameters as one never interrupted.
 *
 * A run writes <out>/ (runs/<run_id>/ by default): config.yaml, metrics.jsonl,
 * checkpoint.safetensors (each epoch, via a temporary file) and summary.json.
 */
#ifndef ZOO_TRAIN_H
#define ZOO_TRAIN_H

#include <stdint.h>
#include <stdio.h>

#include "../compiler/diag.h"
#include "config.h"

typedef struct zoo_train_opts {
  const char *device;     /* "auto", "cpu" or "cuda" */
  const char *out_dir;    /* NULL: runs/<run_id> */
  int resume;             /* continue from <out>/checkpoint.safetensors */
  int stop_after_epochs;  /* > 0: stop after this many epochs of this call, as if
                             interrupted (tests of --resume) */
  int quiet;              /* no progress output (tests) */
  FILE *out;              /* progress and summary lines; NULL: stdout */
} zoo_train_opts;

typedef struct zoo_train_result {
  double best_accuracy;   /* best validation accuracy over the epochs */
  double last_accuracy, last_valid_loss;
  int epochs;             /* epochs completed in total */
  int64_t steps;          /* optimiser steps in total */
  double wall_s;          /* of this call */
  double steps_per_s;
  int early_stopped;
  int64_t parameters;
  char device[16];
  char run_dir[1024];
  int signal;             /* SIGINT or SIGTERM when one stopped the run, else 0 */
} zoo_train_result;

/* Trains the finished config c. Returns 0, or -1 after reporting through d (a
 * config, model, checkpoint or backend problem, a loss that is not finite, or
 * SIGINT or SIGTERM, which stop the run after the step in flight: r->signal). */
int zoo_train(zoo_config *c, const zoo_train_opts *o, zoo_train_result *r, zoo_diag *d);

/* Fills parameter buffers from each parameter's zoo_init with a generator seeded
 * by `seed` (parameter i draws from its own stream). */
void zoo_train_init_params(const zoo_graph *g, uint64_t seed, float **params);

#endif
