/* embedding.cu: embedding (gather) and embedding_bwd (scatter-add) (ops.def).
 *
 * Shapes: w, dw [V, D]; ids i32 [N] (leading axes flattened); y, dy [N, D].
 * Constants: V, D, P. Consecutive threads take consecutive columns, so loads
 * and stores are coalesced. An id outside [0, V) (which the data layer rejects
 * before a step) reads and writes nothing.
 *
 * zk_embedding_fwd<V, D>: y[n, d] = w[ids[n], d] (a zero row for a bad id).
 *   One thread per element of y, 256-thread blocks, grid ceil(N D / 256).
 * zk_embedding_bwd<V, D, P>: dw[ids[n], d] += dy[n, d], into a dw that the
 *   emitter clears first (a ZOO_STEP_ZERO step). Grid P blocks of 256 threads;
 *   block p takes rows [p R, p R + R), R = ceil(N / P). Its threads form
 *   G = 256 / CW groups of CW = min(D, 256) columns; group g walks a contiguous
 *   share of the block's rows in order, summing dy while the id stays the same
 *   and adding the sum with one atomicAdd when it changes. MQAR batches are
 *   mostly token 0 in long runs, so this takes most atomics off the hot rows.
 *   The order of the additions is not fixed: dw can differ from run to run in
 *   the last bits.
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

template <int V, int D, int P>
__device__ __forceinline__ void zk_embedding_bwd(const float *__restrict__ dy,
                                                 const int *__restrict__ ids,
                                                 float *__restrict__ dw, zk_i64 N) {
  constexpr int CW = D < 256 ? D : 256, G = 256 / CW, CPT = (D + CW - 1) / CW;
  int g = threadIdx.x / CW, c0 = threadIdx.x % CW;
  if (g >= G) return;
  zk_i64 R = (N + P - 1) / P, RG = (R + G - 1) / G;
  zk_i64 r0 = (zk_i64)blockIdx.x * R + g * RG, r1 = r0 + RG;
  zk_i64 end = (zk_i64)blockIdx.x * R + R;
  if (r1 > end) r1 = end;
  if (r1 > N) r1 = N;
  float acc[CPT];
#pragma unroll
  for (int j = 0; j < CPT; j++) acc[j] = 0.0f;
  int cur = -1; /* the id being summed, -1 before the first row */
  for (zk_i64 n = r0; n < r1; n++) {
    int id = ids[n];
    if (id != cur) {
      if (cur >= 0 && cur < V) {
#pragma unroll
        for (int j = 0; j < CPT; j++) {
          int c = c0 + CW * j;
          if (c < D) atomicAdd(&dw[(zk_i64)cur * D + c], acc[j]);
          acc[j] = 0.0f;
        }
      }
      cur = id;
#pragma unroll
      for (int j = 0; j < CPT; j++) acc[j] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < CPT; j++) {
      int c = c0 + CW * j;
      if (c < D) acc[j] += dy[n * D + c];
    }
  }
  if (cur >= 0 && cur < V) {
#pragma unroll
    for (int j = 0; j < CPT; j++) {
      int c = c0 + CW * j;
      if (c < D) atomicAdd(&dw[(zk_i64)cur * D + c], acc[j]);
    }
  }
}

#endif /* ZK_EMBEDDING_CU */
