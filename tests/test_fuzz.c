/* test_fuzz.c: the front end on hostile input: random bytes, token soup,
 * mutated and truncated models, a huge valid file, pathological nesting.
 * Deterministic (a fixed-seed PRNG) and time-bounded. The property checked
 * everywhere: zoo_parse returns, and returns a tree exactly when it reported
 * no error, with every span inside its parent's. */
#include <glob.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ast.h"
#include "diag.h"
#include "test.h"

extern const char zoo_test_sketch[]; /* test_parse.c */

#if defined(__SANITIZE_ADDRESS__)
enum { SLOW = 4, BIG_MB = 2 }; /* sanitizers: longer time bounds, a smaller big file */
#else
enum { SLOW = 1, BIG_MB = 5 };
#endif

/* ZOO_FUZZ_SCALE=k in the environment runs k times as many inputs (and k times
 * as long), with seeds that change with k, for a longer hunt. */
static int fuzz_scale(void) {
  const char *e = getenv("ZOO_FUZZ_SCALE");
  int k = e ? atoi(e) : 1;
  return k > 0 ? k : 1;
}

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static size_t rng_below(uint64_t *s, size_t n) { return n ? (size_t)(rng_next(s) % n) : 0; }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int spans_ok(const zoo_ast *n, zoo_span outer) {
  if (!n) return 1;
  zoo_span s = n->span;
  if (s.line < 1 || s.col < 1) return 0;
  if (s.end_line < s.line || (s.end_line == s.line && s.end_col < s.col)) return 0;
  if (s.line < outer.line || (s.line == outer.line && s.col < outer.col)) return 0;
  if (s.end_line > outer.end_line || (s.end_line == outer.end_line && s.end_col > outer.end_col))
    return 0;
  for (int i = 0; i < n->nitems; i++)
    if (!spans_ok(n->items[i], s)) return 0;
  for (int i = 0; i < n->nparams; i++)
    if (!spans_ok(n->params[i], s)) return 0;
  return spans_ok(n->a, s) && spans_ok(n->b, s) && spans_ok(n->c, s);
}

/* Parses len bytes (messages to `out`); 1 when the result is consistent. */
static int parse_once(const char *text, size_t len, FILE *out, int *nerrors) {
  zoo_source src = {(char *)"fuzz.zoo", malloc(len + 1), len};
  memcpy(src.text, text, len);
  src.text[len] = 0;
  zoo_arena arena;
  zoo_arena_init(&arena);
  zoo_diag d;
  zoo_diag_init(&d, out);
  zoo_ast *file = zoo_parse(&arena, &src, &d);
  int ok = (file != NULL) == (d.nerrors == 0) && (!file || spans_ok(file, file->span));
  if (nerrors) *nerrors = d.nerrors;
  zoo_arena_free(&arena);
  free(src.text);
  return ok;
}

static const char *vocab[] = {
    "import", "module", "model", "let", "forward", "return", "for", "in", "if", "else",
    "and", "or", "not", "true", "false", "none", "x", "Linear", "d_model", "f32", "0",
    "12", "1e-12", ".5", "2.", "\"s\"", "\"", "(", ")", "[", "]", "{", "}", ",", ".",
    ":", ";", "=", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "//", "%",
    "**", "->", "#c\n", "\n", " ", "\t", "@", "\\", "1e", "0x", "&&", "!",
};

/* 20k strings: raw bytes, printable ASCII, and soups of .zoo tokens. */
TEST(fuzz_random_bytes) {
  FILE *null = fopen("/dev/null", "w");
  CHECK(null);
  int scale = fuzz_scale();
  uint64_t s = 42 + (uint64_t)scale - 1;
  char buf[512];
  double t0 = now_s();
  int n = 0, parsed_ok = 0;
  for (; n < 20000 * scale && now_s() - t0 < 2.0 * SLOW * scale; n++) {
    size_t len = rng_below(&s, 256), kind = n % 3, k = 0;
    while (k < len) {
      if (kind == 0) buf[k++] = (char)rng_next(&s);
      else if (kind == 1) buf[k++] = (char)(32 + rng_below(&s, 95));
      else {
        const char *w = vocab[rng_below(&s, sizeof vocab / sizeof *vocab)];
        size_t wl = strlen(w);
        if (k + wl + 1 > sizeof buf) break;
        memcpy(buf + k, w, wl);
        k += wl;
        buf[k++] = rng_below(&s, 4) ? ' ' : '\n';
      }
    }
    int nerr;
    int ok = parse_once(buf, k, null, &nerr);
    CHECKF(ok, "input %d (%zu bytes) gave an inconsistent result", n, k);
    parsed_ok += nerr == 0;
  }
  fclose(null);
  CHECKF(n >= 2000, "only %d inputs in the time allowed", n);
}

/* Byte flips, deletions, insertions of tokens, truncations and splices of
 * real models: the sketch, and the shipped standard library when present. */
TEST(fuzz_mutations) {
  const char *bases[16];
  size_t lens[16];
  char *owned[16];
  int nbases = 0, nowned = 0;
  bases[nbases] = zoo_test_sketch, lens[nbases++] = strlen(zoo_test_sketch);
  glob_t g;
  if (glob("models/std/*.zoo", 0, NULL, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc && nbases < 16; i++) {
      size_t len;
      char *text = zoo_test_read(g.gl_pathv[i], &len);
      if (!text) continue;
      owned[nowned++] = text;
      bases[nbases] = text, lens[nbases++] = len;
    }
    globfree(&g);
  }
  FILE *null = fopen("/dev/null", "w");
  CHECK(null);
  int scale = fuzz_scale();
  uint64_t s = 7 + (uint64_t)scale - 1;
  size_t cap = 1 << 16;
  char *buf = malloc(cap);
  double t0 = now_s();
  int n = 0, bad = -1;
  for (; n < 20000 * scale && now_s() - t0 < 0.5 * SLOW * scale; n++) {
    int b = (int)rng_below(&s, (size_t)nbases);
    size_t len = lens[b] < cap / 2 ? lens[b] : cap / 2;
    memcpy(buf, bases[b], len);
    int nmut = 1 + (int)rng_below(&s, 4);
    for (int m = 0; m < nmut; m++) {
      size_t at = rng_below(&s, len + 1);
      switch (rng_below(&s, 5)) {
      case 0: /* flip a byte */
        if (len) buf[rng_below(&s, len)] = (char)rng_next(&s);
        break;
      case 1: { /* delete a range */
        size_t k = rng_below(&s, 16);
        if (at + k > len) k = len - at;
        memmove(buf + at, buf + at + k, len - at - k);
        len -= k;
        break;
      }
      case 2: { /* insert a token */
        const char *w = vocab[rng_below(&s, sizeof vocab / sizeof *vocab)];
        size_t k = strlen(w);
        if (len + k >= cap) break;
        memmove(buf + at + k, buf + at, len - at);
        memcpy(buf + at, w, k);
        len += k;
        break;
      }
      case 3: /* truncate */
        len = at;
        break;
      case 4: { /* splice in a piece of another model */
        int o = (int)rng_below(&s, (size_t)nbases);
        size_t from = rng_below(&s, lens[o]), k = rng_below(&s, 200);
        if (from + k > lens[o]) k = lens[o] - from;
        if (len + k >= cap) break;
        memmove(buf + at + k, buf + at, len - at);
        memcpy(buf + at, bases[o] + from, k);
        len += k;
        break;
      }
      }
    }
    if (!parse_once(buf, len, null, NULL)) {
      bad = n;
      break;
    }
  }
  free(buf);
  fclose(null);
  for (int i = 0; i < nowned; i++) free(owned[i]);
  CHECKF(bad < 0, "mutant %d gave an inconsistent result", bad);
  CHECKF(n >= 1000, "only %d mutants in the time allowed", n);
}

/* Every prefix of the sketch: a file cut off anywhere. */
TEST(fuzz_truncations) {
  FILE *null = fopen("/dev/null", "w");
  CHECK(null);
  size_t len = strlen(zoo_test_sketch);
  int whole = 0;
  for (size_t k = 0; k <= len; k++) {
    int nerr;
    int ok = parse_once(zoo_test_sketch, k, null, &nerr);
    if (!ok) fclose(null);
    CHECKF(ok, "prefix of %zu bytes", k);
    whole = nerr == 0;
  }
  fclose(null);
  CHECK(whole); /* the full text parses */
}

/* About 5 MB of valid modules parse in well under a second (2 MB under the
 * sanitizers, where speed is not the point). */
TEST(fuzz_large_valid_file) {
  size_t cap = 6 << 20, len = 0;
  char *text = malloc(cap);
  int copies = 0;
  while (len < ((size_t)BIG_MB << 20)) {
    len += (size_t)sprintf(text + len,
                           "module M%d(d_model, num_heads = 12, eps = 1e-5) {\n"
                           "  let head_dim = d_model // num_heads  # a comment\n"
                           "  proj = Linear(d_model, 3 * d_model, bias = false)\n"
                           "  norm = LayerNorm(d_model, eps = eps) if num_heads > 1\n"
                           "  forward(x: f32[B, T, d_model]) -> f32[B, T, d_model] {\n"
                           "    let y = proj(norm(x))\n"
                           "    for i in [0, 1, 2] { let y = y * 0.5 + -x ** 2 }\n"
                           "    if head_dim == 0 { return x } else { return y[0].w }\n"
                           "  }\n"
                           "}\n",
                           copies);
    copies++;
  }
  len += (size_t)sprintf(text + len, "model big(d_model = 64) = M0(d_model, num_heads = 4)\n");
  zoo_source src = {(char *)"big.zoo", text, len};
  zoo_arena arena;
  zoo_arena_init(&arena);
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  double t0 = now_s();
  zoo_ast *file = zoo_parse(&arena, &src, &d);
  double dt = now_s() - t0;
  int items = file ? file->nitems : -1;
  zoo_arena_free(&arena);
  free(text);
  CHECK(items == copies + 1);
  CHECKF(dt < 4.0 * SLOW, "%.2f s for %zu bytes (linear time takes about 0.3 s)", dt, len);
}

/* Parses text; 1 when it failed with exactly one error containing `want`. */
static int fails_with(const char *text, size_t len, const char *want) {
  char *msgs = NULL;
  size_t msgs_len;
  FILE *out = open_memstream(&msgs, &msgs_len);
  int nerr;
  int ok = parse_once(text, len, out, &nerr);
  fclose(out);
  int found = ok && nerr == 1 && strstr(msgs, want) != NULL;
  if (!found) fprintf(stderr, "  %d errors: %.300s\n", nerr, msgs);
  free(msgs);
  return found;
}

/* Repeats `unit` n times between prefix and suffix, into a malloc'd string. */
static char *repeat(const char *prefix, const char *unit, int n, const char *suffix, size_t *len) {
  size_t pl = strlen(prefix), ul = strlen(unit), sl = strlen(suffix);
  char *s = malloc(pl + ul * (size_t)n + sl + 1), *o = s;
  memcpy(o, prefix, pl), o += pl;
  for (int i = 0; i < n; i++) memcpy(o, unit, ul), o += ul;
  memcpy(o, suffix, sl + 1), o += sl;
  *len = (size_t)(o - s);
  return s;
}

/* 100k-deep nesting of every kind gives one located error, never a stack
 * overflow; nesting within the limit parses. */
TEST(fuzz_deep_nesting) {
  static const struct {
    const char *prefix, *unit, *suffix;
  } deep[] = {
      {"model m() = ", "(", "x"},
      {"model m() = ", "[", "x"},
      {"model m() = ", "f(", "x"},
      {"model m() = ", "-", "x"},
      {"model m() = ", "not ", "x"},
      {"model m() = ", "x ** ", "x"},
      {"model m() = ", "a if b else ", "x"},
      {"module M() { forward() {", "if x { } else ", "{ } } }"},
      {"module M() { forward() {", "for i in x {", ""},
  };
  for (size_t i = 0; i < sizeof deep / sizeof *deep; i++) {
    size_t len;
    char *text = repeat(deep[i].prefix, deep[i].unit, 100000, deep[i].suffix, &len);
    int ok = fails_with(text, len, "fuzz.zoo:1:");
    int nested = ok;
    if (ok) {
      char *msgs = NULL;
      size_t ml;
      FILE *out = open_memstream(&msgs, &ml);
      parse_once(text, len, out, NULL);
      fclose(out);
      nested = strstr(msgs, "error: expression nested too deeply") != NULL;
      free(msgs);
    }
    free(text);
    CHECKF(ok && nested, "100000 x '%s'", deep[i].unit);
  }
  /* 200 brackets and 1000 minus signs are fine */
  size_t len;
  char *text = repeat("model m() = ", "(", 200, "x", &len);
  char *full = malloc(len + 201);
  memcpy(full, text, len);
  memset(full + len, ')', 200);
  full[len + 200] = 0;
  int nerr;
  CHECK(parse_once(full, len + 200, stderr, &nerr) && nerr == 0);
  free(text);
  free(full);
  text = repeat("model m() = ", "-", 1000, "x", &len);
  CHECK(parse_once(text, len, stderr, &nerr) && nerr == 0);
  free(text);
}
