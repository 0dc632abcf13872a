/* rows.cu: label_rows, gather_rows and scatter_rows (ops.def), the compacted
 * LM head's bookkeeping: the labelled positions of a batch are listed once, the
 * head's rows are gathered from them, and the rows' gradients go back.
 *
 * Shapes: targets, pos i32 [N] (leading axes flattened); idx, tc i32 [M];
 * x, dx [N, D]; y, dy [M, D]. Constants: N, M, D, IGNORE, THREADS.
 *
 * zk_label_rows<N, M, IGNORE, THREADS>: one block of THREADS threads. Thread i
 *   owns the positions [i S, i S + S), S = ceil(N / THREADS): it counts its
 *   labelled ones, the block turns the counts into offsets (an exclusive scan
 *   in shared memory, one warp scan per warp then one over the warp totals),
 *   and the thread writes its rows in order. So row r is the r-th labelled
 *   position, as on the CPU. Rows past the count get idx -1, tc IGNORE; rows
 *   past M are dropped (the backends refuse such a batch before the step).
 * zk_gather_rows<N, M, D>: y[r, d] = x[idx[r], d], 0 for idx[r] < 0; one thread
 *   per element of y.
 * zk_scatter_rows<N, M, D>: dx[j, d] = dy[pos[j], d], 0 for pos[j] < 0; one
 *   thread per element of dx, so dx is written whole and needs no clearing.
 */
#ifndef ZK_ROWS_CU
#define ZK_ROWS_CU

template <zk_i64 N, zk_i64 M, int IGNORE, int THREADS>
__device__ __forceinline__ void zk_label_rows(const int *__restrict__ targets,
                                              int *__restrict__ idx, int *__restrict__ pos,
                                              int *__restrict__ tc) {
  constexpr zk_i64 S = (N + THREADS - 1) / THREADS;
  constexpr int WARPS = THREADS / 32;
  __shared__ int warp_total[WARPS];
  __shared__ int all_total;
  int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  zk_i64 j0 = (zk_i64)tid * S, j1 = j0 + S < N ? j0 + S : N;
  int mine = 0;
  for (zk_i64 j = j0; j < j1; j++) mine += targets[j] != IGNORE;
  /* inclusive scan within the warp, then over the warps' totals */
  int incl = mine;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int v = __shfl_up_sync(ZK_FULL_MASK, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int t = lane < WARPS ? warp_total[lane] : 0, w = t;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int v = __shfl_up_sync(ZK_FULL_MASK, w, o);
      if (lane >= o) w += v;
    }
    if (lane < WARPS) warp_total[lane] = w - t; /* exclusive */
    if (lane == 31) all_total = w;
  }
  __syncthreads();
  zk_i64 r = warp_total[warp] + incl - mine;
  for (zk_i64 j = j0; j < j1; j++) {
    int t = targets[j];
    if (t == IGNORE) {
      pos[j] = -1;
      continue;
    }
    pos[j] = r < M ? (int)r : -1;
    if (r < M) idx[r] = (int)j, tc[r] = t;
    r++;
  }
  for (zk_i64 q = all_total + tid; q < M; q += THREADS) idx[q] = -1, tc[q] = IGNORE;
}

template <zk_i64 N, zk_i64 M, int D>
__device__ __forceinline__ void zk_gather_rows(const float *__restrict__ x,
                                               const int *__restrict__ idx,
                                               float *__restrict__ y) {
  zk_i64 e = (zk_i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= M * D) return;
  zk_i64 r = e / D;
  int d = (int)(e - r * D), j = idx[r];
  y[e] = j >= 0 && j < N ? x[(zk_i64)j * D + d] : 0.0f;
}

template <zk_i64 N, zk_i64 M, int D>
__device__ __forceinline__ void zk_scatter_rows(const float *__restrict__ dy,
                                                const int *__restrict__ pos,
                                                float *__restrict__ dx) {
  zk_i64 e = (zk_i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= N * D) return;
  zk_i64 j = e / D;
  int d = (int)(e - j * D), r = pos[j];
  dx[e] = r >= 0 && r < M ? dy[(zk_i64)r * D + d] : 0.0f;
}

#endif /* ZK_ROWS_CU */
