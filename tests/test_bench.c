/* test_bench.c: the compute floor of zoorun bench (runtime/bench.c), which needs
 * no GPU: the floating-point work of one optimiser step of a cell's compiled
 * training plan (its GEMM steps and poly_attention), against hand counts made
 * from the models' shapes, and the --floor flag's JSON lines. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../runtime/bench.h"
#include "test.h"

/* Whether a and b agree within a relative tolerance. */
static int near(double a, double b, double rel) { return fabs(a - b) <= rel * fabs(b); }

/* rebased at D 128, L 512, micro-batch 256 x 2 (models/rebased.zoo; the notes in
 * shared/reference/NOTES.md): layer 0 BaseConv (a 128 x 128 projection), layer 1
 * ReBased with 12 heads of feature dim 16 (q, k: 128 -> 192), value width
 * floor(128 / 12) = 10 (v: 128 -> 120, out: 120 -> 128), vocabulary 8192, the
 * head over the labelled rows only: L / 4 = 128 key-value pairs per sequence.
 *   rows M = 256 * 512 = 131072, labelled rows R = 256 * 128 = 32768
 *   forward GEMMs  2 M (128*128 + 2*192*128 + 120*128 + 128*120) + 2 R 8192*128
 *                = 25.23 + 68.72 = 93.95 GFLOP
 *   backward: each GEMM's input and weight gradients, as much again twice:
 *                3 * 93.95 = 281.86 GFLOP per micro-batch, 563.71 for the step
 *   poly_attention (quadratic at L 512): BH = 256 * 12 = 3072 pairs of
 *     P = 512 * 513 / 2 = 131328 (i, j), forward 2F + 2DV + 5 = 57, backward
 *     6F + 4DV + 9 = 145 flops each: 3072 * 131328 * 202 = 81.49 GFLOP per
 *     micro-batch, 162.99 for the step
 *   floor: 726.70 GFLOP / 67 TFLOP/s = 10.85 ms; max x = 96.01 / 10.85 = 8.85 */
TEST(bench_floor_rebased_128_512) {
  zoo_bench_floor f;
  char err[1024];
  CHECKF(zoo_bench_floor_of("rebased", 128, 512, 256, 2, &f, err, sizeof err) == 0, "%s", err);
  double M = 256.0 * 512, R = 256.0 * 128;
  double fwd = 2 * M * (128 * 128 + 2 * 192 * 128 + 120 * 128 + 128 * 120) + 2 * R * 8192 * 128;
  double gemm = 2 * 3 * fwd;
  double poly = 2 * 3072.0 * (512.0 * 513 / 2) * (57 + 145);
  CHECK(f.gemms == 18 && f.polys == 2 && f.chunked == 0);
  CHECKF(near(f.gemm_flop, gemm, 0.02), "GEMMs %.4g flop, by hand %.4g", f.gemm_flop, gemm);
  CHECKF(near(f.poly_flop, poly, 0.02), "poly_attention %.4g flop, by hand %.4g", f.poly_flop, poly);
  CHECK(near(f.flop, f.gemm_flop + f.poly_flop, 1e-12));
  CHECK(near(f.floor_ms, f.flop / 67e9, 1e-9));
  CHECKF(near(96.01 / f.floor_ms, 8.85, 0.02), "max x %.3f", 96.01 / f.floor_ms);
}

/* rebased at D 512, L 512 (256 x 2), where the reference takes 270.34 ms: the
 * GEMMs alone are about 3.2 TFLOP (value width 42, v: 512 -> 504), so even at
 * the fp32 peak no fp32 implementation of this plan reaches 5.5x. */
TEST(bench_floor_rebased_512_512) {
  zoo_bench_floor f;
  char err[1024];
  CHECKF(zoo_bench_floor_of("rebased", 512, 512, 256, 2, &f, err, sizeof err) == 0, "%s", err);
  double M = 256.0 * 512, R = 256.0 * 128;
  double fwd = 2 * M * (512 * 512 + 2 * 192 * 512 + 504 * 512 + 512 * 504) + 2 * R * 8192 * 512;
  CHECKF(near(f.gemm_flop, 2 * 3 * fwd, 0.02), "GEMMs %.4g flop, by hand %.4g", f.gemm_flop, 2 * 3 * fwd);
  double max_x = 270.34 / f.floor_ms;
  CHECKF(max_x > 4.5 && max_x < 5.5, "max x %.3f", max_x);
}

/* At L 2048 the plan runs poly_attention's chunked form, and the floor counts
 * that form's work (runtime/bench.c, poly_chunked_flops), well below the
 * quadratic form's; ZOO_POLY_FORM=quadratic brings the quadratic count back.
 * rebased 64 / 2048, 64 x 8: BH = 64 * 12 = 768, F 16, DV floor(64 / 12) = 5.
 *   quadratic: 768 * (2048 * 2049 / 2) * (47 + 125) per micro-batch
 *   chunked, D = 16 * 17 / 2 = 136 features, W = DV + 1 = 6, chunks of 64:
 *     rows 2048 * (3D + 4DW) forward, 2048 * (11D + 8DW + 2D DV) backward,
 *     and 32 chunks of 64 * 65 / 2 pairs at 47 + 125 flops */
TEST(bench_floor_chunked_form) {
  zoo_bench_floor f, q;
  char err[1024];
  char *saved = zoo_test_env_set("ZOO_POLY_FORM", NULL);
  int r = zoo_bench_floor_of("rebased", 64, 2048, 64, 8, &f, err, sizeof err);
  zoo_test_env_restore("ZOO_POLY_FORM", saved);
  CHECKF(r == 0, "%s", err);
  saved = zoo_test_env_set("ZOO_POLY_FORM", "quadratic");
  r = zoo_bench_floor_of("rebased", 64, 2048, 64, 8, &q, err, sizeof err);
  zoo_test_env_restore("ZOO_POLY_FORM", saved);
  CHECKF(r == 0, "%s", err);
  CHECK(f.polys == 2 && f.chunked == 2 && q.chunked == 0);
  double D = 136, W = 6, DV = 5;
  double chunked = 8 * 768 * (2048 * (3 * D + 4 * D * W) + 2048 * (11 * D + 8 * D * W + 2 * D * DV) +
                              32 * (64.0 * 65 / 2) * (47 + 125));
  double quadratic = 8 * 768 * (2048.0 * 2049 / 2) * (47 + 125);
  CHECKF(near(f.poly_flop, chunked, 0.02), "chunked %.4g flop, by hand %.4g", f.poly_flop, chunked);
  CHECKF(near(q.poly_flop, quadratic, 0.02), "quadratic %.4g flop, by hand %.4g", q.poly_flop, quadratic);
  CHECK(f.gemm_flop == q.gemm_flop);
}

TEST(bench_floor_unknown_model) {
  zoo_bench_floor f;
  char err[1024] = "";
  CHECK(zoo_bench_floor_of("no_such_mixer", 64, 128, 512, 1, &f, err, sizeof err) == -1);
  CHECKF(strstr(err, "models/no_such_mixer.zoo") != NULL, "%s", err);
}

/* Runs zoo_bench_main with stdout sent to /dev/null; returns its status. */
static int bench_quietly(int argc, char **argv) {
  fflush(stdout);
  int saved = dup(1), null = open("/dev/null", O_WRONLY);
  if (saved < 0 || null < 0) return -1;
  dup2(null, 1);
  close(null);
  int r = zoo_bench_main(argc, argv);
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  return r;
}

/* zoorun bench --floor --json: no GPU, one line per chosen cell with the
 * floor's fields, equal to zoo_bench_floor_of's figures. */
TEST(bench_floor_flag_json) {
  char path[] = "/tmp/zoo_bench_floor_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  close(fd);
  char *argv[] = {"bench", "--floor", "--only", "rebased", "--quick", "--json", path};
  int r = bench_quietly(7, argv);
  char *text = zoo_test_read(path, NULL);
  unlink(path);
  CHECK(r == 0 && text);
  int lines = zoo_test_count(text, "\n");
  const char *cell = strstr(text, "\"d_model\": 64, \"seq_len\": 128");
  const char *at = cell ? strstr(cell, "\"flop\": ") : NULL;
  const char *mx = cell ? strstr(cell, "\"max_speedup\": ") : NULL;
  double flop = 0, max_x = 0;
  int ok = at && mx && strstr(cell, "\"floor_ms\": ") && sscanf(at, "\"flop\": %lf", &flop) == 1 &&
           sscanf(mx, "\"max_speedup\": %lf", &max_x) == 1;
  free(text);
  CHECKF(lines == 2, "%d lines", lines);
  CHECK(ok);
  zoo_bench_floor f;
  char err[1024];
  CHECKF(zoo_bench_floor_of("rebased", 64, 128, 512, 1, &f, err, sizeof err) == 0, "%s", err);
  CHECKF(near(flop, f.flop, 1e-5), "JSON %.6g, zoo_bench_floor_of %.6g", flop, f.flop);
  CHECKF(near(max_x, 17.27 / f.floor_ms, 1e-3), "JSON max x %.4f", max_x);
}
