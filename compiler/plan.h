/* plan.h: where every tensor lives on the device, for one list of steps.
 *
 * The steps (codegen_cuda.h) run in order. The planner resolves aliases
 * (reshape shares its input's memory), finds each tensor's live range over the
 * steps (first to last step that names it), and lays the values out in one
 * arena, reusing a dead tensor's bytes (greedy best fit, largest first). Four
 * kinds of memory:
 *
 *   ZOO_MEM_PARAM  the parameters, one flat buffer in g->params order
 *   ZOO_MEM_GRAD   their gradients: a second flat buffer with the same layout,
 *                  so AdamW and gradient accumulation are one kernel each
 *   ZOO_MEM_INPUT  the graph's inputs (tokens, targets, dloss)
 *   ZOO_MEM_ARENA  every other value that reaches memory, and the scratch areas
 *
 * A value kept in a register by a fused kernel is named by no step and gets no
 * memory (ZOO_MEM_NONE). Offsets are in bytes, aligned to 256.
 *
 * A value's (or scratch area's) bytes go to another only ZOO_PLAN_SLACK steps
 * after its last use: the CUDA backend runs some steps on a second stream,
 * beside the next steps of the first (schedule.h), and those must not
 * overwrite what such a step still reads. It costs the arena little: values
 * live a few launches longer.
 */
#ifndef ZOO_PLAN_H
#define ZOO_PLAN_H

#include <stdint.h>
#include <stdio.h>

#include "codegen_cuda.h"
#include "graph.h"

typedef enum zoo_mem {
  ZOO_MEM_NONE,
  ZOO_MEM_ARENA,
  ZOO_MEM_PARAM,
  ZOO_MEM_GRAD,
  ZOO_MEM_INPUT,
} zoo_mem;

#define ZOO_PLAN_ALIGN 256
#define ZOO_PLAN_SLACK 8

typedef struct zoo_plan {
  int ntensors, nsteps;
  unsigned char *mem;     /* per tensor: zoo_mem (an alias: its base's) */
  int64_t *offset;        /* per tensor: bytes into its memory */
  int64_t *bytes;         /* per tensor: its size */
  int *base;              /* per tensor: the tensor that owns its memory */
  int *first, *last;      /* per tensor: live steps (arena values), -1 if none */
  int64_t *scratch;       /* per step: arena offset of its node's scratch, -1 if none */
  int64_t *scratch_size;  /* per step: the bytes of that area (0 if none) */
  int64_t arena_bytes;    /* the arena's size: peak of live values and scratch */
  int64_t naive_bytes;    /* the same without reuse */
  int64_t param_bytes;    /* the flat parameter buffer (and the gradient buffer) */
  int64_t *param_offset;  /* per g->params entry, bytes */
  int64_t param_floats;   /* param_bytes / 4 */
  int64_t input_bytes;    /* the inputs, then the counters */
  int64_t counter_offset; /* bytes into ZOO_MEM_INPUT of the counters (ZOO_ARG_COUNTER):
                             ints that the backends zero once, with the inputs */
  int64_t counter_first;  /* the number of the plan's first counter, at counter_offset */
  int kernels, gemms, zeros; /* steps by kind */
} zoo_plan;

/* Plans steps[0, nsteps) of graph g (symbols bound to sym). alias comes from the
 * emitter (NULL: none). keep[0, nkeep) are tensors that must stay live to the
 * last step (results the runtime reads afterwards: loss, metrics). reuse = 0
 * gives every value its own bytes (zooc --no-plan). Returns 0, or -1 with the
 * reason in err. */
int zoo_plan_build(zoo_plan *p, const zoo_graph *g, const int64_t *sym, const zoo_step *steps,
                   int nsteps, const int *alias, const int *keep, int nkeep, int reuse, char *err,
                   size_t errlen);
void zoo_plan_free(zoo_plan *p);

/* plan.txt: every step (kernel or GEMM, grid, arguments with their memory and
 * offsets), the arena layout and the totals. */
void zoo_plan_write(FILE *out, const zoo_plan *p, const zoo_graph *g, const zoo_step *steps,
                    int nforward_steps);

/* The few lines zooc --summary prints: kernels and launches per training step
 * (with `accum` micro-batches), peak arena bytes, parameter and optimiser
 * memory. */
void zoo_plan_summary(FILE *out, const zoo_plan *p, const zoo_graph *g, const zoo_step *steps,
                      int accum);

/* "12.3 MiB" */
char *zoo_bytes_str(int64_t bytes, char *buf, size_t n);

#endif
