/* test_schedule.c: the steps over two streams (compiler/schedule.h).
 *
 * The schedules of the shipped models' training and evaluation plans are
 * checked for the one property that matters: every two steps that touch the
 * same memory, one of them writing, are ordered as in the list (the same
 * stream, or a chain of waits). The emulated backend (test_gpu.c,
 * emu_backend_streams) runs them too, in the orders that put the side stream
 * as late and as early as the waits allow. */
#include <stdlib.h>
#include <string.h>

#include "../compiler/compile.h"
#include "../compiler/generate.h"
#include "../compiler/schedule.h"
#include "test.h"

TEST(schedule_kernel_sigs) {
  const char *src =
      "// a __global__ kernel mentioned in a comment; then a declaration\n"
      "extern \"C\" __global__ void zoo_decl(float *x);\n"
      "extern \"C\" __global__ void __launch_bounds__(256, 1) zoo_k1_add(const float *__restrict__ a,\n"
      "    const float *__restrict__ b, float *__restrict__ y, long long n) {\n  y[0] = a[0] + b[0];\n}\n"
      "extern \"C\" __global__ void zoo_k2(float const *a, unsigned *counter, const int *ids, float s) { }\n"
      "extern \"C\" __global__ void zoo_k3() { }\n"
      "template <int N> __global__ void zk_lib(const float *x, float *y) { }\n";
  int n = 0;
  zoo_kernel_sig *s = zoo_kernel_sigs(src, &n);
  CHECKF(n == 4, "%d signatures", n);
  CHECK(s[0].name_len == 10 && strncmp(s[0].name, "zoo_k1_add", 10) == 0);
  CHECK(s[0].nparams == 4 && s[0].pointers == 0x7 && s[0].writes == 0x4);
  CHECK(s[1].name_len == 6 && strncmp(s[1].name, "zoo_k2", 6) == 0);
  /* "float const *" is a pointer to const as well */
  CHECK(s[1].nparams == 4 && s[1].pointers == 0x7 && s[1].writes == 0x2);
  CHECK(s[2].nparams == 0 && s[2].pointers == 0);
  CHECK(s[3].name_len == 6 && strncmp(s[3].name, "zk_lib", 6) == 0 && s[3].writes == 0x2);
  free(s);
}

TEST(schedule_access_conflict) {
  zoo_access r1 = {ZOO_MEM_ARENA, 0, 256, 0}, r2 = {ZOO_MEM_ARENA, 128, 512, 0};
  zoo_access w2 = {ZOO_MEM_ARENA, 128, 512, 1}, w3 = {ZOO_MEM_ARENA, 256, 512, 1};
  zoo_access g2 = {ZOO_MEM_GRAD, 128, 512, 1};
  CHECK(!zoo_access_conflict(&r1, 1, &r2, 1)); /* two reads */
  CHECK(zoo_access_conflict(&r1, 1, &w2, 1));  /* a read and a write that overlap */
  CHECK(zoo_access_conflict(&w2, 1, &r1, 1));
  CHECK(!zoo_access_conflict(&r1, 1, &w3, 1)); /* adjacent, no overlap */
  CHECK(!zoo_access_conflict(&r1, 1, &g2, 1)); /* other memory */
}

/* Per step, the latest step of each stream ordered before it (itself for its
 * own stream): the clocks of schedule sc. Returns 0, or -1 where a wait names
 * a step of its own stream, a later step or one without an event. */
static int clocks(const zoo_schedule *sc, int (*clk)[2]) {
  int tail[2][2] = {{-1, -1}, {-1, -1}};
  for (int j = 0; j < sc->n; j++) {
    int x = sc->stream[j];
    int c[2] = {tail[x][0], tail[x][1]};
    int w = sc->wait[j];
    if (w >= 0) {
      if (w >= j || sc->stream[w] == x || !sc->mark[w]) return -1;
      for (int k = 0; k < 2; k++)
        if (clk[w][k] > c[k]) c[k] = clk[w][k];
    }
    c[x] = j;
    clk[j][0] = c[0], clk[j][1] = c[1];
    tail[x][0] = c[0], tail[x][1] = c[1];
  }
  return 0;
}

/* Checks schedule sc of steps[first, first + n) under plan p: every pair of
 * conflicting steps ordered. Returns the pairs that are not. */
static int unordered_pairs(const zoo_schedule *sc, const zoo_plan *p, const zoo_step *steps, int first,
                           const char *src) {
  int n = sc->n, nsigs = 0, bad = 0;
  zoo_kernel_sig *sigs = zoo_kernel_sigs(src, &nsigs);
  zoo_access *acc = calloc((size_t)n * ZOO_SCHEDULE_MAX_ACCESS, sizeof *acc);
  int *nacc = calloc((size_t)n, sizeof *nacc), (*clk)[2] = calloc((size_t)n, sizeof *clk);
  for (int j = 0; j < n; j++)
    nacc[j] = zoo_step_access(p, steps, first, first + j, sigs, nsigs, acc + (size_t)j * ZOO_SCHEDULE_MAX_ACCESS);
  if (clocks(sc, clk) != 0) bad = n * n;
  for (int j = 0; j < n && !bad; j++)
    for (int i = 0; i < j; i++)
      if (i > clk[j][sc->stream[i]] &&
          zoo_access_conflict(acc + (size_t)i * ZOO_SCHEDULE_MAX_ACCESS, nacc[i],
                              acc + (size_t)j * ZOO_SCHEDULE_MAX_ACCESS, nacc[j])) {
        if (bad++ < 5) fprintf(stderr, "  steps %d (%s) and %d (%s) conflict but are not ordered\n", i,
                               steps[first + i].func ? steps[first + i].func : "gemm", j,
                               steps[first + j].func ? steps[first + j].func : "gemm");
      }
  free(sigs), free(acc), free(nacc), free(clk);
  return bad;
}

static void schedule_model(zoo_test_ctx *t, const char *model, int d_model, int seq_len) {
  char path[64], dm[16], sl[16];
  snprintf(path, sizeof path, "models/%s.zoo", model);
  snprintf(dm, sizeof dm, "%d", d_model);
  snprintf(sl, sizeof sl, "%d", seq_len);
  zoo_define defs[] = {{"vocab_size", "256"}, {"d_model", dm}, {"seq_len", sl}};
  zoo_compile_opts o = {.path = path, .defines = defs, .ndefines = 3};
  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_program *p = NULL;
  CHECKF(zoo_compile(&o, &d, &p) == 0, "%s does not compile", path);
  CHECK(zoo_train_graph_head(&p->graph, ZOO_HEAD_COMPACT, 8, &d) == 0);
  zoo_cuda_program cp;
  char err[512];
  int built = zoo_cuda_program_build(&cp, &p->graph, 16, seq_len, 1, 1, err, sizeof err) == 0;
  if (!built) zoo_program_free(p);
  CHECKF(built, "%s: %s", model, err);
  zoo_schedule tr, ev, one;
  const zoo_schedule_opts all = {ZOO_SCHEDULE_WINDOW, 0}, none = {0, 0};
  zoo_schedule_build(&tr, &cp.train_plan, cp.emit.steps, 0, cp.ntrain, cp.emit.src.s, all);
  zoo_schedule_build(&ev, &cp.eval_plan, cp.emit.steps, cp.ntrain, cp.neval, cp.emit.src.s, all);
  zoo_schedule_build(&one, &cp.train_plan, cp.emit.steps, 0, cp.ntrain, cp.emit.src.s, none);
  /* with a cap on the GEMMs aside: none of them above it, and still ordered */
  zoo_schedule capped;
  zoo_schedule_build(&capped, &cp.train_plan, cp.emit.steps, 0, cp.ntrain, cp.emit.src.s,
                     (zoo_schedule_opts){ZOO_SCHEDULE_WINDOW, 1e3});
  int bad_capped = unordered_pairs(&capped, &cp.train_plan, cp.emit.steps, 0, cp.emit.src.s), big_aside = 0;
  for (int j = 0; j < cp.ntrain; j++)
    big_aside += capped.stream[j] && cp.emit.steps[j].kind == ZOO_STEP_GEMM;
  zoo_schedule_free(&capped);
  int bad_tr = unordered_pairs(&tr, &cp.train_plan, cp.emit.steps, 0, cp.emit.src.s);
  int bad_ev = unordered_pairs(&ev, &cp.eval_plan, cp.emit.steps, cp.ntrain, cp.emit.src.s);
  /* the weight gradients' GEMMs (into parameter gradients, K over the rows) go aside */
  int wgrads = 0, wgrads_side = 0;
  for (int j = 0; j < cp.ntrain; j++) {
    const zoo_step *s = &cp.emit.steps[j];
    if (s->kind == ZOO_STEP_GEMM && cp.train_plan.mem[s->gemm.c] == ZOO_MEM_GRAD && s->gemm.beta == 0) {
      wgrads++;
      wgrads_side += tr.stream[j];
    }
  }
  if (getenv("ZOO_TEST_VERBOSE") && atoi(getenv("ZOO_TEST_VERBOSE")) > 1)
    for (int j = 0; j < cp.ntrain; j++) {
      const zoo_step *s = &cp.emit.steps[j];
      fprintf(stderr, "    %3d %s %-40s wait %d%s\n", j, tr.stream[j] ? "side" : "main",
              s->kind == ZOO_STEP_GEMM ? "gemm" : s->kind == ZOO_STEP_ZERO ? "clear" : s->func, tr.wait[j],
              tr.mark[j] ? " (event)" : "");
    }
  /* the early steps (reading only the inputs) lead the list, on the side
   * stream, and their node's scratch area is one, held from the first of
   * them to the node's last step: no arena value live in between shares it */
  int early = 0, early_bad = 0;
  const zoo_plan *tp = &cp.train_plan;
  for (int j = 0; j < cp.ntrain; j++) {
    const zoo_step *s = &cp.emit.steps[j];
    if (!s->early) continue;
    if (j != early++ || !tr.stream[j]) early_bad++;
    if (s->scratch_bytes <= 0) continue;
    int last = j;
    for (int k = j + 1; k < cp.ntrain; k++)
      if (cp.emit.steps[k].node == s->node && cp.emit.steps[k].scratch_bytes > 0) last = k;
    int64_t lo = tp->scratch[j], hi = lo + tp->scratch_size[j];
    if (tp->scratch[last] != lo) early_bad++;
    for (int v = 0; v < cp.train.ntensors; v++)
      if (tp->mem[v] == ZOO_MEM_ARENA && tp->first[v] >= 0 && tp->first[v] <= last && tp->last[v] >= j &&
          tp->offset[v] < hi && tp->offset[v] + tp->bytes[v] > lo)
        early_bad++;
  }
  int side = tr.side, one_side = one.side, last_main = tr.stream[cp.ntrain - 1] == 0;
  if (getenv("ZOO_TEST_VERBOSE"))
    fprintf(stderr, "  %s: train %d steps, %d aside, %d waits; eval %d steps, %d aside; %d of %d weight GEMMs aside\n",
            model, cp.ntrain, tr.side, tr.waits, cp.neval, ev.side, wgrads_side, wgrads);
  zoo_schedule_free(&tr), zoo_schedule_free(&ev), zoo_schedule_free(&one);
  zoo_cuda_program_free(&cp);
  zoo_program_free(p);
  CHECKF(bad_tr == 0, "%s training: %d conflicting pairs unordered", model, bad_tr);
  CHECKF(bad_ev == 0, "%s evaluation: %d conflicting pairs unordered", model, bad_ev);
  CHECKF(bad_capped == 0 && big_aside == 0, "%s, GEMMs capped: %d pairs unordered, %d GEMMs aside", model,
         bad_capped, big_aside);
  CHECKF(side > 0 && wgrads_side > 0, "%s: %d steps aside, %d of %d weight GEMMs", model, side, wgrads_side, wgrads);
  CHECK(one_side == 0 && last_main);
  CHECKF(early > 0 && early_bad == 0, "%s: %d early steps, %d misplaced or sharing their scratch", model, early,
         early_bad);
}

TEST(schedule_rebased) { schedule_model(t, "rebased", 32, 48); }
TEST(schedule_based) { schedule_model(t, "based", 64, 64); }
TEST(schedule_conv_attention) { schedule_model(t, "conv_attention", 64, 64); }
TEST(schedule_attention) { schedule_model(t, "attention", 64, 64); }
TEST(schedule_rwkv) { schedule_model(t, "rwkv", 64, 64); }
