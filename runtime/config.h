/* config.h: run configurations (YAML) and grid sweeps.
 *
 * zoorun reads the reference's own configs unchanged (configs/simple_mqar.yaml,
 * configs/config_mqar.yaml) and a native form that binds any .zoo model's
 * parameters:
 *
 *   model:
 *     file: models/rebased.zoo
 *     params: {d_model: 64, seq_len: 16, vocab_size: 64}
 *
 * Loading is three steps, so that command-line flags are checked like the file:
 *
 *   zoo_config_load      YAML -> a tree whose every node knows its file:line:col
 *   zoo_config_override  `--model.d_model=64` replaces one node of the tree; the new
 *                        node's location is the flag itself
 *   zoo_config_finish    the tree against the schema (unknown keys, wrong types,
 *                        bad values: located errors), then the reference trainer's
 *                        own rewrites (12 heads, num_kv_pairs, micro-batches),
 *                        each printed as "override: ..."
 *
 * Keys the reference has but zoo does not use (logger.*, data.cache_dir, ...) are
 * accepted with a note; model options that would change the model are accepted
 * only at the one value zoo's models implement.
 */
#ifndef ZOO_CONFIG_H
#define ZOO_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "../compiler/arena.h"
#include "../compiler/compile.h"
#include "../compiler/diag.h"

typedef enum zoo_yaml_kind { ZOO_YAML_SCALAR, ZOO_YAML_SEQ, ZOO_YAML_MAP } zoo_yaml_kind;

/* A YAML node. Maps keep their keys in file order. */
typedef struct zoo_yaml zoo_yaml;
struct zoo_yaml {
  zoo_yaml_kind kind;
  zoo_span span;      /* the node's text (a flag's value for command-line nodes) */
  const char *text;   /* scalar: its text */
  int quoted;         /* scalar: written in quotes (so never a number or a bool) */
  int n, cap;         /* sequence items or map entries; room for them */
  zoo_yaml **items;   /* sequence items; map values */
  const char **keys;  /* map keys */
  zoo_span *key_spans;
};

typedef struct zoo_config {
  zoo_arena arena;
  zoo_source *sources[64]; /* the file, then one per flag (spans point into them) */
  int nsources;
  zoo_yaml *root;
  const char *path;

  /* data (the reference's DataConfig and multiquery_ar's arguments) */
  int vocab_size;              /* data.vocab_size: 8192 */
  int input_seq_len;           /* data.input_seq_len: 64 */
  int batch_size;              /* data.batch_size: 32; after finish, rows per micro-batch */
  int64_t num_train_examples;  /* 100000 */
  int64_t num_test_examples;   /* 3000 */
  int64_t data_seed;           /* data.seed: 42; the test split uses data_seed + 10 */
  int num_kv_pairs;            /* data.builder.kwargs.num_kv_pairs: 4 */
  double train_power_a;        /* 0.01 */
  double test_power_a;         /* 0.01 */
  int random_non_queries;      /* the reference's default is true; its configs say False */

  /* model */
  const char *model_file;      /* native: model.file; reference form: models/<mixer>.zoo */
  const char *mixer;           /* reference form: model.sequence_mixer.name; NULL if native */
  int d_model;                 /* 128 */
  int num_heads;               /* 1 (the reference trainer rewrites it) */
  int n_layers;                /* 2, the only value supported */
  int max_position_embeddings; /* rewritten to input_seq_len */
  int model_vocab_size;        /* model.vocab_size: 8192 */
  zoo_define *defines;         /* what zoo_compile binds: the model's parameters */
  zoo_define_at *define_at;    /* where each was written (zoo_compile_opts.define_at) */
  int ndefines;

  /* training */
  int max_epochs;                  /* 100 */
  double learning_rate;            /* 1e-3 */
  double weight_decay;             /* 0.1 */
  int64_t seed;                    /* 123: initialisation, shuffling, dropout */
  int gradient_accumulation_steps; /* 1 */
  int early_stopping;              /* early_stopping_metric is valid/accuracy (not null) */
  double early_stopping_threshold; /* 0.99 */
  const char *run_id;              /* "default" */
  const char *precision;           /* "fp32", "tf32" or "bf16": the CUDA GEMMs' (backend.h) */
  const char **tags;
  int ntags;
} zoo_config;

/* Reads and parses a YAML file into c->root (syntax only). Returns 0, or -1 after
 * reporting through d. */
int zoo_config_load(zoo_config *c, const char *path, zoo_diag *d);
/* Same from text (tests): `path` names it in messages. */
int zoo_config_load_string(zoo_config *c, const char *path, const char *text, zoo_diag *d);
/* Applies "--a.b.c=value" (or "a.b.c=value"): the value is parsed as YAML
 * ("[1, 2]" is a list). Returns 0, or -1 after reporting an unknown key or bad
 * syntax through d. */
int zoo_config_override(zoo_config *c, const char *flag, zoo_diag *d);
/* Is "a.b.c" a key an override may set (a config key, a section of them, or
 * model.params.NAME)? */
int zoo_config_known_key(const char *key);
/* Checks the tree against the schema and fills the fields; then applies the
 * reference trainer's rewrites, printing each to log (NULL: silent) and notes
 * for ignored keys through d. Returns 0, or -1 after reporting through d. */
int zoo_config_finish(zoo_config *c, zoo_diag *d, FILE *log);
/* Checks that the model's .zoo file exists (relative paths: from the working
 * directory, else beside the binary's folder); reports at the key that named it. */
int zoo_config_check_model(zoo_config *c, zoo_diag *d);
/* After zoo_compile: the model's own seq_len and vocab_size (its bindings, after
 * defaults and model.params) must hold the data's input_seq_len and vocab_size.
 * Reports at the key that set the model's value (model.params.seq_len, else
 * data.input_seq_len; likewise vocab_size) and returns -1; 0 when they do, or
 * when the model has no such parameter. */
int zoo_config_check_program(zoo_config *c, const zoo_program *p, zoo_diag *d);
/* The effective configuration as YAML (what runs/<id>/config.yaml holds). */
void zoo_config_write(FILE *out, const zoo_config *c);
/* FNV-1a of the effective YAML: equal configs, equal hashes. */
uint64_t zoo_config_hash(const zoo_config *c);
/* Of what decides the parameters' names and shapes: the model file's text (not
 * the spelling of its path) and the parameters sorted by name, their values
 * written one way (1e-2 and 0.01 alike). */
uint64_t zoo_config_model_hash(const zoo_config *c);
void zoo_config_free(zoo_config *c);

/* A grid sweep in the reference's format (program, command, method: grid,
 * parameters: {dotted.key: {values: [...]} or {value: x}}). */
typedef struct zoo_sweep_param {
  const char *key;    /* dotted config key */
  zoo_span key_span;
  zoo_yaml **values;
  int nvalues;
} zoo_sweep_param;

typedef struct zoo_sweep {
  zoo_config file;          /* the sweep file's tree (its arena holds everything) */
  const char *name;
  const char *base_config;  /* the --config_path of its command, as written */
  zoo_span base_span;
  zoo_sweep_param *params;
  int nparams;
  int64_t nruns;            /* product of the value counts */
} zoo_sweep;

/* The most runs a sweep may have: a grid larger than this is refused. */
enum { ZOO_SWEEP_MAX_RUNS = 1000000 };

/* Reads a sweep file and checks its parameters (known keys, no value listed
 * twice in one parameter, at most ZOO_SWEEP_MAX_RUNS runs). Returns 0, or -1
 * after reporting. */
int zoo_sweep_load(zoo_sweep *s, const char *path, zoo_diag *d);
/* Run `index` (0 .. nruns-1) of the grid: the first parameter varies slowest.
 * Loads the base config, applies the run's values and finishes it (silently).
 * Returns 0, or -1 after reporting (errors point into the sweep file). */
int zoo_sweep_run_config(const zoo_sweep *s, int64_t index, zoo_config *c, zoo_diag *d);
/* One line per run: "run 1/2500: --learning_rate=5e-4 --model.sequence_mixer.name=rebased ...";
 * every run's config is checked, and its model compiled and checked against its
 * data as a run would (zoo_config_check_model, zoo_compile,
 * zoo_config_check_program), once for each distinct model file and parameters.
 * A model zoo does not have is noted, not an error. Returns 0, or -1 after
 * reporting. */
int zoo_sweep_list(const zoo_sweep *s, FILE *out, zoo_diag *d);
void zoo_sweep_free(zoo_sweep *s);

#endif
