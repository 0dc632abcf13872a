/* mqar.h: the multi-query associative recall (MQAR) data, as the reference makes it.
 *
 * One example of sequence length L with N key-value pairs over a vocabulary V:
 *
 *   context      k1 v1 k2 v2 ... kN vN          keys in 1 .. V/2-1, values in V/2 .. V-1,
 *                                               each set distinct within the example
 *   query area   L - 2N + 1 zeros; key j at 2*g_j, where g_1..g_N are distinct gap
 *                slots drawn one at a time from S = (L - 2N) / 2 slots, slot i (1-based)
 *                weighted a * i^(a-1), renormalised after each draw
 *   labels       -100 everywhere; value j at 2N + 2*g_j + 1
 *   tokens       the first L of the L + 1 tokens; targets: labels 1 .. L
 *
 * So targets[t] is the value of the key at tokens[t] for every queried key, and
 * -100 elsewhere. With random_non_queries the zero filler becomes uniform random
 * tokens in 0 .. V-1.
 *
 * The reference draws with numpy's global generator; zoo cannot reproduce that
 * stream, so the data has the reference's distribution, not its exact examples.
 * Every example is a pure function of (seed, index): examples can be made in any
 * order, on any thread, or on demand for a batch, and are the same each time.
 */
#ifndef ZOO_MQAR_H
#define ZOO_MQAR_H

#include <stddef.h>
#include <stdint.h>

typedef struct zoo_mqar_opts {
  int vocab_size;         /* V */
  int seq_len;            /* L, even */
  int num_kv_pairs;       /* N, 4N <= L */
  double power_a;         /* a in (0, 1]: 1 is uniform, small favours short gaps */
  int random_non_queries; /* replace the zero filler with random tokens */
} zoo_mqar_opts;

/* A generator: the options and the gap weights, made once. */
typedef struct zoo_mqar {
  zoo_mqar_opts o;
  int slots;       /* S = (L - 2N) / 2 */
  int width;       /* slots per block: about sqrt(S), a multiple of 4 */
  int blocks;      /* enough blocks for S slots, rounded up to a multiple of 4 */
  int64_t total;   /* sum of the weights */
  int64_t *weight; /* [S]: slot i's weight, an integer (see mqar.c) */
  int64_t *part;   /* [blocks * width]: weight of slot i's block up to and including
                      slot i; INT64_MAX past the last slot */
  int64_t *cum;    /* [blocks]: weight of blocks 0 .. b */
} zoo_mqar;

/* Checks the options the way the reference asserts them (L even, V > L, 4N <= L)
 * plus what sampling needs (enough distinct keys and values, 0 < a). Returns 0, or
 * -1 with the reason in err. */
int zoo_mqar_init(zoo_mqar *m, const zoo_mqar_opts *o, char *err, size_t errlen);
void zoo_mqar_free(zoo_mqar *m);

/* Per-thread working memory for zoo_mqar_example. */
typedef struct zoo_mqar_scratch {
  int64_t *cum, *part; /* working copies of zoo_mqar's */
  uint32_t *stamp;  /* [V]: "token used in the example stamped s" */
  uint32_t now;
  int *keys, *values, *gaps; /* [N] */
} zoo_mqar_scratch;

void zoo_mqar_scratch_init(zoo_mqar_scratch *s, const zoo_mqar *m);
void zoo_mqar_scratch_free(zoo_mqar_scratch *s);

/* Example `index` of the split with this seed: tokens[L] and targets[L]. */
void zoo_mqar_example(const zoo_mqar *m, zoo_mqar_scratch *s, uint64_t seed, int64_t index,
                      int32_t *tokens, int32_t *targets);

/* Examples idx[0 .. rows-1] into tokens[rows, L] and targets[rows, L] (OpenMP over
 * rows). idx NULL means examples first .. first + rows - 1. */
void zoo_mqar_batch(const zoo_mqar *m, uint64_t seed, const int64_t *idx, int64_t first,
                    int64_t rows, int32_t *tokens, int32_t *targets);

/* The order of an epoch: a permutation of 0 .. n-1 that depends only on (seed, epoch). */
void zoo_mqar_shuffle(int64_t *order, int64_t n, uint64_t seed, uint64_t epoch);

#endif
