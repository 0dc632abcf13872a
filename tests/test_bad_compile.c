/* test_bad_compile.c: inputs the compiler must refuse with a message, not crash
 * or overflow on: sources too large to read (or not files), a seq_len that is no
 * length, parameter and reshape sizes past what an int64 counts. Each
 * tests/bad/cmp_NAME.zoo fails with the messages in tests/golden/cmp_*.err
 * (ZOO_UPDATE_GOLDEN=1 rewrites them); the bad_compile_zooc_* tests run bin/zooc
 * itself for its exit status and what it prints. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compile.h"
#include "generate.h"
#include "test.h"

/* Compiles path with one optional -D ("name=value") and, when it compiles and gen
 * is 1, builds its training graph as zooc's summary does (which binds T to
 * seq_len). Returns the messages (caller frees) and *errors, the number of errors
 * reported. Shared with test_errors.c (test.h). */
char *zoo_test_compile_messages(const char *path, const char *define, int gen, int *errors) {
  char buf[128];
  zoo_define d1 = {0};
  if (define) {
    snprintf(buf, sizeof buf, "%s", define);
    char *eq = strchr(buf, '=');
    *eq = 0;
    d1.name = buf;
    d1.value = eq + 1;
  }
  zoo_compile_opts o = {.path = path, .defines = &d1, .ndefines = define ? 1 : 0, .std_dir = "models"};
  char *text;
  size_t len;
  FILE *out = open_memstream(&text, &len);
  zoo_diag d;
  zoo_diag_init(&d, out);
  zoo_program *p = NULL;
  if (zoo_compile(&o, &d, &p) == 0 && gen) {
    zoo_graph g;
    int64_t B, T;
    if (zoo_generate_train_graph(p, &g, &B, &T, &d) == 0) zoo_graph_free(&g);
  }
  fclose(out);
  zoo_program_free(p);
  *errors = d.nerrors;
  return text;
}

static char *compile_messages(const char *name, const char *define, int gen, int *errors) {
  char path[128];
  snprintf(path, sizeof path, "tests/bad/cmp_%s.zoo", name);
  return zoo_test_compile_messages(path, define, gen, errors);
}

/* The messages of cmp_<name>.zoo (with define) against tests/golden/cmp_<golden>.err. */
static void cmp_error(zoo_test_ctx *t, const char *name, const char *define, int gen,
                      const char *golden) {
  char path[128];
  snprintf(path, sizeof path, "tests/golden/cmp_%s.err", golden);
  int errors;
  char *text = compile_messages(name, define, gen, &errors);
  if (errors == 0) {
    free(text);
    CHECKF(0, "cmp_%s.zoo compiled without errors", name);
  }
  zoo_test_golden(t, path, text);
  free(text);
}

/* ---- sources ---- */

/* zoo_source_read's message for path (NULL when it read the file). */
static char *read_messages(const char *path, int *read_it) {
  char *text;
  size_t len;
  FILE *out = open_memstream(&text, &len);
  zoo_diag d;
  zoo_diag_init(&d, out);
  zoo_source *s = zoo_source_read(path, &d, zoo_nospan);
  *read_it = s != NULL;
  zoo_source_free(s);
  fclose(out);
  return text;
}

TEST(bad_compile_error_source_directory) {
  int read_it;
  char *text = read_messages("tests", &read_it);
  int ok = !read_it && strcmp(text, "zoo: error: cannot read 'tests': it is a directory\n") == 0;
  CHECKF(ok, "got: %s", text);
  free(text);
}

/* A file over the limit is refused by its size, before a byte is read: a sparse
 * file of 65 MiB takes no disk. */
TEST(bad_compile_error_source_too_large) {
  char path[] = "/tmp/zoo_bad_compile_XXXXXX.zoo";
  int fd = mkstemps(path, 4);
  CHECK(fd >= 0);
  int sized = ftruncate(fd, (off_t)65 << 20) == 0;
  close(fd);
  int read_it = 0;
  char *text = sized ? read_messages(path, &read_it) : NULL;
  unlink(path);
  CHECK(sized);
  char want[256];
  snprintf(want, sizeof want, "zoo: error: cannot read '%s': it is larger than 64 MiB, the most a "
           "source may have\n", path);
  int ok = !read_it && strcmp(text, want) == 0;
  CHECKF(ok, "got: %s", text);
  free(text);
}

/* Runs `bin/zooc args` (through sh, so args may redirect or set limits first);
 * returns its exit status (-1 when it did not exit) and its stdout and stderr
 * together in *out (caller frees). */
static int run_zooc(const char *prefix, const char *args, char **out) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "%s timeout 60 bin/zooc %s 2>&1", prefix, args);
  return zoo_test_sh(cmd, out);
}

/* An endless source under a memory limit: refused at 64 MiB (it used to
 * double its buffer until realloc returned NULL, then write through it). */
TEST(bad_compile_zooc_dev_zero) {
  char *out;
  int st = run_zooc("ulimit -v 800000;", "/dev/zero", &out);
  int ok = st == 1 && strcmp(out, "zoo: error: cannot read '/dev/zero': it is larger than 64 MiB, "
                             "the most a source may have\n") == 0;
  CHECKF(ok, "status %d, output: %s", st, out);
  free(out);
}

/* A pipe as the source (it has no real path: it used to exit 1 with no message). */
TEST(bad_compile_zooc_stdin) {
  char *out;
  int st = run_zooc("cat models/conv_attention.zoo |", "/dev/stdin", &out);
  CHECKF(st == 0 && strstr(out, "model conv_attention\n"), "status %d, output: %s", st, out);
  free(out);
}

/* ---- seq_len ---- */

TEST(bad_compile_error_seq_len_float) { cmp_error(t, "seq_len", NULL, 1, "seq_len_float"); }
TEST(bad_compile_error_seq_len_zero) { cmp_error(t, "seq_len", "seq_len=0", 1, "seq_len_zero"); }
TEST(bad_compile_error_seq_len_negative) {
  cmp_error(t, "seq_len", "seq_len=-4", 1, "seq_len_negative");
}
TEST(bad_compile_error_seq_len_string) {
  cmp_error(t, "seq_len", "seq_len=\"abc\"", 1, "seq_len_string");
}
TEST(bad_compile_error_no_seq_len) { cmp_error(t, "no_seq_len", NULL, 1, "no_seq_len"); }

/* A whole seq_len still works, and the last -D of it is the one used. */
TEST(bad_compile_seq_len_whole) {
  int errors;
  char *text = compile_messages("seq_len", "seq_len=64", 1, &errors);
  CHECKF(errors == 0, "%s", text);
  free(text);
}

/* zooc stops at the error: status 1, the error is the last thing printed
 * (the summary before it, no code generation lines after it). */
TEST(bad_compile_zooc_seq_len) {
  char *out;
  int st = run_zooc("", "tests/bad/cmp_seq_len.zoo", &out);
  char *want = zoo_test_read("tests/golden/cmp_seq_len_float.err", NULL);
  CHECK(want);
  size_t n = strlen(out), w = strlen(want);
  int ends = n >= w && strcmp(out + n - w, want) == 0;
  int ok = st == 1 && ends && !strstr(out, "CUDA at");
  free(want);
  CHECKF(ok, "status %d, output:\n%s", st, out);
  free(out);
}

/* ---- sizes ---- */

TEST(bad_compile_error_param_numel) { cmp_error(t, "param_numel", NULL, 0, "param_numel"); }
TEST(bad_compile_error_param_huge_size) {
  cmp_error(t, "param_huge_size", NULL, 0, "param_huge_size");
}
TEST(bad_compile_error_reshape_overflow) {
  cmp_error(t, "reshape_overflow", NULL, 0, "reshape_overflow");
}
TEST(bad_compile_error_reshape_infer_overflow) {
  cmp_error(t, "reshape_infer_overflow", NULL, 0, "reshape_infer_overflow");
}
TEST(bad_compile_error_dim_overflow) { cmp_error(t, "dim_overflow", NULL, 0, "dim_overflow"); }

/* The audit's command: every size below 2^40, products far past int64. */
TEST(bad_compile_zooc_param_overflow) {
  char *out;
  int st = run_zooc("", "models/rebased.zoo -D d_model=99999999999 --dump=graph", &out);
  int ok = st == 1 && strstr(out, "a parameter f32[99999999999, 99999999999] would have more than "
                                  "2^40 (1099511627776) elements") && !strstr(out, "param %0");
  CHECKF(ok, "status %d, output:\n%s", st, out);
  free(out);
}

/* The total of parameter counts stops at INT64_MAX instead of wrapping (a graph
 * made directly, past what param() allows). */
TEST(bad_compile_param_count_saturates) {
  zoo_graph g;
  zoo_graph_init(&g);
  zoo_type big = {.dtype = ZOO_F32, .ndim = 1};
  big.dim[0] = zoo_dim_const((int64_t)1 << 62);
  zoo_init init = {.kind = ZOO_INIT_ZEROS};
  zoo_graph_param(&g, "a", big, init);
  zoo_graph_param(&g, "b", big, init);
  int64_t total = zoo_graph_param_count(&g);
  zoo_graph_free(&g);
  CHECKF(total == INT64_MAX, "total %lld", (long long)total);
}
