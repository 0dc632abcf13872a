/* test_models.c: the shipped models compile to the reference's parameters (names,
 * shapes, inits, counts), their summaries and graphs match the golden files, and
 * the language's compile-time semantics hold on small programs.
 *
 * Run from the repository root (paths are relative to it). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compile.h"
#include "train.h"
#include "test.h"
#include "value.h"

/* Compiles path with the given -D pairs ("name=value"); returns the program or
 * NULL, with the messages in *errors (caller frees). */
static zoo_program *compile_with(const char *path, const char *const *defs, int ndefs, char **errors) {
  zoo_define defines[16];
  char buf[16][128];
  for (int i = 0; i < ndefs && i < 16; i++) {
    snprintf(buf[i], sizeof buf[i], "%s", defs[i]);
    char *eq = strchr(buf[i], '=');
    *eq = 0;
    defines[i].name = buf[i];
    defines[i].value = eq + 1;
  }
  zoo_compile_opts o = {.path = path, .defines = defines, .ndefines = ndefs, .std_dir = "models"};
  size_t len;
  FILE *out = open_memstream(errors, &len);
  zoo_diag d;
  zoo_diag_init(&d, out);
  zoo_program *p = NULL;
  zoo_compile(&o, &d, &p);
  fclose(out);
  return p;
}

/* Compiles a program given as text (written to a temporary file). */
static zoo_program *compile_text(const char *text, char **errors) {
  char path[] = "/tmp/zoo_test_XXXXXX.zoo";
  int fd = mkstemps(path, 4);
  if (fd < 0) return NULL;
  if (write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
    close(fd);
    return NULL;
  }
  close(fd);
  zoo_program *p = compile_with(path, NULL, 0, errors);
  unlink(path);
  return p;
}

static int find_param(const zoo_graph *g, const char *name) {
  for (int i = 0; i < g->nparams; i++)
    if (strcmp(g->tensors[g->params[i]].name, name) == 0) return g->params[i];
  return -1;
}

static int count_op(const zoo_graph *g, zoo_op op) {
  int n = 0;
  for (int i = 0; i < g->nnodes; i++) n += g->nodes[i].op == op;
  return n;
}

/* NOTES.md "Parameter counts". */
TEST(model_param_counts) {
  static const struct {
    const char *model;
    int d_model, seq_len;
    int64_t params;
  } rows[] = {
      {"rebased", 32, 48, 279776},       {"rebased", 64, 128, 570560},
      {"based", 64, 128, 569792},        {"conv_attention", 64, 128, 554176},
      {"rebased", 128, 512, 1213056},    {"based", 128, 512, 1212288},
      {"rebased", 512, 512, 5439744},    {"rebased", 64, 2048, 693440},
      {"rebased", 512, 2048, 6226176},  {"rwkv", 128, 512, 1247744},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    char path[64], d[32], l[32];
    snprintf(path, sizeof path, "models/%s.zoo", rows[i].model);
    snprintf(d, sizeof d, "d_model=%d", rows[i].d_model);
    snprintf(l, sizeof l, "seq_len=%d", rows[i].seq_len);
    const char *defs[] = {d, l};
    char *errors;
    zoo_program *p = compile_with(path, defs, 2, &errors);
    CHECKF(p, "%s: %s", path, errors);
    int64_t n = zoo_graph_param_count(&p->graph);
    zoo_program_free(p);
    free(errors);
    CHECKF(n == rows[i].params, "%s d_model=%d seq_len=%d: %lld parameters, want %lld",
           rows[i].model, rows[i].d_model, rows[i].seq_len, (long long)n, (long long)rows[i].params);
  }
}

/* The reference's state_dict of the rebased model, in order, with shapes. */
TEST(model_rebased_names) {
  static const struct {
    const char *name;
    const char *shape;
  } want[] = {
      {"backbone.embeddings.word_embeddings.weight", "f32[8192, 64]"},
      {"backbone.embeddings.position_embeddings.weight", "f32[128, 64]"},
      {"backbone.layers.0.sequence_mixer.mixer.projection.weight", "f32[64, 64]"},
      {"backbone.layers.0.sequence_mixer.mixer.projection.bias", "f32[64]"},
      {"backbone.layers.0.sequence_mixer.mixer.conv.conv.weight", "f32[64, 1, 3]"},
      {"backbone.layers.0.sequence_mixer.mixer.conv.conv.bias", "f32[64]"},
      {"backbone.layers.0.norm1.weight", "f32[64]"},
      {"backbone.layers.0.norm1.bias", "f32[64]"},
      {"backbone.layers.0.norm2.weight", "f32[64]"},
      {"backbone.layers.0.norm2.bias", "f32[64]"},
      {"backbone.layers.1.sequence_mixer.mixer.proj_q.weight", "f32[192, 64]"},
      {"backbone.layers.1.sequence_mixer.mixer.proj_k.weight", "f32[192, 64]"},
      {"backbone.layers.1.sequence_mixer.mixer.proj_v.weight", "f32[60, 64]"},
      {"backbone.layers.1.sequence_mixer.mixer.proj_o.weight", "f32[64, 60]"},
      {"backbone.layers.1.sequence_mixer.mixer.ln_q.weight", "f32[192]"},
      {"backbone.layers.1.sequence_mixer.mixer.ln_q.bias", "f32[192]"},
      {"backbone.layers.1.sequence_mixer.mixer.ln_k.weight", "f32[192]"},
      {"backbone.layers.1.sequence_mixer.mixer.ln_k.bias", "f32[192]"},
      {"backbone.layers.1.norm1.weight", "f32[64]"},
      {"backbone.layers.1.norm1.bias", "f32[64]"},
      {"backbone.layers.1.norm2.weight", "f32[64]"},
      {"backbone.layers.1.norm2.bias", "f32[64]"},
      {"backbone.ln_f.weight", "f32[64]"},
      {"backbone.ln_f.bias", "f32[64]"},
  };
  char *errors;
  zoo_program *p = compile_with("models/rebased.zoo", NULL, 0, &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  const zoo_graph *g = &p->graph;
  int n = (int)(sizeof want / sizeof want[0]);
  int ok = g->nparams == n;
  for (int i = 0; ok && i < n; i++) {
    char buf[64];
    const zoo_tensor *x = &g->tensors[g->params[i]];
    if (strcmp(x->name, want[i].name) != 0 || strcmp(zoo_type_str(g, &x->type, buf, sizeof buf), want[i].shape) != 0) {
      fprintf(stderr, "  param %d: %s %s, want %s %s\n", i, x->name, buf, want[i].name, want[i].shape);
      ok = 0;
    }
  }
  /* The tied head: an alias of the token embedding, not a tensor of its own. */
  int tied = p->naliases == 1 && strcmp(p->aliases[0].name, "lm_head.weight") == 0 &&
             p->aliases[0].tensor == g->params[0];
  /* The logits are linear(h, E) without bias, and the graph returns them. */
  const zoo_node *last = g->output >= 0 ? &g->nodes[g->tensors[g->output].producer] : NULL;
  int head = last && last->op == ZOO_OP_LINEAR && last->nin == 2 && last->in[1] == g->params[0];
  zoo_program_free(p);
  CHECKF(ok, "parameter names or shapes differ from the reference (%d params)", g->nparams);
  CHECK(tied);
  CHECK(head);
}

/* Inits as the reference's _init_weights leaves them. */
TEST(model_inits) {
  char *errors;
  zoo_program *p = compile_with("models/conv_attention.zoo", NULL, 0, &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  const zoo_graph *g = &p->graph;
  struct {
    const char *name;
    zoo_init_kind kind;
    double a;
  } want[] = {
      {"backbone.embeddings.word_embeddings.weight", ZOO_INIT_NORMAL, 0.02},
      {"backbone.embeddings.position_embeddings.weight", ZOO_INIT_NORMAL, 0.02},
      {"backbone.layers.0.sequence_mixer.mixer.projection.weight", ZOO_INIT_NORMAL, 0.02},
      {"backbone.layers.0.sequence_mixer.mixer.projection.bias", ZOO_INIT_ZEROS, 0},
      {"backbone.layers.0.sequence_mixer.mixer.conv.conv.weight", ZOO_INIT_UNIFORM, 0.5773502691896258},
      {"backbone.layers.0.sequence_mixer.mixer.conv.conv.bias", ZOO_INIT_UNIFORM, 0.5773502691896258},
      {"backbone.layers.0.norm1.weight", ZOO_INIT_ONES, 0},
      {"backbone.layers.0.norm1.bias", ZOO_INIT_ZEROS, 0},
      {"backbone.layers.1.sequence_mixer.mixer.Wqkv.weight", ZOO_INIT_NORMAL, 0.02},
      {"backbone.layers.1.sequence_mixer.mixer.Wqkv.bias", ZOO_INIT_ZEROS, 0},
      {"backbone.layers.1.sequence_mixer.mixer.out_proj.weight", ZOO_INIT_NORMAL, 0.01},
      {"backbone.layers.1.sequence_mixer.mixer.out_proj.bias", ZOO_INIT_ZEROS, 0},
      {"backbone.ln_f.weight", ZOO_INIT_ONES, 0},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    int id = find_param(g, want[i].name);
    int ok = id >= 0 && g->tensors[id].init.kind == want[i].kind &&
             fabs(g->tensors[id].init.a - want[i].a) < 1e-12;
    if (!ok) zoo_program_free(p);
    CHECKF(ok, "%s: missing or wrong init", want[i].name);
  }
  zoo_program_free(p);
}

/* The attention model has no Hybrid: its mixer's names have no ".mixer". */
TEST(model_attention_names) {
  char *errors;
  zoo_program *p = compile_with("models/attention.zoo", NULL, 0, &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  const zoo_graph *g = &p->graph;
  int ok = find_param(g, "backbone.layers.0.sequence_mixer.Wqkv.weight") >= 0 &&
           find_param(g, "backbone.layers.1.sequence_mixer.out_proj.bias") >= 0 &&
           count_op(g, ZOO_OP_SOFTMAX_ATTENTION) == 2 && count_op(g, ZOO_OP_SLICE) == 6;
  /* Each attention call site draws its own dropout stream; so does the embedding dropout. */
  int streams_distinct = 1, seen = 0;
  int64_t first = -1;
  for (int i = 0; i < g->nnodes; i++)
    if (zoo_ops[g->nodes[i].op].flags & ZOO_OPF_RANDOM) {
      if (seen && g->nodes[i].attrs.i[0] == first) streams_distinct = 0;
      if (!seen) first = g->nodes[i].attrs.i[0];
      seen++;
    }
  int64_t total = zoo_graph_param_count(g);
  zoo_program_free(p);
  CHECK(ok);
  CHECK(seen == 3 && streams_distinct);
  CHECK(total == 566400);
}

/* Every op a .zoo file may call has a builtin that makes it. */
TEST(model_builtins_cover_ops) {
  for (int op = 0; op < ZOO_OP_COUNT; op++) {
    if (zoo_ops[op].flags & ZOO_OPF_INTERNAL) continue;
    const zoo_builtin *b = zoo_builtin_find(zoo_ops[op].name);
    CHECKF(b && b->op == op, "op %s has no builtin", zoo_ops[op].name);
  }
}

/* Each shipped model compiles well under a second. */
TEST(model_compile_time) {
  const char *models[] = {"rebased", "based", "conv_attention", "attention"};
  for (int i = 0; i < 4; i++) {
    char path[64];
    snprintf(path, sizeof path, "models/%s.zoo", models[i]);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char *errors;
    zoo_program *p = compile_with(path, NULL, 0, &errors);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    zoo_program_free(p);
    free(errors);
    CHECKF(p != NULL, "%s does not compile", path);
    CHECKF(s < 1.0, "%s took %.3f s", path, s);
  }
}

/* -D values override defaults, are reported in the bindings, and must be literals. */
TEST(model_defines) {
  const char *defs[] = {"d_model=128", "num_heads=4"};
  char *errors;
  zoo_program *p = compile_with("models/based.zoo", defs, 2, &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  int ok = 0;
  for (int i = 0; i < p->nbindings; i++)
    if (strcmp(p->bindings[i].name, "num_heads") == 0) ok = strcmp(p->bindings[i].value, "4") == 0;
  int v = find_param(&p->graph, "backbone.layers.1.sequence_mixer.mixer.proj_v.weight");
  char buf[64];
  int vshape = v >= 0 && strcmp(zoo_type_str(&p->graph, &p->graph.tensors[v].type, buf, sizeof buf),
                                "f32[128, 128]") == 0;
  zoo_program_free(p);
  CHECK(ok);
  CHECK(vshape);

  const char *bad[] = {"d_model=sixty"};
  p = compile_with("models/based.zoo", bad, 1, &errors);
  int reported = strstr(errors, "'sixty' is not a .zoo value") != NULL;
  free(errors);
  CHECK(p == NULL);
  CHECK(reported);
}

/* ---- golden summaries and graphs ---- */

static void golden_model(zoo_test_ctx *t, const char *model) {
  char path[64], golden[128];
  snprintf(path, sizeof path, "models/%s.zoo", model);
  char *errors;
  zoo_program *p = compile_with(path, NULL, 0, &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  char *text;
  size_t len;
  FILE *out = open_memstream(&text, &len);
  zoo_program_summary(out, p);
  fclose(out);
  snprintf(golden, sizeof golden, "tests/golden/%s.summary", model);
  zoo_test_golden(t, golden, text);
  free(text);
  out = open_memstream(&text, &len);
  zoo_graph_dump(out, &p->graph);
  fclose(out);
  snprintf(golden, sizeof golden, "tests/golden/%s.graph", model);
  zoo_test_golden(t, golden, text);
  free(text);
  zoo_program_free(p);
}

TEST(golden_rebased) { golden_model(t, "rebased"); }
TEST(golden_based) { golden_model(t, "based"); }
TEST(golden_conv_attention) { golden_model(t, "conv_attention"); }
TEST(golden_attention) { golden_model(t, "attention"); }
TEST(golden_rwkv) { golden_model(t, "rwkv"); }

/* ---- the language ---- */

/* A program around a module Body(d) whose forward maps f32[B, T, d] to itself. */
static zoo_program *compile_body(const char *body, char **errors) {
  char *text;
  size_t len;
  FILE *f = open_memstream(&text, &len);
  fprintf(f,
          "%s\n"
          "module Net(vocab_size, d) {\n"
          "  table = param([vocab_size, d])\n"
          "  body = Body(d)\n"
          "  forward(tokens: i32[B, T]) {\n"
          "    return linear(body(embedding(table, tokens)), table)\n"
          "  }\n"
          "}\n"
          "model m(vocab_size = 16, d = 8) = Net(vocab_size, d)\n",
          body);
  fclose(f);
  zoo_program *p = compile_text(text, errors);
  free(text);
  return p;
}

/* Arithmetic between tensors and numbers becomes the scalar ops. */
TEST(model_lang_tensor_arithmetic) {
  char *errors;
  zoo_program *p = compile_body(
      "module Body(d) {\n"
      "  forward(x: f32[B, T, d]) {\n"
      "    let a = x * 2 + 1\n"   /* muls, adds */
      "    let b = 1 - x\n"       /* neg, adds */
      "    let c = 2 / x\n"       /* pows -1, muls */
      "    let e = x ** 2 + x ** 3 - x / 4\n" /* square, pows, muls, add, sub */
      "    return -(a * b + c + e)\n"          /* mul, add, add, neg */
      "  }\n"
      "}\n",
      &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  const zoo_graph *g = &p->graph;
  int muls = count_op(g, ZOO_OP_MULS), adds = count_op(g, ZOO_OP_ADDS), neg = count_op(g, ZOO_OP_NEG),
      pows = count_op(g, ZOO_OP_POWS), sq = count_op(g, ZOO_OP_SQUARE), add = count_op(g, ZOO_OP_ADD),
      sub = count_op(g, ZOO_OP_SUB), mul = count_op(g, ZOO_OP_MUL);
  zoo_program_free(p);
  CHECKF(muls == 3 && adds == 2 && neg == 2 && pows == 2 && sq == 1 && add == 3 && sub == 1 && mul == 1,
         "muls %d adds %d neg %d pows %d square %d add %d sub %d mul %d", muls, adds, neg, pows, sq,
         add, sub, mul);
}

/* Lists of modules are named .0, .1; for loops unroll; conditional fields and
 * integer arithmetic are compile-time. */
TEST(model_lang_lists_and_loops) {
  char *errors;
  zoo_program *p = compile_body(
      "module Lin(d_in, d_out, bias = true) {\n"
      "  weight = param([d_out, d_in])\n"
      "  bias = param([d_out], init = zeros()) if bias\n"
      "  forward(x) { return linear(x, weight, bias) }\n"
      "}\n"
      "module Body(d) {\n"
      "  let sizes = [7 // 2, -7 // 2 + 5, 7 % 3, 2 ** 3, max(2, 3), len(range(1, 10, 3))]\n"
      "  blocks = [Lin(d, d), Lin(d, d, bias = false), Lin(d, d)]\n"
      "  odd = param(sizes)\n"
      "  forward(x: f32[B, T, d]) {\n"
      "    let h = x\n"
      "    for b in blocks {\n"
      "      let h = b(h)\n"
      "    }\n"
      "    for i in range(2) {\n"
      "      if i == 1 { let h = h * 2 } else { let h = h + 1 }\n"
      "    }\n"
      "    return h\n"
      "  }\n"
      "}\n",
      &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  const zoo_graph *g = &p->graph;
  int b0 = find_param(g, "body.blocks.0.bias"), b1 = find_param(g, "body.blocks.1.bias"),
      w2 = find_param(g, "body.blocks.2.weight"), odd = find_param(g, "body.odd");
  char buf[64] = "";
  if (odd >= 0) zoo_type_str(g, &g->tensors[odd].type, buf, sizeof buf);
  int linears = count_op(g, ZOO_OP_LINEAR);
  int muls = count_op(g, ZOO_OP_MULS), adds = count_op(g, ZOO_OP_ADDS);
  zoo_program_free(p);
  CHECK(b0 >= 0 && b1 < 0 && w2 >= 0);
  CHECKF(strcmp(buf, "f32[3, 1, 1, 8, 3, 3]") == 0, "odd is %s", buf);
  CHECK(linears == 4 && muls == 1 && adds == 1);
}

/* A module instance stored in two fields owns its parameters once: the second
 * path is an alias. Names follow where an instance is stored, not where it was
 * made. */
TEST(model_lang_sharing) {
  char *errors;
  zoo_program *p = compile_body(
      "module Lin(d) {\n"
      "  weight = param([d, d])\n"
      "  forward(x) { return linear(x, weight) }\n"
      "}\n"
      "module Wrap(inner) {\n"
      "  inner = inner\n"
      "  forward(x) { return inner(x) }\n"
      "}\n"
      "module Body(d) {\n"
      "  let shared = Lin(d)\n"
      "  first = Wrap(shared)\n"
      "  second = shared\n"
      "  forward(x: f32[B, T, d]) -> f32[B, T, d] { return second(first(x)) }\n"
      "}\n",
      &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  const zoo_graph *g = &p->graph;
  int w = find_param(g, "body.first.inner.weight");
  int alias = p->naliases == 1 && strcmp(p->aliases[0].name, "body.second.weight") == 0 &&
              p->aliases[0].tensor == w;
  int nparams = g->nparams;
  zoo_program_free(p);
  CHECK(w >= 0);
  CHECK(alias);
  CHECK(nparams == 2);
}

/* Sizes bound by a forward's types are symbolic values: reshape(x, [B * T, d]). */
TEST(model_lang_symbolic_sizes) {
  char *errors;
  zoo_program *p = compile_body(
      "module Body(d) {\n"
      "  forward(x: f32[B, T, d]) -> f32[B, T, d] {\n"
      "    let flat = reshape(x, [B * T, d])\n"
      "    let back = reshape(flat, [B, -1, d])\n"
      "    let shape = x.shape\n"
      "    return slice(back, 1, 0, shape[1])\n"
      "  }\n"
      "}\n",
      &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  int reshapes = count_op(&p->graph, ZOO_OP_RESHAPE);
  char buf[64];
  const zoo_graph *g = &p->graph;
  int first = -1;
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == ZOO_OP_RESHAPE && first < 0) first = g->nodes[i].out[0];
  zoo_type_str(g, &g->tensors[first].type, buf, sizeof buf);
  zoo_program_free(p);
  CHECK(reshapes == 2);
  CHECKF(strcmp(buf, "f32[B*T, 8]") == 0, "flat is %s", buf);
}

/* ---- fuzzing the whole compiler ---- */

static uint64_t fuzz_state;
static uint64_t fuzz_next(void) {
  fuzz_state ^= fuzz_state << 13;
  fuzz_state ^= fuzz_state >> 7;
  fuzz_state ^= fuzz_state << 17;
  return fuzz_state;
}

/* One small edit of text that usually keeps it parsing: a number or a name
 * replaced, an operator changed, a line deleted or repeated. */
static char *mutate(const char *text) {
  size_t n = strlen(text);
  static const char *const numbers[] = {"0", "1", "-1", "2.5", "100000", "3", "64", "1e-5"};
  static const char *const ops[] = {"+", "-", "*", "/", "//", "**", "%"};
  for (int tries = 0; tries < 20; tries++) {
    size_t at = fuzz_next() % n;
    int kind = (int)(fuzz_next() % 5);
    size_t start = at, end = at;
    const char *repl = NULL;
    char name[64];
    if (kind == 0 && text[at] >= '0' && text[at] <= '9') {
      while (start > 0 && (text[start - 1] == '.' || (text[start - 1] >= '0' && text[start - 1] <= '9'))) start--;
      while (end < n && (text[end] == '.' || text[end] == 'e' || text[end] == '-' || (text[end] >= '0' && text[end] <= '9'))) end++;
      repl = numbers[fuzz_next() % 8];
    } else if (kind == 1 && (text[at] == '_' || (text[at] >= 'a' && text[at] <= 'z'))) {
      while (start > 0 && (text[start - 1] == '_' || (text[start - 1] >= 'a' && text[start - 1] <= 'z'))) start--;
      while (end < n && (text[end] == '_' || (text[end] >= 'a' && text[end] <= 'z'))) end++;
      /* another name of the file */
      size_t o = fuzz_next() % n, os, oe;
      while (o < n && !(text[o] >= 'a' && text[o] <= 'z')) o++;
      os = o;
      while (o < n && (text[o] == '_' || (text[o] >= 'a' && text[o] <= 'z'))) o++;
      oe = o;
      if (oe == os || oe - os >= sizeof name) continue;
      snprintf(name, sizeof name, "%.*s", (int)(oe - os), text + os);
      repl = name;
    } else if (kind == 2 && strchr("+-*/", text[at])) {
      end = at + 1;
      repl = ops[fuzz_next() % 7];
    } else if (kind == 3 || kind == 4) {
      while (start > 0 && text[start - 1] != '\n') start--;
      end = at;
      while (end < n && text[end] != '\n') end++;
      if (end < n) end++;
      if (kind == 4) { /* repeat the line */
        char *out = malloc(n + (end - start) + 1);
        memcpy(out, text, end);
        memcpy(out + end, text + start, end - start);
        memcpy(out + end + (end - start), text + end, n - end + 1);
        return out;
      }
      repl = "";
    } else {
      continue;
    }
    size_t rl = strlen(repl);
    char *out = malloc(n - (end - start) + rl + 1);
    memcpy(out, text, start);
    memcpy(out + start, repl, rl);
    memcpy(out + start + rl, text + end, n - end + 1);
    return out;
  }
  return strdup(text);
}

static int write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  fputs(text, f);
  return fclose(f);
}

/* Mutated models and standard library: zoo_compile always returns, reports an
 * error exactly when it fails, and a success has logits. */
TEST(fuzz_compile_mutations) {
  static const char *const files[] = {"rebased.zoo", "std/nn.zoo", "std/mixers.zoo", "std/lm.zoo"};
  char *orig[4];
  for (int i = 0; i < 4; i++) {
    char path[128];
    snprintf(path, sizeof path, "models/%s", files[i]);
    orig[i] = zoo_test_read(path, NULL);
    CHECKF(orig[i], "cannot read %s", path);
  }
  /* tmpfs when there is one: writing files on some disks costs milliseconds each */
  char dir[64];
  snprintf(dir, sizeof dir, "%s/zoo_fuzz_XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  CHECK(mkdtemp(dir));
  char std[160], main_path[160];
  snprintf(std, sizeof std, "%s/std", dir);
  mkdir(std, 0700);
  snprintf(main_path, sizeof main_path, "%s/rebased.zoo", dir);
  /* ZOO_FUZZ_SCALE=k: k times as many mutants, from another seed */
  const char *scale_env = getenv("ZOO_FUZZ_SCALE");
  int scale = scale_env && atoi(scale_env) > 0 ? atoi(scale_env) : 1;
  int iters = 300 * scale;
  fuzz_state = 0x9E3779B97F4A7C15ull + (uint64_t)(scale - 1);
  int compiled = 0, failed_ok = 1, bad_success = 0;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int last = -1;
  for (int iter = 0; iter < iters; iter++) {
    /* Only the file mutated now and the one mutated last time need writing. */
    int which = (int)(fuzz_next() % 4);
    for (int i = 0; i < 4; i++) {
      if (iter > 0 && i != which && i != last) continue;
      char path[200];
      snprintf(path, sizeof path, "%s/%s", dir, files[i]);
      char *text = strdup(orig[i]);
      int edits = i == which ? 1 + (int)(fuzz_next() % 3) : 0;
      for (int e = 0; e < edits; e++) {
        char *next = mutate(text);
        free(text);
        text = next;
      }
      write_file(path, text);
      free(text);
    }
    last = which;
    zoo_compile_opts o = {.path = main_path, .std_dir = dir};
    char *errors;
    size_t len;
    FILE *out = open_memstream(&errors, &len);
    zoo_diag d;
    zoo_diag_init(&d, out);
    zoo_program *p = NULL;
    int rc = zoo_compile(&o, &d, &p);
    fclose(out);
    if (rc == 0) {
      compiled++;
      if (d.nerrors || !p || p->graph.output < 0) bad_success = 1;
    } else if (d.nerrors == 0 || p) {
      failed_ok = 0;
    }
    zoo_program_free(p);
    free(errors);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  for (int i = 0; i < 4; i++) {
    char path[200];
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    unlink(path);
    free(orig[i]);
  }
  rmdir(std);
  rmdir(dir);
  double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  CHECK(failed_ok);
  CHECK(!bad_success);
  CHECKF(compiled > iters / 30 && compiled < iters, "%d of %d mutants compiled", compiled, iters);
  CHECKF(s < 20.0 * scale, "took %.1f s", s);
}

/* The std modules the shipped models do not use: an MLP as the state mixer,
 * RMSNorm, Based with its own head count. */
TEST(model_std_library) {
  char *errors;
  zoo_program *p = compile_text(
      "import \"std/nn.zoo\"\n"
      "import \"std/mixers.zoo\"\n"
      "import \"std/lm.zoo\"\n"
      "module Normed(d) {\n"
      "  norm = RMSNorm(d)\n"
      "  mlp = MLP(d, hidden = 2 * d)\n"
      "  forward(x: f32[B, T, d]) -> f32[B, T, d] { return mlp(norm(x)) }\n"
      "}\n"
      "model m(vocab_size = 32, d_model = 24, seq_len = 16) =\n"
      "  LanguageModel(vocab_size, d_model, max_positions = seq_len, layers = [\n"
      "    TransformerBlock(d_model, Based(d_model, num_heads = 4), state_mixer = Normed(d_model)),\n"
      "  ])\n",
      &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  const zoo_graph *g = &p->graph;
  int fc2 = find_param(g, "backbone.layers.0.state_mixer.mlp.fc2.weight");
  int rms = find_param(g, "backbone.layers.0.state_mixer.norm.weight");
  int v = find_param(g, "backbone.layers.0.sequence_mixer.proj_v.weight");
  int ok = fc2 >= 0 && g->tensors[fc2].init.kind == ZOO_INIT_NORMAL &&
           fabs(g->tensors[fc2].init.a - 0.01) < 1e-12 && rms >= 0 && v >= 0 &&
           g->tensors[v].type.dim[0].coef == 24 && count_op(g, ZOO_OP_GELU) == 1 &&
           count_op(g, ZOO_OP_RMSNORM) == 1;
  zoo_program_free(p);
  CHECK(ok);
}

/* RWKV's names, shapes and per-channel inits (src/mixers/rwkv.py, n_layer 2):
 * time_decay[c] = -5 + 8 (c / (C-1))^(0.7 + 1.3 l), time_first[c] = log 0.3 +
 * 0.5 ((c+1) % 3 - 1), time_mix_k = (c / C)^(1 - l/2), time_mix_v the same +
 * 0.3 l, time_mix_r = (c / C)^((1 - l/2) / 2), for layer l = 0, 1. */
TEST(model_rwkv_inits) {
  enum { C = 8 };
  const char *defs[] = {"d_model=8", "seq_len=16", "vocab_size=32"};
  char *errors;
  zoo_program *p = compile_with("models/rwkv.zoo", defs, 3, &errors);
  CHECKF(p, "%s", errors);
  free(errors);
  if (!p) return;
  const zoo_graph *g = &p->graph;
  float **params = calloc((size_t)g->nparams, sizeof *params);
  for (int i = 0; i < g->nparams; i++)
    params[i] = calloc((size_t)zoo_type_numel(&g->tensors[g->params[i]].type, NULL), sizeof(float));
  zoo_train_init_params(g, 1, params);
  const char *fields[5] = {"time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r"};
  int found = 0;
  for (int l = 0; l < 2; l++)
    for (int f = 0; f < 5; f++) {
      char name[96];
      snprintf(name, sizeof name, "backbone.layers.%d.sequence_mixer.%s", l, fields[f]);
      int i = 0;
      while (i < g->nparams && strcmp(g->tensors[g->params[i]].name, name) != 0) i++;
      CHECKF(i < g->nparams, "no parameter %s", name);
      if (i == g->nparams) continue;
      const zoo_type *ty = &g->tensors[g->params[i]].type;
      CHECKF(ty->ndim == (f < 2 ? 1 : 3) && zoo_dim_eq(ty->dim[ty->ndim - 1], zoo_dim_const(C)) &&
                 1,
             "%s has the wrong shape", name);
      found++;
      for (int c = 0; c < C; c++) {
        double r1 = 1 - l / 2.0, want;
        if (f == 0) want = -5 + 8 * pow(c / (C - 1.0), 0.7 + 1.3 * l);
        else if (f == 1) want = log(0.3) + 0.5 * ((c + 1) % 3 - 1);
        else if (f == 2) want = pow(c / (double)C, r1);
        else if (f == 3) want = pow(c / (double)C, r1) + 0.3 * l;
        else want = pow(c / (double)C, 0.5 * r1);
        CHECKF(fabs(params[i][c] - want) < 1e-6, "%s[%d] = %.9g, want %.9g", name, c,
               params[i][c], want);
      }
    }
  CHECK(found == 10);
  for (int i = 0; i < g->nparams; i++) free(params[i]);
  free(params);
  zoo_program_free(p);
}
