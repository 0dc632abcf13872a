/* cumsum.cu: cumsum along one axis (ops.def).
 *
 * The tensor is viewed as [OUTER, L, INNER] around the axis (L its length):
 * y[o, l, i] = sum_{k <= l} x[o, k, i]. Constants: OUTER, L, INNER.
 * zk_cumsum<OUTER, L, INNER>: one thread per (o, i) walking l in order with a
 *   double accumulator (as the CPU reference; FP64 is cheap at this size),
 *   256-thread blocks, grid ceil(OUTER INNER / 256). Consecutive threads take
 *   consecutive i, so accesses are coalesced when INNER > 1; along the last
 *   axis (INNER = 1) each thread walks its own row.
 */
#ifndef ZK_CUMSUM_CU
#define ZK_CUMSUM_CU

template <zk_i64 OUTER, zk_i64 L, zk_i64 INNER>
__device__ __forceinline__ void zk_cumsum(const float *__restrict__ x, float *__restrict__ y) {
  zk_i64 oi = (zk_i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (oi >= OUTER * INNER) return;
  zk_i64 o = oi / INNER, i = oi - o * INNER;
  zk_i64 base = o * L * INNER + i;
  double acc = 0.0;
  for (zk_i64 k = 0; k < L; k++) {
    acc += x[base + k * INNER];
    y[base + k * INNER] = (float)acc;
  }
}

#endif /* ZK_CUMSUM_CU */
