/* mqar.c: the MQAR generator (see mqar.h for the layout of an example).
 *
 * Randomness: each example owns a SplitMix64 stream started from a hash of
 * (seed, index), so examples are independent of each other and of the thread that
 * makes them. numpy's Mersenne Twister stream is not reproduced (the reference
 * seeds numpy's global generator); the distribution is the reference's.
 *
 * Gap slots are drawn one at a time in proportion to their weights among the slots
 * not yet drawn, which is what numpy's choice(replace=False, p=...) does; see
 * mqar_gaps for how that stays cheap (O(sqrt S) per draw, exact integer sums).
 */
#include "mqar.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

typedef struct mqar_rng {
  uint64_t x;
} mqar_rng;

/* SplitMix64: the next 64 random bits. */
static inline uint64_t mqar_next(mqar_rng *r) {
  r->x += 0x9e3779b97f4a7c15ULL;
  return zoo_rng_mix(r->x);
}

/* A uniform double in [0, 1), 53 bits. */
static inline double mqar_uniform(mqar_rng *r) {
  return (double)(mqar_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* A uniform integer in [0, n), unbiased (Lemire's multiply with rejection). */
static inline uint32_t mqar_below(mqar_rng *r, uint32_t n) {
  uint64_t m = (mqar_next(r) >> 32) * (uint64_t)n;
  uint32_t low = (uint32_t)m;
  if (low < n) {
    uint32_t floor = (uint32_t)(-n) % n;
    while (low < floor) {
      m = (mqar_next(r) >> 32) * (uint64_t)n;
      low = (uint32_t)m;
    }
  }
  return (uint32_t)(m >> 32);
}

/* A uniform integer in [0, n), unbiased, for n up to 2^63. */
static inline uint64_t mqar_below64(mqar_rng *r, uint64_t n) {
  unsigned __int128 m = (unsigned __int128)mqar_next(r) * n;
  uint64_t low = (uint64_t)m;
  if (low < n) {
    uint64_t floor = (0 - n) % n;
    while (low < floor) {
      m = (unsigned __int128)mqar_next(r) * n;
      low = (uint64_t)m;
    }
  }
  return (uint64_t)(m >> 64);
}

/* The stream of one example: a hashed start, far from every other example's. */
static mqar_rng mqar_stream(uint64_t seed, uint64_t index) {
  mqar_rng r = {zoo_rng_mix(zoo_rng_mix(seed ^ 0x6d71617221ULL) ^ (index * 0xd1b54a32d192ed03ULL))};
  return r;
}

int zoo_mqar_init(zoo_mqar *m, const zoo_mqar_opts *o, char *err, size_t errlen) {
  memset(m, 0, sizeof *m);
  int V = o->vocab_size, L = o->seq_len, N = o->num_kv_pairs;
  if (L < 2 || L % 2 != 0) {
    snprintf(err, errlen, "the sequence length must be even and positive (got %d)", L);
    return -1;
  }
  if (N < 1 || 4 * N > L) {
    snprintf(err, errlen,
             "num_kv_pairs must be between 1 and input_seq_len / 4 = %d (got %d)", L / 4, N);
    return -1;
  }
  if (V <= L) {
    snprintf(err, errlen, "the vocabulary (%d) must be larger than the sequence length (%d)", V, L);
    return -1;
  }
  if (V / 2 - 1 < N || V - V / 2 < N) {
    snprintf(err, errlen, "a vocabulary of %d has %d keys, fewer than the %d key-value pairs", V,
             V / 2 - 1, N);
    return -1;
  }
  if (!(o->power_a > 0 && o->power_a <= 1)) {
    snprintf(err, errlen, "the power-law exponent must be in (0, 1] (got %g)", o->power_a);
    return -1;
  }
  m->o = *o;
  int S = m->slots = (L - 2 * N) / 2;
  m->width = 4; /* both counts multiples of 4 (see mqar_count_le) */
  while (m->width * m->width < S) m->width += 4;
  m->blocks = (S + m->width - 1) / m->width;
  m->blocks = (m->blocks + 3) / 4 * 4;
  m->weight = malloc((size_t)S * sizeof *m->weight);
  m->part = malloc((size_t)m->blocks * m->width * sizeof *m->part);
  m->cum = malloc((size_t)m->blocks * sizeof *m->cum);
  /* Slot i (1-based) weighs a * i^(a-1); the factor a cancels. As integers with
   * 2^40 for slot 1: relative rounding under 2^-28 up to i = 2^12 at a = 0.01. */
  for (int i = 0; i < S; i++)
    m->weight[i] = (int64_t)llround(ldexp(pow((double)(i + 1), o->power_a - 1), 40));
  int64_t total = 0;
  for (int b = 0; b < m->blocks; b++) {
    int64_t in_block = 0;
    for (int i = b * m->width; i < (b + 1) * m->width; i++)
      m->part[i] = i < S ? (in_block += m->weight[i]) : INT64_MAX; /* padding: never <= x */
    m->cum[b] = total += in_block; /* padding blocks: the total, never <= x */
  }
  m->total = total;
  return 0;
}

void zoo_mqar_free(zoo_mqar *m) {
  free(m->weight);
  free(m->part);
  free(m->cum);
  m->weight = m->part = m->cum = NULL;
}

void zoo_mqar_scratch_init(zoo_mqar_scratch *s, const zoo_mqar *m) {
  s->cum = malloc((size_t)m->blocks * sizeof *s->cum);
  s->part = malloc((size_t)m->blocks * m->width * sizeof *s->part);
  s->stamp = calloc((size_t)m->o.vocab_size, sizeof *s->stamp);
  s->now = 0;
  s->keys = malloc((size_t)m->o.num_kv_pairs * sizeof *s->keys);
  s->values = malloc((size_t)m->o.num_kv_pairs * sizeof *s->values);
  s->gaps = malloc((size_t)m->o.num_kv_pairs * sizeof *s->gaps);
}

void zoo_mqar_scratch_free(zoo_mqar_scratch *s) {
  free(s->cum);
  free(s->part);
  free(s->stamp);
  free(s->keys);
  free(s->values);
  free(s->gaps);
  memset(s, 0, sizeof *s);
}

/* n distinct tokens from lo .. lo+range-1, in random order (rejection against the
 * stamps: uniform over ordered samples, like a shuffle's first n). */
static void mqar_distinct(mqar_rng *r, zoo_mqar_scratch *s, int lo, int range, int n, int *out) {
  for (int j = 0; j < n; j++) {
    int tok;
    do tok = lo + (int)mqar_below(r, (uint32_t)range);
    while (s->stamp[tok] == s->now);
    s->stamp[tok] = s->now;
    out[j] = tok;
  }
}

/* N distinct gap slots, drawn in turn with probability proportional to weight
 * among the slots left. The slots are cut into blocks of `width`; cum[b] is the
 * weight left in blocks 0..b and part[i] the weight left in slot i's block up to
 * and including slot i. A draw r in [0, total) finds its block by counting the
 * cum[b] <= r and its slot likewise (no branches, no chain of dependent loads);
 * removing the slot subtracts its weight from the sums that hold it. The weights
 * are integers, so the sums stay exact and a drawn slot has exactly no room left. */
/* How many of a[0 .. n-1] are <= x; n a multiple of 4. Four counters keep the
 * additions off one dependency chain. */
static inline int mqar_count_le(const int64_t *a, int n, int64_t x) {
  int c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  for (int k = 0; k < n; k += 4) {
    c0 += a[k] <= x;
    c1 += a[k + 1] <= x;
    c2 += a[k + 2] <= x;
    c3 += a[k + 3] <= x;
  }
  return (c0 + c1) + (c2 + c3);
}

static void mqar_gaps(const zoo_mqar *m, mqar_rng *r, zoo_mqar_scratch *s) {
  int W = m->width, nb = m->blocks;
  int64_t *cum = s->cum, *part = s->part;
  memcpy(cum, m->cum, (size_t)nb * sizeof *cum);
  memcpy(part, m->part, (size_t)nb * W * sizeof *part);
  int64_t total = m->total;
  for (int j = 0; j < m->o.num_kv_pairs; j++) {
    int64_t x = (int64_t)mqar_below64(r, (uint64_t)total);
    int b = mqar_count_le(cum, nb, x);
    x -= b > 0 ? cum[b - 1] : 0;
    int64_t *p = part + b * W;
    int i = mqar_count_le(p, W, x);
    int slot = b * W + i;
    s->gaps[j] = slot;
    int64_t w = m->weight[slot];
    total -= w;
    /* fixed trip counts: no branch to mispredict on where the draw fell */
    for (int k = 0; k < nb; k++) cum[k] -= k >= b ? w : 0;
    for (int k = 0; k < W; k++) p[k] -= k >= i ? w : 0;
  }
}

void zoo_mqar_example(const zoo_mqar *m, zoo_mqar_scratch *s, uint64_t seed, int64_t index,
                      int32_t *tokens, int32_t *targets) {
  int V = m->o.vocab_size, L = m->o.seq_len, N = m->o.num_kv_pairs;
  mqar_rng r = mqar_stream(seed, (uint64_t)index);

  if (++s->now == 0) { /* the stamps wrapped: start them over */
    memset(s->stamp, 0, (size_t)V * sizeof *s->stamp);
    s->now = 1;
  }
  mqar_distinct(&r, s, 1, V / 2 - 1, N, s->keys);
  mqar_distinct(&r, s, V / 2, V - V / 2, N, s->values);
  mqar_gaps(m, &r, s);

  for (int t = 0; t < L; t++) tokens[t] = 0, targets[t] = -100;
  for (int j = 0; j < N; j++) {
    tokens[2 * j] = s->keys[j];
    tokens[2 * j + 1] = s->values[j];
    int at = 2 * N + 2 * s->gaps[j]; /* the query; its target is the next label */
    tokens[at] = s->keys[j];
    targets[at] = s->values[j];
  }
  if (m->o.random_non_queries)
    for (int t = 0; t < L; t++)
      if (tokens[t] == 0) tokens[t] = (int32_t)mqar_below(&r, (uint32_t)V);
}

void zoo_mqar_batch(const zoo_mqar *m, uint64_t seed, const int64_t *idx, int64_t first,
                    int64_t rows, int32_t *tokens, int32_t *targets) {
  int64_t L = m->o.seq_len;
#pragma omp parallel if (rows >= 64)
  {
    zoo_mqar_scratch s;
    zoo_mqar_scratch_init(&s, m);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; i++)
      zoo_mqar_example(m, &s, seed, idx ? idx[i] : first + i, tokens + i * L, targets + i * L);
    zoo_mqar_scratch_free(&s);
  }
}

void zoo_mqar_shuffle(int64_t *order, int64_t n, uint64_t seed, uint64_t epoch) {
  mqar_rng r = mqar_stream(seed ^ 0x73687566666c65ULL, epoch);
  for (int64_t i = 0; i < n; i++) order[i] = i;
  for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
    int64_t j = (int64_t)mqar_below(&r, (uint32_t)(i + 1)); /* n < 2^32 */
    int64_t tmp = order[i];
    order[i] = order[j];
    order[j] = tmp;
  }
}
