/* gemm_tn.cu: c = a^T b with a long K and a small output: the weight gradients
 * of the projections (matmul with its first operand transposed, ops.def), a
 * [K, M], b [K, N], c [M, N], K the batch's B T rows. cuBLASLt runs these on a
 * few blocks (19 to 27 us for m, n <= 192, k = 24576 on the H200); here K is
 * split over the blocks.
 *
 * zk_gemm_tn_part<M, N, TX, KC>: grid P = ceil(K / KC) blocks of 256 threads;
 *   block p adds rows [p KC, p KC + KC) into part[p][M N]. Slices of 32 rows of
 *   a and b are staged in shared memory; thread (ty, tx), TY = 256 / TX rows by
 *   TX columns of threads (the emitter picks TX so that a thread's tile is
 *   about square), holds the outputs (ty + TY i, tx + TX j) in registers and
 *   per row reads ceil(M / TY) values of a and ceil(N / TX) of b (broadcast)
 *   for their products. Static shared memory: 32 (M + N) floats.
 * Then zk_finish_partials or zk_sum_partials<P, M N, M N> (common.cu) add the
 * blocks' partials in block order: the result is deterministic.
 */
#ifndef ZK_GEMM_TN_CU
#define ZK_GEMM_TN_CU

template <int M, int N, int TX, int KC>
__device__ __forceinline__ void zk_gemm_tn_part(const float *__restrict__ a,
                                                const float *__restrict__ b,
                                                float *__restrict__ part, zk_i64 K) {
  constexpr int NT = 256, KB = 32, TY = NT / TX;
  constexpr int MT = (M + TY - 1) / TY, NTL = (N + TX - 1) / TX;
  __shared__ float as[KB * M], bs[KB * N];
  int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
  float acc[MT][NTL];
#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int j = 0; j < NTL; j++) acc[i][j] = 0.0f;
  zk_i64 r0 = (zk_i64)blockIdx.x * KC, r1 = r0 + KC < K ? r0 + KC : K;
  for (zk_i64 k0 = r0; k0 < r1; k0 += KB) {
    int kn = r1 - k0 < KB ? (int)(r1 - k0) : KB;
    for (int e = threadIdx.x; e < KB * M; e += NT) as[e] = e < kn * M ? a[k0 * M + e] : 0.0f;
    for (int e = threadIdx.x; e < KB * N; e += NT) bs[e] = e < kn * N ? b[k0 * N + e] : 0.0f;
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < KB; kk++) {
      float av[MT], bv[NTL];
#pragma unroll
      for (int i = 0; i < MT; i++) av[i] = ty + TY * i < M ? as[kk * M + ty + TY * i] : 0.0f;
#pragma unroll
      for (int j = 0; j < NTL; j++) bv[j] = tx + TX * j < N ? bs[kk * N + tx + TX * j] : 0.0f;
#pragma unroll
      for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NTL; j++) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
  float *pp = part + (zk_i64)blockIdx.x * M * N;
#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int j = 0; j < NTL; j++) {
      int m = ty + TY * i, n = tx + TX * j;
      if (m < M && n < N) pp[m * N + n] = acc[i][j];
    }
}

#endif /* ZK_GEMM_TN_CU */
