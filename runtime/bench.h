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
 * Beside the measurement, each cell's compute floor: the floating-point work of
 * one optimiser step of the very plan that runs (every GEMM step of the compiled
 * training plan, 2 m n k batch, and poly_attention's forward and backward
 * useful work in the form the plan runs, times the micro-batches), the time it
 * takes at the H200's fp32 peak (67 TFLOP/s, no tensor cores), the best
 * speed-up over the reference that any fp32 implementation of the plan could
 * reach, and the fraction of the measured step that floor is. Norms and
 * elementwise kernels (memory-bound) and softmax_attention are left out.
 * --floor prints the floors alone, no GPU needed (the plans come from the
 * compiler).
 *
 * Then poly_attention alone (--poly: that section only): its forward and
 * backward kernels at B 512, H 12, L 128 / 512 / 2048, value widths 5 and 42,
 * in each form (quadratic and chunked), with TFLOP/s of the quadratic form's
 * useful work and the fraction of the H200's fp32 peak, so that the switch
 * between the forms (ZOO_POLY_CHUNKED_MIN_T) can be set from measurement.
 *
 *   zoorun bench [--device cuda[:N]] [--steps N] [--warmup N] [--only NAME]
 *                [--quick] [--json FILE] [--profile] [--poly] [--precompile]
 *                [--floor]
 */
#ifndef ZOO_BENCH_H
#define ZOO_BENCH_H

#include <stddef.h>

/* The fp32 (non-tensor) peak of one H200 SXM: 67 TFLOP/s, from NVIDIA's H200
 * Tensor Core GPU datasheet (FP32: 67 TFLOPS, H200 SXM column). */
#define ZOO_H200_FP32_TFLOPS 67.0

/* One optimiser step's compute floor (all micro-batches). */
typedef struct zoo_bench_floor {
  double gemm_flop; /* 2 m n k batch over the training plan's GEMM steps */
  double poly_flop; /* poly_attention's forward and backward useful work, in the
                       form the plan runs (quadratic, or chunked from T = 1024) */
  double flop;      /* their sum */
  double floor_ms;  /* flop at ZOO_H200_FP32_TFLOPS */
  int gemms, polys; /* GEMM steps, poly_attention(_bwd) nodes of one micro-batch */
  int chunked;      /* how many of those nodes run the chunked form */
} zoo_bench_floor;

/* The floor of models/<mixer>.zoo at d_model and seq_len, trained as the bench
 * trains it (compact head over the MQAR labels) with micro_batch rows and
 * accum micro-batches per step. Needs no GPU. Returns 0, or -1 with err. */
int zoo_bench_floor_of(const char *mixer, int d_model, int seq_len, int micro_batch, int accum,
                       zoo_bench_floor *f, char *err, size_t errlen);

/* argv[0] is "bench". Returns the process exit status: 0; 1 when a cell or
 * a module failed, the kernel cache could not take what --precompile
 * compiled, or the table or the JSON lines could not be written; 2 on bad
 * usage (numbers are taken whole and range-checked, --only must name a
 * cell's mixer, and a flag that the mode asked for would ignore is refused:
 * --steps with --floor, --json with --precompile, --only with --poly, ...). */
int zoo_bench_main(int argc, char **argv);

#endif
