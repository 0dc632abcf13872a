/* linear_cross_entropy_tc.cu: the compacted LM head's training step
 * (linear_cross_entropy_step, ops.def) with its logits made by TF32 tensor-core
 * products (mma.sync m16n8k8, fp32 sums), for `precision: tf32` and `bf16`,
 * whose matmuls are TF32 or BF16 already. The logits are never in memory.
 * Needs cross_entropy.cu (zk_ce_count, zk_ce_step_finish), pasted before it.
 *
 * Shapes: h, dh [M, D]; w [V, D]; targets i32 [M]; dlogits [M, V]. Constants:
 * D (a multiple of 4, at most 64; padded with zeros to DK, a multiple of 8),
 * V (a multiple of 128: NT = V / 128 tiles of the vocabulary), IGNORE, M, NG.
 * The emitter's steps:
 *
 *   zk_ce_count              labelled rows, for the gradient's scale (when it is
 *                            wanted)
 *   zk_lctc_stats<D, V, IGNORE, M, NG>  grid (ceil(M / 128), NG): a block takes
 *       128 rows and the vocabulary tiles [y NT / NG, (y + 1) NT / NG) in
 *       order; per tile the 128 x 128 logits, and per row a running max, sum
 *       of exp(l - max) and first maximum; at the end they go to pm, ps, pb,
 *       pa [NG][M]. The target's logit goes to xt [M] from the one thread that
 *       holds it.
 *   zk_lctc_lse<NG, V, IGNORE, M>  8 lanes a row: the NG partials merged (lane
 *       l takes l, l + 8, ..., then the lanes merge in a fixed order): lse [M],
 *       rowloss and hit.
 *   zk_lctc_grad<D, V, IGNORE, M, NG>  the stats kernel's grid and tiles: the
 *       logits again, g = dloss / count exp(l - lse), less dloss / count at
 *       the target (zeros on ignored rows), stored to dlogits.
 *   zk_ce_step_finish        loss and metrics
 *   a GEMM step, dh = dlogits w (cuBLASLt, at the module's precision).
 *
 * A tile: 8 warps, warp (wm, wn) = (warp % 4, warp / 4) takes rows 32 wm ..
 * + 32 (two m16 tiles) by columns 64 wn .. + 64 (eight n8 tiles): 16
 * accumulators of 4, for rows g, g + 8 of each m16 tile (g = lane / 4) and
 * columns 2t, 2t + 1 of each n8 tile (t = lane % 4). h's tile sits in shared
 * memory rounded to TF32 once; w's tiles come by cp.async into two buffers
 * (the next one while the current one is used) and are rounded as the
 * fragments are read. Rows are KP = DK + 4 floats apart (4 mod 8: a
 * fragment's 32 reads hit 32 banks). Both kernels make the logits with the
 * same code, so the gradient sees the bits the statistics saw. A row's
 * statistics: per thread over its columns and the tiles, in order (the max
 * shared by the row's 4 lanes, xor 1, 2), then summed over those lanes and
 * merged over the two warps that share the row (through shared memory, wn 0
 * first): every sum has a fixed order. A block whose rows are all ignored
 * skips the products (the gradient kernel writes its zeros).
 *
 * Cost at M = 6144, V = 8192, D = 32: 3.2 GFLOP of TF32 products per kernel,
 * 201 MB of dlogits written by the second. Dynamic shared memory 3 128 KP
 * floats (55 KB at D = 32, 104 KB at 64); two blocks an SM. On the H200
 * (session 11, .gpu/s11run11.sh) 0.058 and 0.073 ms at that shape: the
 * per-logit work around the products (a maximum, an exponential, a sum; an
 * exponential, a scale, the stores) bounds them, not the products. Replaced
 * after measuring: one tile a block (3072 blocks; 0.081 and 0.140 ms); stores
 * of a two-float struct, which compiled to two 4-byte stores of half a sector
 * each (the gradient 0.169 ms; one 8-byte store and ex2.approx.ftz for exp2f,
 * which scales for denormal results, in the same change: 0.073, run 10).
 * Tried and not kept: dh in the gradient kernel (g's accumulators are A
 * fragments when an n8 tile's columns run 0, 2, 4, 6, 1, 3, 5, 7; partial
 * sums per vocabulary share), which needs 32 more registers: one block an SM
 * at 192 registers 0.134 ms, two with 524 bytes of spills 0.146, against
 * 0.073 and the GEMM's 0.06 (run 13: 0.78 against 0.76 ms a step). Nsight
 * Compute on the statistics kernel (run 14): 25 M warp instructions, the
 * integer pipe the busiest (38%), 1.06 eligible warps of 3.35 a scheduler:
 * it waits more than it issues. Rounding each w tile once as it lands, not
 * each B fragment as it is read (64 conversions a thread and tile fewer), did
 * not move it (0.061 and 0.074 ms, run 15), so the fragments keep their
 * conversions; more warps an SM (fewer registers) is what is left to try.
 * Session 12 measured dlogits in half precision (p - onehot unscaled, with
 * zoo's own dh and dw products over it) and did not keep it: half the bytes,
 * but the gradient kernel slower (0.086-0.129 ms) and the products bound by
 * latency at about 2 TB/s, 0.78-0.88 ms a step against 0.76 (README).
 */
#ifndef ZK_LINEAR_CROSS_ENTROPY_TC_CU
#define ZK_LINEAR_CROSS_ENTROPY_TC_CU

__host__ __device__ constexpr int zk_lctc_dk(int d) { return (d + 7) / 8 * 8; }
__host__ __device__ constexpr int zk_lctc_kp(int d) { return zk_lctc_dk(d) + 4; }

/* Dynamic shared memory (floats); the emitter mirrors it. */
__host__ __device__ constexpr int zk_lctc_smem(int d) { return 3 * 128 * zk_lctc_kp(d); }

/* Rows [r0, r0 + 128) of a [n, D] matrix into t [128][KP], rounded to TF32,
 * zeros past n and in columns D .. DK - 1. */
template <int D>
__device__ __forceinline__ void zk_lctc_load(float *t, const float *__restrict__ src, zk_i64 r0, zk_i64 n) {
  constexpr int D4 = D / 4, KP = zk_lctc_kp(D), DK = zk_lctc_dk(D);
  for (int e = threadIdx.x; e < 128 * D4; e += 256) {
    int r = e / D4, c4 = e - r * D4;
    zk_f4 x = {0.0f, 0.0f, 0.0f, 0.0f};
    if (r0 + r < n) x = *(const zk_f4 *)(src + (r0 + r) * D + 4 * c4);
    *(zk_f4 *)(t + r * KP + 4 * c4) = zk_f4{zk_tf32f(x.x), zk_tf32f(x.y), zk_tf32f(x.z), zk_tf32f(x.w)};
  }
  if (DK > D)
    for (int r = threadIdx.x; r < 128; r += 256) *(zk_f4 *)(t + r * KP + D) = zk_f4{0.0f, 0.0f, 0.0f, 0.0f};
}

/* Tile `tile` of w (its rows tile 128 .. + 128) into wb [128][KP] by cp.async,
 * one group; columns D .. DK - 1 are left as they are (zk_lctc_pad). */
template <int D>
__device__ __forceinline__ void zk_lctc_fetch(float *wb, const float *__restrict__ w, int tile) {
  constexpr int D4 = D / 4, KP = zk_lctc_kp(D);
  const float *src = w + (zk_i64)tile * 128 * D;
  for (int e = threadIdx.x; e < 128 * D4; e += 256) {
    int r = e / D4, c4 = e - r * D4;
    zk_cp_async16(wb + r * KP + 4 * c4, src + 4 * e);
  }
  zk_cp_async_commit();
}

/* Zeros in columns D .. DK - 1 of both w buffers. */
template <int D>
__device__ __forceinline__ void zk_lctc_pad(float *wb) {
  constexpr int KP = zk_lctc_kp(D), DK = zk_lctc_dk(D);
  if (DK > D)
    for (int r = threadIdx.x; r < 256; r += 256) *(zk_f4 *)(wb + r * KP + D) = zk_f4{0.0f, 0.0f, 0.0f, 0.0f};
}

/* The warp's 32 x 64 block of the tile's logits: acc[mt][nt] for m16 tile mt
 * and n8 tile nt (the fragment layout of zk_mma_tf32). */
template <int D>
__device__ __forceinline__ void zk_lctc_logits(float (&acc)[2][8][4], const float *hs, const float *ws, int wm,
                                               int wn, int g, int t) {
  constexpr int KP = zk_lctc_kp(D), DK = zk_lctc_dk(D);
#pragma unroll
  for (int mt = 0; mt < 2; mt++)
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
      for (int q = 0; q < 4; q++) acc[mt][nt][q] = 0.0f;
  const float *hp = hs + (32 * wm + g) * KP + t, *wp = ws + (64 * wn + g) * KP + t;
  /* whole at D <= 32; by two steps past that, which keeps the statistics
   * kernel within 128 registers (ptxas spilled 128 bytes unrolled whole) */
  constexpr int KU = DK <= 32 ? DK / 8 : 2;
#pragma unroll KU
  for (int k = 0; k < DK; k += 8) {
    unsigned a[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
      const float *p = hp + 16 * mt * KP + k;
      a[mt][0] = (unsigned)__float_as_int(p[0]), a[mt][1] = (unsigned)__float_as_int(p[8 * KP]);
      a[mt][2] = (unsigned)__float_as_int(p[4]), a[mt][3] = (unsigned)__float_as_int(p[8 * KP + 4]);
    }
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
      const float *p = wp + 8 * nt * KP + k;
      unsigned b[2] = {zk_tf32(p[0]), zk_tf32(p[4])};
      zk_mma_tf32(acc[0][nt], a[0], b);
      zk_mma_tf32(acc[1][nt], a[1], b);
    }
  }
}

/* The thread's row i < 4 (m16 tile i / 2, half i % 2) of the tile. */
__device__ __forceinline__ int zk_lctc_row(int wm, int g, int i) { return 32 * wm + 16 * (i >> 1) + g + 8 * (i & 1); }

/* Value j < 16 of the thread's row i (n8 tile j / 2, column 2t + j % 2), and its column. */
__device__ __forceinline__ float zk_lctc_at(const float (&acc)[2][8][4], int i, int j) {
  return acc[i >> 1][j >> 1][2 * (i & 1) + (j & 1)];
}
__device__ __forceinline__ int zk_lctc_col(int wn, int t, int j) { return 64 * wn + 8 * (j >> 1) + 2 * t + (j & 1); }

/* Tiles [t0, t1) of a block of the grid's row y. */
template <int NT, int NG>
__device__ __forceinline__ void zk_lctc_range(int &t0, int &t1) {
  t0 = (int)blockIdx.y * NT / NG, t1 = ((int)blockIdx.y + 1) * NT / NG;
}

/* 2^x by the hardware's approximation with denormal results flushed to zero
 * (one instruction; exp2f adds a scaling for them). Off the GPU, exp2f. */
__device__ __forceinline__ float zk_lctc_exp2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

/* Two floats to p (8-byte aligned) in one 8-byte store: a zk_f2 store measured
 * split into two 4-byte ones in the PTX, half a sector each. */
__device__ __forceinline__ void zk_lctc_st2(float *p, float a, float b) {
  *(unsigned long long *)p =
      (unsigned long long)(unsigned)__float_as_int(a) | (unsigned long long)(unsigned)__float_as_int(b) << 32;
}

/* A block's sweep: h's tile staged, then per tile of w in [t0, t1), in order,
 * the warp's logits handed to fn(acc, c0) (c0 the tile's first column), the
 * next tile arriving by cp.async meanwhile. Both kernels run it, so both make
 * the same bits. */
template <int D, typename Fn>
__device__ __forceinline__ void zk_lctc_sweep(float *hs, float *wb, const float *__restrict__ h,
                                              const float *__restrict__ w, zk_i64 row0, int M, int t0, int t1,
                                              const Fn &fn) {
  constexpr int KP = zk_lctc_kp(D);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  zk_lctc_fetch<D>(wb, w, t0);
  zk_lctc_load<D>(hs, h, row0, M);
  zk_lctc_pad<D>(wb);
  for (int tile = t0; tile < t1; tile++) {
    const float *ws = wb + ((tile - t0) & 1) * 128 * KP;
    zk_cp_async_wait<0>();
    __syncthreads(); /* the tile is in; everyone is done with the other buffer */
    if (tile + 1 < t1) zk_lctc_fetch<D>(wb + ((tile + 1 - t0) & 1) * 128 * KP, w, tile + 1);
    float acc[2][8][4];
    zk_lctc_logits<D>(acc, hs, ws, warp & 3, warp >> 2, lane >> 2, lane & 3);
    fn(acc, tile * 128);
  }
}

template <int D, int V, int IGNORE, int M, int NG>
__device__ __forceinline__ void zk_lctc_stats(const float *__restrict__ h, const float *__restrict__ w,
                                              const int *__restrict__ targets, float *__restrict__ pm,
                                              float *__restrict__ ps, float *__restrict__ pb, int *__restrict__ pa,
                                              float *__restrict__ xt) {
  static_assert(D % 4 == 0 && D >= 4 && D <= 64 && V % 128 == 0 && NG >= 1 && NG <= V / 128, "D, V, NG");
  constexpr int KP = zk_lctc_kp(D);
  extern __shared__ float zk_lctc_sh[];
  __shared__ float rm[2][128], rs[2][128], rb[2][128];
  __shared__ int ra[2][128];
  float *hs = zk_lctc_sh, *wb = hs + 128 * KP;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp & 3, wn = warp >> 2, g = lane >> 2, t = lane & 3;
  int t0, t1;
  zk_lctc_range<V / 128, NG>(t0, t1);
  zk_i64 row0 = (zk_i64)blockIdx.x * 128;
  if (!zk_ce_any_labelled<IGNORE>(targets, row0, 128, M)) return; /* zk_lctc_lse reads nothing of these rows */
  int tg[4];
  float m[4], s[4], best[4];
  int arg[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    zk_i64 r = row0 + zk_lctc_row(wm, g, i);
    tg[i] = r < M ? targets[r] : IGNORE;
    m[i] = ZK_NEG_INF, s[i] = 0.0f, best[i] = ZK_NEG_INF, arg[i] = 0x7fffffff;
  }
  zk_lctc_sweep<D>(hs, wb, h, w, row0, M, t0, t1, [&](const float(&acc)[2][8][4], int c0) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      /* the tile's max of the thread's columns; where it beats the thread's
       * best so far (rarely, after the first tiles), the first column that
       * holds it: so best and arg are the first maximum of the thread's
       * columns, seen in increasing order (increasing j, then tiles) */
      float tm = zk_lctc_at(acc, i, 0);
#pragma unroll
      for (int j = 1; j < 16; j++) tm = fmaxf(tm, zk_lctc_at(acc, i, j));
      if (tm > best[i] || arg[i] == 0x7fffffff) {
        int jj = 15;
#pragma unroll
        for (int j = 14; j >= 0; j--)
          if (zk_lctc_at(acc, i, j) == tm) jj = j;
        best[i] = tm, arg[i] = c0 + zk_lctc_col(wn, t, jj);
      }
      int rel = tg[i] - c0;
      if (tg[i] != IGNORE && (unsigned)rel < 128u) {
#pragma unroll
        for (int j = 0; j < 16; j++)
          if (rel == zk_lctc_col(wn, t, j)) xt[row0 + zk_lctc_row(wm, g, i)] = zk_lctc_at(acc, i, j);
      }
      tm = fmaxf(tm, __shfl_xor_sync(ZK_FULL_MASK, tm, 1));
      tm = fmaxf(tm, __shfl_xor_sync(ZK_FULL_MASK, tm, 2));
      float mn = fmaxf(m[i], tm);
      if (mn == ZK_NEG_INF) continue;
      float mb = mn * ZK_LOG2E, e = s[i] * zk_lctc_exp2(fmaf(m[i], ZK_LOG2E, -mb));
#pragma unroll
      for (int j = 0; j < 16; j++) e += zk_lctc_exp2(fmaf(zk_lctc_at(acc, i, j), ZK_LOG2E, -mb));
      s[i] = e, m[i] = mn;
    }
  });
  /* the row's 4 lanes (their max is shared), then its two warps */
#pragma unroll
  for (int i = 0; i < 4; i++) {
    s[i] += __shfl_xor_sync(ZK_FULL_MASK, s[i], 1);
    s[i] += __shfl_xor_sync(ZK_FULL_MASK, s[i], 2);
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
      float b2 = __shfl_xor_sync(ZK_FULL_MASK, best[i], o);
      int a2 = __shfl_xor_sync(ZK_FULL_MASK, arg[i], o);
      zk_argmax_merge(best[i], arg[i], b2, a2);
    }
    int lr = zk_lctc_row(wm, g, i);
    if (t == 0) rm[wn][lr] = m[i], rs[wn][lr] = s[i], rb[wn][lr] = best[i], ra[wn][lr] = arg[i];
  }
  __syncthreads();
  int lr = threadIdx.x;
  if (lr < 128 && row0 + lr < M) {
    float mm = rm[0][lr], ss = rs[0][lr], bb = rb[0][lr];
    int aa = ra[0][lr];
    zk_lse_merge(mm, ss, rm[1][lr], rs[1][lr]);
    zk_argmax_merge(bb, aa, rb[1][lr], ra[1][lr]);
    zk_i64 q = (zk_i64)blockIdx.y * M + row0 + lr;
    pm[q] = mm, ps[q] = ss, pb[q] = bb, pa[q] = aa;
  }
}

template <int NG, int V, int IGNORE, int M>
__device__ __forceinline__ void zk_lctc_lse(const float *__restrict__ pm, const float *__restrict__ ps,
                                            const float *__restrict__ pb, const int *__restrict__ pa,
                                            const float *__restrict__ xt, const int *__restrict__ targets,
                                            float *__restrict__ lse, float *__restrict__ rowloss,
                                            int *__restrict__ hit) {
  zk_i64 r = ((zk_i64)blockIdx.x * blockDim.x + threadIdx.x) >> 3;
  int l = threadIdx.x & 7;
  bool in = r < M; /* every lane takes part in the shuffles */
  int tg = in ? targets[r] : IGNORE;
  float m = ZK_NEG_INF, s = 0.0f, b = ZK_NEG_INF;
  int a = 0x7fffffff;
  if (tg != IGNORE)
    for (int k = l; k < NG; k += 8) {
      zk_i64 q = (zk_i64)k * M + r;
      zk_lse_merge(m, s, pm[q], ps[q]);
      zk_argmax_merge(b, a, pb[q], pa[q]);
    }
#pragma unroll
  for (int o = 1; o < 8; o <<= 1) {
    float m2 = __shfl_xor_sync(ZK_FULL_MASK, m, o), s2 = __shfl_xor_sync(ZK_FULL_MASK, s, o);
    float b2 = __shfl_xor_sync(ZK_FULL_MASK, b, o);
    int a2 = __shfl_xor_sync(ZK_FULL_MASK, a, o);
    zk_lse_merge(m, s, m2, s2);
    zk_argmax_merge(b, a, b2, a2);
  }
  if (l || !in) return;
  if (tg == IGNORE) {
    lse[r] = 0.0f, rowloss[r] = 0.0f, hit[r] = 0;
    return;
  }
  float lv = m + logf(s);
  lse[r] = lv;
  rowloss[r] = (tg >= 0 && tg < V) ? lv - xt[r] : __int_as_float(0x7fc00000);
  hit[r] = a == tg;
}

template <int D, int V, int IGNORE, int M, int NG>
__device__ __forceinline__ void zk_lctc_grad(const float *__restrict__ h, const float *__restrict__ w,
                                             const int *__restrict__ targets, const float *__restrict__ dloss,
                                             const float *__restrict__ count, const float *__restrict__ lse,
                                             float *__restrict__ dlogits) {
  constexpr int KP = zk_lctc_kp(D);
  extern __shared__ float zk_lctc_sh[];
  float *hs = zk_lctc_sh, *wb = hs + 128 * KP;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp & 3, wn = warp >> 2, g = lane >> 2, t = lane & 3;
  int t0, t1;
  zk_lctc_range<V / 128, NG>(t0, t1);
  zk_i64 row0 = (zk_i64)blockIdx.x * 128;
  if (!zk_ce_any_labelled<IGNORE>(targets, row0, 128, M)) {
    for (int e = threadIdx.x; e < 128 * 32 * (t1 - t0); e += 256) {
      int r = e / (32 * (t1 - t0)), c4 = e - r * 32 * (t1 - t0);
      if (row0 + r < M) *(zk_f4 *)(dlogits + (row0 + r) * V + 128 * t0 + 4 * c4) = zk_f4{0.0f, 0.0f, 0.0f, 0.0f};
    }
    return;
  }
  float scale = dloss[0] / count[0]; /* count >= 1: the block has a labelled row */
  int tg[4];
  float l2[4]; /* lse in bits: exp(l - lse) = exp2(l log2(e) - l2) */
#pragma unroll
  for (int i = 0; i < 4; i++) {
    zk_i64 r = row0 + zk_lctc_row(wm, g, i);
    tg[i] = r < M ? targets[r] : IGNORE;
    l2[i] = tg[i] != IGNORE ? lse[r] * ZK_LOG2E : 0.0f;
  }
  zk_lctc_sweep<D>(hs, wb, h, w, row0, M, t0, t1, [&](const float(&acc)[2][8][4], int c0) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      zk_i64 r = row0 + zk_lctc_row(wm, g, i);
      if (r >= M) continue;
      int rel = tg[i] - c0;
      bool lab = tg[i] != IGNORE;
      float *dr = dlogits + r * V + c0;
#pragma unroll
      for (int j = 0; j < 16; j += 2) {
        float x0 = lab ? scale * zk_lctc_exp2(fmaf(zk_lctc_at(acc, i, j), ZK_LOG2E, -l2[i])) : 0.0f;
        float x1 = lab ? scale * zk_lctc_exp2(fmaf(zk_lctc_at(acc, i, j + 1), ZK_LOG2E, -l2[i])) : 0.0f;
        int c = zk_lctc_col(wn, t, j);
        if (lab && rel == c) x0 -= scale;
        if (lab && rel == c + 1) x1 -= scale;
        zk_lctc_st2(dr + c, x0, x1);
      }
    }
  });
}

#endif /* ZK_LINEAR_CROSS_ENTROPY_TC_CU */
