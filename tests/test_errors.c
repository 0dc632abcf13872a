/* test_errors.c: the exact text of the compiler's semantic errors. Each
 * tests/bad/sem_NAME.zoo must fail to compile with the messages in
 * tests/golden/sem_NAME.err (ZOO_UPDATE_GOLDEN=1 rewrites them). */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "compile.h"
#include "test.h"

/* Compiles tests/bad/sem_<name>.zoo (with one optional -D) and compares the
 * messages with the golden file. */
static void sem_error(zoo_test_ctx *t, const char *name, const char *define) {
  char path[128], golden[128];
  snprintf(path, sizeof path, "tests/bad/sem_%s.zoo", name);
  snprintf(golden, sizeof golden, "tests/golden/sem_%s.err", name);
  int errors;
  char *text = zoo_test_compile_messages(path, define, 0, &errors);
  if (errors == 0) {
    free(text);
    CHECKF(0, "%s compiled without errors", path);
  }
  zoo_test_golden(t, golden, text);
  free(text);
}

TEST(error_sem_unknown_name) { sem_error(t, "unknown_name", NULL); }
TEST(error_sem_arg_count) { sem_error(t, "arg_count", NULL); }
TEST(error_sem_unknown_keyword) { sem_error(t, "unknown_keyword", NULL); }
TEST(error_sem_shape) { sem_error(t, "shape", NULL); }
TEST(error_sem_recursive) { sem_error(t, "recursive", NULL); }
TEST(error_sem_import_cycle) { sem_error(t, "import_cycle", NULL); }
TEST(error_sem_missing_import) { sem_error(t, "missing_import", NULL); }
TEST(error_sem_div_zero) { sem_error(t, "div_zero", NULL); }
TEST(error_sem_unknown_op) { sem_error(t, "unknown_op", NULL); }
TEST(error_sem_float_int) { sem_error(t, "float_int", NULL); }
TEST(error_sem_tensor_control) { sem_error(t, "tensor_control", NULL); }
TEST(error_sem_unknown_define) { sem_error(t, "unknown_define", "d_modle=32"); }
TEST(error_sem_param_shape) { sem_error(t, "param_shape", NULL); }
TEST(error_sem_missing_arg) { sem_error(t, "missing_arg", NULL); }
TEST(error_sem_duplicate) { sem_error(t, "duplicate", NULL); }
TEST(error_sem_op_shape) { sem_error(t, "op_shape", NULL); }
TEST(error_sem_not_logits) { sem_error(t, "not_logits", NULL); }
TEST(error_sem_forward_outside) { sem_error(t, "forward_outside", NULL); }

/* zooc's exit status: 0 when the model compiles, 1 on its errors, 2 on bad usage. */
TEST(zooc_exit_status) {
  struct {
    const char *args;
    int status;
  } runs[] = {
      {"models/rebased.zoo -D d_model=32", 0},
      {"tests/bad/sem_div_zero.zoo", 1},
      {"models/rebased.zoo -D nope=1", 1},
      {"models/rebased.zoo --dump=nothing", 2},
      {"", 2},
  };
  for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "bin/zooc %s >/dev/null 2>&1", runs[i].args);
    int st = system(cmd);
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == runs[i].status, "zooc %s: status %d, want %d",
           runs[i].args, WIFEXITED(st) ? WEXITSTATUS(st) : -1, runs[i].status);
  }
}
