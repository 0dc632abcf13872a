/* schedule.h: two streams for one list of steps.
 *
 * The steps of a plan run in order on one stream. Many of them feed nothing
 * that runs soon after them: a weight gradient's GEMM is read by the optimiser
 * only, a norm's parameter gradient (sum_partials) likewise. At the small
 * cells each such step is a launch of 5 to 30 us that the next steps wait
 * for although they need nothing from it. zoo_schedule puts those steps on a
 * second ("side") stream, where they run beside the main stream's next steps.
 *
 * What a step touches: its memory ranges, each read or written.
 *   - A kernel's tensor arguments, read when the kernel's parameter is a
 *     pointer to const in the module's source, written otherwise (a
 *     parameter list that does not match the arguments: all written); its
 *     scratch area (the whole area its node shares) and its counters,
 *     written.
 *   - A GEMM's a, b and bias, read; c, written; the extra arguments of zoo's
 *     own GEMM kernel (scratch, counters), written. cuBLASLt's workspace is
 *     the stream's own (the backend keeps one per stream), so it is no
 *     hazard.
 *   - A clear: c, written.
 * Two steps conflict when a range of one overlaps a range of the other in the
 * same memory and either writes it.
 *
 * The rule: step j goes to the side stream when none of the next `window`
 * steps conflicts with it (and it is not the list's last), or when it is an
 * early step (zoo_step's early: moved to the front of the training step by
 * generate.c, reading only the inputs; a chain of them conflicts within
 * itself, and the stream keeps their order). Before a step, its
 * stream waits for the latest step of the other stream that conflicts with it
 * and is not yet ordered before it (wait[j] names that step; an event is
 * recorded after it, mark[i]); waiting for step i orders every step of that
 * stream up to i. The first side step always waits, for the main stream's
 * latest step before it (-2: for the main stream's position before the
 * list's first step), which also forks the side stream into a graph being
 * captured. After the list the caller joins the side stream back into the
 * main one. Every pair of conflicting steps is then ordered as in the list,
 * so the results are the same bits as on one stream.
 *
 * The plan gives a value's bytes to another only ZOO_PLAN_SLACK steps after
 * its last use (plan.h), so a side step's inputs are not overwritten by the
 * main stream's next steps; ZOO_SCHEDULE_WINDOW is no larger.
 *
 * Whether two streams pay depends on the shapes; the CUDA backend times one
 * stream against the candidate schedules at start-up and keeps the fastest
 * (runtime/cuda.c, pick_streams).
 */
#ifndef ZOO_SCHEDULE_H
#define ZOO_SCHEDULE_H

#include "codegen_cuda.h"
#include "plan.h"

/* Side steps run beside the main stream's next this-many steps. Measured on
 * the H200 at rebased 32/48 (a micro-batch's steps on two streams, session 7,
 * device run 6): 0.899 ms with a window of 3 and ZOO_PLAN_SLACK 3, 0.882 with
 * slack 8, 0.869 with 8 and 6, 0.865 with 16 and 12 (a larger arena). */
#define ZOO_SCHEDULE_WINDOW 6

#define ZOO_SCHEDULE_NONE (-1)
#define ZOO_SCHEDULE_START (-2)

typedef struct zoo_schedule {
  int n;                 /* steps */
  unsigned char *stream; /* per step: 0 main, 1 side */
  int *wait;             /* per step: the step of the other stream whose event its
                            stream waits for first, ZOO_SCHEDULE_START or _NONE */
  unsigned char *mark;   /* per step: an event is recorded after it */
  int side;              /* steps on the side stream */
  int waits;             /* waits in all */
} zoo_schedule;

/* A memory range a step touches. */
typedef struct zoo_access {
  int mem;        /* zoo_mem */
  int64_t lo, hi; /* bytes [lo, hi) */
  int write;
} zoo_access;

#define ZOO_SCHEDULE_MAX_ACCESS (ZOO_MAX_ARGS + 4)

/* A kernel's signature in a module's source: which parameters are pointers,
 * and which of those point to non-const (may be written). */
typedef struct zoo_kernel_sig {
  const char *name; /* into the source */
  int name_len;
  int nparams;
  unsigned pointers, writes; /* bit k: parameter k */
} zoo_kernel_sig;

/* The signatures of every kernel defined in src (malloc'ed, NULL when none;
 * *n set). */
zoo_kernel_sig *zoo_kernel_sigs(const char *src, int *n);

/* The ranges steps[i] touches under plan p, whose step 0 is steps[first];
 * returns how many (at most ZOO_SCHEDULE_MAX_ACCESS). With no signature for a
 * kernel (sigs NULL, or none of that name) every pointer counts as written. */
int zoo_step_access(const zoo_plan *p, const zoo_step *steps, int first, int i, const zoo_kernel_sig *sigs,
                    int nsigs, zoo_access *out);

/* Do two steps' ranges conflict (overlap in one memory, one of them written)? */
int zoo_access_conflict(const zoo_access *a, int na, const zoo_access *b, int nb);

/* Which steps may go aside. */
typedef struct zoo_schedule_opts {
  int window;           /* ZOO_SCHEDULE_WINDOW; 0: all on the main stream */
  double max_gemm_flop; /* > 0: GEMMs of more floating-point operations (2 m n k a
                           batch) stay on the main stream: a large GEMM beside the
                           main stream's work shares the multiprocessors with it,
                           and both then run in more waves */
} zoo_schedule_opts;

/* Schedules steps[first, first + n) under plan p over two streams; src is
 * the module's source, for the kernels' signatures. */
void zoo_schedule_build(zoo_schedule *s, const zoo_plan *p, const zoo_step *steps, int first, int n,
                        const char *src, zoo_schedule_opts o);
void zoo_schedule_free(zoo_schedule *s);

#endif
