/* fuse.c: grouping nodes into kernels by fusion class (see fuse.h). */
#include "fuse.h"

#include <stdlib.h>
#include <string.h>

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort(); /* out of memory */
  return p;
}

static int is_elementwise(const zoo_graph *g, int node) {
  return zoo_ops[g->nodes[node].op].cls == ZOO_CLASS_ELEMENTWISE;
}

/* Same dims (the symbolic forms, so the test holds for every binding). */
static int same_dims(const zoo_type *a, const zoo_type *b) {
  if (a->ndim != b->ndim) return 0;
  for (int k = 0; k < a->ndim; k++)
    if (!zoo_dim_eq(a->dim[k], b->dim[k])) return 0;
  return 1;
}

typedef struct fuse_state {
  zoo_graph *g;
  int *next;    /* per node: the next member of its group, -1 at the end */
  int *tail;    /* per group id: its last member */
  int *stamp;   /* per group id: the query that last visited it */
  int *stack;
  int query;
} fuse_state;

/* Does group h depend, through any chain of groups, on group target? */
static int depends_on(fuse_state *s, int h, int target) {
  const zoo_graph *g = s->g;
  int sp = 0;
  s->query++;
  s->stack[sp++] = h;
  s->stamp[h] = s->query;
  while (sp > 0) {
    int grp = s->stack[--sp];
    for (int m = grp; m >= 0; m = s->next[m]) {
      const zoo_node *n = &g->nodes[m];
      for (int k = 0; k < n->nin; k++) {
        int p = g->tensors[n->in[k]].producer;
        if (p < 0) continue;
        int q = g->nodes[p].group;
        if (q == target) return 1;
        if (q == grp || s->stamp[q] == s->query) continue;
        s->stamp[q] = s->query;
        s->stack[sp++] = q;
      }
    }
  }
  return 0;
}

/* Would putting node i into group grp make two groups wait on each other? Only
 * through i's inputs from other groups that themselves depend on grp. */
static int joining_makes_cycle(fuse_state *s, int grp, int i) {
  const zoo_node *n = &s->g->nodes[i];
  for (int k = 0; k < n->nin; k++) {
    int p = s->g->tensors[n->in[k]].producer;
    if (p < 0) continue;
    int h = s->g->nodes[p].group;
    if (h != grp && depends_on(s, h, grp)) return 1;
  }
  return 0;
}

/* ---------------------------------------------------------------------------
 * The rewrites after the elementwise pass (fuse.h): stencils inlined into the
 * elementwise group that consumes them, elementwise groups made the prologue of
 * the row op they feed or the epilogue of the row op whose output they read.
 * Each merges two groups into one, so each asks the same question first: would
 * the merged group wait on itself? */

static int is_pointwise(const zoo_graph *g, int node) {
  return is_elementwise(g, node) || (zoo_ops[g->nodes[node].op].flags & ZOO_OPF_INLINE);
}

/* Is every member of group grp pointwise (elementwise or inline)? */
static int group_pointwise(const fuse_state *s, int grp) {
  for (int m = grp; m >= 0; m = s->next[m])
    if (!is_pointwise(s->g, m)) return 0;
  return 1;
}

/* Is every member of group grp elementwise (no inline stencil)? */
static int group_elementwise(const fuse_state *s, int grp) {
  for (int m = grp; m >= 0; m = s->next[m])
    if (!is_elementwise(s->g, m)) return 0;
  return 1;
}

/* Does every member of group grp make a value of type t's dims? */
static int group_dims(const fuse_state *s, int grp, const zoo_type *t) {
  for (int m = grp; m >= 0; m = s->next[m])
    if (!same_dims(t, &s->g->tensors[s->g->nodes[m].out[0]].type)) return 0;
  return 1;
}

/* Does a member of group grp produce tensor t? */
static int made_by_group(const fuse_state *s, int grp, int t) {
  int p = s->g->tensors[t].producer;
  return p >= 0 && s->g->nodes[p].group == grp;
}

/* Would merging groups a and b make a cycle? Only through a third group that
 * depends on one and feeds the other. */
static int merge_makes_cycle(fuse_state *s, int a, int b) {
  const zoo_graph *g = s->g;
  for (int side = 0; side < 2; side++) {
    int from = side ? b : a, to = side ? a : b;
    for (int m = from; m >= 0; m = s->next[m]) {
      const zoo_node *n = &g->nodes[m];
      for (int k = 0; k < n->nin; k++) {
        int p = g->tensors[n->in[k]].producer;
        if (p < 0) continue;
        int h = g->nodes[p].group;
        if (h != a && h != b && depends_on(s, h, to)) return 1;
      }
    }
  }
  return 0;
}

/* Merges groups a and b; the id of the result is the smaller (its first
 * node, as fuse.h promises). */
static void merge_groups(fuse_state *s, int a, int b) {
  if (b < a) {
    int t = a;
    a = b;
    b = t;
  }
  for (int m = b; m >= 0; m = s->next[m]) s->g->nodes[m].group = a;
  s->next[s->tail[a]] = b;
  s->tail[a] = s->tail[b];
}

/* A node whose op has `flag`, still a group of its own, joins the group of its
 * first elementwise consumer when that group is all pointwise, every member
 * has the node's output dims, both lie on the same side of the forward/backward
 * boundary, the node reads nothing the group makes, and no cycle follows. Two
 * rewrites are this rule:
 *   inline stencils (ZOO_OPF_INLINE, causal_conv1d): the group's kernel
 *     computes the stencil at each element from its inputs in memory (it reads
 *     neighbours, which the same kernel cannot provide, hence "reads nothing
 *     the group makes");
 *   epilogues (ZOO_OPF_EPILOGUE, layernorm_bwd, causal_conv1d_bwd): the row
 *     op's kernel computes the group at each element it makes, so the group
 *     holds no stencil (one might read the row op's output around the
 *     element). The backward's residual add, dr = layernorm_bwd(...) + dr',
 *     is one kernel.
 * Other consumers still find the node's output in memory: the kernel stores it
 * when someone outside reads it. */
static void join_consumers(fuse_state *s, int nforward, int flag) {
  zoo_graph *g = s->g;
  for (int i = 0; i < g->nnodes; i++) {
    zoo_node *n = &g->nodes[i];
    if (!(zoo_ops[n->op].flags & flag) || n->group != i || s->next[i] >= 0) continue;
    const zoo_type *shape = &g->tensors[n->out[0]].type;
    for (int c = i + 1; c < g->nnodes; c++) {
      const zoo_node *m = &g->nodes[c];
      int reads = 0;
      for (int k = 0; k < m->nin; k++) reads |= m->in[k] == n->out[0];
      if (!reads || !is_elementwise(g, c)) continue;
      int grp = m->group;
      if ((grp < nforward) != (i < nforward)) continue;
      if (!group_pointwise(s, grp) || !group_dims(s, grp, shape)) continue;
      if (flag == ZOO_OPF_EPILOGUE && !group_elementwise(s, grp)) continue;
      int feeds = 0;
      for (int k = 0; k < n->nin; k++) feeds |= made_by_group(s, grp, n->in[k]);
      if (feeds || merge_makes_cycle(s, grp, i)) continue;
      merge_groups(s, grp, i);
      break;
    }
  }
}

/* Is node i's group i alone, or i with an epilogue (i first, every other
 * member elementwise and of i's output 0's dims)? */
static int alone_or_epilogue(const fuse_state *s, int i) {
  const zoo_graph *g = s->g;
  if (g->nodes[i].group != i) return 0;
  for (int m = s->next[i]; m >= 0; m = s->next[m])
    if (!is_elementwise(g, m) || !same_dims(&g->tensors[g->nodes[m].out[0]].type,
                                            &g->tensors[g->nodes[i].out[0]].type))
      return 0;
  return 1;
}

/* The least row (last axis of output 0) at which an op with both fusion
 * flags takes a prologue: ZOO_FUSE_PROLOGUE_MIN_ROW, or the environment's
 * value of that name, for measuring. Measured on the H200 (zoorun bench,
 * the tree before and after in one run, .gpu/s15run7.sh and s15run8.sh),
 * layernorm_bwd making ReBased's and Based's sum of the q, k and v
 * projections' gradients in its prologue: rebased 512/512 94.28 to 92.55 ms
 * and 512/2048 420.83 to 412.99 (rows of 512), but Based 128/512 23.41 to
 * 23.77 (rows of 128: the kernel reads no row ahead there, so the
 * prologue's three loads wait in line) and rebased 64/128 2.32-2.38 to 2.40. */
#define ZOO_FUSE_PROLOGUE_MIN_ROW 512

static int64_t prologue_min_row(void) {
  const char *env = getenv("ZOO_FUSE_PROLOGUE_MIN_ROW");
  return env && *env ? atoll(env) : ZOO_FUSE_PROLOGUE_MIN_ROW;
}

/* Prologues: a node whose op has ZOO_OPF_PROLOGUE (layernorm, layernorm_bwd)
 * joins the group that makes its input 0 when that group is all pointwise (so
 * it holds no other row op), every member has input 0's dims (the row kernel
 * computes the group at each element of a row), same side, no cycle. An op
 * that also takes an epilogue (layernorm_bwd) takes a prologue only for rows
 * of prologue_min_row() floats or more, and, when it holds an epilogue
 * already (this pass runs after the epilogues'), only where input 0 has output
 * 0's dims, so that both lambdas of its kernel index the same elements. */
static void prologues(fuse_state *s, int nforward) {
  zoo_graph *g = s->g;
  for (int i = 0; i < g->nnodes; i++) {
    zoo_node *n = &g->nodes[i];
    if (!(zoo_ops[n->op].flags & ZOO_OPF_PROLOGUE) || !alone_or_epilogue(s, i)) continue;
    if (zoo_ops[n->op].flags & ZOO_OPF_EPILOGUE) {
      const zoo_type *y = &g->tensors[n->out[0]].type;
      zoo_dim row = y->dim[y->ndim - 1];
      if (row.sym || row.coef < prologue_min_row()) continue;
    }
    if (s->next[i] >= 0 && !same_dims(&g->tensors[n->in[0]].type, &g->tensors[n->out[0]].type)) continue;
    int p = g->tensors[n->in[0]].producer;
    if (p < 0) continue;
    int grp = g->nodes[p].group;
    if ((grp < nforward) != (i < nforward)) continue;
    if (!group_pointwise(s, grp) || !group_dims(s, grp, &g->tensors[n->in[0]].type)) continue;
    if (merge_makes_cycle(s, grp, i)) continue;
    merge_groups(s, grp, i);
  }
}

int zoo_fuse(zoo_graph *g, int level) {
  int N = g->nnodes;
  for (int i = 0; i < N; i++) g->nodes[i].group = i;
  if (level == ZOO_FUSE_OFF || N == 0) return N;

  fuse_state s = {g, xmalloc((size_t)N * sizeof(int)), xmalloc((size_t)N * sizeof(int)),
                  calloc((size_t)N, sizeof(int)), xmalloc((size_t)N * sizeof(int)), 0};
  if (!s.stamp) abort();
  int nforward = g->nforward > 0 ? g->nforward : N;
  /* elementwise chains */
  for (int i = 0; i < N; i++) {
    zoo_node *n = &g->nodes[i];
    s.next[i] = -1;
    s.tail[i] = i;
    if (is_elementwise(g, i)) {
      const zoo_type *shape = &g->tensors[n->out[0]].type;
      for (int k = 0; k < n->nin; k++) {
        int p = g->tensors[n->in[k]].producer;
        if (p < 0) continue;
        int grp = g->nodes[p].group;
        if (!is_elementwise(g, grp)) continue;
        if ((grp < nforward) != (i < nforward)) continue;
        if (!same_dims(shape, &g->tensors[g->nodes[grp].out[0]].type)) continue;
        if (joining_makes_cycle(&s, grp, i)) continue;
        n->group = grp;
        s.next[s.tail[grp]] = i;
        s.tail[grp] = i;
        break;
      }
    }
  }
  /* the rewrites, in this order: a stencil inlined into a group can then be
   * part of a prologue; a row op takes its epilogue first, then its prologue
   * (a group that is some row op's epilogue is no longer all pointwise, so it
   * is never also another's prologue) */
  if (level != ZOO_FUSE_CHAINS) {
    join_consumers(&s, nforward, ZOO_OPF_INLINE);
    join_consumers(&s, nforward, ZOO_OPF_EPILOGUE);
    prologues(&s, nforward);
  }
  int ngroups = 0;
  for (int i = 0; i < N; i++)
    if (g->nodes[i].group == i) ngroups++;
  free(s.next);
  free(s.tail);
  free(s.stamp);
  free(s.stack);
  return ngroups;
}

/* A binary min-heap of group ids (the earliest first node comes out first). */
typedef struct heap {
  int *a;
  int n;
} heap;

static void heap_push(heap *h, int v) {
  int i = h->n++;
  h->a[i] = v;
  while (i > 0 && h->a[(i - 1) / 2] > h->a[i]) {
    int p = (i - 1) / 2, t = h->a[p];
    h->a[p] = h->a[i];
    h->a[i] = t;
    i = p;
  }
}

static int heap_pop(heap *h) {
  int top = h->a[0];
  h->a[0] = h->a[--h->n];
  for (int i = 0;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < h->n && h->a[l] < h->a[m]) m = l;
    if (r < h->n && h->a[r] < h->a[m]) m = r;
    if (m == i) break;
    int t = h->a[m];
    h->a[m] = h->a[i];
    h->a[i] = t;
    i = m;
  }
  return top;
}

int zoo_fuse_order(const zoo_graph *g, int *order) {
  int N = g->nnodes;
  if (N == 0) return 0;
  /* Edges between groups, deduplicated per (source, target) pair through a
   * stamp, stored as successor lists (CSR). */
  int *indeg = calloc((size_t)N, sizeof(int));
  int *count = calloc((size_t)N + 1, sizeof(int));
  int *seen = xmalloc((size_t)N * sizeof(int));
  int nedges = 0;
  for (int pass = 0; pass < 2; pass++) {
    int *fill = pass ? xmalloc((size_t)N * sizeof(int)) : NULL;
    int *succ = pass ? xmalloc((size_t)(nedges ? nedges : 1) * sizeof(int)) : NULL;
    if (pass) {
      for (int i = 0, at = 0; i < N; i++) {
        int c = count[i];
        count[i] = at;
        at += c;
      }
      count[N] = nedges;
      memcpy(fill, count, (size_t)N * sizeof(int));
    }
    for (int i = 0; i < N; i++) seen[i] = -1;
    /* One target group at a time: walk its members' inputs. */
    for (int i = 0; i < N; i++) {
      int x = zoo_node_group(g, i);
      const zoo_node *n = &g->nodes[i];
      for (int k = 0; k < n->nin; k++) {
        int p = g->tensors[n->in[k]].producer;
        if (p < 0) continue;
        int y = zoo_node_group(g, p);
        if (y == x) continue;
        /* seen[y] == x: edge y -> x already counted (members of x are not
         * contiguous in general, so also check the stored list) */
        if (seen[y] == x) continue;
        int dup = 0;
        if (pass) {
          for (int e = count[y]; e < fill[y]; e++)
            if (succ[e] == x) dup = 1;
        }
        seen[y] = x;
        if (dup) continue;
        if (pass) {
          succ[fill[y]++] = x;
          indeg[x]++;
        } else {
          count[y]++;
          nedges++;
        }
      }
    }
    if (pass) {
      /* Pass 0 may have counted a pair twice (non-contiguous members); the
       * stored lists are exact, so use fill[] as the ends. */
      heap h = {xmalloc((size_t)N * sizeof(int)), 0};
      for (int i = 0; i < N; i++)
        if (zoo_node_group(g, i) == i && indeg[i] == 0) heap_push(&h, i);
      int done = 0;
      while (h.n > 0) {
        int x = heap_pop(&h);
        order[done++] = x;
        for (int e = count[x]; e < fill[x]; e++)
          if (--indeg[succ[e]] == 0) heap_push(&h, succ[e]);
      }
      int ngroups = 0;
      for (int i = 0; i < N; i++)
        if (zoo_node_group(g, i) == i) ngroups++;
      free(h.a);
      free(fill);
      free(succ);
      free(indeg);
      free(count);
      free(seen);
      return done == ngroups ? done : -1;
    }
  }
  return -1; /* not reached */
}
