/* zoo.y: the grammar of .zoo files (a pure bison parser with locations).
 *
 *   file     = { "import" STRING | module | model | ";" } ;
 *   module   = "module" IDENT "(" [ params ] ")" "{" { member | ";" } "}" ;
 *   model    = "model" IDENT "(" [ params ] ")" "=" expr ;
 *   params   = param { "," param } [ "," ] ;
 *   param    = IDENT [ ":" type ] [ "=" expr ] ;
 *   type     = IDENT "[" expr { "," expr } [ "," ] "]" ;     f32[B, T, d_model]
 *   member   = "let" IDENT "=" expr
 *            | IDENT "=" expr [ "if" or ]                    (a field, present if ...)
 *            | "forward" "(" [ params ] ")" [ "->" type ] block ;
 *   block    = "{" { stmt | ";" } "}" ;
 *   stmt     = "let" IDENT "=" expr | "return" expr
 *            | "for" IDENT "in" expr block
 *            | "if" expr block [ "else" ( block | if ) ] ;
 *   expr     = or [ "if" or "else" expr ]                     a if c else b
 *   or       = and { "or" and } ;   and = not { "and" not } ;   not = "not" not | cmp ;
 *   cmp      = arith [ ("==" | "!=" | "<" | "<=" | ">" | ">=") arith ] ;  (no chains)
 *   arith    = term { ("+" | "-") term } ;
 *   term     = unary { ("*" | "/" | "//" | "%") unary } ;
 *   unary    = "-" unary | power ;   power = postfix [ "**" unary ] ;  (-2**2 is -4)
 *   postfix  = primary { "(" [ args ] ")" | "[" expr "]" | "." IDENT } ;
 *   args     = arg { "," arg } [ "," ] ;   arg = expr | IDENT "=" expr ;
 *   primary  = INT | FLOAT | STRING | "true" | "false" | "none" | IDENT
 *            | "[" [ expr { "," expr } [ "," ] ] "]" | "(" expr ")" ;
 *
 * Newlines mean nothing, so an `if` after an expression is ambiguous with one
 * token of lookahead: `let x = a if c else b` (a conditional) against
 * `let x = a` followed by the statement `if c { ... }`, and likewise a member's
 * condition `w = a if c` against `w = a if c else b`. The grammar always
 * shifts the `if` and decides on the token after the condition: `else` makes
 * a conditional, `{` a statement, anything else a member condition (the
 * `value_stmt` and `value_member` rules below). For statements, "always shift"
 * is the one precedence declaration, VALUE_END < 'if', on the rule that would
 * end the value before the `if`: shifting loses nothing, because value_stmt
 * parses the statement that follows too.
 *
 * The dangling else: a statement may not start with `else`, except in the
 * error rule that reports a stray one (and so keeps the block after it from
 * cascading into more errors). That rule makes `if c { } else { }` read two
 * ways; NO_ELSE < ELSE on the empty else_opt says the `else` belongs to the
 * `if`, which is the only reading that is not an error. These two precedence
 * pairs are the only conflict resolutions in the grammar; there is no %expect.
 *
 * Errors: the scanner reports lexical errors itself; syntax errors go through
 * yyreport_syntax_error, which names tokens the way a reader would ("unexpected
 * '}', expected an expression") and adds notes (the unclosed bracket, the
 * unterminated module). Error rules at file, member and statement level let
 * one run report several errors.
 */

%code requires {
#include "parse.h"

/* A value and what follows it: for a statement, an `if` statement that came
 * right after its expression; for a member, the member's condition. */
typedef struct zoo_valtail {
  zoo_ast *value, *tail;
} zoo_valtail;

/* Locations are zoo_spans; a rule's span runs from its first symbol's start to
 * its last symbol's end, and an empty rule sits where the previous symbol ended. */
#define YYLLOC_DEFAULT(Cur, Rhs, N)                                 \
  do {                                                              \
    if (N) {                                                        \
      (Cur) = YYRHSLOC(Rhs, 1);                                     \
      (Cur).end_line = YYRHSLOC(Rhs, N).end_line;                   \
      (Cur).end_col = YYRHSLOC(Rhs, N).end_col;                     \
    } else {                                                        \
      (Cur) = YYRHSLOC(Rhs, 0);                                     \
      (Cur).line = (Cur).end_line;                                  \
      (Cur).col = (Cur).end_col;                                    \
    }                                                               \
  } while (0)
}

%code provides {
int zoo_yylex(ZOO_YYSTYPE *lval, ZOO_YYLTYPE *lloc, void *scanner);
}

%code {
#include <stdio.h>
#include <string.h>

/* Deep enough for any real program (brackets are capped at ZOO_PARSE_MAX_DEPTH
 * by the scanner); a longer chain of prefix operators or else-ifs is an error,
 * which also bounds the depth of the tree later passes walk recursively. */
#define YYMAXDEPTH 2500

static void zoo_yyerror(ZOO_YYLTYPE *loc, void *scanner, zoo_parser *p, const char *msg);
static zoo_ast *leaf(zoo_parser *p, zoo_ast_kind kind, zoo_span at);
static zoo_ast *make_if(zoo_parser *p, zoo_span at, zoo_ast *cond, zoo_ast *then, zoo_ast *els);
static zoo_ast *make_cond(zoo_parser *p, zoo_ast *then, zoo_ast *cond, zoo_ast *els);
static void push_arg(zoo_parser *p, zoo_ast_list *args, zoo_ast *arg);
static void push_stmt(zoo_parser *p, zoo_ast_list *l, zoo_valtail s);
static void stray_else(zoo_parser *p, zoo_span at);
static void chained_comparison(zoo_parser *p, zoo_span at, zoo_ast *a, int op1, zoo_ast *b, int op2,
                               zoo_ast *c);
}

%define api.prefix {zoo_yy}
%define api.pure full
%define api.token.prefix {TOK_}
%define api.location.type {zoo_span}
%define parse.error custom
%define parse.lac full
%locations
%param {void *scanner}
%parse-param {zoo_parser *p}

%initial-action {
  @$ = (zoo_span){p->src, 1, 1, 1, 1};
}

%union {
  zoo_ast *node;
  zoo_ast_list *list;
  char *str;
  int64_t ival;
  double fval;
  int op;
  zoo_valtail vt;
}

%token END 0 "end of file"
%token <str> IDENT "identifier"
%token <str> STRING "string"
%token <ival> INT "integer"
%token <fval> FLOAT "float"
%token IMPORT "'import'" MODULE "'module'" MODEL "'model'" LET "'let'"
       FORWARD "'forward'" RETURN "'return'" FOR "'for'" IN "'in'" IF "'if'"
       ELSE "'else'" AND "'and'" OR "'or'" NOT "'not'" TRUE "'true'"
       FALSE "'false'" NONE "'none'"
%precedence VALUE_END /* see "always shifts the `if`" above */
%precedence IF
%precedence NO_ELSE /* see "The dangling else" above */
%precedence ELSE
%token EQ "'=='" NE "'!='" LE "'<='" GE "'>='" IDIV "'//'" POW "'**'" ARROW "'->'"

%type <list> items members stmts params_opt params exprs_opt exprs args_opt args
%type <node> item module model member param type_opt type default_opt ret_opt block
%type <node> if_stmt else_opt expr or_expr and_expr not_expr cmp_expr arith term
%type <node> unary power postfix primary arg
%type <vt> stmt value_stmt value_member
%type <op> cmp_op

%%

file:
    items {
      p->file = leaf(p, ZOO_AST_FILE, (zoo_span){p->src, 1, 1, p->line, p->col});
      zoo_ast_set_items(p->file, $1);
    }
  ;

items:
    %empty { $$ = zoo_ast_list_new(p->arena); }
  | items item { $$ = $1; zoo_ast_list_push(p->arena, $$, $2); }
  | items ';' { $$ = $1; }
  | items error { $$ = $1; p->module_name = NULL; }
  ;

item:
    IMPORT STRING { $$ = leaf(p, ZOO_AST_IMPORT, @$); $$->str = $2; }
  | module { $$ = $1; }
  | model { $$ = $1; }
  ;

/* module NAME(params) { members } */
module:
    MODULE IDENT '(' params_opt ')' '{' { p->module_name = $2; p->module_at = @2; } members '}' {
      $$ = leaf(p, ZOO_AST_MODULE, @$);
      $$->str = $2;
      zoo_ast_set_params($$, $4);
      zoo_ast_set_items($$, $8);
      p->module_name = NULL;
    }
  ;

/* model NAME(params) = expr */
model:
    MODEL IDENT '(' params_opt ')' '=' expr {
      $$ = leaf(p, ZOO_AST_MODEL, @$);
      $$->str = $2;
      zoo_ast_set_params($$, $4);
      $$->a = $7;
    }
  ;

params_opt:
    %empty { $$ = NULL; }
  | params { $$ = $1; }
  | params ',' { $$ = $1; }
  ;

params:
    param { $$ = zoo_ast_list_new(p->arena); zoo_ast_list_push(p->arena, $$, $1); }
  | params ',' param { $$ = $1; zoo_ast_list_push(p->arena, $$, $3); }
  ;

/* name [: type] [= default] */
param:
    IDENT type_opt default_opt {
      $$ = leaf(p, ZOO_AST_PARAM, @$);
      $$->str = $1;
      $$->a = $2;
      $$->b = $3;
    }
  ;

type_opt:
    %empty { $$ = NULL; }
  | ':' type { $$ = $2; }
  ;

default_opt:
    %empty { $$ = NULL; }
  | '=' expr { $$ = $2; }
  ;

/* f32[B, T, d_model] */
type:
    IDENT '[' exprs ']' { $$ = leaf(p, ZOO_AST_TYPE, @$); $$->str = $1; zoo_ast_set_items($$, $3); }
  | IDENT '[' exprs ',' ']' { $$ = leaf(p, ZOO_AST_TYPE, @$); $$->str = $1; zoo_ast_set_items($$, $3); }
  ;

members:
    %empty { $$ = zoo_ast_list_new(p->arena); }
  | members member { $$ = $1; zoo_ast_list_push(p->arena, $$, $2); }
  | members ';' { $$ = $1; }
  | members error { $$ = $1; }
  ;

member:
    LET IDENT '=' expr { $$ = leaf(p, ZOO_AST_MLET, @$); $$->str = $2; $$->a = $4; }
  | IDENT '=' value_member {
      $$ = leaf(p, ZOO_AST_MEMBER, @$);
      $$->str = $1;
      $$->a = $3.value;
      $$->b = $3.tail;
    }
  | FORWARD '(' params_opt ')' ret_opt block {
      $$ = leaf(p, ZOO_AST_FORWARD, @$);
      zoo_ast_set_params($$, $3);
      $$->a = $5;
      $$->b = $6;
    }
  ;

/* A field's value and its condition: `a`, `a if c`, `a if c else b`,
 * `a if c else b if d` (the last `if` without an `else` is the condition). */
value_member:
    or_expr { $$ = (zoo_valtail){$1, NULL}; }
  | or_expr IF or_expr { $$ = (zoo_valtail){$1, $3}; }
  | or_expr IF or_expr ELSE value_member { $$ = (zoo_valtail){make_cond(p, $1, $3, $5.value), $5.tail}; }
  ;

ret_opt:
    %empty { $$ = NULL; }
  | ARROW type { $$ = $2; }
  ;

block:
    '{' stmts '}' { $$ = leaf(p, ZOO_AST_BLOCK, @$); zoo_ast_set_items($$, $2); }
  ;

stmts:
    %empty { $$ = zoo_ast_list_new(p->arena); }
  | stmts stmt { $$ = $1; push_stmt(p, $$, $2); }
  | stmts ';' { $$ = $1; }
  | stmts error { $$ = $1; }
  ;

/* A statement, and the `if` statement its expression ran into, if any. */
stmt:
    LET IDENT '=' value_stmt {
      zoo_ast *n = leaf(p, ZOO_AST_LET, zoo_span_join(@1, $4.value->span));
      n->str = $2;
      n->a = $4.value;
      $$ = (zoo_valtail){n, $4.tail};
    }
  | RETURN value_stmt {
      zoo_ast *n = leaf(p, ZOO_AST_RETURN, zoo_span_join(@1, $2.value->span));
      n->a = $2.value;
      $$ = (zoo_valtail){n, $2.tail};
    }
  | FOR IDENT IN expr block {
      zoo_ast *n = leaf(p, ZOO_AST_FOR, @$);
      n->str = $2;
      n->a = $4;
      n->items = $5->items;
      n->nitems = $5->nitems;
      $$ = (zoo_valtail){n, NULL};
    }
  | if_stmt { $$ = (zoo_valtail){$1, NULL}; }
  | ELSE block { stray_else(p, @1); $$ = (zoo_valtail){NULL, NULL}; }
  | ELSE if_stmt { stray_else(p, @1); $$ = (zoo_valtail){NULL, NULL}; }
  ;

/* The expression of a let or return: `a`, `a if c else b`, or `a` followed by
 * the statement `if c { ... }` (told apart by the token after c). */
value_stmt:
    or_expr %prec VALUE_END { $$ = (zoo_valtail){$1, NULL}; }
  | or_expr IF or_expr ELSE value_stmt { $$ = (zoo_valtail){make_cond(p, $1, $3, $5.value), $5.tail}; }
  | or_expr IF or_expr block else_opt {
      zoo_span at = zoo_span_join(@2, $5 ? @5 : @4);
      $$ = (zoo_valtail){$1, make_if(p, at, $3, $4, $5)};
    }
  ;

if_stmt:
    IF expr block else_opt { $$ = make_if(p, @$, $2, $3, $4); }
  ;

/* else { ... }, or else if ...: a BLOCK holding that one IF */
else_opt:
    %empty %prec NO_ELSE { $$ = NULL; }
  | ELSE block { $$ = $2; }
  | ELSE if_stmt {
      zoo_ast_list *one = zoo_ast_list_new(p->arena);
      zoo_ast_list_push(p->arena, one, $2);
      $$ = leaf(p, ZOO_AST_BLOCK, @2);
      zoo_ast_set_items($$, one);
    }
  ;

/* a if c else b */
expr:
    or_expr { $$ = $1; }
  | or_expr IF or_expr ELSE expr { $$ = make_cond(p, $1, $3, $5); }
  ;

or_expr:
    and_expr { $$ = $1; }
  | or_expr OR and_expr { $$ = zoo_ast_binary(p->arena, ZOO_BIN_OR, $1, $3); }
  ;

and_expr:
    not_expr { $$ = $1; }
  | and_expr AND not_expr { $$ = zoo_ast_binary(p->arena, ZOO_BIN_AND, $1, $3); }
  ;

not_expr:
    cmp_expr { $$ = $1; }
  | NOT not_expr { $$ = zoo_ast_unary(p->arena, '!', @1, $2); }
  ;

/* Comparisons do not chain: a < b < c is an error, not (a < b) < c. */
cmp_expr:
    arith { $$ = $1; }
  | arith cmp_op arith { $$ = zoo_ast_binary(p->arena, $2, $1, $3); }
  | arith cmp_op arith cmp_op arith {
      chained_comparison(p, @4, $1, $2, $3, $4, $5);
      $$ = zoo_ast_binary(p->arena, $2, $1, $3);
    }
  ;

cmp_op:
    EQ { $$ = ZOO_BIN_EQ; }
  | NE { $$ = ZOO_BIN_NE; }
  | '<' { $$ = ZOO_BIN_LT; }
  | LE { $$ = ZOO_BIN_LE; }
  | '>' { $$ = ZOO_BIN_GT; }
  | GE { $$ = ZOO_BIN_GE; }
  ;

arith:
    term { $$ = $1; }
  | arith '+' term { $$ = zoo_ast_binary(p->arena, ZOO_BIN_ADD, $1, $3); }
  | arith '-' term { $$ = zoo_ast_binary(p->arena, ZOO_BIN_SUB, $1, $3); }
  ;

term:
    unary { $$ = $1; }
  | term '*' unary { $$ = zoo_ast_binary(p->arena, ZOO_BIN_MUL, $1, $3); }
  | term '/' unary { $$ = zoo_ast_binary(p->arena, ZOO_BIN_DIV, $1, $3); }
  | term IDIV unary { $$ = zoo_ast_binary(p->arena, ZOO_BIN_IDIV, $1, $3); }
  | term '%' unary { $$ = zoo_ast_binary(p->arena, ZOO_BIN_MOD, $1, $3); }
  ;

unary:
    power { $$ = $1; }
  | '-' unary { $$ = zoo_ast_unary(p->arena, '-', @1, $2); }
  ;

/* ** is right-associative and binds tighter than a unary minus on its left. */
power:
    postfix { $$ = $1; }
  | postfix POW unary { $$ = zoo_ast_binary(p->arena, ZOO_BIN_POW, $1, $3); }
  ;

postfix:
    primary { $$ = $1; }
  | postfix '(' args_opt ')' { $$ = leaf(p, ZOO_AST_CALL, @$); $$->a = $1; zoo_ast_set_items($$, $3); }
  | postfix '[' expr ']' { $$ = leaf(p, ZOO_AST_INDEX, @$); $$->a = $1; $$->b = $3; }
  | postfix '.' IDENT { $$ = leaf(p, ZOO_AST_FIELD, @$); $$->a = $1; $$->str = $3; }
  ;

args_opt:
    %empty { $$ = NULL; }
  | args { $$ = $1; }
  | args ',' { $$ = $1; }
  ;

args:
    arg { $$ = zoo_ast_list_new(p->arena); push_arg(p, $$, $1); }
  | args ',' arg { $$ = $1; push_arg(p, $$, $3); }
  ;

arg:
    expr { $$ = $1; }
  | IDENT '=' expr { $$ = leaf(p, ZOO_AST_KWARG, @$); $$->str = $1; $$->a = $3; }
  ;

primary:
    INT { $$ = leaf(p, ZOO_AST_INT, @$); $$->ival = $1; }
  | FLOAT { $$ = leaf(p, ZOO_AST_FLOAT, @$); $$->fval = $1; }
  | STRING { $$ = leaf(p, ZOO_AST_STRING, @$); $$->str = $1; }
  | TRUE { $$ = leaf(p, ZOO_AST_BOOL, @$); $$->ival = 1; }
  | FALSE { $$ = leaf(p, ZOO_AST_BOOL, @$); $$->ival = 0; }
  | NONE { $$ = leaf(p, ZOO_AST_NONE, @$); }
  | IDENT { $$ = leaf(p, ZOO_AST_NAME, @$); $$->str = $1; }
  | '[' exprs_opt ']' { $$ = leaf(p, ZOO_AST_LIST, @$); zoo_ast_set_items($$, $2); }
  | '(' expr ')' { $$ = $2; $$->span = @$; /* the parentheses belong to the span */ }
  ;

exprs_opt:
    %empty { $$ = NULL; }
  | exprs { $$ = $1; }
  | exprs ',' { $$ = $1; }
  ;

exprs:
    expr { $$ = zoo_ast_list_new(p->arena); zoo_ast_list_push(p->arena, $$, $1); }
  | exprs ',' expr { $$ = $1; zoo_ast_list_push(p->arena, $$, $3); }
  ;

%%

static zoo_ast *leaf(zoo_parser *p, zoo_ast_kind kind, zoo_span at) {
  return zoo_ast_new(p->arena, kind, at);
}

/* if cond then [else els]; then and els are BLOCKs, the IF holds then's items. */
static zoo_ast *make_if(zoo_parser *p, zoo_span at, zoo_ast *cond, zoo_ast *then, zoo_ast *els) {
  zoo_ast *n = leaf(p, ZOO_AST_IF, at);
  n->a = cond;
  n->items = then->items;
  n->nitems = then->nitems;
  n->b = els;
  return n;
}

/* then if cond else els */
static zoo_ast *make_cond(zoo_parser *p, zoo_ast *then, zoo_ast *cond, zoo_ast *els) {
  zoo_ast *n = leaf(p, ZOO_AST_COND, zoo_span_join(then->span, els->span));
  n->a = then;
  n->b = cond;
  n->c = els;
  return n;
}

/* Appends a call argument; positional arguments must come before keyword ones. */
static void push_arg(zoo_parser *p, zoo_ast_list *args, zoo_ast *arg) {
  if (arg->kind != ZOO_AST_KWARG && args->n > 0 && args->items[args->n - 1]->kind == ZOO_AST_KWARG)
    zoo_parse_error(p, arg->span, "positional argument after a keyword argument");
  zoo_ast_list_push(p->arena, args, arg);
}

/* Appends a statement, and the `if` statement that followed its expression. */
static void push_stmt(zoo_parser *p, zoo_ast_list *l, zoo_valtail s) {
  if (s.value) zoo_ast_list_push(p->arena, l, s.value);
  if (s.tail) zoo_ast_list_push(p->arena, l, s.tail);
}

static void stray_else(zoo_parser *p, zoo_span at) {
  zoo_parse_error(p, at, "unexpected 'else' without a matching 'if'");
}

/* The source text of a node when it is short and on one line, else `dflt`. */
static const char *short_text(zoo_parser *p, zoo_ast *n, const char *dflt) {
  zoo_span s = n->span;
  const char *text = p->src->text;
  if (s.line != s.end_line || s.end_col - s.col > 24) return dflt;
  size_t start = 0;
  for (int line = 1; line < s.line; start++)
    if (text[start] == '\n') line++;
  return zoo_arena_strndup(p->arena, text + start + s.col - 1, (size_t)(s.end_col - s.col));
}

/* a < b < c: says how to write what was probably meant. */
static void chained_comparison(zoo_parser *p, zoo_span at, zoo_ast *a, int op1, zoo_ast *b, int op2,
                               zoo_ast *c) {
  zoo_parse_error(p, at, "comparisons do not chain; write (%s %s %s) and (%s %s %s)",
                  short_text(p, a, "a"), zoo_binop_spelling(op1), short_text(p, b, "b"),
                  short_text(p, b, "b"), zoo_binop_spelling(op2), short_text(p, c, "c"));
}

/* Bison calls yyerror itself only when its stack is exhausted, which takes
 * thousands of nested prefix operators or else-ifs. */
static void zoo_yyerror(ZOO_YYLTYPE *loc, void *scanner, zoo_parser *p, const char *msg) {
  if (strcmp(msg, "memory exhausted") == 0) zoo_parse_error(p, *loc, "expression nested too deeply");
  else zoo_parse_error(p, *loc, "%s", msg);
}

/* ---- syntax error messages ---- */

#define SYM(ch) YYTRANSLATE(ch) /* the symbol kind of a one-character token */

/* How "expected ..." names a token. */
static const char *expected_name(yysymbol_kind_t k) {
  switch (k) {
  case YYSYMBOL_IDENT: return "a name";
  case YYSYMBOL_STRING: return "a string";
  case YYSYMBOL_INT:
  case YYSYMBOL_FLOAT: return "a number";
  default: return yysymbol_name(k);
  }
}

/* How "unexpected ..." names the token the parser stopped at, with its text
 * (at most 32 bytes of it, control bytes shown as '?'). */
static void describe_token(zoo_parser *p, yysymbol_kind_t k, char *buf, size_t size) {
  char text[33];
  int len = p->tok_len > 32 ? 32 : (int)p->tok_len;
  const char *more = p->tok_len > 32 ? "..." : "";
  for (int i = 0; i < len; i++) {
    unsigned char c = (unsigned char)p->src->text[p->tok_pos + (size_t)i];
    text[i] = c < 32 || c == 127 ? '?' : (char)c;
  }
  text[len] = 0;
  switch (k) {
  case YYSYMBOL_IDENT: snprintf(buf, size, "identifier '%.*s%s'", len, text, more); break;
  case YYSYMBOL_INT:
  case YYSYMBOL_FLOAT: snprintf(buf, size, "number '%.*s%s'", len, text, more); break;
  case YYSYMBOL_STRING: snprintf(buf, size, "string %.*s%s", len, text, more); break;
  default: snprintf(buf, size, "%s", yysymbol_name(k));
  }
}

static int is_keyword(yysymbol_kind_t k) {
  return k >= YYSYMBOL_IMPORT && k <= YYSYMBOL_NONE;
}

/* Whether the token the parser stopped at is the first on its line. */
static int first_on_line(zoo_parser *p) {
  for (size_t i = p->tok_pos; i > 0; i--) {
    char c = p->src->text[i - 1];
    if (c == '\n') return 1;
    if (c != ' ' && c != '\t' && c != '\r') return 0;
  }
  return 1;
}

/* `import`, `module` or `model` inside a module's body: the body was most
 * likely left open. The parser recovers inside the body and drops the token;
 * the scanner then closes each open '{' and hands the token over again, so
 * the declaration that follows parses at file level. */
static void resync_at_file_level(zoo_parser *p, yysymbol_kind_t tok, zoo_span at) {
  int braces = 0;
  for (int i = 0; i < p->nopen_before; i++) braces += p->open[i].ch == '{';
  if (braces == 0) return;
  p->resync_braces = braces;
  p->resync_token = tok == YYSYMBOL_IMPORT ? TOK_IMPORT : tok == YYSYMBOL_MODULE ? TOK_MODULE : TOK_MODEL;
  p->resync_at = at;
}

/* Removes a group of tokens from want[]; returns whether any was there. */
static int take(char *want, const int *kinds, int n) {
  int any = 0;
  for (int i = 0; i < n; i++) {
    any |= want[kinds[i]];
    want[kinds[i]] = 0;
  }
  return any;
}

/* "unexpected X[, expected Y, Z or W][ (hint)]", then a note where one helps:
 * the bracket the token failed to close, or the module left open at end of file. */
static int yyreport_syntax_error(const yypcontext_t *ctx, void *scanner, zoo_parser *p) {
  if (p->stop) return 0;
  yysymbol_kind_t tok = yypcontext_token(ctx);
  zoo_span at = *yypcontext_location(ctx);
  yysymbol_kind_t exp[YYNTOKENS];
  int nexp = yypcontext_expected_tokens(ctx, exp, YYNTOKENS);
  char raw[YYNTOKENS] = {0}, want[YYNTOKENS] = {0};
  for (int i = 0; i < nexp; i++) raw[exp[i]] = want[exp[i]] = 1;
  want[SYM(';')] = 0; /* always optional: naming it is noise */

  /* groups named as a whole; IF both continues an expression and starts a statement */
  int expr_start[] = {YYSYMBOL_INT, YYSYMBOL_FLOAT, YYSYMBOL_STRING, YYSYMBOL_IDENT,
                                   YYSYMBOL_TRUE, YYSYMBOL_FALSE, YYSYMBOL_NONE, YYSYMBOL_NOT,
                                   SYM('('), SYM('['), SYM('-')};
  int operators[] = {SYM('+'), SYM('-'), SYM('*'), SYM('/'), YYSYMBOL_IDIV,
                                  SYM('%'), YYSYMBOL_POW, YYSYMBOL_EQ, YYSYMBOL_NE, SYM('<'),
                                  YYSYMBOL_LE, SYM('>'), YYSYMBOL_GE, YYSYMBOL_AND, YYSYMBOL_OR,
                                  YYSYMBOL_IF, SYM('('), SYM('['), SYM('.')};
  int stmt_start[] = {YYSYMBOL_LET, YYSYMBOL_RETURN, YYSYMBOL_FOR, YYSYMBOL_IF, YYSYMBOL_ELSE};
  int member_start[] = {YYSYMBOL_LET, YYSYMBOL_IDENT, YYSYMBOL_FORWARD};
  const char *phrase[YYNTOKENS];
  int nphrase = 0;
  if (want[SYM('*')] && take(want, operators, sizeof operators / sizeof *operators)) {
    phrase[nphrase++] = "an operator";
    want[SYM('=')] = 0; /* f(x = 1): after a name, but rarely what was meant */
  }
  if (want[YYSYMBOL_INT] && take(want, expr_start, sizeof expr_start / sizeof *expr_start))
    phrase[nphrase++] = "an expression";
  if (want[YYSYMBOL_RETURN] && take(want, stmt_start, sizeof stmt_start / sizeof *stmt_start))
    phrase[nphrase++] = "a statement";
  if (want[YYSYMBOL_FORWARD] && take(want, member_start, sizeof member_start / sizeof *member_start))
    phrase[nphrase++] = "a member";
  if (want[YYSYMBOL_IMPORT]) want[YYSYMBOL_YYEOF] = 0; /* at file level: implied */
  /* single tokens, closing brackets last */
  int closers[] = {SYM(')'), SYM(']'), SYM('}')};
  char closing[3] = {want[closers[0]], want[closers[1]], want[closers[2]]};
  take(want, closers, 3);
  for (int k = 0; k < YYNTOKENS; k++)
    if (want[k]) phrase[nphrase++] = expected_name((yysymbol_kind_t)k);
  for (int k = 0; k < 3; k++)
    if (closing[k]) phrase[nphrase++] = expected_name((yysymbol_kind_t)closers[k]);

  char msg[512], what[96];
  describe_token(p, tok, what, sizeof what);
  int len = snprintf(msg, sizeof msg, "unexpected %s", what);
  if (tok == YYSYMBOL_ELSE) {
    len += snprintf(msg + len, sizeof msg - len, " without a matching 'if'");
  } else if (nphrase > 0 && nphrase <= 6) {
    len += snprintf(msg + len, sizeof msg - len, ", expected ");
    for (int i = 0; i < nphrase; i++)
      len += snprintf(msg + len, sizeof msg - len, "%s%s",
                      i == 0 ? "" : i == nphrase - 1 ? " or " : ", ", phrase[i]);
  }
  if (is_keyword(tok) && raw[YYSYMBOL_IDENT] && !raw[YYSYMBOL_FORWARD] && !raw[YYSYMBOL_RETURN] &&
      !first_on_line(p))
    snprintf(msg + len, sizeof msg - len, " (%s is a keyword, not a name)", yysymbol_name(tok));
  else if (tok == YYSYMBOL_IDENT && raw[YYSYMBOL_RETURN])
    snprintf(msg + len, sizeof msg - len, " (a statement starts with let, return, for or if)");
  else if ((tok == YYSYMBOL_RETURN || tok == YYSYMBOL_FOR || tok == YYSYMBOL_IF) && raw[YYSYMBOL_FORWARD])
    snprintf(msg + len, sizeof msg - len, " (statements belong in a forward body)");
  zoo_parse_error(p, at, "%s", msg);

  /* an expression cut short at the end of the line before: show where */
  if (raw[YYSYMBOL_INT] && tok != YYSYMBOL_YYEOF && first_on_line(p) && p->prev_len > 0 &&
      p->prev_at.line > 0 && p->prev_at.line < at.line && p->prev_len <= 8) {
    zoo_parse_note(p, p->prev_at, "the line before ends with '%.*s', which needs an expression after it",
                   (int)p->prev_len, p->src->text + p->prev_pos);
    return 0;
  }
  if (p->nopen_before > 0) {
    const zoo_parse_open *o = &p->open[p->nopen_before - 1];
    int closer = o->ch == '(' ? ')' : o->ch == '[' ? ']' : '}';
    /* worth a note when the bracket is out of sight: on another line, or the
     * token is a bracket of another kind or the end of the file */
    int apart = at.line != o->at.line || tok == YYSYMBOL_YYEOF || tok == SYM(')') ||
                tok == SYM(']') || tok == SYM('}');
    if (raw[SYM(closer)] && apart && (o->ch != '{' || tok == YYSYMBOL_YYEOF) &&
        !(o->ch == '{' && p->module_name)) {
      zoo_parse_note(p, o->at, "to match this '%c'", o->ch);
      return 0;
    }
  }
  /* a declaration keyword starting a line inside a module body */
  int toplevel = (tok == YYSYMBOL_IMPORT || tok == YYSYMBOL_MODULE || tok == YYSYMBOL_MODEL) &&
                 first_on_line(p);
  if ((tok == YYSYMBOL_YYEOF || toplevel) && p->module_name)
    zoo_parse_note(p, p->module_at, "unterminated module body? (module '%s' opened here)",
                   p->module_name);
  if (toplevel && p->module_name) resync_at_file_level(p, tok, at);
  return 0;
}
