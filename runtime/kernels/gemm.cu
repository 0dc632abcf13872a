/* gemm.cu: zoo's own fp32 matrix product, a candidate beside cuBLASLt's.
 *
 *   C[M, N] = op(A) op(B) (+ bias[N]),  op(A)[m, k] = TA ? a[k M + m] : a[m K + k],
 *                                        op(B)[k, n] = TB ? b[n K + k] : b[k N + n]
 *
 * for the products a step of zoo's models makes: tall and narrow (M the rows
 * of a batch, N and K a model width, 24 to 512), the tied head's (N or K the
 * vocabulary) and the weight gradients (M and N widths, K the rows). cuBLASLt's
 * fp32 kernels are made for large squares; at K = 32 or N = 24 they run at a
 * tenth of the peak. The backend times this kernel against cuBLASLt's
 * candidates and keeps the faster (runtime/cuda.c, gemm_tune).
 *
 * zk_gemm<M, N, K, TA, TB, BM, BN, BK, TM, TN, S, BIAS>: 256 threads, grid
 * (ceil(N / BN), ceil(M / BM), S). A block makes the BM x BN tile of C at
 * (blockIdx.y BM, blockIdx.x BN) over the block's share of K, [z KC, z KC +
 * KC) with KC = ceil(K / S) rounded up to BK. Thread (ty, tx) (tx < BN / TN)
 * holds the TM x TN values at rows ty TM + i, columns tx TN + j. Per step of
 * BK: the next tiles of A and B are read into registers (scalar loads,
 * consecutive threads on consecutive addresses of either layout, zeros past
 * the edges) while the current ones in shared memory are used, as As[k][m]
 * and Bs[k][n] (two buffers each, rows padded by 4 floats); then stored, one
 * barrier. Each k is TM + TN shared reads (16 bytes at a time) for TM TN
 * fused multiply-adds. S = 1: C = the sum (+ bias), 16-byte stores where N
 * allows. S > 1 (split K, for a small C over a long K): the block writes its
 * partial sum to part[z][M][N], and zk_gemm_sum<M, N, S, BIAS> (one thread per
 * element of C) adds the S parts in order of z (+ bias). Every sum has a fixed
 * order: the same bits on every run.
 *
 * zk_gemm_splitk<..., S, BIAS>(a, b, bias, c, part, counters): the same split
 * of K in one launch, for the weight gradients (C small, K the batch's rows:
 * cuBLASLt took 19-57 us for products that read 5-70 MB). Each block writes
 * its partial tile to part[z][M][N] as above, fences it and counts itself on
 * its tile's counter (counters[blockIdx.y gridDim.x + blockIdx.x], zero before
 * the launch, ZOO_ARG_COUNTER); the tile's last block adds the S partial tiles
 * in order of z (+ bias) into C, each thread 16 elements at a time with the
 * loads of 4 z in flight, and puts the counter back to zero. The emitter picks
 * S so that the blocks' share of K and the last block's S tiles cost about
 * the same to read.
 */
#ifndef ZK_GEMM_CU
#define ZK_GEMM_CU

template <int M, int N, int K, int TA, int TB, int BM, int BN, int BK, int TM, int TN, int S, int BIAS>
__device__ __forceinline__ void zk_gemm(const float *__restrict__ a, const float *__restrict__ b,
                                        const float *__restrict__ bias, float *__restrict__ out) {
  constexpr int NT = 256, TX = BN / TN, BMP = BM + 4, BNP = BN + 4;
  static_assert((BM / TM) * TX == NT, "zk_gemm: the tile needs 256 threads");
  static_assert(TM % 4 == 0 && TN % 4 == 0, "zk_gemm: TM and TN multiples of 4");
  constexpr int LA = BM * BK / NT, LB = BN * BK / NT; /* loads a thread makes per tile */
  static_assert(LA * NT == BM * BK && LB * NT == BN * BK, "zk_gemm: tiles a multiple of 256");
  constexpr int KC = ((K + S - 1) / S + BK - 1) / BK * BK;
  __align__(16) __shared__ float As[2][BK][BMP];
  __align__(16) __shared__ float Bs[2][BK][BNP];
  const int t = threadIdx.x, tx = t % TX, ty = t / TX;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int kb = blockIdx.z * KC, ke = kb + KC < K ? kb + KC : K;

  float ra[LA], rb[LB];
  /* the tiles at k0 into registers: element e = t + NT l, the fast index on
   * the operand's contiguous axis */
  auto load = [&](int k0) {
#pragma unroll
    for (int l = 0; l < LA; l++) {
      int e = t + NT * l, m = TA ? e % BM : e / BK, k = TA ? e / BM : e % BK;
      int gm = m0 + m, gk = k0 + k;
      ra[l] = gm < M && gk < ke ? (TA ? a[(zk_i64)gk * M + gm] : a[(zk_i64)gm * K + gk]) : 0.0f;
    }
#pragma unroll
    for (int l = 0; l < LB; l++) {
      int e = t + NT * l, n = TB ? e / BK : e % BN, k = TB ? e % BK : e / BN;
      int gn = n0 + n, gk = k0 + k;
      rb[l] = gn < N && gk < ke ? (TB ? b[(zk_i64)gn * K + gk] : b[(zk_i64)gk * N + gn]) : 0.0f;
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int l = 0; l < LA; l++) {
      int e = t + NT * l, m = TA ? e % BM : e / BK, k = TA ? e / BM : e % BK;
      As[buf][k][m] = ra[l];
    }
#pragma unroll
    for (int l = 0; l < LB; l++) {
      int e = t + NT * l, n = TB ? e / BK : e % BN, k = TB ? e % BK : e / BN;
      Bs[buf][k][n] = rb[l];
    }
  };

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; i++)
#pragma unroll
    for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;

  int buf = 0;
  if (kb < ke) {
    load(kb);
    store(0);
  }
  __syncthreads();
  for (int k0 = kb; k0 < ke; k0 += BK) {
    bool more = k0 + BK < ke;
    if (more) load(k0 + BK);
#pragma unroll
    for (int k = 0; k < BK; k++) {
      float fa[TM], fb[TN];
#pragma unroll
      for (int i = 0; i < TM; i += 4) {
        zk_f4 v = *reinterpret_cast<const zk_f4 *>(&As[buf][k][ty * TM + i]);
        fa[i] = v.x, fa[i + 1] = v.y, fa[i + 2] = v.z, fa[i + 3] = v.w;
      }
#pragma unroll
      for (int j = 0; j < TN; j += 4) {
        zk_f4 v = *reinterpret_cast<const zk_f4 *>(&Bs[buf][k][tx * TN + j]);
        fb[j] = v.x, fb[j + 1] = v.y, fb[j + 2] = v.z, fb[j + 3] = v.w;
      }
#pragma unroll
      for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = fmaf(fa[i], fb[j], acc[i][j]);
    }
    if (more) store(buf ^ 1);
    __syncthreads();
    buf ^= 1;
  }

  float *c = S > 1 ? out + (zk_i64)blockIdx.z * M * N : out;
#pragma unroll
  for (int i = 0; i < TM; i++) {
    int gm = m0 + ty * TM + i;
    if (gm >= M) break;
    float *row = c + (zk_i64)gm * N;
#pragma unroll
    for (int j = 0; j < TN; j += 4) {
      int gn = n0 + tx * TN + j;
      float v[4];
#pragma unroll
      for (int q = 0; q < 4; q++) v[q] = acc[i][j + q] + (BIAS && S == 1 && gn + q < N ? bias[gn + q] : 0.0f);
      if (N % 4 == 0 && gn + 3 < N) {
        *reinterpret_cast<zk_f4 *>(row + gn) = zk_f4{v[0], v[1], v[2], v[3]};
      } else {
#pragma unroll
        for (int q = 0; q < 4; q++)
          if (gn + q < N) row[gn + q] = v[q];
      }
    }
  }
}

template <int M, int N, int S, int BIAS>
__device__ __forceinline__ void zk_gemm_sum(const float *__restrict__ part, const float *__restrict__ bias,
                                            float *__restrict__ c) {
  zk_i64 e = (zk_i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (zk_i64)M * N) return;
  float s = part[e];
#pragma unroll 4
  for (int z = 1; z < S; z++) s += part[(zk_i64)z * M * N + e];
  if (BIAS) s += bias[e % N];
  c[e] = s;
}

template <int M, int N, int K, int TA, int TB, int BM, int BN, int BK, int TM, int TN, int S, int BIAS>
__device__ __forceinline__ void zk_gemm_splitk(const float *__restrict__ a, const float *__restrict__ b,
                                              const float *__restrict__ bias, float *__restrict__ c,
                                              float *__restrict__ part, unsigned *__restrict__ counters) {
  static_assert(S > 1, "zk_gemm_splitk: S > 1");
  zk_gemm<M, N, K, TA, TB, BM, BN, BK, TM, TN, S, 0>(a, b, bias, part);
  __shared__ bool last;
  __threadfence(); /* this block's partial tile, visible before it is counted */
  __syncthreads();
  unsigned *counter = counters + blockIdx.y * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == S - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  constexpr int E = 16; /* elements of the tile a thread adds up at a time */
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  for (int e0 = threadIdx.x; e0 < BM * BN; e0 += 256 * E) {
    zk_i64 at[E];
    bool in[E];
    float sum[E];
#pragma unroll
    for (int q = 0; q < E; q++) {
      int e = e0 + 256 * q, m = m0 + e / BN, n = n0 + e % BN;
      in[q] = e < BM * BN && m < M && n < N;
      at[q] = in[q] ? (zk_i64)m * N + n : 0;
      sum[q] = 0.0f;
    }
#pragma unroll 4
    for (int z = 0; z < S; z++)
#pragma unroll
      for (int q = 0; q < E; q++)
        if (in[q]) sum[q] += __ldcg(part + (zk_i64)z * M * N + at[q]);
#pragma unroll
    for (int q = 0; q < E; q++)
      if (in[q]) c[at[q]] = sum[q] + (BIAS ? bias[at[q] % N] : 0.0f);
  }
  if (threadIdx.x == 0) *counter = 0;
}

#endif /* ZK_GEMM_CU */
