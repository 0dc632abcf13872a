/* test.h: zoo's test runner. A test is a function registered with TEST(name);
 * tests/main.c runs them all (or those whose names contain argv[1]) and ends with
 * the line "N passed, N failed". Inside a test, CHECK fails the test and returns. */
#ifndef ZOO_TEST_H
#define ZOO_TEST_H

#include <math.h>
#include <stdio.h>

typedef struct zoo_test_ctx {
  int failed;
  int skipped; /* set by SKIP: the test could not run here (e.g. no GPU) */
  const char *name;
} zoo_test_ctx;

typedef void (*zoo_test_fn)(zoo_test_ctx *t);
void zoo_test_register(const char *name, zoo_test_fn fn);

#define TEST(name)                                                        \
  static void test_##name(zoo_test_ctx *t);                               \
  __attribute__((constructor)) static void register_##name(void) {        \
    zoo_test_register(#name, test_##name);                                \
  }                                                                       \
  static void test_##name(zoo_test_ctx *t)

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "  %s:%d: %s: check failed: %s\n", __FILE__, __LINE__,    \
              t->name, #cond);                                                  \
      t->failed = 1;                                                            \
      return;                                                                   \
    }                                                                           \
  } while (0)

#define CHECKF(cond, ...)                                                       \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "  %s:%d: %s: check failed: %s: ", __FILE__, __LINE__,    \
              t->name, #cond);                                                  \
      fprintf(stderr, __VA_ARGS__);                                             \
      fputc('\n', stderr);                                                      \
      t->failed = 1;                                                            \
      return;                                                                   \
    }                                                                           \
  } while (0)

/* Marks the test skipped, with the reason, and returns. Only for tests that need
 * hardware this machine lacks; the runner counts them apart from passes. */
#define SKIP(...)                                                               \
  do {                                                                          \
    fprintf(stderr, "  %s: skipped: ", t->name);                                \
    fprintf(stderr, __VA_ARGS__);                                               \
    fputc('\n', stderr);                                                        \
    t->skipped = 1;                                                             \
    return;                                                                     \
  } while (0)

/* Compares text with a golden file under tests/golden/; with ZOO_UPDATE_GOLDEN=1
 * in the environment it rewrites the file instead. Returns 1 when equal. */
int zoo_test_golden(zoo_test_ctx *t, const char *golden_path, const char *text);
/* Reads a whole file (NULL if missing); caller frees. */
char *zoo_test_read(const char *path, size_t *len);
/* Runs cmd through sh (popen) and returns its exit status (-1 when it did not
 * exit) and what it wrote to stdout in *out (caller frees); append 2>&1 to the
 * command to have its stderr too. */
int zoo_test_sh(const char *cmd, char **out);
/* Loads a config (path, or text named path), applies --KEY=VALUE flags and
 * finishes it; the diagnostics in *out (caller frees; tests/test_bad_config.c). */
struct zoo_config;
int zoo_test_config(const char *path, const char *text, const char **flags, int nflags,
                    struct zoo_config *c, char **out);
/* Compiles a .zoo file (with one optional "name=value" define; gen: also its
 * training graph) and returns the messages; *errors counts the errors. */
char *zoo_test_compile_messages(const char *path, const char *define, int gen, int *errors);
/* The number of times needle occurs in hay. */
int zoo_test_count(const char *hay, const char *needle);
/* Sets the environment variable `name` to value (NULL: unsets it); returns
 * its old value (malloc'ed, or NULL) for zoo_test_env_restore, which puts it
 * back and frees it. */
char *zoo_test_env_set(const char *name, const char *value);
void zoo_test_env_restore(const char *name, char *saved);

#endif
