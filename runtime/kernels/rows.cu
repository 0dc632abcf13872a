/* rows.cu: label_rows, gather_rows and scatter_rows (ops.def), the compacted
 * LM head's bookkeeping: the labelled positions of a batch are listed once, the
 * head's rows are gathered from them, and the rows' gradients go back.
 *
 * Shapes: targets, pos i32 [N] (leading axes flattened); idx, tc i32 [M];
 * x, dx [N, D]; y, dy [M, D]. Constants: N, M, D, IGNORE and the tiling.
 *
 * label_rows, two kernels over tiles of TILE positions (TILES of them), sharing
 *   scratch counts [TILES] ints:
 *   zk_label_count<N, IGNORE, TILE>: block b counts tile b's labelled positions.
 *   zk_label_write<N, M, IGNORE, TILE, PER, TILES>: block b adds up the counts
 *     of the tiles before it, scans its own tile (each thread PER consecutive
 *     positions; zk_block_exscan_int) and writes its rows in order. So row r is the r-th labelled position, as on the CPU.
 *     Rows past the total get idx -1, tc IGNORE; rows past M are dropped (the
 *     backends refuse such a batch before the step).
 * zk_gather_rows<N, M, D>: y[r, d] = x[idx[r], d], 0 for idx[r] < 0; one thread
 *   per element of y.
 * zk_scatter_rows<N, M, D>: dx[j, d] = dy[pos[j], d], 0 for pos[j] < 0; one
 *   thread per element of dx, so dx is written whole and needs no clearing.
 */
#ifndef ZK_ROWS_CU
#define ZK_ROWS_CU

/* Pass 1: counts[b] = labelled positions of tile b. */
template <zk_i64 N, int IGNORE, int TILE>
__device__ __forceinline__ void zk_label_count(const int *__restrict__ targets,
                                               int *__restrict__ counts) {
  __shared__ int sh[32];
  zk_i64 b = blockIdx.x;
  int n = 0;
  for (zk_i64 j = b * TILE + threadIdx.x; j < (b + 1) * TILE && j < N; j += blockDim.x)
    n += targets[j] != IGNORE;
  n = zk_block_sum_int(n, sh);
  if (threadIdx.x == 0) counts[b] = n;
}

/* Pass 2: block b starts at the sum of the earlier tiles' counts and writes
 * its tile's rows in order (a block-wide exclusive scan, TILE = the block's
 * threads times PER positions, each thread PER consecutive ones); every block
 * also pads its share of the rows past the total. */
template <zk_i64 N, zk_i64 M, int IGNORE, int TILE, int PER, zk_i64 TILES>
__device__ __forceinline__ void zk_label_write(const int *__restrict__ targets,
                                               const int *__restrict__ counts,
                                               int *__restrict__ idx, int *__restrict__ pos,
                                               int *__restrict__ tc) {
  __shared__ int sh[33];
  int before = 0, total = 0;
  for (zk_i64 q = threadIdx.x; q < TILES; q += blockDim.x) {
    int c = counts[q];
    total += c;
    if (q < (zk_i64)blockIdx.x) before += c;
  }
  before = zk_block_sum_int(before, sh);
  total = zk_block_sum_int(total, sh);
  zk_i64 j0 = (zk_i64)blockIdx.x * TILE + (zk_i64)threadIdx.x * PER;
  int t[PER], mine = 0, in_tile;
#pragma unroll
  for (int k = 0; k < PER; k++) {
    t[k] = j0 + k < N ? targets[j0 + k] : IGNORE;
    mine += t[k] != IGNORE;
  }
  zk_i64 r = (zk_i64)before + zk_block_exscan_int(mine, sh, &in_tile);
#pragma unroll
  for (int k = 0; k < PER; k++) {
    zk_i64 j = j0 + k;
    if (j >= N) break;
    if (t[k] == IGNORE) {
      pos[j] = -1;
      continue;
    }
    pos[j] = r < M ? (int)r : -1;
    if (r < M) idx[r] = (int)j, tc[r] = t[k];
    r++;
  }
  for (zk_i64 q = total + (zk_i64)blockIdx.x * blockDim.x + threadIdx.x; q < M;
       q += (zk_i64)gridDim.x * blockDim.x)
    idx[q] = -1, tc[q] = IGNORE;
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
