/* fuse.h: grouping graph nodes into kernels.
 *
 * The pass reads only the op table's fusion classes and flags, never lists of
 * op names. Four steps, in order:
 *
 *  1. Elementwise chains: an elementwise node joins the group of the
 *     elementwise node that produced one of its inputs when both have the same
 *     output shape (other inputs may broadcast), both lie on the same side of
 *     the forward/backward boundary, and joining creates no cycle between
 *     groups.
 *  2. Inline stencils (ZOO_OPF_INLINE, e.g. causal_conv1d): the stencil joins
 *     the elementwise group that consumes it when the shapes match and it reads
 *     nothing the group makes; the group's kernel computes it at each element
 *     from its inputs in memory. BaseConv's conv(u) * proj(u) + u is one kernel.
 *  3. Prologues (ZOO_OPF_PROLOGUE, e.g. layernorm): a row op joins the
 *     pointwise group (steps 1 and 2) that makes its input 0 when every member
 *     has that input's shape; the row op's kernel computes the group at each
 *     element of its rows, storing what other groups read. The pre-norm
 *     residual add, r = h + r; x = layernorm(r), is one kernel that writes r
 *     and x.
 *  4. Epilogues (ZOO_OPF_EPILOGUE: layernorm_bwd, causal_conv1d_bwd): a row
 *     op takes in the pointwise group that consumes its output 0 when every
 *     member has that output's shape and none makes the row op's inputs; the
 *     row op's kernel computes the group at each element it makes, storing
 *     what other groups read (output 0 itself only when someone else reads
 *     it). The backward's residual add after each LayerNorm, dr =
 *     layernorm_bwd(...) + dr', is one kernel. This step runs before step 3,
 *     so a row op with both flags (layernorm_bwd) may then take a prologue as
 *     well: from rows of 512 floats (measured, fuse.c), and only where its
 *     input 0 has its output 0's shape. Its kernel then has both: the sum of
 *     ReBased's q, k and v projections' gradients is made where the norm's
 *     backward reads it.
 *
 * Steps 2 to 4 keep steps 1's rules (same side, no cycle: merge_makes_cycle).
 * A group becomes one kernel; a value made and used only inside it stays in a
 * register (codegen decides, from the consumers). Every other node is a group
 * of its own.
 *
 * A group's id is the index of its first node; zoo_node.group holds it.
 */
#ifndef ZOO_FUSE_H
#define ZOO_FUSE_H

#include "graph.h"

/* What zoo_fuse does: nothing (zooc --no-fuse: each node is its own group),
 * all four steps, or the elementwise chains alone (zooc --no-fuse-rewrites,
 * to bisect a difference to the rewrites and to count what they save). */
enum { ZOO_FUSE_OFF = 0, ZOO_FUSE_ALL = 1, ZOO_FUSE_CHAINS = 2 };

/* Sets every node's group at the given ZOO_FUSE_* level (any other nonzero
 * value is ZOO_FUSE_ALL). Returns the number of groups. */
int zoo_fuse(zoo_graph *g, int level);

/* The groups in launch order: a topological order of the groups, earliest first
 * node first, so the forward pass comes before the backward pass. Nodes whose
 * group is -1 (fuse not run) count as groups of their own. Fills order (room for
 * g->nnodes ids) and returns the number of groups, or -1 if the groups depend on
 * each other in a cycle (a bug in the pass that made them). */
int zoo_fuse_order(const zoo_graph *g, int *order);

/* The group of node i (i itself when fuse has not run). */
static inline int zoo_node_group(const zoo_graph *g, int i) {
  return g->nodes[i].group >= 0 ? g->nodes[i].group : i;
}

#endif
