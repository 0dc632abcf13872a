/* causal_conv1d.cu: depthwise causal convolution and its backward (ops.def).
 *
 * Shapes: x, y, dy, dx [B, T, C]; w, dw [C, 1, K]; b, db [C]. N = B T rows.
 * Constants: T, C, K, HAS_B, P.
 *   y[b, t, c] = b[c] + sum_j w[c, j] x[b, t - K + 1 + j, c], zeros before t = 0.
 *
 * zk_conv1d_at<T, C, K, HAS_B>(x, w, b, e): output element e (= row C + c),
 *   computed where it is needed: by zk_conv1d_fwd, and inline by the kernel of
 *   an elementwise group that consumes the convolution (compiler/fuse.c, the
 *   op's ZOO_OPF_INLINE), which reads x at t - K + 1 .. t itself.
 *
 * zk_conv1d_fwd<T, C, K, HAS_B>: one thread per output element, 256-thread
 *   blocks, grid ceil(N C / 256); consecutive threads take consecutive c.
 *
 * zk_conv1d_bwd_rows<T, C, K, P>: dx[b, s, c] = sum_j w[c, j] dy[b, s + K-1-j, c]
 *   (terms with s + K-1-j < T), handed to dx(e, value) for element e
 *   (zk_store{ptr}, or a fused kernel's epilogue: compiler/fuse.h), and
 *   per-block partial sums of
 *   dw[c, j] = sum dy[b, t, c] x[b, t-K+1+j, c] and db[c] = sum dy[b, t, c].
 *   Grid P blocks of 256 threads; block p takes rows [p R, p R + R) with
 *   R = ceil(N / P). Threads form a CX x RS grid: CX = min(C, 256) columns,
 *   RS = 256 / CX row slots; thread (cx, rs) owns columns cx, cx + CX, ... and
 *   rows rs, rs + RS, ... of the block's range, summing in registers. The row
 *   slots are added in order through shared memory (deterministic) into
 *   part[p][C K + C]: dw at c K + j, db at C K + c. Dynamic shared memory:
 *   C (K + 1) floats. Then zk_finish_partials or zk_sum_partials<P, C(K+1), CK>: dw, db.
 */
#ifndef ZK_CAUSAL_CONV1D_CU
#define ZK_CAUSAL_CONV1D_CU

template <int T, int C, int K, bool HAS_B>
__device__ __forceinline__ float zk_conv1d_at(const float *__restrict__ x,
                                              const float *__restrict__ w,
                                              const float *__restrict__ bias, zk_i64 e) {
  zk_i64 row = e / C;
  int c = (int)(e - row * C);
  int t = (int)(row % T);
  float acc = HAS_B ? bias[c] : 0.0f;
#pragma unroll
  for (int j = 0; j < K; j++) {
    int s = t - K + 1 + j;
    if (s >= 0) acc += w[c * K + j] * x[e + (zk_i64)(j - K + 1) * C];
  }
  return acc;
}

template <int T, int C, int K, bool HAS_B>
__device__ __forceinline__ void zk_conv1d_fwd(const float *__restrict__ x,
                                              const float *__restrict__ w,
                                              const float *__restrict__ bias,
                                              float *__restrict__ y, zk_i64 N) {
  zk_i64 e = (zk_i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= N * C) return;
  y[e] = zk_conv1d_at<T, C, K, HAS_B>(x, w, bias, e);
}

template <int T, int C, int K, int P, class StoreDx>
__device__ __forceinline__ void zk_conv1d_bwd_rows(const float *__restrict__ dy,
                                                   const float *__restrict__ x,
                                                   const float *__restrict__ w, StoreDx dx,
                                                   float *__restrict__ part, zk_i64 N) {
  constexpr int NT = 256;
  constexpr int CX = C < NT ? C : NT;
  constexpr int RS = NT / CX;
  constexpr int CPT = (C + CX - 1) / CX; /* columns per thread */
  extern __shared__ float zk_conv_sh[]; /* [C K + C] */
  int cx = threadIdx.x % CX, rs = threadIdx.x / CX;
  zk_i64 R = (N + P - 1) / P;
  zk_i64 r0 = (zk_i64)blockIdx.x * R, r1 = r0 + R < N ? r0 + R : N;
  float pw[CPT][K], pb[CPT];
#pragma unroll
  for (int q = 0; q < CPT; q++) {
    pb[q] = 0.0f;
#pragma unroll
    for (int j = 0; j < K; j++) pw[q][j] = 0.0f;
  }
  if (rs < RS) {
    for (zk_i64 row = r0 + rs; row < r1; row += RS) {
      int t = (int)(row % T);
#pragma unroll
      for (int q = 0; q < CPT; q++) {
        int c = cx + q * CX;
        if (c >= C) continue;
        zk_i64 e = row * C + c;
        float d = dy[e];
        pb[q] += d;
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < K; j++) {
          if (t - K + 1 + j >= 0) pw[q][j] += d * x[e + (zk_i64)(j - K + 1) * C];
          if (t + K - 1 - j < T) acc += w[c * K + j] * dy[e + (zk_i64)(K - 1 - j) * C];
        }
        dx(e, acc);
      }
    }
  }
  for (int m = threadIdx.x; m < C * K + C; m += blockDim.x) zk_conv_sh[m] = 0.0f;
  __syncthreads();
  for (int s = 0; s < RS; s++) {
    if (rs == s) {
#pragma unroll
      for (int q = 0; q < CPT; q++) {
        int c = cx + q * CX;
        if (c >= C) continue;
#pragma unroll
        for (int j = 0; j < K; j++) zk_conv_sh[c * K + j] += pw[q][j];
        zk_conv_sh[C * K + c] += pb[q];
      }
    }
    __syncthreads();
  }
  for (int m = threadIdx.x; m < C * K + C; m += blockDim.x)
    part[(zk_i64)blockIdx.x * (C * K + C) + m] = zk_conv_sh[m];
}

#endif /* ZK_CAUSAL_CONV1D_CU */
