/* zooc: the zoo compiler's command line.
 *
 *   zooc FILE [-D name=value]... [--model NAME] [--summary]
 *        [--dump=ast|graph|grad|fused|plan|cuda|dot] [--no-fuse]
 *        [--no-fuse-rewrites] [-o DIR] [--help]
 *
 * Exit status: 0 on success, 1 when the model has errors, 2 on bad usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compile.h"
#include "fuse.h"
#include "graph.h"
#if __has_include("generate.h")
#include "generate.h"
#define ZOOC_HAVE_GENERATE 1
#endif

static const char usage[] =
    "usage: zooc FILE [-D name=value]... [--model NAME] [--summary]\n"
    "            [--dump=ast|graph|grad|fused|plan|cuda|dot] [--no-fuse]\n"
    "            [--no-fuse-rewrites]\n"
    "            [-o DIR] [--help]\n";

static const char help[] =
    "zooc compiles a .zoo model: it loads the file and its imports, instantiates\n"
    "the model, traces its forward into a graph and checks every shape. With no\n"
    "other flag it prints the summary: the model's parameters, every parameter\n"
    "tensor and the total, the ops, and the generated kernels and memory.\n"
    "\n"
    "  FILE                 the .zoo file; its last `model` is compiled\n"
    "  -D name=value        sets a parameter of the model declaration; value is\n"
    "                       a .zoo literal: 128, 1e-3, true, \"text\", [1, 2]\n"
    "                       (-Dname=value works too; repeat for several)\n"
    "  --model NAME         compiles the model NAME instead of the last one\n"
    "  --summary            prints the summary (also when dumping)\n"
    "  --dump=ast           prints the syntax tree of FILE and stops\n"
    "  --dump=graph         prints the forward graph, one node a line\n"
    "  --dump=grad          prints the training graph: forward, loss, backward\n"
    "  --dump=fused         prints the training graph's fused kernel groups\n"
    "  --dump=plan          prints the launch plan and the memory arena\n"
    "  --dump=cuda          prints the generated CUDA module\n"
    "  --dump=dot           prints the forward graph for Graphviz (dot -Tsvg)\n"
    "  --no-fuse            one kernel per node (summary, --dump=fused|plan|cuda)\n"
    "  --no-fuse-rewrites   fuse elementwise chains only: no inlined convolution,\n"
    "                       no prologue of a LayerNorm (compiler/fuse.h)\n"
    "  -o DIR               writes the generated CUDA and the plan into DIR\n"
    "                       (kernels.cu, plan.txt), for the model's own seq_len\n"
    "  --help               prints this text\n"
    "\n"
    "Imports are looked up next to the importing file, then in models/ (which\n"
    "holds std/): ./models, or ../models next to the zooc binary.\n"
    "\n"
    "Examples:\n"
    "  zooc models/rebased.zoo\n"
    "  zooc models/rebased.zoo -D d_model=128 -D seq_len=512\n"
    "  zooc models/based.zoo --dump=graph\n"
    "  zooc models/rebased.zoo --dump=cuda --no-fuse | less\n"
    "  zooc models/attention.zoo --dump=dot | dot -Tsvg > attention.svg\n"
    "  zooc models/rebased.zoo -o generated/rebased\n"
    "\n"
    "Exit status: 0 on success, 1 when the model has errors, 2 on bad usage.\n";

/* The exit status once everything is printed: 1 (and why) when the standard
 * output could not be written (a full disk), else status. A failed write
 * empties stdout's buffer, so the flush may then succeed: the error flag
 * tells, and errno most likely still holds that write's reason. */
static int stdout_checked(int status) {
  if (fflush(stdout) == 0 && !ferror(stdout)) return status;
  fprintf(stderr, "zooc: cannot write the standard output: %s\n", strerror(errno ? errno : EIO));
  return 1;
}

static int bad_usage(const char *fmt, const char *arg) {
  fprintf(stderr, "zooc: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n%s", usage);
  return 2;
}

/* Splits "name=value" of -D; returns 0 or -1. */
static int parse_define(char *text, zoo_define *d) {
  char *eq = strchr(text, '=');
  if (!eq || eq == text) return -1;
  *eq = 0;
  d->name = text;
  d->value = eq + 1;
  return 0;
}

int main(int argc, char **argv) {
  zoo_compile_opts o;
  memset(&o, 0, sizeof o);
  zoo_define *defines = calloc((size_t)argc, sizeof *defines);
  const char *dump = NULL, *outdir = NULL;
  int summary = 0, fuse = 1;

  for (int i = 1; i < argc; i++) {
    char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(usage, stdout);
      fputc('\n', stdout);
      fputs(help, stdout);
      free(defines);
      return stdout_checked(0);
    } else if (strcmp(a, "-D") == 0 || (strncmp(a, "-D", 2) == 0 && a[2])) {
      char *text = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
      if (!text) return bad_usage("-D needs name=value", "");
      if (parse_define(text, &defines[o.ndefines]) != 0)
        return bad_usage("-D %s: expected name=value", text);
      o.ndefines++;
    } else if (strcmp(a, "--model") == 0) {
      if (i + 1 >= argc) return bad_usage("--model needs a NAME", "");
      o.model = argv[++i];
    } else if (strncmp(a, "--model=", 8) == 0) {
      o.model = a + 8;
    } else if (strcmp(a, "--summary") == 0) {
      summary = 1;
    } else if (strncmp(a, "--dump=", 7) == 0) {
      dump = a + 7;
      static const char *const dumps[] = {"ast", "graph", "grad", "fused", "plan", "cuda", "dot"};
      int known = 0;
      for (int k = 0; k < 7; k++) known |= strcmp(dump, dumps[k]) == 0;
      if (!known) return bad_usage("unknown dump '%s' (ast, graph, grad, fused, plan, cuda or dot)", dump);
    } else if (strcmp(a, "--no-fuse") == 0) {
      fuse = ZOO_FUSE_OFF;
    } else if (strcmp(a, "--no-fuse-rewrites") == 0) {
      if (fuse != ZOO_FUSE_OFF) fuse = ZOO_FUSE_CHAINS;
    } else if (strcmp(a, "-o") == 0) {
      if (i + 1 >= argc) return bad_usage("-o needs a DIR", "");
      outdir = argv[++i];
    } else if (a[0] == '-' && a[1]) {
      return bad_usage("unknown option '%s'", a);
    } else if (!o.path) {
      o.path = a;
    } else {
      return bad_usage("one FILE only ('%s' is a second)", a);
    }
  }
  if (!o.path) return bad_usage("no FILE given%s", "");
  o.defines = defines;
  o.stop_after_parse = dump && strcmp(dump, "ast") == 0;
  if (!dump && !outdir) summary = 1;

  zoo_diag d;
  zoo_diag_init(&d, stderr);
  zoo_program *p;
  int status = 0;
  if (zoo_compile(&o, &d, &p) != 0) {
    free(defines);
    return 1;
  }
  if (o.stop_after_parse) {
    zoo_ast_dump(stdout, p->file);
  } else {
    if (summary) {
      zoo_program_summary(stdout, p);
#ifdef ZOOC_HAVE_GENERATE
      fputc('\n', stdout);
      if (zoo_generate_summary(stdout, p, fuse, &d) != 0) status = 1;
#endif
    }
    if (dump && strcmp(dump, "graph") == 0) zoo_graph_dump(stdout, &p->graph);
    if (dump && strcmp(dump, "dot") == 0) zoo_graph_dump_dot(stdout, &p->graph);
    if (dump && (strcmp(dump, "fused") == 0 || strcmp(dump, "plan") == 0 || strcmp(dump, "cuda") == 0)) {
#ifdef ZOOC_HAVE_GENERATE
      if (zoo_generate_dump(stdout, p, dump, fuse, &d) != 0) status = 1;
#else
      fprintf(stderr, "zooc: --dump=%s: this build has no code generator\n", dump);
      status = 1;
#endif
    }
    if (outdir && status == 0) {
#ifdef ZOOC_HAVE_GENERATE
      if (zoo_generate(p, outdir, &d) != 0) status = 1;
#else
      fprintf(stderr, "zooc: -o: this build has no code generator\n");
      status = 1;
#endif
    }
    /* Last: the training graph is built on top of p's graph, in place. */
    if (dump && strcmp(dump, "grad") == 0 && status == 0) {
      if (zoo_train_graph(&p->graph, &d) != 0) status = 1;
      else zoo_graph_dump(stdout, &p->graph);
    }
  }
  zoo_program_free(p);
  free(defines);
  return stdout_checked(status);
}
