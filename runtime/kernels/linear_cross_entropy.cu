/* linear_cross_entropy.cu: the fused LM head and loss (ops.def):
 * cross_entropy(h w^T, targets) without the [N, V] logits in memory, its
 * backward, and accuracy(h, w, targets). Only labelled rows (target != IGNORE) cost anything.
 *
 * Shapes: h, dh [N, D]; w, dw [V, D]; targets i32 [N]; loss f32[].
 * Constants: N, D, V, IGNORE; RT (labelled rows per block, 16), 256 threads per
 * block everywhere. Scratch (shared by the kernels of one node):
 *   idx [N] i32      labelled row numbers, in row order (the first `count`)
 *   count [1] i32
 *   rows [N] f32     per labelled row: loss (forward), logsumexp (backward) or
 *                    1 / 0 for a hit (accuracy)
 *
 * zk_lce_compact<N, IGNORE>: one block of 1024 threads; each thread takes a
 *   contiguous run of rows, a block scan of the per-thread counts places their
 *   labelled rows: idx, count. Deterministic.
 * zk_lce_rows<D, V, RT, LSE>: grid ceil(N / RT) blocks, those past count/RT exit.
 *   A block takes RT labelled rows and streams the vocabulary in chunks of 256
 *   (one vocabulary row per thread), each chunk's logits made in slices of 16
 *   along D from shared memory: h slice [RT][16] (read 4 floats at a time, the
 *   same address for the whole warp), w slice transposed [16][257]. Each thread
 *   keeps an online (max, sum) per row for its vocabulary rows; the block
 *   merges them at the end. rows[] gets lse - logit[target] (LSE = 0) or lse
 *   (LSE = 1).
 * zk_lce_finish<N>: one block of 1024: loss = sum(rows[0 .. count)) / count, 0
 *   when count = 0; summed in a fixed order.
 * Backward, g_rv = dloss / count (softmax(logits_r)_v - [v = t_r]):
 * zk_lce_bwd_dh<D, V, RT>: same tiling as zk_lce_rows: per vocabulary chunk the
 *   logits again, g into shared memory [RT][257], then dh_r += g w_chunk, KR
 *   vocabulary rows (all of D, KR = 8 for D <= 512) at a time through shared
 *   memory, the dh tile [RT][D] in registers (zk_lce_map: each thread a few
 *   rows x columns c0, c0 + 256, ...). dh rows of ignored targets are cleared
 *   by a ZOO_STEP_ZERO before.
 * zk_lce_bwd_dw<D, V>: grid ceil(V / 16) blocks; a block owns 16 vocabulary
 *   rows of dw and walks the labelled rows 256 at a time (one row per thread):
 *   logits of (row, its 16 vocabulary rows) from h slices [256][20] and w
 *   slices [16][16], g into shared memory [16][257], then dw_v += g^T h_chunk,
 *   KR rows of h at a time, the dw tile [16][D] in registers.
 *
 * accuracy (h, w, targets), the 3-input form (ops.def), with the same scratch:
 * zk_lce_compact as above, then
 * zk_lce_argmax_rows<D, V, RT>: the tiling of zk_lce_rows; each thread keeps the
 *   first maximum of its vocabulary rows per row (strictly greater wins, and it
 *   sees them in increasing order), warps and then the block merge them with
 *   zk_argmax_merge (a tie goes to the smaller index), so the result is the
 *   row's first maximum, as the CPU's scan. rows[] gets 1 (the target) or 0.
 * zk_lce_acc_finish<N>: one block of 1024: out = (sum of rows[0 .. count),
 *   count), exact integer sums stored as floats.
 *
 * Cost: forward N_lab V D multiply-adds; backward three times that (the logits
 * are made twice). About 100 registers and at most 41 KB of static shared
 * memory per kernel at D = 512. Faster later: register tiles of 4 vocabulary
 * rows x 4 h rows per thread in the logits (an FMA to shared-load ratio of
 * ~8 instead of ~3), TF32 tensor cores (mma.sync m16n8k8) for the three
 * products if fp32 accuracy allows, and a split of V across blocks for the dh
 * pass when few rows are labelled.
 */
#ifndef ZK_LINEAR_CROSS_ENTROPY_CU
#define ZK_LINEAR_CROSS_ENTROPY_CU

#define ZK_LCE_NT 256

template <int N, int IGNORE>
__device__ __forceinline__ void zk_lce_compact(const int *__restrict__ targets,
                                               int *__restrict__ idx, int *__restrict__ count) {
  __shared__ int sh[33];
  constexpr int CH = (N + 1023) / 1024; /* rows per thread */
  int r0 = threadIdx.x * CH, r1 = r0 + CH < N ? r0 + CH : N;
  int mine = 0, total;
  for (int r = r0; r < r1; r++) mine += targets[r] != IGNORE;
  int pos = zk_block_exscan_int(mine, sh, &total);
  for (int r = r0; r < r1; r++)
    if (targets[r] != IGNORE) idx[pos++] = r;
  if (threadIdx.x == 0) count[0] = total;
}

/* The block's labelled rows (rowid -1 past count), their targets; returns the
 * number of labelled rows, or 0 when this block has none (then it exits). */
template <int RT>
__device__ __forceinline__ int zk_lce_rows_of_block(const int *__restrict__ idx,
                                                    const int *__restrict__ count,
                                                    const int *__restrict__ targets, int *rowid,
                                                    int *tgt) {
  int n = count[0], base = blockIdx.x * RT;
  if (base >= n) return 0;
  if (threadIdx.x < RT) {
    int row = base + (int)threadIdx.x < n ? idx[base + threadIdx.x] : -1;
    rowid[threadIdx.x] = row;
    tgt[threadIdx.x] = row >= 0 ? targets[row] : -1;
  }
  __syncthreads();
  return n;
}

/* acc[r] = h[rowid[r]] . w[v0 + threadIdx.x] for the RT rows, through shared
 * slices of 16 columns: hs [RT][16] (read 4 floats at a time, the same address for the
 * whole warp) and ws [16][257] (transposed: thread t reads column t). Per four
 * columns a thread does 20 shared loads for 4 RT multiply-adds. */
template <int D, int V, int RT>
__device__ __forceinline__ void zk_lce_logits(const float *__restrict__ h,
                                              const float *__restrict__ w, const int *rowid,
                                              float *hs, float *ws, int v0, float *acc) {
  constexpr int DC = 16, WP = ZK_LCE_NT + 1;
#pragma unroll
  for (int r = 0; r < RT; r++) acc[r] = 0.0f;
  for (int d0 = 0; d0 < D; d0 += DC) {
    __syncthreads();
    for (int e = threadIdx.x; e < RT * DC; e += ZK_LCE_NT) {
      int r = e / DC, c = e - r * DC, row = rowid[r];
      hs[e] = (row >= 0 && d0 + c < D) ? h[(zk_i64)row * D + d0 + c] : 0.0f;
    }
    for (int e = threadIdx.x; e < ZK_LCE_NT * DC; e += ZK_LCE_NT) {
      int vv = e / DC, c = e - vv * DC;
      ws[c * WP + vv] = (v0 + vv < V && d0 + c < D) ? w[(zk_i64)(v0 + vv) * D + d0 + c] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < DC; c += 4) {
      float w0 = ws[c * WP + threadIdx.x], w1 = ws[(c + 1) * WP + threadIdx.x];
      float w2 = ws[(c + 2) * WP + threadIdx.x], w3 = ws[(c + 3) * WP + threadIdx.x];
#pragma unroll
      for (int r = 0; r < RT; r++) {
        zk_f4 hv = *(const zk_f4 *)&hs[r * DC + c];
        acc[r] += hv.x * w0;
        acc[r] += hv.y * w1;
        acc[r] += hv.z * w2;
        acc[r] += hv.w * w3;
      }
    }
  }
}

/* How the 256 threads cover an M x D accumulator tile (M = 16 rows of dh, or
 * 16 vocabulary rows of dw): CW = min(D, 256) columns per pass, G row groups
 * (G = 256 / CW, at most M); thread t is in group t / CW (idle when >= G) at
 * column c0 = t % CW and holds rows group + G i (i < RPG) at columns
 * c0 + CW j (j < CPT): RPG x CPT accumulators, with offsets that are
 * constants plus the thread's own, so they cost no registers. */
template <int M, int D>
struct zk_lce_map {
  static constexpr int CW = D < ZK_LCE_NT ? D : ZK_LCE_NT;
  static constexpr int G = ZK_LCE_NT / CW < M ? ZK_LCE_NT / CW : M;
  static constexpr int RPG = (M + G - 1) / G;
  static constexpr int CPT = (D + CW - 1) / CW;
  static constexpr int ACC = RPG * CPT;
};

/* acc[i CPT + j] += sum_{k < KR} g[r][k0 + k] src[k][c] for the thread's rows r
 * and columns c (zk_lce_map), src [KR][D] and g [M][GP] in shared memory. The
 * caller loads src. */
template <int M, int D, int KR, int GP>
__device__ __forceinline__ void zk_lce_accum(float *acc, const float *g, const float *src,
                                             int k0) {
  typedef zk_lce_map<M, D> mp;
  int group = threadIdx.x / mp::CW, c0 = threadIdx.x % mp::CW;
  if (group >= mp::G) return;
#pragma unroll 2
  for (int k = 0; k < KR; k++) {
#pragma unroll
    for (int i = 0; i < mp::RPG; i++) {
      int r = group + mp::G * i;
      float gv = r < M ? g[r * GP + k0 + k] : 0.0f;
#pragma unroll
      for (int j = 0; j < mp::CPT; j++) {
        int c = c0 + mp::CW * j;
        if (c < D) acc[i * mp::CPT + j] += gv * src[k * D + c];
      }
    }
  }
}

/* out[rows[r]][c] = acc for the thread's elements, rows[r] < 0 skipped. */
template <int M, int D>
__device__ __forceinline__ void zk_lce_store(const float *acc, float *__restrict__ out,
                                             const int *rows) {
  typedef zk_lce_map<M, D> mp;
  int group = threadIdx.x / mp::CW, c0 = threadIdx.x % mp::CW;
  if (group >= mp::G) return;
#pragma unroll
  for (int i = 0; i < mp::RPG; i++) {
    int r = group + mp::G * i;
    int row = r < M ? rows[r] : -1;
    if (row < 0) continue;
#pragma unroll
    for (int j = 0; j < mp::CPT; j++) {
      int c = c0 + mp::CW * j;
      if (c < D) out[(zk_i64)row * D + c] = acc[i * mp::CPT + j];
    }
  }
}

/* src[k][0 .. D) = rows[k] of a [*, D] matrix for k < KR (zeros for rows < 0). */
template <int D, int KR>
__device__ __forceinline__ void zk_lce_load_rows(float *src, const float *__restrict__ m,
                                                 const int *rows) {
  for (int e = threadIdx.x; e < KR * D; e += ZK_LCE_NT) {
    int k = e / D, c = e - k * D, row = rows[k];
    src[e] = row >= 0 ? m[(zk_i64)row * D + c] : 0.0f;
  }
}

template <int D, int V, int RT, bool LSE>
__device__ __forceinline__ void zk_lce_rows(const float *__restrict__ h,
                                            const float *__restrict__ w,
                                            const int *__restrict__ targets,
                                            const int *__restrict__ idx,
                                            const int *__restrict__ count,
                                            float *__restrict__ rows) {
  __align__(16) __shared__ float hs[RT * 16];
  __shared__ float ws[16 * (ZK_LCE_NT + 1)], tl[RT];
  __shared__ float red_m[ZK_LCE_NT / 32][RT], red_s[ZK_LCE_NT / 32][RT];
  __shared__ int rowid[RT], tgt[RT];
  if (threadIdx.x < RT) tl[threadIdx.x] = 0.0f;
  if (!zk_lce_rows_of_block<RT>(idx, count, targets, rowid, tgt)) return;

  float m[RT], s[RT], acc[RT];
#pragma unroll
  for (int r = 0; r < RT; r++) m[r] = ZK_NEG_INF, s[r] = 0.0f;
  for (int v0 = 0; v0 < V; v0 += ZK_LCE_NT) {
    zk_lce_logits<D, V, RT>(h, w, rowid, hs, ws, v0, acc);
    int v = v0 + threadIdx.x;
    if (v < V) {
#pragma unroll
      for (int r = 0; r < RT; r++) {
        zk_lse_push(m[r], s[r], acc[r]);
        if (v == tgt[r]) tl[r] = acc[r];
      }
    }
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < RT; r++) {
    zk_warp_lse(m[r], s[r]);
    if (lane == 0) red_m[warp][r] = m[r], red_s[warp][r] = s[r];
  }
  __syncthreads();
  if (threadIdx.x < RT && rowid[threadIdx.x] >= 0) {
    int r = threadIdx.x;
    float mm = red_m[0][r], ss = red_s[0][r];
    for (int k = 1; k < ZK_LCE_NT / 32; k++) zk_lse_merge(mm, ss, red_m[k][r], red_s[k][r]);
    float lse = mm + logf(ss);
    rows[blockIdx.x * RT + r] = LSE ? lse : lse - tl[r];
  }
}

template <int N>
__device__ __forceinline__ void zk_lce_finish(const float *__restrict__ rows,
                                              const int *__restrict__ count,
                                              float *__restrict__ out) {
  __shared__ float sh[32];
  int n = count[0];
  float s = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += rows[i];
  s = zk_block_sum(s, sh);
  if (threadIdx.x == 0) out[0] = n > 0 ? s / (float)n : 0.0f;
}

template <int D, int V, int RT>
__device__ __forceinline__ void zk_lce_argmax_rows(const float *__restrict__ h,
                                                   const float *__restrict__ w,
                                                   const int *__restrict__ targets,
                                                   const int *__restrict__ idx,
                                                   const int *__restrict__ count,
                                                   float *__restrict__ rows) {
  __align__(16) __shared__ float hs[RT * 16];
  __shared__ float ws[16 * (ZK_LCE_NT + 1)];
  __shared__ float red_v[ZK_LCE_NT / 32][RT];
  __shared__ int red_i[ZK_LCE_NT / 32][RT];
  __shared__ int rowid[RT], tgt[RT];
  if (!zk_lce_rows_of_block<RT>(idx, count, targets, rowid, tgt)) return;

  float best[RT], acc[RT];
  int bi[RT];
#pragma unroll
  for (int r = 0; r < RT; r++) best[r] = ZK_NEG_INF, bi[r] = 0x7fffffff;
  for (int v0 = 0; v0 < V; v0 += ZK_LCE_NT) {
    zk_lce_logits<D, V, RT>(h, w, rowid, hs, ws, v0, acc);
    int v = v0 + threadIdx.x;
    if (v < V) {
#pragma unroll
      for (int r = 0; r < RT; r++)
        if (acc[r] > best[r]) best[r] = acc[r], bi[r] = v;
    }
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < RT; r++) {
    zk_warp_argmax(best[r], bi[r]);
    if (lane == 0) red_v[warp][r] = best[r], red_i[warp][r] = bi[r];
  }
  __syncthreads();
  if (threadIdx.x < RT && rowid[threadIdx.x] >= 0) {
    int r = threadIdx.x;
    float bv = red_v[0][r];
    int bx = red_i[0][r];
    for (int k = 1; k < ZK_LCE_NT / 32; k++) zk_argmax_merge(bv, bx, red_v[k][r], red_i[k][r]);
    rows[blockIdx.x * RT + r] = bx == tgt[r] ? 1.0f : 0.0f;
  }
}

template <int N>
__device__ __forceinline__ void zk_lce_acc_finish(const float *__restrict__ rows,
                                                  const int *__restrict__ count,
                                                  float *__restrict__ out) {
  __shared__ int sh[32];
  int n = count[0], correct = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) correct += rows[i] != 0.0f;
  correct = zk_block_sum_int(correct, sh);
  if (threadIdx.x == 0) {
    out[0] = (float)correct;
    out[1] = (float)n;
  }
}

/* Rows of a shared sub-chunk in the accumulation phases: KR x D floats, at
 * most 16 KB when D <= 4096. A power of two, so that it divides the 256 rows
 * of a chunk. */
template <int D>
struct zk_lce_kr {
  static constexpr int value = D <= 512 ? 8 : D <= 1024 ? 4 : D <= 2048 ? 2 : 1;
};

template <int D, int V, int RT>
__device__ __forceinline__ void zk_lce_bwd_dh(const float *__restrict__ dloss,
                                              const float *__restrict__ h,
                                              const float *__restrict__ w,
                                              const int *__restrict__ targets,
                                              const int *__restrict__ idx,
                                              const int *__restrict__ count,
                                              const float *__restrict__ lse,
                                              float *__restrict__ dh) {
  constexpr int KR = zk_lce_kr<D>::value, GP = ZK_LCE_NT + 1;
  constexpr int WS = 16 * (ZK_LCE_NT + 1) > KR * D ? 16 * (ZK_LCE_NT + 1) : KR * D;
  constexpr int ACC = zk_lce_map<RT, D>::ACC;
  __align__(16) __shared__ float hs[RT * 16];
  __shared__ float ws[WS], gs[RT * GP], lses[RT]; /* ws: W slices, then W sub-chunks */
  __shared__ int rowid[RT], tgt[RT], vrow[ZK_LCE_NT];
  int n = zk_lce_rows_of_block<RT>(idx, count, targets, rowid, tgt);
  if (!n) return;
  if (threadIdx.x < RT) lses[threadIdx.x] = rowid[threadIdx.x] >= 0 ? lse[blockIdx.x * RT + threadIdx.x] : 0.0f;
  float scale = dloss[0] / (float)n;
  float dha[ACC], acc[RT];
#pragma unroll
  for (int a = 0; a < ACC; a++) dha[a] = 0.0f;

  for (int v0 = 0; v0 < V; v0 += ZK_LCE_NT) {
    zk_lce_logits<D, V, RT>(h, w, rowid, hs, ws, v0, acc);
    int v = v0 + threadIdx.x;
#pragma unroll
    for (int r = 0; r < RT; r++) {
      float g = 0.0f;
      if (v < V && rowid[r] >= 0) g = scale * (expf(acc[r] - lses[r]) - (v == tgt[r] ? 1.0f : 0.0f));
      gs[r * GP + threadIdx.x] = g;
    }
    vrow[threadIdx.x] = v < V ? v : -1;
    /* dh[r, :] += sum_vv g[r, vv] w[v0 + vv, :], KR vocabulary rows at a time */
    for (int k0 = 0; k0 < ZK_LCE_NT; k0 += KR) {
      __syncthreads();
      zk_lce_load_rows<D, KR>(ws, w, vrow + k0);
      __syncthreads();
      zk_lce_accum<RT, D, KR, GP>(dha, gs, ws, k0);
    }
  }
  zk_lce_store<RT, D>(dha, dh, rowid);
}

template <int D, int V>
__device__ __forceinline__ void zk_lce_bwd_dw(const float *__restrict__ dloss,
                                              const float *__restrict__ h,
                                              const float *__restrict__ w,
                                              const int *__restrict__ targets,
                                              const int *__restrict__ idx,
                                              const int *__restrict__ count,
                                              const float *__restrict__ lse,
                                              float *__restrict__ dw) {
  constexpr int VW = 16, DC = 16, HP = DC + 4, RC = ZK_LCE_NT, GP = RC + 1;
  constexpr int KR = zk_lce_kr<D>::value;
  constexpr int HS = RC * HP > KR * D ? RC * HP : KR * D;
  constexpr int ACC = zk_lce_map<VW, D>::ACC;
  /* hs: h slices [RC][HP] (rows 16-byte aligned), then h sub-chunks [KR][D] */
  __align__(16) __shared__ float hs[HS];
  __align__(16) __shared__ float wsv[VW * DC];
  __shared__ float gs[VW * GP], lses[RC];
  __shared__ int rowid[RC], tgt[RC];
  int n = count[0], v0 = blockIdx.x * VW;
  float scale = n > 0 ? dloss[0] / (float)n : 0.0f;
  float dwa[ACC], acc[VW];
#pragma unroll
  for (int a = 0; a < ACC; a++) dwa[a] = 0.0f;

  for (int base = 0; base < n; base += RC) {
    __syncthreads();
    {
      int i = base + threadIdx.x, row = i < n ? idx[i] : -1;
      rowid[threadIdx.x] = row;
      tgt[threadIdx.x] = row >= 0 ? targets[row] : -1;
      lses[threadIdx.x] = row >= 0 ? lse[i] : 0.0f;
    }
    /* logits of (row threadIdx.x, vocabulary rows v0 .. v0 + VW) */
#pragma unroll
    for (int vv = 0; vv < VW; vv++) acc[vv] = 0.0f;
    for (int d0 = 0; d0 < D; d0 += DC) {
      __syncthreads();
      for (int e = threadIdx.x; e < RC * DC; e += ZK_LCE_NT) {
        int r = e / DC, c = e - r * DC, row = rowid[r];
        hs[r * HP + c] = (row >= 0 && d0 + c < D) ? h[(zk_i64)row * D + d0 + c] : 0.0f;
      }
      for (int e = threadIdx.x; e < VW * DC; e += ZK_LCE_NT) {
        int vv = e / DC, c = e - vv * DC;
        wsv[e] = (v0 + vv < V && d0 + c < D) ? w[(zk_i64)(v0 + vv) * D + d0 + c] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < DC; c += 4) {
        zk_f4 hv = *(const zk_f4 *)&hs[threadIdx.x * HP + c];
#pragma unroll
        for (int vv = 0; vv < VW; vv++) {
          zk_f4 wv = *(const zk_f4 *)&wsv[vv * DC + c];
          acc[vv] += hv.x * wv.x;
          acc[vv] += hv.y * wv.y;
          acc[vv] += hv.z * wv.z;
          acc[vv] += hv.w * wv.w;
        }
      }
    }
    {
      int row = rowid[threadIdx.x], t = tgt[threadIdx.x];
      float l = lses[threadIdx.x];
#pragma unroll
      for (int vv = 0; vv < VW; vv++) {
        float g = 0.0f;
        if (row >= 0 && v0 + vv < V) g = scale * (expf(acc[vv] - l) - (v0 + vv == t ? 1.0f : 0.0f));
        gs[vv * GP + threadIdx.x] = g;
      }
    }
    /* dw[v, :] += sum_r g[v, r] h[r, :], KR rows at a time */
    for (int k0 = 0; k0 < RC; k0 += KR) {
      __syncthreads();
      zk_lce_load_rows<D, KR>(hs, h, rowid + k0);
      __syncthreads();
      zk_lce_accum<VW, D, KR, GP>(dwa, gs, hs, k0);
    }
  }
  __syncthreads();
  if (threadIdx.x < VW) rowid[threadIdx.x] = v0 + (int)threadIdx.x < V ? v0 + (int)threadIdx.x : -1;
  __syncthreads();
  zk_lce_store<VW, D>(dwa, dw, rowid); /* rowid now names the block's vocabulary rows */
}

#endif /* ZK_LINEAR_CROSS_ENTROPY_CU */
