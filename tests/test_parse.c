/* test_parse.c: the scanner, the grammar, the AST and syntax error messages. */
#include <glob.h>
#include <stdlib.h>
#include <string.h>

#include "ast.h"
#include "diag.h"
#include "test.h"

/* One parse of a text: the tree (NULL after errors) and the messages. */
typedef struct parsed {
  zoo_arena arena;
  zoo_source src;
  zoo_ast *file;
  char *errors; /* everything the diag printed */
  size_t errors_len;
  int nerrors;
} parsed;

static void parse_bytes(parsed *r, const char *path, const char *text, size_t len) {
  memset(r, 0, sizeof *r);
  zoo_arena_init(&r->arena);
  r->src.path = (char *)path;
  r->src.text = malloc(len + 1);
  memcpy(r->src.text, text, len);
  r->src.text[len] = 0;
  r->src.len = len;
  FILE *out = open_memstream(&r->errors, &r->errors_len);
  zoo_diag d;
  zoo_diag_init(&d, out);
  r->file = zoo_parse(&r->arena, &r->src, &d);
  r->nerrors = d.nerrors;
  fclose(out);
}

static void parse_text(parsed *r, const char *text) { parse_bytes(r, "t.zoo", text, strlen(text)); }

static void parsed_free(parsed *r) {
  zoo_arena_free(&r->arena);
  free(r->src.text);
  free(r->errors);
}

/* An expression as an s-expression: (+ a (* b c)), for precedence checks. */
static void sexpr(FILE *out, const zoo_ast *n) {
  switch (n->kind) {
  case ZOO_AST_INT: fprintf(out, "%lld", (long long)n->ival); break;
  case ZOO_AST_FLOAT: fprintf(out, "%g", n->fval); break;
  case ZOO_AST_STRING: fprintf(out, "\"%s\"", n->str); break;
  case ZOO_AST_BOOL: fputs(n->ival ? "true" : "false", out); break;
  case ZOO_AST_NONE: fputs("none", out); break;
  case ZOO_AST_NAME: fputs(n->str, out); break;
  case ZOO_AST_UNARY:
  case ZOO_AST_BINARY:
    fprintf(out, "(%s ", zoo_binop_spelling(n->op));
    sexpr(out, n->a);
    if (n->b) fputc(' ', out), sexpr(out, n->b);
    fputc(')', out);
    break;
  case ZOO_AST_COND:
    fputs("(if ", out), sexpr(out, n->b), fputc(' ', out), sexpr(out, n->a);
    fputc(' ', out), sexpr(out, n->c), fputc(')', out);
    break;
  case ZOO_AST_LIST:
  case ZOO_AST_CALL:
    fputs(n->kind == ZOO_AST_LIST ? "[" : "(call ", out);
    if (n->a) sexpr(out, n->a);
    for (int i = 0; i < n->nitems; i++) {
      if (n->a || i) fputc(' ', out);
      sexpr(out, n->items[i]);
    }
    fputs(n->kind == ZOO_AST_LIST ? "]" : ")", out);
    break;
  case ZOO_AST_KWARG: fprintf(out, "%s=", n->str), sexpr(out, n->a); break;
  case ZOO_AST_INDEX: fputs("(at ", out), sexpr(out, n->a), fputc(' ', out), sexpr(out, n->b), fputc(')', out); break;
  case ZOO_AST_FIELD: fputs("(. ", out), sexpr(out, n->a), fprintf(out, " %s)", n->str); break;
  default: fputs("?", out);
  }
}

/* Parses `model m() = <text>` and returns its value as an s-expression (or the
 * first error line), in a static buffer. */
static const char *expr_of(const char *text) {
  static char result[512];
  char src[512];
  snprintf(src, sizeof src, "model m() = %s", text);
  parsed r;
  parse_text(&r, src);
  if (r.file) {
    FILE *f = fmemopen(result, sizeof result, "w");
    sexpr(f, r.file->items[0]->a);
    fputc(0, f);
    fclose(f);
  } else {
    snprintf(result, sizeof result, "%.*s", (int)strcspn(r.errors, "\n"), r.errors);
  }
  parsed_free(&r);
  return result;
}

#define CHECK_EXPR(text, want)                                                        \
  do {                                                                                \
    const char *got_ = expr_of(text);                                                 \
    CHECKF(strcmp(got_, want) == 0, "%s: got %s, want %s", text, got_, want);         \
  } while (0)

TEST(parse_precedence) {
  CHECK_EXPR("a + b * c", "(+ a (* b c))");
  CHECK_EXPR("a - b - c", "(- (- a b) c)");
  CHECK_EXPR("a // b % c / d", "(/ (% (// a b) c) d)");
  CHECK_EXPR("-2 ** 2", "(- (** 2 2))");
  CHECK_EXPR("2 ** -1", "(** 2 (- 1))");
  CHECK_EXPR("2 ** 3 ** 2", "(** 2 (** 3 2))");
  CHECK_EXPR("- - x", "(- (- x))");
  CHECK_EXPR("a or b and c", "(or a (and b c))");
  CHECK_EXPR("not a == b", "(not (== a b))");
  CHECK_EXPR("not a and not b", "(and (not a) (not b))");
  CHECK_EXPR("a + 1 <= b * 2", "(<= (+ a 1) (* b 2))");
  CHECK_EXPR("a != none", "(!= a none)");
  CHECK_EXPR("a if c else b", "(if c a b)");
  CHECK_EXPR("a if c else b if d else e", "(if c a (if d b e))");
  CHECK_EXPR("(a if c else b) + 1", "(+ (if c a b) 1)");
  CHECK_EXPR("x if a or b else y", "(if (or a b) x y)");
  CHECK_EXPR("f(a)(b)[0].w", "(. (at (call (call f a) b) 0) w)");
  CHECK_EXPR("-x.y ** 2", "(- (** (. x y) 2))");
  CHECK_EXPR("f(a, k = 1, j = b + 1,)", "(call f a k=1 j=(+ b 1))");
  CHECK_EXPR("f()", "(call f)");
  CHECK_EXPR("[1, [2, 3],]", "[1 [2 3]]");
  CHECK_EXPR("[]", "[]");
  CHECK_EXPR("((x))", "x");
  CHECK_EXPR("f(a if c else b)", "(call f (if c a b))");
  CHECK_EXPR("true and false or none", "(or (and true false) none)");
}

TEST(parse_comparisons_do_not_chain) {
  const char *got = expr_of("a < b < c");
  CHECKF(strstr(got, "t.zoo:1:19: error: comparisons do not chain") != NULL, "%s", got);
}

TEST(lex_numbers) {
  CHECK_EXPR("100_000", "100000");
  CHECK_EXPR("9223372036854775807", "9223372036854775807");
  CHECK_EXPR("0", "0");
  CHECK_EXPR("007", "7");
  CHECK_EXPR("1e-12", "1e-12");
  CHECK_EXPR("3e-3", "0.003");
  CHECK_EXPR("0.5", "0.5");
  CHECK_EXPR(".5", "0.5");
  CHECK_EXPR("2.", "2");
  CHECK_EXPR("1.5E+3", "1500");
  CHECK_EXPR("1_000.000_1", "1000");
  parsed r;
  parse_text(&r, "model m() = [1.0, 2, 2.5e0]");
  CHECK(r.file);
  zoo_ast *l = r.file->items[0]->a;
  CHECK(l->nitems == 3);
  CHECK(l->items[0]->kind == ZOO_AST_FLOAT && l->items[0]->fval == 1.0);
  CHECK(l->items[1]->kind == ZOO_AST_INT && l->items[1]->ival == 2);
  CHECK(l->items[2]->kind == ZOO_AST_FLOAT && l->items[2]->fval == 2.5);
  parsed_free(&r);
}

TEST(lex_bad_numbers) {
  static const struct {
    const char *text, *error;
  } cases[] = {
      {"1e", "malformed number '1e': the exponent has no digits"},
      {"2.5e+", "malformed number '2.5e+': the exponent has no digits"},
      {"0x1F", "malformed number '0x1F': only decimal numbers are supported"},
      {"1__0", "malformed number '1__0': '_' must stand between two digits"},
      {"10_", "malformed number '10_': '_' must stand between two digits"},
      {"1.2.3", "malformed number '1.2.3': more than one '.'"},
      {"3abc", "malformed number '3abc': letters after a number"},
      {"9223372036854775808", "integer 9223372036854775808 is too large"},
      {"1e999", "number 1e999 is too large for a float"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const char *got = expr_of(cases[i].text);
    CHECKF(strstr(got, "t.zoo:1:13: error: ") && strstr(got, cases[i].error), "%s: got %s",
           cases[i].text, got);
  }
}

TEST(lex_strings) {
  parsed r;
  parse_text(&r, "import \"a\\\"b\\\\c\\nd\\te\"\nimport \"\"\nimport \"#not a comment\"");
  CHECK(r.file && r.file->nitems == 3);
  CHECK(strcmp(r.file->items[0]->str, "a\"b\\c\nd\te") == 0);
  CHECK(strcmp(r.file->items[1]->str, "") == 0);
  CHECK(strcmp(r.file->items[2]->str, "#not a comment") == 0);
  parsed_free(&r);

  parse_text(&r, "import \"a\\qb\"");
  CHECK(!r.file && r.nerrors == 1);
  CHECKF(strstr(r.errors, "t.zoo:1:10: error: unknown escape '\\q' in a string"), "%s", r.errors);
  parsed_free(&r);
}

TEST(lex_comments_and_blanks) {
  parsed r;
  parse_text(&r, "# only a comment");
  CHECK(r.file && r.file->nitems == 0);
  parsed_free(&r);
  parse_text(&r, "");
  CHECK(r.file && r.file->nitems == 0);
  parsed_free(&r);
  parse_text(&r, "\r\n\t\f\v model m() = 1 ; ;; # end\r\n");
  CHECK(r.file && r.file->nitems == 1);
  parsed_free(&r);
}

TEST(lex_nul_byte) {
  parsed r;
  const char text[] = "model m() = 1\0 + 2\n# a \0 in a comment\nimport \"a\0b\"";
  parse_bytes(&r, "t.zoo", text, sizeof text - 1);
  CHECK(!r.file && r.nerrors == 3);
  CHECKF(strstr(r.errors, "t.zoo:1:14: error: NUL byte in input"), "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:2:5: error: NUL byte in input"), "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:3:10: error: NUL byte in input"), "%s", r.errors);
  parsed_free(&r);
}

TEST(lex_invalid_characters) {
  parsed r;
  parse_text(&r, "model m() = a $ b\nmodel n() = \x01\nmodel o() = \xce\xbb\nmodel p() = \xff");
  CHECK(!r.file && r.nerrors == 4);
  CHECKF(strstr(r.errors, "t.zoo:1:15: error: invalid character '$'"), "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:2:13: error: invalid character '\\x01'"), "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:3:13: error: invalid character '\xce\xbb'"), "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:4:13: error: invalid character '\\xff'"), "%s", r.errors);
  parsed_free(&r);
}

/* The statement after a let may be an if: the grammar reads on past the
 * condition to tell `let x = a if c else b` from `let x = a` + `if c { }`. */
TEST(parse_if_after_expression) {
  parsed r;
  parse_text(&r,
             "module M() {\n"
             "  w = a if c\n"                   /* member with a condition */
             "  v = a if c else b\n"            /* conditional value */
             "  u = a if c else b if d\n"       /* both */
             "  forward() {\n"
             "    let x = a\n"
             "    if c { return 1 } else if d { return 2 } else { return 3 }\n"
             "    let y = a if c else b\n"
             "    return y if c else x\n"
             "  }\n"
             "}\n");
  CHECKF(r.file, "%s", r.errors);
  zoo_ast *m = r.file->items[0];
  CHECK(m->kind == ZOO_AST_MODULE && m->nitems == 4);
  zoo_ast *w = m->items[0], *v = m->items[1], *u = m->items[2];
  CHECK(w->kind == ZOO_AST_MEMBER && w->a->kind == ZOO_AST_NAME && w->b && strcmp(w->b->str, "c") == 0);
  CHECK(v->kind == ZOO_AST_MEMBER && v->a->kind == ZOO_AST_COND && !v->b);
  CHECK(u->a->kind == ZOO_AST_COND && u->b && strcmp(u->b->str, "d") == 0);
  zoo_ast *body = m->items[3]->b;
  CHECK(body->kind == ZOO_AST_BLOCK && body->nitems == 4);
  CHECK(body->items[0]->kind == ZOO_AST_LET && body->items[0]->a->kind == ZOO_AST_NAME);
  zoo_ast *iff = body->items[1];
  CHECK(iff->kind == ZOO_AST_IF && iff->nitems == 1 && iff->b && iff->b->kind == ZOO_AST_BLOCK);
  CHECK(iff->b->nitems == 1 && iff->b->items[0]->kind == ZOO_AST_IF);
  CHECK(iff->b->items[0]->b && iff->b->items[0]->b->nitems == 1);
  CHECK(iff->span.line == 7 && iff->span.col == 5 && iff->span.end_col == 63);
  CHECK(body->items[2]->kind == ZOO_AST_LET && body->items[2]->a->kind == ZOO_AST_COND);
  CHECK(body->items[3]->kind == ZOO_AST_RETURN && body->items[3]->a->kind == ZOO_AST_COND);
  parsed_free(&r);
}

TEST(parse_declarations) {
  parsed r;
  parse_text(&r,
             "module M(a, b: i32[B, T,], c = 3, d: f32[N] = none,) {\n"
             "  let k = a * 2;\n"
             "  forward(x: f32[B, T, k], y = 1) -> f32[B, T, k] {\n"
             "    for i in [1, 2] { let x = x + i }\n"
             "    return x\n"
             "  }\n"
             "}\n"
             "model big(n = 2) = M(n)\n");
  CHECKF(r.file, "%s", r.errors);
  zoo_ast *m = r.file->items[0];
  CHECK(m->nparams == 4);
  CHECK(strcmp(m->params[1]->str, "b") == 0 && m->params[1]->a->kind == ZOO_AST_TYPE);
  CHECK(strcmp(m->params[1]->a->str, "i32") == 0 && m->params[1]->a->nitems == 2);
  CHECK(m->params[2]->b->ival == 3 && !m->params[2]->a);
  CHECK(m->params[3]->a && m->params[3]->b->kind == ZOO_AST_NONE);
  CHECK(m->items[0]->kind == ZOO_AST_MLET && strcmp(m->items[0]->str, "k") == 0);
  zoo_ast *fw = m->items[1];
  CHECK(fw->kind == ZOO_AST_FORWARD && fw->nparams == 2 && fw->a && fw->a->nitems == 3);
  zoo_ast *loop = fw->b->items[0];
  CHECK(loop->kind == ZOO_AST_FOR && strcmp(loop->str, "i") == 0 && loop->a->kind == ZOO_AST_LIST);
  CHECK(loop->nitems == 1 && loop->items[0]->kind == ZOO_AST_LET);
  zoo_ast *model = r.file->items[1];
  CHECK(model->kind == ZOO_AST_MODEL && model->nparams == 1 && model->a->kind == ZOO_AST_CALL);
  CHECK(model->span.line == 8 && model->span.col == 1 && model->span.end_col == 24);
  parsed_free(&r);
}

TEST(parse_keyword_arguments_come_last) {
  parsed r;
  parse_text(&r, "model m() = f(a = 1, b)");
  CHECK(!r.file && r.nerrors == 1);
  CHECKF(strstr(r.errors, "t.zoo:1:22: error: positional argument after a keyword argument"), "%s",
         r.errors);
  parsed_free(&r);
}

/* Every node's span lies inside its parent's, and starts before it ends. */
static int spans_nest(const zoo_ast *n, zoo_span outer) {
  if (!n) return 1;
  zoo_span s = n->span;
  if (s.line < 1 || s.col < 1) return 0;
  if (s.end_line < s.line || (s.end_line == s.line && s.end_col < s.col)) return 0;
  if (s.line < outer.line || (s.line == outer.line && s.col < outer.col)) return 0;
  if (s.end_line > outer.end_line || (s.end_line == outer.end_line && s.end_col > outer.end_col))
    return 0;
  for (int i = 0; i < n->nitems; i++)
    if (!spans_nest(n->items[i], s)) return 0;
  for (int i = 0; i < n->nparams; i++)
    if (!spans_nest(n->params[i], s)) return 0;
  return spans_nest(n->a, s) && spans_nest(n->b, s) && spans_nest(n->c, s);
}

const char zoo_test_sketch[] = /* shared with test_fuzz.c */
    "# models/rebased.zoo: BaseConv in layer 0, ReBased attention in layer 1.\n"
    "import \"std/nn.zoo\"\n"
    "import \"std/lm.zoo\"\n"
    "\n"
    "module ReBased(d_model, num_heads = 12, feature_dim = 16, eps = 1e-12) {\n"
    "  let head_dim = d_model / num_heads          # integer division, as in the reference\n"
    "  proj_q = Linear(d_model, feature_dim * num_heads, bias = false)\n"
    "  proj_k = Linear(d_model, feature_dim * num_heads, bias = false)\n"
    "  proj_v = Linear(d_model, num_heads * head_dim, bias = false)\n"
    "  proj_o = Linear(num_heads * head_dim, d_model, bias = false)\n"
    "  ln_q = LayerNorm(feature_dim * num_heads)   # over all heads together\n"
    "  ln_k = LayerNorm(feature_dim * num_heads)\n"
    "\n"
    "  forward(x: f32[B, T, d_model]) {\n"
    "    let q = split_heads(ln_q(proj_q(x)), num_heads)\n"
    "    let k = split_heads(ln_k(proj_k(x)), num_heads)\n"
    "    let v = split_heads(proj_v(x), num_heads)\n"
    "    let o = poly_attention(q, k, v, c2 = 1, scale = feature_dim ** -0.5, eps = eps)\n"
    "    return proj_o(merge_heads(o))\n"
    "  }\n"
    "}\n"
    "\n"
    "model rebased(vocab_size = 8192, d_model = 64, seq_len = 128, num_heads = 12) =\n"
    "  LanguageModel(vocab_size, d_model, max_positions = seq_len, layers = [\n"
    "    TransformerBlock(d_model, Hybrid(BaseConv(d_model, kernel_size = 3))),\n"
    "    TransformerBlock(d_model, Hybrid(ReBased(d_model, num_heads))),\n"
    "  ])\n";

/* The design's sketch of models/rebased.zoo, dumped and compared with its golden tree. */
TEST(parse_sketch) {
  parsed r;
  parse_bytes(&r, "sketch.zoo", zoo_test_sketch, sizeof zoo_test_sketch - 1);
  CHECKF(r.file && r.nerrors == 0, "%s", r.errors);
  CHECK(spans_nest(r.file, r.file->span));
  char *dump;
  size_t len;
  FILE *out = open_memstream(&dump, &len);
  zoo_ast_dump(out, r.file);
  fclose(out);
  zoo_test_golden(t, "tests/golden/parse_sketch.ast", dump);
  free(dump);
  parsed_free(&r);
}

/* Whatever .zoo files the repository ships parse without errors. */
TEST(parse_shipped_models) {
  glob_t g;
  int n = 0;
  if (glob("models/*.zoo", 0, NULL, &g) == 0) {
    glob("models/std/*.zoo", GLOB_APPEND, NULL, &g);
    for (size_t i = 0; i < g.gl_pathc; i++) {
      size_t len;
      char *text = zoo_test_read(g.gl_pathv[i], &len);
      CHECK(text);
      parsed r;
      parse_bytes(&r, g.gl_pathv[i], text, len);
      free(text);
      int ok = r.file && spans_nest(r.file, r.file->span);
      if (!ok) fprintf(stderr, "%s", r.errors);
      parsed_free(&r);
      CHECKF(ok, "%s", g.gl_pathv[i]);
      n++;
    }
    globfree(&g);
  }
  if (n == 0) fprintf(stderr, "  parse_shipped_models: no models/*.zoo here (run from the repository root)\n");
}

/* Each tests/bad/syntax_*.zoo against the exact messages in tests/golden/syntax_*.err. */
TEST(error_syntax_golden) {
  glob_t g;
  CHECKF(glob("tests/bad/syntax_*.zoo", 0, NULL, &g) == 0, "no tests/bad/syntax_*.zoo (run from the repository root)");
  CHECK(g.gl_pathc >= 10);
  for (size_t i = 0; i < g.gl_pathc; i++) {
    const char *path = g.gl_pathv[i];
    size_t len;
    char *text = zoo_test_read(path, &len);
    CHECK(text);
    parsed r;
    parse_bytes(&r, path, text, len);
    free(text);
    char golden[512];
    const char *base = strrchr(path, '/') + 1;
    snprintf(golden, sizeof golden, "tests/golden/%.*s.err", (int)(strlen(base) - 4), base);
    int ok = !r.file && r.nerrors > 0 && zoo_test_golden(t, golden, r.errors);
    parsed_free(&r);
    CHECKF(ok, "%s", path);
  }
  globfree(&g);
}

/* A file full of mistakes reports max_errors of them and stops. */
TEST(error_syntax_cap) {
  char text[4096] = "module M() {\n";
  for (int i = 0; i < 50; i++) strcat(text, "  a = (1 +)\n");
  strcat(text, "}\n");
  parsed r;
  parse_text(&r, text);
  CHECK(!r.file);
  int shown = 0;
  for (const char *s = r.errors; (s = strstr(s, ": error: ")); s++) shown++;
  CHECKF(shown == 20, "%d errors shown", shown);
  CHECKF(strstr(r.errors, "t.zoo:21:11: error: unexpected ')', expected an expression"), "%s", r.errors);
  CHECKF(!strstr(r.errors, "t.zoo:22:"), "%s", r.errors);
  CHECK(strstr(r.errors, "too many errors"));
  parsed_free(&r);
}

/* Recovery resumes at the next member or statement, so later errors are found. */
TEST(error_syntax_recovers_per_statement) {
  parsed r;
  parse_text(&r,
             "module M() {\n"
             "  a = f(1,, 2)\n"
             "  b = 3\n"
             "  forward(x) {\n"
             "    let y = x +* 2\n"
             "    let z = y\n"
             "    return ]\n"
             "  }\n"
             "}\n"
             "model m() = \n");
  CHECK(!r.file);
  CHECKF(r.nerrors == 4, "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:2:11: error: unexpected ','"), "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:5:16: error: unexpected '*'"), "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:7:12: error: unexpected ']'"), "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:10:12: error: unexpected end of file, expected an expression"), "%s",
         r.errors);
  parsed_free(&r);
}

/* A module left open: the declaration after it still parses at file level, so
 * its own mistakes are found, and nothing is reported twice. */
TEST(error_syntax_unclosed_module_resyncs) {
  parsed r;
  parse_text(&r,
             "module A(d) {\n"
             "  forward(x) {\n"
             "    for i in [1] {\n"
             "      let y = x\n"
             "model m() = A(1)\n"
             "module B() {\n"
             "  w = f(1,,)\n"
             "}\n");
  CHECK(!r.file);
  CHECKF(r.nerrors == 2, "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:5:1: error: unexpected 'model', expected an operator, a statement or '}'\n"),
         "%s", r.errors);
  CHECKF(strstr(r.errors, "t.zoo:1:8: note: unterminated module body? (module 'A' opened here)"), "%s",
         r.errors);
  CHECKF(strstr(r.errors, "t.zoo:7:11: error: unexpected ','"), "%s", r.errors);
  parsed_free(&r);
}
