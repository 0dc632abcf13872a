/* linear_cross_entropy_step.cu: the compacted LM head's training step with the
 * logits never in memory (ops.def): logits = h w^T, (loss, metrics, dlogits) =
 * cross_entropy_step(logits, targets, dloss) and dh = dlogits w, for small D.
 * Needs cross_entropy.cu (zk_ce_count, zk_ce_step_finish), pasted before it.
 *
 * Shapes: h, dh [M, D]; w [V, D]; targets i32 [M]; dlogits [M, V]. Constants:
 * D (a multiple of 4, at most 64), V (a multiple of BN = 128), BM (rows per
 * block: 16, 32, 48 or 64; the emitter picks it), IGNORE; M is an argument.
 * Three launches, with cross_entropy_step's scratch (count, rowloss [M], hit
 * [M]): zk_ce_count (the labelled rows, for the gradient's scale), then
 * zk_lcs_rows, then zk_ce_step_finish (loss and metrics).
 *
 * zk_lcs_rows<D, V, BM, IGNORE, G, DH>: 256 threads, grid ceil(M / BM). A
 * block keeps its BM rows of h in shared memory, transposed (hs [D][16 TMP]),
 * and sweeps the vocabulary twice in tiles of BN columns; each tile of w is
 * staged transposed (ws [DP][BNP], BNP = BN + 4: 16-byte rows, consecutive
 * rows 4 banks apart) in one of two buffers, the next tile read into
 * registers while the current one is used (one barrier a tile in pass 1, two
 * in pass 2).
 *
 * Logits, register tiles: thread (ry, cx), ry, cx < 16 (a warp is 4 ry x 8
 * cx; warps 2q and 2q + 1 share rows), holds the tile's rows ry TM + i (TM =
 * BM / 16, i < TM) and columns cx 4 + j, 64 + cx 4 + j (j < 4). Per step of d,
 * in order: TM values of h (one read, one address per ry; ry's rows start
 * TMP = TM rounded to 1, 2 or 4 floats apart) and two 16-byte reads of w (one
 * wavefront each) for 8 TM fused multiply-adds. Both passes run the same code,
 * so they make the same bits.
 *
 * Pass 1: per row and thread an online (max, sum of exp) (zk_row_scan's, a
 * tile's 8 values at a time), the first maximum of the thread's columns (seen
 * in increasing order) and the target's logit (0 unless the thread owns it),
 * merged over the row's 8 lanes (xor 1, 2, 4) and then over its two warps, in
 * that order: lse = max + log(sum), rowloss = lse - logit[target] and hit =
 * (first maximum == target), both 0 on ignored rows and rows past M.
 * Exponentials are exp2f(l log2(e) - x log2(e)), one fused multiply-add
 * before the hardware's exp2 (fp32, within a few ulps of expf).
 * Pass 2 (G or DH): per tile the logits again, g = dloss / count exp(l - lse),
 * less dloss / count at the target (zeros on ignored rows), as
 * zk_ce_grad_row; G stores g to dlogits (16-byte stores), DH puts it into
 * shared memory gs [BM][BNP] for dh += g w_tile: thread group kg (KS groups of
 * 16 DX threads) takes the tile's columns [kg KR, kg KR + KR) and holds dh's
 * rows ry2 + 16 i (i < TM) by columns dx C2 + j (j < C2 = min(8, DP)), four
 * columns of g and of w per 16-byte read (DP: D rounded up to a power of 2,
 * w's rows D .. DP - 1 zeros). At the end the KS partial sums go through
 * shared memory and are added in order of kg. Every sum has a fixed order: the results do not depend on
 * timing.
 * A block whose rows are all ignored (the compacted head's unused rows) writes
 * zeros and skips the sweeps.
 *
 * Cost at M = 6144, V = 8192, D = 32: 3.2 GFLOP in pass 1 and 6.4 in pass 2,
 * 201 MB of dlogits written, w read from L2 twice per block (BM = 48: 128
 * blocks, one wave on 132 SMs). One block per SM (__launch_bounds__(256, 1)):
 * about 160 registers at D = 32 and 220 at D = 64 without spills (capped at
 * 128 for two blocks, ptxas spills), 69 KB of dynamic shared memory at D = 32,
 * BM = 48 (zk_lcs_smem). Per logit about 38 instructions in pass 1 and 71 in
 * pass 2 for 32 and 64 fused multiply-adds (D = 32): at best 80% of the fp32
 * peak. Faster later: TF32 tensor cores (mma.sync) for both products where
 * fp32 accuracy is not asked for; cp.async for the w tiles.
 */
#ifndef ZK_LINEAR_CROSS_ENTROPY_STEP_CU
#define ZK_LINEAR_CROSS_ENTROPY_STEP_CU

#define ZK_LCS_NT 256
#define ZK_LCS_BN 128
#define ZK_LCS_BNP 132

/* The tile column of a thread's logit j (j < 8), past its cx 4. */
__host__ __device__ constexpr int zk_lcs_col(int j) { return j < 4 ? j : 60 + j; }

/* D rounded up to a power of 2 (at least 4): the dh tile's width. */
__host__ __device__ constexpr int zk_lcs_dp(int d) { return d <= 4 ? 4 : d <= 8 ? 8 : d <= 16 ? 16 : d <= 32 ? 32 : 64; }

/* Where ry's rows start in a row of hs: TM rounded to a 1-, 2- or 4-float read. */
__host__ __device__ constexpr int zk_lcs_tmp(int tm) { return tm == 3 ? 4 : tm; }

/* Dynamic shared memory (floats): hs, two ws, gs (DH), the statistics of both
 * halves of each row [2][5][BM] and lse [BM]; the emitter mirrors it
 * (lcs_smem in codegen_intrinsics.c). */
template <int D, int BM, bool DH>
__host__ __device__ constexpr int zk_lcs_smem() {
  return D * 16 * zk_lcs_tmp(BM / 16) + 2 * zk_lcs_dp(D) * ZK_LCS_BNP + (DH ? BM * ZK_LCS_BNP : 0) + 11 * BM;
}

/* TM consecutive floats of shared memory, in one read. */
template <int TM>
struct zk_lcs_ldh {
  static __device__ __forceinline__ void run(float (&a)[TM], const float *p) {
#pragma unroll
    for (int i = 0; i < TM; i++) a[i] = p[i];
  }
};
template <>
struct zk_lcs_ldh<2> {
  static __device__ __forceinline__ void run(float (&a)[2], const float *p) {
    zk_f2 t = *(const zk_f2 *)p;
    a[0] = t.x, a[1] = t.y;
  }
};
template <>
struct zk_lcs_ldh<3> {
  static __device__ __forceinline__ void run(float (&a)[3], const float *p) {
    zk_f4 t = *(const zk_f4 *)p;
    a[0] = t.x, a[1] = t.y, a[2] = t.z;
  }
};
template <>
struct zk_lcs_ldh<4> {
  static __device__ __forceinline__ void run(float (&a)[4], const float *p) {
    zk_f4 t = *(const zk_f4 *)p;
    a[0] = t.x, a[1] = t.y, a[2] = t.z, a[3] = t.w;
  }
};

/* The w tile's float4s this thread moves: 32 D of them over the block. */
__host__ __device__ constexpr int zk_lcs_npf(int d) { return (32 * d + ZK_LCS_NT - 1) / ZK_LCS_NT; }

/* The float4 e of a w tile (e < 32 D): its row c of the tile and columns
 * 4 d4 .. + 4. Where D is a multiple of 8, lanes 2 l and 2 l + 1 take the two
 * halves of a 32-byte sector of one row (whole sectors from L2), and the
 * transposed stores of a warp, rows 16 apart in d4 and 16 consecutive columns,
 * meet 32 different banks; else lanes take consecutive rows. */
template <int D>
__device__ __forceinline__ void zk_lcs_piece(int e, int &c, int &d4) {
  if (D % 8 == 0) {
    c = (e >> 1) % ZK_LCS_BN, d4 = 2 * ((e >> 1) / ZK_LCS_BN) + (e & 1);
  } else {
    c = e % ZK_LCS_BN, d4 = e / ZK_LCS_BN;
  }
}

/* Reads tile `tile` of w (rows tile BN .. + BN) into registers: float4
 * threadIdx.x + k NT of it at step k. */
template <int D>
__device__ __forceinline__ void zk_lcs_fetch(zk_f4 (&pf)[zk_lcs_npf(D)], const float *__restrict__ w, int tile) {
#pragma unroll
  for (int k = 0; k < zk_lcs_npf(D); k++) {
    int e = threadIdx.x + k * ZK_LCS_NT, c, d4;
    zk_lcs_piece<D>(e, c, d4);
    if (e < 32 * D) pf[k] = *(const zk_f4 *)(w + ((zk_i64)tile * ZK_LCS_BN + c) * D + 4 * d4);
  }
}

/* ... and from registers into ws [DP][BNP], transposed. */
template <int D>
__device__ __forceinline__ void zk_lcs_put(const zk_f4 (&pf)[zk_lcs_npf(D)], float *wb) {
#pragma unroll
  for (int k = 0; k < zk_lcs_npf(D); k++) {
    int e = threadIdx.x + k * ZK_LCS_NT, c, d4;
    zk_lcs_piece<D>(e, c, d4);
    if (e < 32 * D) {
      float *p = wb + 4 * d4 * ZK_LCS_BNP + c;
      p[0] = pf[k].x;
      p[ZK_LCS_BNP] = pf[k].y;
      p[2 * ZK_LCS_BNP] = pf[k].z;
      p[3 * ZK_LCS_BNP] = pf[k].w;
    }
  }
}

/* acc[i][j] = sum over d, in order, of h(ry TM + i, d) w(column j, d) for the
 * thread's rows and columns (see the top), by fused multiply-adds. */
template <int D, int TM>
__device__ __forceinline__ void zk_lcs_logits(float (&acc)[TM][8], const float *hs, const float *wb, int ry,
                                              int cx) {
  constexpr int HW = 16 * zk_lcs_tmp(TM);
#pragma unroll
  for (int i = 0; i < TM; i++)
#pragma unroll
    for (int j = 0; j < 8; j++) acc[i][j] = 0.0f;
  const float *hp = hs + ry * zk_lcs_tmp(TM), *wp = wb + cx * 4;
#pragma unroll 4
  for (int d = 0; d < D; d++) {
    float a[TM];
    zk_lcs_ldh<TM>::run(a, hp + d * HW);
    zk_f4 b0 = *(const zk_f4 *)(wp + d * ZK_LCS_BNP), b1 = *(const zk_f4 *)(wp + d * ZK_LCS_BNP + 64);
    float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
      for (int j = 0; j < 8; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

template <int D, int V, int BM, int IGNORE, bool G, bool DH>
__device__ __forceinline__ void zk_lcs_rows(const float *__restrict__ h, const float *__restrict__ w,
                                            const int *__restrict__ targets, const float *__restrict__ dloss,
                                            const float *__restrict__ count, float *__restrict__ rowloss,
                                            int *__restrict__ hit, float *__restrict__ dlogits,
                                            float *__restrict__ dh, int M) {
  static_assert(D % 4 == 0 && D >= 4 && D <= 64 && V % ZK_LCS_BN == 0, "D, V");
  static_assert(BM % 16 == 0 && BM >= 16 && BM <= 64, "BM");
  constexpr int TM = BM / 16, TMP = zk_lcs_tmp(TM), HW = 16 * TMP, DP = zk_lcs_dp(D);
  constexpr int NTILE = V / ZK_LCS_BN, BNP = ZK_LCS_BNP, WBUF = DP * BNP;
  constexpr bool PASS2 = G || DH;
  /* the dh product's groups (see the top) */
  constexpr int C2 = DP < 8 ? DP : 8, DX = DP / C2, KS = ZK_LCS_NT / (16 * DX), KR = ZK_LCS_BN / KS;
  static_assert(!DH || KS * BM * DP <= 2 * WBUF + BM * BNP, "partial sums fit in ws and gs");
  extern __shared__ float zk_lcs_sh[];
  float *hs = zk_lcs_sh, *ws = hs + D * HW, *gs = ws + 2 * WBUF;
  float *st = gs + (DH ? BM * BNP : 0), *lse_s = st + 10 * BM; /* st [2][5][BM]: m, s, best, arg, xt */
  int tid = threadIdx.x, lane = tid & 31, wi = tid >> 5;
  int ry = (wi >> 1) * 4 + (lane >> 3), cx = (wi & 1) * 8 + (lane & 7);
  zk_i64 row0 = (zk_i64)blockIdx.x * BM;

  if (!zk_ce_any_labelled<IGNORE>(targets, row0, BM, M)) {
    if (G) {
      zk_f4 z = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int e = tid; e < BM * (V / 4); e += ZK_LCS_NT) {
        int r = e / (V / 4), c4 = e - r * (V / 4);
        if (row0 + r < M) ((zk_f4 *)(dlogits + (row0 + r) * V))[c4] = z;
      }
    }
    if (DH)
      for (int e = tid; e < BM * D; e += ZK_LCS_NT)
        if (row0 + e / D < M) dh[row0 * D + e] = 0.0f;
    if (tid < BM && row0 + tid < M) {
      rowloss[row0 + tid] = 0.0f;
      hit[row0 + tid] = 0;
    }
    return;
  }

  /* h's rows (zeros past M), transposed; w's rows D .. DP - 1 of both buffers
   * zeros; the first tile of w */
  for (int e = tid; e < BM * (D / 4); e += ZK_LCS_NT) {
    int m = e % BM, d4 = e / BM;
    zk_f4 x = {0.0f, 0.0f, 0.0f, 0.0f};
    if (row0 + m < M) x = *(const zk_f4 *)(h + (row0 + m) * D + 4 * d4);
    float *p = hs + 4 * d4 * HW + (m / TM) * TMP + m % TM;
    p[0] = x.x, p[HW] = x.y, p[2 * HW] = x.z, p[3 * HW] = x.w;
  }
  if (DP > D)
    for (int e = tid; e < 2 * (DP - D) * BNP; e += ZK_LCS_NT) {
      int b = e / ((DP > D ? DP - D : 1) * BNP), r = e - b * (DP - D) * BNP;
      ws[b * WBUF + D * BNP + r] = 0.0f;
    }
  zk_f4 pf[zk_lcs_npf(D)];
  zk_lcs_fetch<D>(pf, w, 0);
  zk_lcs_put<D>(pf, ws);

  int tg[TM];
  float m[TM], s[TM], best[TM], xt[TM];
  int arg[TM];
#pragma unroll
  for (int i = 0; i < TM; i++) {
    zk_i64 r = row0 + ry * TM + i;
    tg[i] = r < M ? targets[r] : IGNORE;
    m[i] = ZK_NEG_INF, s[i] = 0.0f, best[i] = ZK_NEG_INF, xt[i] = 0.0f;
    arg[i] = 0x7fffffff;
  }
  __syncthreads();

  /* pass 1: the rows' statistics; the last tile's prefetch is pass 2's first */
  for (int it = 0; it < NTILE; it++) {
    if (it + 1 < NTILE || PASS2) zk_lcs_fetch<D>(pf, w, it + 1 < NTILE ? it + 1 : 0);
    float acc[TM][8];
    zk_lcs_logits<D, TM>(acc, hs, ws + (it & 1) * WBUF, ry, cx);
    int c0 = it * ZK_LCS_BN + cx * 4;
#pragma unroll
    for (int i = 0; i < TM; i++) {
      float mx = acc[i][0];
#pragma unroll
      for (int j = 1; j < 8; j++) mx = fmaxf(mx, acc[i][j]);
      /* the first maximum of the thread's columns: its first column to start
       * with (a NaN there is never beaten, as in zk_row_scan), then the first
       * place of each larger maximum */
      if (arg[i] == 0x7fffffff) best[i] = acc[i][0], arg[i] = c0;
      if (mx > best[i]) {
        int jj = 7;
#pragma unroll
        for (int j = 6; j >= 0; j--)
          if (acc[i][j] == mx) jj = j;
        best[i] = mx, arg[i] = c0 + zk_lcs_col(jj);
      }
      int rel = tg[i] - c0; /* the target's place among the thread's columns */
      if ((unsigned)rel < 68u) {
#pragma unroll
        for (int j = 0; j < 8; j++)
          if (rel == zk_lcs_col(j)) xt[i] = acc[i][j];
      }
      if (mx == ZK_NEG_INF) continue;
      if (mx > m[i]) {
        s[i] *= exp2f((m[i] - mx) * ZK_LOG2E);
        m[i] = mx;
      }
      float mb = m[i] * ZK_LOG2E, e = exp2f(fmaf(acc[i][0], ZK_LOG2E, -mb));
#pragma unroll
      for (int j = 1; j < 8; j++) e += exp2f(fmaf(acc[i][j], ZK_LOG2E, -mb));
      s[i] += e;
    }
    if (it + 1 < NTILE || PASS2) zk_lcs_put<D>(pf, ws + ((it + 1) & 1) * WBUF);
    __syncthreads();
  }

  /* merge: the row's 8 lanes, then its two warps */
#pragma unroll
  for (int i = 0; i < TM; i++) {
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) {
      float m2 = __shfl_xor_sync(ZK_FULL_MASK, m[i], o), s2 = __shfl_xor_sync(ZK_FULL_MASK, s[i], o);
      float b2 = __shfl_xor_sync(ZK_FULL_MASK, best[i], o), x2 = __shfl_xor_sync(ZK_FULL_MASK, xt[i], o);
      int a2 = __shfl_xor_sync(ZK_FULL_MASK, arg[i], o);
      zk_lse_merge(m[i], s[i], m2, s2);
      zk_argmax_merge(best[i], arg[i], b2, a2);
      xt[i] += x2;
    }
    if ((lane & 7) == 0) {
      float *q = st + (wi & 1) * 5 * BM + ry * TM + i;
      q[0] = m[i], q[BM] = s[i], q[2 * BM] = best[i], q[3 * BM] = __int_as_float(arg[i]), q[4 * BM] = xt[i];
    }
  }
  __syncthreads();
  if (tid < BM) {
    const float *q0 = st + tid, *q1 = st + 5 * BM + tid;
    float mm = q0[0], ss = q0[BM], bb = q0[2 * BM];
    int aa = __float_as_int(q0[3 * BM]);
    zk_lse_merge(mm, ss, q1[0], q1[BM]);
    zk_argmax_merge(bb, aa, q1[2 * BM], __float_as_int(q1[3 * BM]));
    float lse = mm + logf(ss), x = q0[4 * BM] + q1[4 * BM];
    int t = row0 + tid < M ? targets[row0 + tid] : IGNORE;
    lse_s[tid] = lse;
    if (row0 + tid < M) {
      rowloss[row0 + tid] = t == IGNORE ? 0.0f : (t >= 0 && t < V) ? lse - x : __int_as_float(0x7fc00000);
      hit[row0 + tid] = t != IGNORE && aa == t;
    }
  }
  __syncthreads();
  if (!PASS2) return;

  /* pass 2: g, to dlogits and (DH) dh */
  float scale = dloss[0] / count[0]; /* count >= 1: this block has a labelled row */
  float lse2[TM]; /* lse in bits: exp(l - lse) = exp2(l log2(e) - lse2) */
#pragma unroll
  for (int i = 0; i < TM; i++) lse2[i] = lse_s[ry * TM + i] * ZK_LOG2E;
  int kg = tid / (16 * DX), ry2 = tid % 16, dx = (tid / 16) % DX;
  float dacc[TM][C2];
#pragma unroll
  for (int i = 0; i < TM; i++)
#pragma unroll
    for (int j = 0; j < C2; j++) dacc[i][j] = 0.0f;

  for (int it = 0; it < NTILE; it++) {
    const float *wb = ws + ((NTILE + it) & 1) * WBUF;
    if (!DH && it + 1 < NTILE) zk_lcs_fetch<D>(pf, w, it + 1);
    float acc[TM][8];
    zk_lcs_logits<D, TM>(acc, hs, wb, ry, cx);
    int c0 = it * ZK_LCS_BN + cx * 4;
#pragma unroll
    for (int i = 0; i < TM; i++) {
      int r = ry * TM + i, rel = tg[i] - c0;
      bool lab = tg[i] != IGNORE;
      float g[8];
#pragma unroll
      for (int j = 0; j < 8; j++) g[j] = lab ? scale * exp2f(fmaf(acc[i][j], ZK_LOG2E, -lse2[i])) : 0.0f;
      if (lab && (unsigned)rel < 68u) {
#pragma unroll
        for (int j = 0; j < 8; j++)
          if (rel == zk_lcs_col(j)) g[j] -= scale;
      }
      zk_f4 g0 = {g[0], g[1], g[2], g[3]}, g1 = {g[4], g[5], g[6], g[7]};
      if (G && row0 + r < M) {
        float *dr = dlogits + (row0 + r) * V + c0;
        *(zk_f4 *)dr = g0;
        *(zk_f4 *)(dr + 64) = g1;
      }
      if (DH) {
        *(zk_f4 *)(gs + r * BNP + cx * 4) = g0;
        *(zk_f4 *)(gs + r * BNP + cx * 4 + 64) = g1;
      }
    }
    if (DH) {
      __syncthreads();
      if (it + 1 < NTILE) zk_lcs_fetch<D>(pf, w, it + 1); /* here: fewer registers live in the logits */
      const float *gp = gs + ry2 * BNP + kg * KR, *wp = wb + dx * C2 * BNP + kg * KR;
#pragma unroll 2
      for (int k = 0; k < KR; k += 4) {
        zk_f4 gv[TM], wv[C2];
#pragma unroll
        for (int i = 0; i < TM; i++) gv[i] = *(const zk_f4 *)(gp + 16 * i * BNP + k);
#pragma unroll
        for (int j = 0; j < C2; j++) wv[j] = *(const zk_f4 *)(wp + j * BNP + k);
#pragma unroll
        for (int i = 0; i < TM; i++)
#pragma unroll
          for (int j = 0; j < C2; j++) {
            float a = dacc[i][j];
            a = fmaf(gv[i].x, wv[j].x, a);
            a = fmaf(gv[i].y, wv[j].y, a);
            a = fmaf(gv[i].z, wv[j].z, a);
            dacc[i][j] = fmaf(gv[i].w, wv[j].w, a);
          }
      }
    }
    if (it + 1 < NTILE) zk_lcs_put<D>(pf, ws + ((NTILE + it + 1) & 1) * WBUF);
    __syncthreads();
  }
  if (!DH) return;

  /* dh: the KS partial sums, added in order */
  float *red = ws; /* [KS][BM][DP], over ws and gs, read by nobody now */
#pragma unroll
  for (int i = 0; i < TM; i++)
#pragma unroll
    for (int j = 0; j < C2; j++) red[(kg * BM + ry2 + 16 * i) * DP + dx * C2 + j] = dacc[i][j];
  __syncthreads();
  for (int e = tid; e < BM * D; e += ZK_LCS_NT) {
    int r = e / D, d = e - r * D;
    if (row0 + r >= M) continue;
    float v = red[r * DP + d];
#pragma unroll
    for (int k = 1; k < KS; k++) v += red[(k * BM + r) * DP + d];
    dh[row0 * D + e] = v;
  }
}

#endif /* ZK_LINEAR_CROSS_ENTROPY_STEP_CU */
