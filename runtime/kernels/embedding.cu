/* embedding.cu: embedding (gather) and embedding_bwd (scatter-add) (ops.def).
 *
 * Shapes: w, dw [V, D]; ids i32 [N] (leading axes flattened); y, dy [N, D].
 * Constants: V, D. One thread per element of y (or dy), 256-thread blocks,
 * grid ceil(N D / 256); consecutive threads take consecutive columns, so the
 * loads and stores are coalesced.
 *
 * zk_embedding_fwd<V, D>: y[n, d] = w[ids[n], d]. An id outside [0, V) (which
 *   the data layer rejects before a step) reads nothing and gives a zero row.
 * zk_embedding_bwd<V, D>: dw[ids[n], d] += dy[n, d] with atomicAdd, into a dw
 *   that the emitter clears first (a ZOO_STEP_ZERO step). The order of the
 *   additions is not fixed, so dw can differ from run to run in the last bits.
 */
#ifndef ZK_EMBEDDING_CU
#define ZK_EMBEDDING_CU

template <int V, int D>
__device__ __forceinline__ void zk_embedding_fwd(const float *__restrict__ w,
                                                 const int *__restrict__ ids,
                                                 float *__restrict__ y, zk_i64 N) {
  zk_i64 e = (zk_i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= N * D) return;
  zk_i64 n = e / D;
  int d = (int)(e - n * D);
  int id = ids[n];
  y[e] = (id >= 0 && id < V) ? w[(zk_i64)id * D + d] : 0.0f;
}

template <int V, int D>
__device__ __forceinline__ void zk_embedding_bwd(const float *__restrict__ dy,
                                                 const int *__restrict__ ids,
                                                 float *__restrict__ dw, zk_i64 N) {
  zk_i64 e = (zk_i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= N * D) return;
  zk_i64 n = e / D;
  int d = (int)(e - n * D);
  int id = ids[n];
  if (id >= 0 && id < V) atomicAdd(&dw[(zk_i64)id * D + d], dy[e]);
}

#endif /* ZK_EMBEDDING_CU */
