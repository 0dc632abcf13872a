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

int zoo_fuse(zoo_graph *g, int enable) {
  int N = g->nnodes;
  for (int i = 0; i < N; i++) g->nodes[i].group = i;
  if (!enable || N == 0) return N;

  fuse_state s = {g, xmalloc((size_t)N * sizeof(int)), xmalloc((size_t)N * sizeof(int)),
                  calloc((size_t)N, sizeof(int)), xmalloc((size_t)N * sizeof(int)), 0};
  if (!s.stamp) abort();
  int nforward = g->nforward > 0 ? g->nforward : N;
  int ngroups = 0;
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
    if (n->group == i) ngroups++;
  }
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
