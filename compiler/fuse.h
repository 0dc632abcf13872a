/* fuse.h: grouping graph nodes into kernels.
 *
 * The pass reads only the op table's fusion classes, never lists of op names:
 * an elementwise node joins the group of the elementwise node that produced one
 * of its inputs when both have the same output shape (other inputs may
 * broadcast), both lie on the same side of the forward/backward boundary, and
 * joining creates no cycle between groups. A group becomes one kernel; a value
 * made and used only inside it stays in a register (codegen decides, from the
 * consumers). Every other node is a group of its own.
 *
 * A group's id is the index of its first node; zoo_node.group holds it.
 */
#ifndef ZOO_FUSE_H
#define ZOO_FUSE_H

#include "graph.h"

/* Sets every node's group. With enable == 0 (zooc --no-fuse) each node is its
 * own group. Returns the number of groups. */
int zoo_fuse(zoo_graph *g, int enable);

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
