/* checkpoint.h: checkpoints as safetensors files.
 *
 *   8 bytes     header length N, little-endian u64
 *   N bytes     JSON: {"__metadata__": {"format": "zoo", "version": "1", ...strings},
 *                      "<name>": {"dtype": "F32", "shape": [..], "data_offsets": [a, b]}, ...}
 *               padded with spaces to a multiple of 8
 *   the rest    the tensors' bytes; offsets count from here
 *
 * Parameters carry the reference's state_dict names (and its aliases, such as
 * lm_head.weight for the tied embedding), so PyTorch's load_state_dict takes the
 * file as is; the AdamW state rides along as "optim.m.<name>" and "optim.v.<name>".
 * Files are written to <path>.tmp, synced, then renamed over <path>, so a crash
 * leaves the previous checkpoint whole.
 */
#ifndef ZOO_CHECKPOINT_H
#define ZOO_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "../compiler/compile.h"
#include "../compiler/graph.h"

typedef struct zoo_ckpt_tensor {
  const char *name;
  int ndim;
  int64_t shape[ZOO_MAX_DIMS];
  int64_t numel;
  float *data; /* numel floats (loaded: owned by the zoo_ckpt) */
} zoo_ckpt_tensor;

typedef struct zoo_ckpt_meta {
  const char *key, *value;
} zoo_ckpt_meta;

/* A loaded file. */
typedef struct zoo_ckpt {
  zoo_ckpt_tensor *tensors;
  int ntensors;
  zoo_ckpt_meta *meta;
  int nmeta;
  char *strings; /* names and metadata text live here */
} zoo_ckpt;

/* Writes tensors and metadata (values are strings) to path via path.tmp. Returns
 * 0, or -1 with the reason in err. */
int zoo_ckpt_save(const char *path, const zoo_ckpt_tensor *t, int n, const zoo_ckpt_meta *meta,
                  int nmeta, char *err, size_t errlen);
/* Reads and validates a file: header length, JSON, dtype, shapes, offsets within
 * the file and not overlapping. Returns 0, or -1 with "<path>: <problem>" in err. */
int zoo_ckpt_load(const char *path, zoo_ckpt *c, char *err, size_t errlen);
void zoo_ckpt_free(zoo_ckpt *c);
const zoo_ckpt_tensor *zoo_ckpt_find(const zoo_ckpt *c, const char *name);
const char *zoo_ckpt_meta_get(const zoo_ckpt *c, const char *key);

/* A model's training state in g->params order; m and v may be NULL. */
typedef struct zoo_ckpt_state {
  float **params, **m, **v;
} zoo_ckpt_state;

/* Saves every parameter under its name, each alias as a copy of its tensor, and
 * optim.m.* / optim.v.* when s->m and s->v are set. */
int zoo_ckpt_save_model(const char *path, const zoo_graph *g, const zoo_alias *aliases,
                        int naliases, const zoo_ckpt_state *s, const zoo_ckpt_meta *meta,
                        int nmeta, char *err, size_t errlen);
/* Copies a loaded file's tensors into s (buffers of the parameters' sizes),
 * checking that every parameter (and optimiser tensor, when s->m is set) is there
 * with the model's shape, and that the file has no tensor the model lacks.
 * Returns 0, or -1 with the first problem in err. */
int zoo_ckpt_restore_model(const zoo_ckpt *c, const char *path, const zoo_graph *g,
                           const zoo_alias *aliases, int naliases, const zoo_ckpt_state *s,
                           char *err, size_t errlen);

#endif
