/* test_bad_tools.c: bad input to the tools themselves, not to the models:
 * zoorun bench's flags (numbers taken whole and range-checked, a flag without
 * its value, an unknown --only mixer, flags that would do nothing), bench
 * --precompile without a usable kernel cache, and output that cannot be
 * written (zooc -o into a file, or onto a full disk: /dev/full; zooc's and
 * bench's standard output there). Most run bin/zooc and bin/zoorun as
 * subprocesses for their exit status and messages (skipped when the binary is
 * missing); the kernel cache's own accounting (runtime/nvrtc_cache.c) runs in
 * process where NVRTC is here. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../runtime/nvrtc_cache.h"
#include "test.h"

/* Runs `prefix timeout 120 bin/<tool> args` through sh; stdout goes to
 * stdout_to (NULL: captured with stderr). Returns the exit status (-1 when it
 * did not exit) and what it captured in *out (caller frees). */
static int run_tool(const char *tool, const char *prefix, const char *args, const char *stdout_to,
                    char **out) {
  char cmd[1024];
  if (stdout_to) /* stderr to the pipe first, then stdout elsewhere */
    snprintf(cmd, sizeof cmd, "%s timeout 120 bin/%s %s 2>&1 >%s", prefix, tool, args, stdout_to);
  else
    snprintf(cmd, sizeof cmd, "%s timeout 120 bin/%s %s 2>&1", prefix, tool, args);
  return zoo_test_sh(cmd, out);
}

#define NEED_TOOL(tool)                                                \
  do {                                                                 \
    if (access("bin/" tool, X_OK) != 0) SKIP("bin/%s is not built", tool); \
  } while (0)

/* `zoorun bench args` exits with status and its output holds want. */
static int bench_says(zoo_test_ctx *t, const char *prefix, const char *args, int status, const char *want) {
  char *out, cmd[600];
  snprintf(cmd, sizeof cmd, "bench %s", args);
  int st = run_tool("zoorun", prefix, cmd, NULL, &out);
  int ok = st == status && strstr(out, want) != NULL;
  if (!ok) {
    fprintf(stderr, "  %s: zoorun %s: status %d (want %d), output:\n%s  (wanted: %s)\n", t->name, args, st, status,
            out, want);
    t->failed = 1;
  }
  free(out);
  return ok;
}

/* ---- zoorun bench's flags: bad usage, status 2 ---- */

/* Numbers are read whole (atoi took "5x" as 5 and "abc" as 0) and within
 * range; --warmup -1 used to be reported as a bad --steps. */
TEST(bad_tools_bench_numbers) {
  NEED_TOOL("zoorun");
  static const char *const cases[][2] = {
      {"--floor --warmup -1", "zoorun bench: --warmup takes a whole number from 0 to 1000000, not '-1'\n"},
      {"--floor --warmup abc", "zoorun bench: --warmup takes a whole number from 0 to 1000000, not 'abc'\n"},
      {"--floor --steps 5x", "zoorun bench: --steps takes a whole number from 1 to 1000000, not '5x'\n"},
      {"--floor --steps 0", "zoorun bench: --steps takes a whole number from 1 to 1000000, not '0'\n"},
      {"--floor --steps 99999999999",
       "zoorun bench: --steps takes a whole number from 1 to 1000000, not '99999999999'\n"},
      {"--floor --device cuda:abc", "zoorun bench: --device takes cuda, cuda:N (N from 0 to 1023) or auto, not 'cuda:abc'\n"},
      {"--floor --device cuda:-1", "zoorun bench: --device takes cuda, cuda:N (N from 0 to 1023) or auto, not 'cuda:-1'\n"},
      {"--floor --device gpu", "zoorun bench: --device takes cuda, cuda:N (N from 0 to 1023) or auto, not 'gpu'\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    if (!bench_says(t, "", cases[i][0], 2, cases[i][1])) return;
}

/* A flag whose value is missing (last, or followed by another flag) says so;
 * it was "unknown option '--steps'". */
TEST(bad_tools_bench_missing_value) {
  NEED_TOOL("zoorun");
  static const char *const cases[][2] = {
      {"--floor --steps", "zoorun bench: --steps needs a value\n"},
      {"--floor --json", "zoorun bench: --json needs a value\n"},
      {"--floor --device", "zoorun bench: --device needs a value\n"},
      {"--steps --floor", "zoorun bench: --steps needs a value\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    if (!bench_says(t, "", cases[i][0], 2, cases[i][1])) return;
}

/* --only with a mixer no cell has ran nothing and exited 0; now it names the
 * cells' mixers. */
TEST(bad_tools_bench_only_unknown) {
  NEED_TOOL("zoorun");
  const char *want = "zoorun bench: --only: no cell has the mixer 'nosuchmixer' (the cells' mixers: rebased, "
                     "based, conv_attention)\n";
  if (!bench_says(t, "", "--floor --only nosuchmixer", 2, want)) return;
  bench_says(t, "", "--precompile --only nosuchmixer", 2, want);
}

/* Flags that the mode given would ignore are refused (--poly was silently
 * dropped by --floor, --floor by --precompile). */
TEST(bad_tools_bench_idle_flags) {
  NEED_TOOL("zoorun");
  static const char *const cases[][2] = {
      {"--floor --poly", "zoorun bench: --poly does nothing with --floor"},
      {"--floor --precompile --quick", "zoorun bench: --floor and --precompile are runs of their own"},
      {"--floor --quick --steps 5", "zoorun bench: --steps does nothing with --floor"},
      {"--floor --quick --profile", "zoorun bench: --profile does nothing with --floor"},
      {"--precompile --quick --only rebased --json /tmp/zoo_bad_tools.json",
       "zoorun bench: --json does nothing with --precompile"},
      {"--poly --only rebased", "zoorun bench: --only does nothing with --poly"},
      {"--poly --device cuda:1", "zoorun bench: --device does nothing with --poly"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    if (!bench_says(t, "", cases[i][0], 2, cases[i][1])) return;
  unlink("/tmp/zoo_bad_tools.json");
}

/* ---- bench --precompile without a kernel cache ---- */

/* With ZOO_CACHE_DIR a regular file, --precompile compiled every module, said
 * "compiled" and exited 0 with nothing cached; now it stops before compiling.
 * The same with the cache turned off. */
TEST(bad_tools_bench_precompile_no_cache) {
  NEED_TOOL("zoorun");
  char file[] = "/tmp/zoo_bad_tools_cache_XXXXXX";
  int fd = mkstemp(file);
  CHECK(fd >= 0);
  close(fd);
  char prefix[256], want[256];
  snprintf(prefix, sizeof prefix, "ZOO_NO_CACHE= ZOO_CACHE_DIR=%s", file);
  snprintf(want, sizeof want, "zoorun bench: --precompile: cannot make the kernel cache folder %s: Not a directory\n",
           file);
  char *out;
  int st = run_tool("zoorun", prefix, "bench --precompile --quick --only rebased", NULL, &out);
  unlink(file);
  int ok = st == 1 && strcmp(out, want) == 0;
  CHECKF(ok, "status %d, output: %s", st, out);
  free(out);
  st = run_tool("zoorun", "ZOO_NO_CACHE=1", "bench --precompile --quick --only rebased", NULL, &out);
  ok = st == 1 && strcmp(out, "zoorun bench: --precompile: the kernel cache is off (ZOO_NO_CACHE=1)\n") == 0;
  CHECKF(ok, "status %d, output: %s", st, out);
  free(out);
}

/* zoo_nvrtc_cache_check: a folder it can write passes; a regular file, or a
 * path under one, does not, with the reason. */
TEST(bad_tools_nvrtc_cache_check) {
  char dir[] = "/tmp/zoo_bad_tools_dir_XXXXXX";
  CHECK(mkdtemp(dir));
  char file[600], under[700], buf[1024], err[1400];
  snprintf(file, sizeof file, "%s/file", dir);
  snprintf(under, sizeof under, "%s/sub", file);
  FILE *f = fopen(file, "w");
  CHECK(f);
  fclose(f);
  char *saved = zoo_test_env_set("ZOO_CACHE_DIR", dir);
  char *saved_off = zoo_test_env_set("ZOO_NO_CACHE", NULL);
  int r_dir = zoo_nvrtc_cache_check(buf, sizeof buf, err, sizeof err);
  setenv("ZOO_CACHE_DIR", file, 1);
  int r_file = zoo_nvrtc_cache_check(buf, sizeof buf, err, sizeof err);
  char err_file[1400];
  snprintf(err_file, sizeof err_file, "%s", err);
  setenv("ZOO_CACHE_DIR", under, 1);
  int r_under = zoo_nvrtc_cache_check(buf, sizeof buf, err, sizeof err);
  zoo_test_env_restore("ZOO_CACHE_DIR", saved);
  zoo_test_env_restore("ZOO_NO_CACHE", saved_off);
  unlink(file);
  rmdir(dir);
  CHECK(r_dir == 0);
  char want[1500];
  snprintf(want, sizeof want, "cannot make the kernel cache folder %s: Not a directory", file);
  CHECKF(r_file != 0 && strcmp(err_file, want) == 0, "%s", err_file);
  CHECKF(r_under != 0 && strstr(err, "Not a directory"), "%s", err);
}

/* A compilation without a usable cache folder still compiles (training runs
 * on without a cache, with a note on stderr), and one whose CUBIN cannot be
 * stored too; both are counted, which bench --precompile reports. */
TEST(bad_tools_nvrtc_cache_failures_counted) {
  char ver[32], why[512];
  if (zoo_nvrtc_version(ver, sizeof ver, why, sizeof why) != 0) SKIP("no NVRTC: %s", why);
  char dir[] = "/tmp/zoo_bad_tools_nvrtc_XXXXXX";
  CHECK(mkdtemp(dir));
  char file[600], src[256], err[2048];
  snprintf(file, sizeof file, "%s/file", dir);
  FILE *f = fopen(file, "w");
  CHECK(f);
  fclose(f);
  snprintf(src, sizeof src, "extern \"C\" __global__ void k(float *x) { x[threadIdx.x] += %d.0f; }\n",
           (int)getpid() % 997);
  char *saved = zoo_test_env_set("ZOO_CACHE_DIR", file);
  char *saved_off = zoo_test_env_set("ZOO_NO_CACHE", NULL);
  zoo_cubin c1 = {0}, c2 = {0};
  int n0 = zoo_nvrtc_cache_failures();
  int r1 = zoo_nvrtc_compile(src, "t.cu", "sm_90", NULL, &c1, err, sizeof err);
  int n1 = zoo_nvrtc_cache_failures();
  /* a folder where the CUBIN's file would go: the cache cannot store it */
  char cubin_dir[700];
  snprintf(cubin_dir, sizeof cubin_dir, "%s/%s.cubin", dir, c1.key);
  setenv("ZOO_CACHE_DIR", dir, 1);
  int made = mkdir(cubin_dir, 0755) == 0;
  int r2 = zoo_nvrtc_compile(src, "t.cu", "sm_90", NULL, &c2, err, sizeof err);
  int n2 = zoo_nvrtc_cache_failures();
  zoo_test_env_restore("ZOO_CACHE_DIR", saved);
  zoo_test_env_restore("ZOO_NO_CACHE", saved_off);
  rmdir(cubin_dir);
  unlink(file);
  rmdir(dir);
  int cached1 = c1.cached, cached2 = c2.cached;
  zoo_cubin_free(&c1);
  zoo_cubin_free(&c2);
  CHECKF(r1 == 0 && r2 == 0, "%s", err);
  CHECK(made && !cached1 && !cached2);
  CHECKF(n1 == n0 + 1 && n2 == n1 + 1, "failures %d, %d, %d", n0, n1, n2);
}

/* ---- output that cannot be written ---- */

/* zooc -o DIR with DIR/kernels.cu (then DIR/plan.txt) on a full disk exited 0;
 * now status 1 and the file's name with the reason. */
TEST(bad_tools_zooc_o_full) {
  NEED_TOOL("zooc");
  static const char *const names[] = {"kernels.cu", "plan.txt"};
  for (int k = 0; k < 2; k++) {
    char dir[] = "/tmp/zoo_bad_tools_o_XXXXXX";
    CHECK(mkdtemp(dir));
    char link[600], args[700], want[700];
    snprintf(link, sizeof link, "%s/%s", dir, names[k]);
    CHECK(symlink("/dev/full", link) == 0);
    snprintf(args, sizeof args, "models/conv_attention.zoo -o %s", dir);
    char *out;
    int st = run_tool("zooc", "", args, NULL, &out);
    char other[600];
    snprintf(other, sizeof other, "%s/%s", dir, names[1 - k]);
    unlink(link);
    unlink(other);
    rmdir(dir);
    snprintf(want, sizeof want, "zoo: error: cannot write %s: No space left on device\n", link);
    int ok = st == 1 && strcmp(out, want) == 0;
    CHECKF(ok, "status %d, output: %s", st, out);
    free(out);
  }
}

/* zooc -o FILE, an existing regular file: "cannot make the folder FILE: File
 * exists" became "it is not a folder". */
TEST(bad_tools_zooc_o_not_folder) {
  NEED_TOOL("zooc");
  char file[] = "/tmp/zoo_bad_tools_file_XXXXXX";
  int fd = mkstemp(file);
  CHECK(fd >= 0);
  close(fd);
  char args[300], want[300];
  snprintf(args, sizeof args, "models/conv_attention.zoo -o %s", file);
  char *out;
  int st = run_tool("zooc", "", args, NULL, &out);
  unlink(file);
  snprintf(want, sizeof want, "zoo: error: cannot write into %s: it is not a folder\n", file);
  int ok = st == 1 && strcmp(out, want) == 0;
  CHECKF(ok, "status %d, output: %s", st, out);
  free(out);
}

/* zooc's standard output on a full disk: --dump=cuda, the summary and --help
 * exited 0 with nothing written. */
TEST(bad_tools_zooc_stdout_full) {
  NEED_TOOL("zooc");
  static const char *const args[] = {"models/conv_attention.zoo --dump=cuda", "models/conv_attention.zoo",
                                     "models/conv_attention.zoo --dump=graph", "--help"};
  for (size_t i = 0; i < sizeof args / sizeof *args; i++) {
    char *err;
    int st = run_tool("zooc", "", args[i], "/dev/full", &err);
    int ok = st == 1 && strcmp(err, "zooc: cannot write the standard output: No space left on device\n") == 0;
    CHECKF(ok, "zooc %s: status %d, stderr: %s", args[i], st, err);
    free(err);
  }
}

/* bench --floor's table, --help and --floor's --json lines on a full disk. */
TEST(bad_tools_bench_output_full) {
  NEED_TOOL("zoorun");
  char *err;
  int st = run_tool("zoorun", "", "bench --floor --quick --only rebased", "/dev/full", &err);
  int ok = st == 1 && strcmp(err, "zoorun bench: cannot write the standard output: No space left on device\n") == 0;
  CHECKF(ok, "status %d, stderr: %s", st, err);
  free(err);
  st = run_tool("zoorun", "", "bench --help", "/dev/full", &err);
  ok = st == 1 && strcmp(err, "zoorun bench: cannot write the standard output: No space left on device\n") == 0;
  CHECKF(ok, "--help: status %d, stderr: %s", st, err);
  free(err);
  st = run_tool("zoorun", "", "bench --floor --quick --only rebased --json /dev/full", "/dev/null", &err);
  ok = st == 1 && strcmp(err, "zoorun bench: cannot write /dev/full: No space left on device\n") == 0;
  CHECKF(ok, "status %d, stderr: %s", st, err);
  free(err);
}
