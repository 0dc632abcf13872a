/* bench.h: zoorun bench, the GPU benchmark against the reference's figures.
 *
 * For each rebased, based and conv_attention cell of the reference's
 * measurements on one H200 (/work/shared/reference/peer-h200.jsonl, copied into
 * configs/peer-h200.jsonl and into a table in bench.c), builds the model at that
 * d_model and seq_len with the cell's micro-batch and accumulation, trains
 * warm-up steps, then times optimiser steps (CUDA events around each graph
 * launch; the median is reported), and prints per cell: milliseconds per step,
 * the ratio to the reference, kernel launches per step, device memory (zoo's
 * allocations, and the driver's used-memory delta) and the reference's peak.
 *
 *
 * Then poly_attention alone (--poly: that section only): its forward and
 * backward kernels at B 512, H 12, L 128 / 512 / 2048, value widths 5 and 42,
 * in each form (quadratic and chunked), with TFLOP/s of the quadratic form's
 * useful work and the fraction of the H200's fp32 peak, so that the switch
 * between the forms (ZOO_POLY_CHUNKED_MIN_T) can be set from measurement.
 *
 *   zoorun bench [--device cuda[:N]] [--steps N] [--warmup N] [--only NAME]
 *                [--quick] [--json FILE] [--profile] [--poly] [--precompile]
 */
#ifndef ZOO_BENCH_H
#define ZOO_BENCH_H

/* argv[0] is "bench". Returns the process exit status. */
int zoo_bench_main(int argc, char **argv);

#endif
