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
 * allows. S > 1 (split K): the block writes its partial sum to
 * part[z][M][N] for the caller to add. The emitter passes S = 1 and splits
 * K with zk_wgrad below; the K range stays a runtime one (z KC ..), which
 * measured 128 registers at rebased 32/48's K = 32 products where a
 * compile-time range took 158. Every sum has a fixed order: the same bits on
 * every run.
 *
 * zk_wgrad<M, N, K, S, GS>(a, b, c, part, counters): C = A^T B for the weight
 * gradients (TA = 1, TB = 0: a [K][M], b [K][N]; C small, K the batch's rows,
 * where cuBLASLt took 16-54 us for products that read 5-70 MB), in one
 * launch. Grid (ceil(N / 32), ceil(M / 32), S): a block makes a 32 x 32 tile
 * of C over rows [z KC, z KC + KC) of K, KC = ceil(K / S), in stages of 64
 * rows: the next stage's 64 rows of a's and b's 32 columns are read into
 * registers (16-byte reads where M, N are multiples of 4, two of each a
 * thread) while the current one, in shared memory, is used. Warp w takes rows
 * 8 w .. 8 w + 7 of a stage: lane (mi, ni) = (lane / 4, lane % 4) holds C's
 * rows 4 mi .. 4 mi + 3 by columns 8 ni .. 8 ni + 7 (three 16-byte shared
 * reads a row for 32 fused multiply-adds). The 8 warps' tiles are added in
 * warp order through shared memory and the
 * block's partial tile goes to part[z][M][N]. Then a two-level reduction in
 * fixed order: the blocks of each group of GS consecutive z count themselves
 * on the group's counter, and the group's last block adds its GS partials in
 * order of z into the group's first slot; the last group to finish adds the
 * groups' sums in group order into C. So no block reads more than max(GS,
 * ceil(S / GS)) tiles, and the bits do not depend on timing. The counters,
 * ceil(S / GS) + 1 per tile (ZOO_ARG_COUNTER, zero before the launch), are put
 * back to zero.
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

/* 4 floats of row k of x (row length L) from column j: one 16-byte read
 * where L is a multiple of 4, zeros past the edges. */
template <int L>
__device__ __forceinline__ zk_f4 zk_wgrad_load4(const float *__restrict__ x, int k, int ke, int j) {
  if (k >= ke) return zk_f4{0.0f, 0.0f, 0.0f, 0.0f};
  const float *row = x + (zk_i64)k * L;
  if (L % 4 == 0 && j + 3 < L) return *reinterpret_cast<const zk_f4 *>(row + j);
  return zk_f4{j < L ? row[j] : 0.0f, j + 1 < L ? row[j + 1] : 0.0f, j + 2 < L ? row[j + 2] : 0.0f,
               j + 3 < L ? row[j + 3] : 0.0f};
}

/* dst[e] = sum over the slots z = z0 + D g < z1 (g < G) of part[z][e], in
 * order of z, for the tile's elements e (the block's 256 threads, 4 elements
 * each, all G loads of an element in flight together). */
template <int M, int N, int G, int D>
__device__ __forceinline__ void zk_wgrad_sum(const float *__restrict__ part, int z0, int z1,
                                             float *__restrict__ dst) {
  const int tm = blockIdx.y * 32, tn = blockIdx.x * 32;
  zk_i64 at[4];
  bool in[4];
  float s[4];
#pragma unroll
  for (int q = 0; q < 4; q++) {
    int e = threadIdx.x + 256 * q, m = tm + e / 32, n = tn + e % 32;
    in[q] = m < M && n < N;
    at[q] = in[q] ? (zk_i64)m * N + n : 0;
    s[q] = 0.0f;
  }
#pragma unroll
  for (int g = 0; g < G; g++)
#pragma unroll
    for (int q = 0; q < 4; q++)
      if (z0 + D * g < z1 && in[q]) s[q] += __ldcg(part + (zk_i64)(z0 + D * g) * M * N + at[q]);
#pragma unroll
  for (int q = 0; q < 4; q++)
    if (in[q]) dst[at[q]] = s[q];
}

template <int M, int N, int K, int S, int GS>
__device__ __forceinline__ void zk_wgrad(const float *__restrict__ a, const float *__restrict__ b,
                                         float *__restrict__ c, float *__restrict__ part,
                                         unsigned *__restrict__ counters) {
  constexpr int KC = (K + S - 1) / S, NG = (S + GS - 1) / GS, RB = 64;
  /* staging: [buffer][A, B][RB rows][32]; after the rows, the warps' tiles
   * [8][32 x 33] for their sum */
  __align__(16) __shared__ float sh[8 * 32 * 33];
  static_assert(2 * 2 * RB * 32 <= 8 * 32 * 33, "zk_wgrad: staging fits");
  __shared__ bool last;
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5, mi = lane >> 2, ni = lane & 3;
  const int z = blockIdx.z, kb = z * KC, ke = kb + KC < K ? kb + KC : K;
  const int tm = blockIdx.y * 32, tn = blockIdx.x * 32;

  /* a stage: RB rows of A's and B's 32 columns, element e = t + 256 l of each
   * (l < 2): row e / 8, columns 4 (e % 8) .. + 3 */
  zk_f4 ra[2], rb[2];
  auto load = [&](int k0) {
#pragma unroll
    for (int l = 0; l < 2; l++) {
      int e = t + 256 * l, r = e / 8, c4 = 4 * (e % 8);
      ra[l] = zk_wgrad_load4<M>(a, k0 + r, ke, tm + c4);
      rb[l] = zk_wgrad_load4<N>(b, k0 + r, ke, tn + c4);
    }
  };
  auto store = [&](int buf) {
    float *as = sh + buf * 2 * RB * 32, *bs = as + RB * 32;
#pragma unroll
    for (int l = 0; l < 2; l++) {
      int e = t + 256 * l;
      *reinterpret_cast<zk_f4 *>(as + 4 * e) = ra[l];
      *reinterpret_cast<zk_f4 *>(bs + 4 * e) = rb[l];
    }
  };

  float acc[4][8];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 8; j++) acc[i][j] = 0.0f;
  int buf = 0;
  if (kb < ke) {
    load(kb);
    store(0);
  }
  __syncthreads();
  for (int k0 = kb; k0 < ke; k0 += RB) {
    bool more = k0 + RB < ke;
    if (more) load(k0 + RB);
    const float *as = sh + buf * 2 * RB * 32, *bs = as + RB * 32;
#pragma unroll
    for (int rr = 0; rr < RB / 8; rr++) { /* warp w: rows 8 w .. 8 w + 7 (zeros past ke) */
      int r = 8 * warp + rr;
      zk_f4 fa = *reinterpret_cast<const zk_f4 *>(as + r * 32 + 4 * mi);
      zk_f4 f0 = *reinterpret_cast<const zk_f4 *>(bs + r * 32 + 8 * ni);
      zk_f4 f1 = *reinterpret_cast<const zk_f4 *>(bs + r * 32 + 8 * ni + 4);
      float va[4] = {fa.x, fa.y, fa.z, fa.w}, vb[8] = {f0.x, f0.y, f0.z, f0.w, f1.x, f1.y, f1.z, f1.w};
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = fmaf(va[i], vb[j], acc[i][j]);
    }
    if (more) store(buf ^ 1);
    __syncthreads();
    buf ^= 1;
  }
  float(*red)[32 * 33] = reinterpret_cast<float(*)[32 * 33]>(sh);
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 8; j++) red[warp][(4 * mi + i) * 33 + 8 * ni + j] = acc[i][j];
  __syncthreads();
#pragma unroll
  for (int q = 0; q < 4; q++) {
    int e = t + 256 * q, m = tm + e / 32, n = tn + e % 32;
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < 8; w++) v += red[w][(e / 32) * 33 + e % 32];
    if (m < M && n < N) part[(zk_i64)z * M * N + (zk_i64)m * N + n] = v;
  }

  /* the group's last block adds the group's partials into its first slot */
  unsigned *ctr = counters + (blockIdx.y * gridDim.x + blockIdx.x) * (NG + 1);
  const int g = z / GS, z0 = g * GS, z1 = z0 + GS < S ? z0 + GS : S;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(ctr + g, 1u) == (unsigned)(z1 - z0 - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  zk_wgrad_sum<M, N, GS, 1>(part, z0, z1, NG == 1 ? c : part + (zk_i64)z0 * M * N);
  if (threadIdx.x == 0) ctr[g] = 0;
  if (NG == 1) return;
  /* the last group's: the groups' sums into C */
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(ctr + NG, 1u) == NG - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  zk_wgrad_sum<M, N, NG, GS>(part, 0, S, c);
  if (threadIdx.x == 0) ctr[NG] = 0;
}

#endif /* ZK_GEMM_CU */
