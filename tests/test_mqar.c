/* test_mqar.c: the MQAR generator's invariants (mqar.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../runtime/mqar.h"
#include "test.h"

/* Checks one example against the layout of mqar.h; returns a reason or NULL. */
static const char *mqar_check_example(const zoo_mqar_opts *o, const int32_t *tok,
                                      const int32_t *tgt, int *gap_of_first) {
  int V = o->vocab_size, L = o->seq_len, N = o->num_kv_pairs;
  static char why[160];
  for (int j = 0; j < N; j++) {
    int k = tok[2 * j], v = tok[2 * j + 1];
    if (k < 1 || k > V / 2 - 1) return "key out of 1 .. V/2-1";
    if (v < V / 2 || v > V - 1) return "value out of V/2 .. V-1";
    for (int i = 0; i < j; i++) {
      if (tok[2 * i] == k) return "repeated key";
      if (tok[2 * i + 1] == v) return "repeated value";
    }
  }
  /* each key queried exactly once, at an even offset of the query area, with
   * its own value as the target there; nothing else labelled */
  int labelled = 0;
  for (int t = 0; t < L; t++) {
    if (t < 2 * N) {
      if (tgt[t] != -100) return "a context position is labelled";
      continue;
    }
    if (tgt[t] == -100) {
      if (!o->random_non_queries && tok[t] != 0) return "filler is not 0";
      continue;
    }
    labelled++;
    if ((t - 2 * N) % 2 != 0) {
      snprintf(why, sizeof why, "query at odd offset %d", t - 2 * N);
      return why;
    }
    int j = 0;
    while (j < N && tok[2 * j] != tok[t]) j++;
    if (j == N) return "a labelled position holds no key";
    if (tgt[t] != tok[2 * j + 1]) return "target is not the key's value";
    if (j == 0 && gap_of_first) *gap_of_first = (t - 2 * N) / 2;
  }
  if (labelled != N) return "not every key is queried once";
  return NULL;
}

TEST(mqar_invariants) {
  zoo_mqar_opts o = {.vocab_size = 8192, .seq_len = 128, .num_kv_pairs = 16, .power_a = 0.01};
  zoo_mqar m;
  char err[200];
  CHECK(zoo_mqar_init(&m, &o, err, sizeof err) == 0);
  int n = 2000, L = o.seq_len;
  int32_t *tok = malloc(sizeof(int32_t) * n * L), *tgt = malloc(sizeof(int32_t) * n * L);
  zoo_mqar_batch(&m, 42, NULL, 0, n, tok, tgt);
  for (int i = 0; i < n; i++) {
    const char *why = mqar_check_example(&o, tok + i * L, tgt + i * L, NULL);
    CHECKF(why == NULL, "example %d: %s", i, why);
  }
  free(tok), free(tgt);
  zoo_mqar_free(&m);
}

/* The reference's smallest shape, where N fills every gap slot (S = N), and a tiny
 * vocabulary where keys are nearly exhausted. */
TEST(mqar_edge_shapes) {
  zoo_mqar_opts shapes[] = {
      {.vocab_size = 8192, .seq_len = 48, .num_kv_pairs = 12, .power_a = 0.01},
      {.vocab_size = 20, .seq_len = 16, .num_kv_pairs = 4, .power_a = 1.0},
      {.vocab_size = 64, .seq_len = 16, .num_kv_pairs = 4, .power_a = 0.01, .random_non_queries = 1},
  };
  for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
    zoo_mqar m;
    char err[200];
    CHECK(zoo_mqar_init(&m, &shapes[c], err, sizeof err) == 0);
    int L = shapes[c].seq_len;
    int32_t tok[64], tgt[64];
    zoo_mqar_scratch s;
    zoo_mqar_scratch_init(&s, &m);
    for (int i = 0; i < 500; i++) {
      zoo_mqar_example(&m, &s, 7, i, tok, tgt);
      const char *why = mqar_check_example(&shapes[c], tok, tgt, NULL);
      CHECKF(why == NULL, "shape %zu example %d: %s", c, i, why);
    }
    (void)L;
    zoo_mqar_scratch_free(&s);
    zoo_mqar_free(&m);
  }
}

TEST(mqar_bad_options) {
  zoo_mqar m;
  char err[200];
  zoo_mqar_opts odd = {.vocab_size = 8192, .seq_len = 47, .num_kv_pairs = 4, .power_a = 0.01};
  CHECK(zoo_mqar_init(&m, &odd, err, sizeof err) == -1 && strstr(err, "even"));
  zoo_mqar_opts many = {.vocab_size = 8192, .seq_len = 48, .num_kv_pairs = 13, .power_a = 0.01};
  CHECK(zoo_mqar_init(&m, &many, err, sizeof err) == -1 && strstr(err, "num_kv_pairs"));
  zoo_mqar_opts small = {.vocab_size = 40, .seq_len = 48, .num_kv_pairs = 4, .power_a = 0.01};
  CHECK(zoo_mqar_init(&m, &small, err, sizeof err) == -1 && strstr(err, "vocabulary"));
}

/* Same seed, same data (also when made one by one or in another order); another
 * seed, other data. */
TEST(mqar_deterministic) {
  zoo_mqar_opts o = {.vocab_size = 8192, .seq_len = 64, .num_kv_pairs = 16, .power_a = 0.01};
  zoo_mqar m;
  char err[200];
  CHECK(zoo_mqar_init(&m, &o, err, sizeof err) == 0);
  enum { n = 300, L = 64 };
  static int32_t a[n * L], b[n * L], c[n * L], d[n * L];
  zoo_mqar_batch(&m, 42, NULL, 0, n, a, b);
  int64_t idx[n];
  for (int i = 0; i < n; i++) idx[i] = n - 1 - i;
  zoo_mqar_batch(&m, 42, idx, 0, n, c, d);
  for (int i = 0; i < n; i++) {
    CHECK(memcmp(a + i * L, c + (n - 1 - i) * L, L * sizeof(int32_t)) == 0);
    CHECK(memcmp(b + i * L, d + (n - 1 - i) * L, L * sizeof(int32_t)) == 0);
  }
  zoo_mqar_batch(&m, 52, NULL, 0, n, c, d);
  int same = 0;
  for (int i = 0; i < n; i++) same += memcmp(a + i * L, c + i * L, L * sizeof(int32_t)) == 0;
  CHECK(same == 0);
  zoo_mqar_free(&m);
}

/* The slot drawn for the first key follows the weights a * i^(a-1) exactly (the
 * first draw has nothing removed), and later draws still favour short gaps. */
TEST(mqar_power_law) {
  zoo_mqar_opts o = {.vocab_size = 8192, .seq_len = 128, .num_kv_pairs = 16, .power_a = 0.01};
  zoo_mqar m;
  char err[200];
  CHECK(zoo_mqar_init(&m, &o, err, sizeof err) == 0);
  int S = m.slots, n = 40000, L = o.seq_len;
  CHECK(S == 48);
  int *hist = calloc((size_t)S, sizeof *hist);
  int32_t tok[128], tgt[128];
  zoo_mqar_scratch s;
  zoo_mqar_scratch_init(&s, &m);
  for (int i = 0; i < n; i++) {
    int gap = -1;
    zoo_mqar_example(&m, &s, 3, i, tok, tgt);
    CHECK(mqar_check_example(&o, tok, tgt, &gap) == NULL && gap >= 0);
    hist[gap]++;
  }
  double total = 0;
  for (int i = 1; i <= S; i++) total += pow(i, o.power_a - 1);
  for (int i = 0; i < 8; i++) { /* the slots with enough mass to test */
    double p = pow(i + 1, o.power_a - 1) / total, want = n * p;
    double sd = sqrt(n * p * (1 - p));
    CHECKF(fabs(hist[i] - want) < 5 * sd, "slot %d: %d draws, expected %.0f +- %.0f", i,
           hist[i], want, sd);
  }
  CHECK(hist[0] > hist[1] && hist[1] > hist[3] && hist[3] > hist[15]);
  zoo_mqar_scratch_free(&s);
  free(hist);
  (void)L;
  zoo_mqar_free(&m);
}

/* With a = 1 the weights are uniform: the first gap is uniform over the slots. */
TEST(mqar_uniform_gaps) {
  zoo_mqar_opts o = {.vocab_size = 8192, .seq_len = 64, .num_kv_pairs = 4, .power_a = 1.0};
  zoo_mqar m;
  char err[200];
  CHECK(zoo_mqar_init(&m, &o, err, sizeof err) == 0);
  int S = m.slots, n = 28000;
  CHECK(S == 28);
  int hist[28] = {0};
  int32_t tok[64], tgt[64];
  zoo_mqar_scratch s;
  zoo_mqar_scratch_init(&s, &m);
  for (int i = 0; i < n; i++) {
    int gap = -1;
    zoo_mqar_example(&m, &s, 11, i, tok, tgt);
    CHECK(mqar_check_example(&o, tok, tgt, &gap) == NULL);
    hist[gap]++;
  }
  for (int i = 0; i < S; i++) CHECKF(hist[i] > 1000 - 160 && hist[i] < 1000 + 160, "slot %d: %d", i, hist[i]);
  zoo_mqar_scratch_free(&s);
  zoo_mqar_free(&m);
}

TEST(mqar_shuffle) {
  enum { n = 1000 };
  int64_t a[n], b[n], c[n];
  zoo_mqar_shuffle(a, n, 44, 0);
  zoo_mqar_shuffle(b, n, 44, 0);
  zoo_mqar_shuffle(c, n, 44, 1);
  CHECK(memcmp(a, b, sizeof a) == 0);
  CHECK(memcmp(a, c, sizeof a) != 0);
  char seen[n] = {0};
  for (int i = 0; i < n; i++) {
    CHECK(a[i] >= 0 && a[i] < n && !seen[a[i]]);
    seen[a[i]] = 1;
  }
}

/* 100,000 examples at L = 512 (the paper's 128 pairs): timed, printed, not asserted. */
TEST(mqar_speed) {
  zoo_mqar_opts o = {.vocab_size = 8192, .seq_len = 512, .num_kv_pairs = 128, .power_a = 0.01};
  zoo_mqar m;
  char err[200];
  CHECK(zoo_mqar_init(&m, &o, err, sizeof err) == 0);
  int64_t n = 100000, L = o.seq_len, chunk = 10000;
  int32_t *tok = malloc(sizeof(int32_t) * chunk * L), *tgt = malloc(sizeof(int32_t) * chunk * L);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int64_t i = 0; i < n; i += chunk)
    zoo_mqar_batch(&m, 42, NULL, i, i + chunk <= n ? chunk : n - i, tok, tgt);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  printf("  mqar: 100000 examples of L = 512 in %.3f s (all threads)\n", s);
  CHECK(mqar_check_example(&o, tok, tgt, NULL) == NULL);
  free(tok), free(tgt);
  zoo_mqar_free(&m);
}
