/* ast.c: syntax tree nodes: constructors for the parser, and the tree dump
 * (zooc --dump=ast, and the parser's golden tests). */
#include "ast.h"

#include <stdlib.h>
#include <string.h>

#include "parse.h"

zoo_ast *zoo_ast_new(zoo_arena *a, zoo_ast_kind kind, zoo_span span) {
  zoo_ast *n = zoo_arena_alloc(a, sizeof *n);
  n->kind = kind;
  n->span = span;
  return n;
}

/* l op r, spanning both operands. */
zoo_ast *zoo_ast_binary(zoo_arena *a, int op, zoo_ast *l, zoo_ast *r) {
  zoo_ast *n = zoo_ast_new(a, ZOO_AST_BINARY, zoo_span_join(l->span, r->span));
  n->op = op;
  n->a = l;
  n->b = r;
  return n;
}

/* op x, spanning the operator and the operand. */
zoo_ast *zoo_ast_unary(zoo_arena *a, int op, zoo_span opspan, zoo_ast *x) {
  zoo_ast *n = zoo_ast_new(a, ZOO_AST_UNARY, zoo_span_join(opspan, x->span));
  n->op = op;
  n->a = x;
  return n;
}

zoo_ast_list *zoo_ast_list_new(zoo_arena *a) { return zoo_arena_alloc(a, sizeof(zoo_ast_list)); }

/* Appends n, doubling the array in the arena when full (the old array stays in the
 * arena: at most as much again as the final one). */
void zoo_ast_list_push(zoo_arena *a, zoo_ast_list *l, zoo_ast *n) {
  if (l->n == l->cap) {
    int cap = l->cap ? l->cap * 2 : 4;
    zoo_ast **items = zoo_arena_alloc(a, (size_t)cap * sizeof *items);
    if (l->n) memcpy(items, l->items, (size_t)l->n * sizeof *items);
    l->items = items;
    l->cap = cap;
  }
  l->items[l->n++] = n;
}

void zoo_ast_set_items(zoo_ast *n, const zoo_ast_list *l) {
  n->items = l ? l->items : NULL;
  n->nitems = l ? l->n : 0;
}

void zoo_ast_set_params(zoo_ast *n, const zoo_ast_list *l) {
  n->params = l ? l->items : NULL;
  n->nparams = l ? l->n : 0;
}

/* The spelling of a zoo_binop, or of a UNARY op ('-' and '!', which is `not`). */
const char *zoo_binop_spelling(int op) {
  switch (op) {
  case ZOO_BIN_ADD: return "+";
  case ZOO_BIN_SUB: return "-";
  case ZOO_BIN_MUL: return "*";
  case ZOO_BIN_DIV: return "/";
  case ZOO_BIN_IDIV: return "//";
  case ZOO_BIN_MOD: return "%";
  case ZOO_BIN_POW: return "**";
  case ZOO_BIN_EQ: return "==";
  case ZOO_BIN_NE: return "!=";
  case ZOO_BIN_LT: return "<";
  case ZOO_BIN_LE: return "<=";
  case ZOO_BIN_GT: return ">";
  case ZOO_BIN_GE: return ">=";
  case ZOO_BIN_AND: return "and";
  case ZOO_BIN_OR: return "or";
  case '-': return "-";
  case '!': return "not";
  }
  return "?";
}

static const char *kind_name(zoo_ast_kind k) {
  switch (k) {
  case ZOO_AST_INT: return "INT";
  case ZOO_AST_FLOAT: return "FLOAT";
  case ZOO_AST_STRING: return "STRING";
  case ZOO_AST_BOOL: return "BOOL";
  case ZOO_AST_NONE: return "NONE";
  case ZOO_AST_NAME: return "NAME";
  case ZOO_AST_LIST: return "LIST";
  case ZOO_AST_UNARY: return "UNARY";
  case ZOO_AST_BINARY: return "BINARY";
  case ZOO_AST_COND: return "COND";
  case ZOO_AST_CALL: return "CALL";
  case ZOO_AST_KWARG: return "KWARG";
  case ZOO_AST_INDEX: return "INDEX";
  case ZOO_AST_FIELD: return "FIELD";
  case ZOO_AST_TYPE: return "TYPE";
  case ZOO_AST_LET: return "LET";
  case ZOO_AST_RETURN: return "RETURN";
  case ZOO_AST_FOR: return "FOR";
  case ZOO_AST_IF: return "IF";
  case ZOO_AST_BLOCK: return "BLOCK";
  case ZOO_AST_PARAM: return "PARAM";
  case ZOO_AST_MEMBER: return "MEMBER";
  case ZOO_AST_MLET: return "MLET";
  case ZOO_AST_FORWARD: return "FORWARD";
  case ZOO_AST_MODULE: return "MODULE";
  case ZOO_AST_MODEL: return "MODEL";
  case ZOO_AST_IMPORT: return "IMPORT";
  case ZOO_AST_FILE: return "FILE";
  }
  return "?";
}

/* A string as a .zoo literal would spell it. */
static void dump_string(FILE *out, const char *s) {
  fputc('"', out);
  for (; s && *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(out, "\\%c", ch);
    else if (ch == '\n') fputs("\\n", out);
    else if (ch == '\t') fputs("\\t", out);
    else if (ch < 32 || ch == 127) fprintf(out, "\\x%02x", ch);
    else fputc(ch, out);
  }
  fputc('"', out);
}

/* The shortest %g form that reads back as the same double. */
static void dump_float(FILE *out, double v) {
  char buf[64];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (strtod(buf, NULL) == v) break;
  }
  /* keep it visibly a float: 2 -> 2.0 */
  if (!strpbrk(buf, ".eEin")) strcat(buf, ".0");
  fputs(buf, out);
}

static void dump(FILE *out, const zoo_ast *n, int depth, const char *label) {
  fprintf(out, "%*s", depth * 2, "");
  if (label) fprintf(out, "%s: ", label);
  if (!n) {
    fputs("(null)\n", out);
    return;
  }
  fputs(kind_name(n->kind), out);
  switch (n->kind) {
  case ZOO_AST_INT: fprintf(out, " %lld", (long long)n->ival); break;
  case ZOO_AST_FLOAT: fputc(' ', out), dump_float(out, n->fval); break;
  case ZOO_AST_BOOL: fputs(n->ival ? " true" : " false", out); break;
  case ZOO_AST_STRING:
  case ZOO_AST_IMPORT: fputc(' ', out), dump_string(out, n->str); break;
  case ZOO_AST_UNARY:
  case ZOO_AST_BINARY: fprintf(out, " %s", zoo_binop_spelling(n->op)); break;
  case ZOO_AST_FIELD: fprintf(out, " .%s", n->str); break;
  default:
    if (n->str) fprintf(out, " %s", n->str);
  }
  fprintf(out, " @%d:%d-%d:%d\n", n->span.line, n->span.col, n->span.end_line, n->span.end_col);

  /* labels for a, b, c where the kind alone does not say which is which */
  const char *la = NULL, *lb = NULL, *lc = NULL;
  switch (n->kind) {
  case ZOO_AST_COND: la = "then", lb = "if", lc = "else"; break;
  case ZOO_AST_CALL: la = "callee"; break;
  case ZOO_AST_FOR: la = "in"; break;
  case ZOO_AST_IF: la = "cond", lb = "else"; break;
  case ZOO_AST_PARAM: la = "type", lb = "default"; break;
  case ZOO_AST_MEMBER: lb = "if"; break;
  case ZOO_AST_FORWARD: la = "returns", lb = "body"; break;
  case ZOO_AST_MODEL: la = "value"; break;
  default: break;
  }
  for (int i = 0; i < n->nparams; i++) dump(out, n->params[i], depth + 1, NULL);
  if (n->a) dump(out, n->a, depth + 1, la);
  for (int i = 0; i < n->nitems; i++) dump(out, n->items[i], depth + 1, NULL);
  if (n->b) dump(out, n->b, depth + 1, lb);
  if (n->c) dump(out, n->c, depth + 1, lc);
}

void zoo_ast_dump(FILE *out, const zoo_ast *n) { dump(out, n, 0, NULL); }
