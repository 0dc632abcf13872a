/* main.c: runs every registered test; ends with "N passed, N failed". */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "test.h"

typedef struct {
  const char *name;
  zoo_test_fn fn;
} entry;

static entry *tests;
static int ntests, cap;

void zoo_test_register(const char *name, zoo_test_fn fn) {
  if (ntests == cap) {
    cap = cap ? cap * 2 : 64;
    tests = realloc(tests, (size_t)cap * sizeof *tests);
  }
  tests[ntests++] = (entry){name, fn};
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

int zoo_test_count(const char *hay, const char *needle) {
  int c = 0;
  for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle)) c++;
  return c;
}

char *zoo_test_env_set(const char *name, const char *value) {
  const char *old = getenv(name);
  char *saved = old ? strdup(old) : NULL;
  if (value) setenv(name, value, 1);
  else unsetenv(name);
  return saved;
}

void zoo_test_env_restore(const char *name, char *saved) {
  if (saved) setenv(name, saved, 1);
  else unsetenv(name);
  free(saved);
}

char *zoo_test_read(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  size_t got = fread(buf, 1, (size_t)n, f);
  fclose(f);
  buf[got] = 0;
  if (len) *len = got;
  return buf;
}

int zoo_test_sh(const char *cmd, char **out) {
  FILE *p = popen(cmd, "r");
  size_t room = 4096, len = 0;
  *out = calloc(1, room);
  for (size_t n; p && (n = fread(*out + len, 1, room - len - 1, p)) > 0;) {
    len += n;
    if (len + 1 == room) *out = realloc(*out, room *= 2);
    (*out)[len] = 0;
  }
  int st = p ? pclose(p) : -1;
  return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int zoo_test_golden(zoo_test_ctx *t, const char *golden_path, const char *text) {
  const char *update = getenv("ZOO_UPDATE_GOLDEN");
  if (update && strcmp(update, "1") == 0) {
    FILE *f = fopen(golden_path, "wb");
    if (!f) {
      fprintf(stderr, "  %s: cannot write %s\n", t->name, golden_path);
      t->failed = 1;
      return 0;
    }
    fputs(text, f);
    fclose(f);
    return 1;
  }
  char *want = zoo_test_read(golden_path, NULL);
  if (!want) {
    fprintf(stderr, "  %s: golden file %s is missing (ZOO_UPDATE_GOLDEN=1 writes it)\n",
            t->name, golden_path);
    t->failed = 1;
    return 0;
  }
  int same = strcmp(want, text) == 0;
  if (!same) {
    /* Show the first differing line. */
    const char *a = want, *b = text;
    int line = 1;
    while (*a && *a == *b) {
      if (*a == '\n') line++;
      a++, b++;
    }
    const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
    fprintf(stderr, "  %s: differs from %s at line %d\n    want: %.*s\n    got:  %.*s\n",
            t->name, golden_path, line, (int)(ea ? ea - a : (long)strlen(a)), a,
            (int)(eb ? eb - b : (long)strlen(b)), b);
    t->failed = 1;
  }
  free(want);
  return same;
}

int main(int argc, char **argv) {
  qsort(tests, (size_t)ntests, sizeof *tests, by_name);
  int passed = 0, failed = 0, skipped = 0;
  for (int i = 0; i < ntests; i++) {
    int selected = argc < 2;
    for (int a = 1; a < argc; a++)
      if (strstr(tests[i].name, argv[a])) selected = 1;
    if (!selected) continue;
    zoo_test_ctx t = {0, 0, tests[i].name};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    tests[i].fn(&t);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("%s %s (%.0f ms)\n", t.failed ? "FAIL" : t.skipped ? "skip" : "ok  ", tests[i].name, ms);
    fflush(stdout);
    if (t.failed) failed++;
    else if (t.skipped) skipped++;
    else passed++;
  }
  if (skipped) printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  else printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
