/* embedding.cu: embedding (gather) and embedding_bwd (scatter-add) (ops.def).
 *
 * Shapes: w, dw [V, D]; ids i32 [N] (leading axes flattened); y, dy [N, D].
 * Constants: V, D, N and the grid's sizes. An id outside [0, V) (which the
 * data layer rejects before a step) reads and writes nothing.
 *
 * zk_embedding_fwd<V, D>: y[n, d] = w[ids[n], d] (a zero row for a bad id).
 *   One thread per element of y, 256-thread blocks, grid ceil(N D / 256);
 *   zk_embedding_fwd4, for D a multiple of 4, one thread per 4 elements
 *   (16-byte loads and stores), grid ceil(N D / 1024).
 *
 * The backward, dw[v] = sum of dy[n] over the rows n with ids[n] = v, into a
 * dw the emitter clears first (a ZOO_STEP_ZERO step), in a fixed order of
 * additions: a run gives the same bits every time (an atomicAdd scatter would
 * not, and MQAR's hot token 0, a quarter of the rows, made it slow as well).
 * Five kernels over a scratch area:
 *
 *   zk_emb_count<V>     grid C = ceil(N / R), R = 1024 rows a chunk: each
 *                       chunk's count of each id, cnt [C][V] (a histogram in
 *                       shared memory; integer counts, exact).
 *   zk_emb_offsets<V,C> thread per id v: cnt[c][v] becomes the count of v in
 *                       the chunks before c, total[v] the count of v.
 *   zk_emb_place<V>     grid C: sorts the rows by id, stably. Each block scans
 *                       total (start[v] = rows with a smaller id; block 0
 *                       stores it, and start[V] = the valid rows) and reads
 *                       its chunk's ids into shared memory; then warp 0
 *                       walks the chunk in order, 32 rows at a time: a row's
 *                       place is cursor[id] + its rank among the earlier lanes
 *                       holding the same id (__match_any_sync), and the lowest
 *                       such lane moves the cursor on. sorted[] lists the
 *                       rows id by id, each id's rows in increasing order.
 *   zk_emb_sum<V, D>    one warp per piece of S = 64 sorted entries (8 pieces
 *                       a block), lanes over the columns: adds the rows of
 *                       each run of one id in order (the loads of 16, 8 or 4
 *                       rows in flight, as D allows).
 *                       An id whose rows lie within the piece gets dw[v]
 *                       directly. An id that continues past the piece (it
 *                       began in it) leaves its sum in last[p]; one that came
 *                       from an earlier piece leaves it in first[p], and the
 *                       piece where it ends names it in end[p] (-1: none).
 *   zk_emb_join<V, D>   a block per piece p1 with end[p1] = v: dw[v] =
 *                       last[p0] + first[p0 + 1] + ... + first[p1], the
 *                       firsts in G fixed runs summed side by side (MQAR's
 *                       token 0 spans hundreds of pieces), added in order.
 *
 * So dw[v] is the in-order sum of v's rows within each piece, the pieces'
 * sums added in a fixed order: not the CPU's single running sum, but the
 * same bits on every run. Scratch: cnt C V, total V, start V + 1, sorted N
 * and end NP ints, first and last NP D floats (NP = ceil(N / S)); V at most
 * ZK_EMB_MAX_V (the histogram, the cursors and a chunk's ids live in shared
 * memory). ZOO_EMB_SCATTER=1 makes the emitter take the scatter below
 * instead, for measuring.
 *
 * zk_embedding_bwd<V, D, P>: the scatter with atomicAdd, for ids known to be
 *   distinct (an arange: every dw row gets one row of dy added to zero, so
 *   the order cannot matter) or V above ZK_EMB_MAX_V. Grid P blocks of
 *   256 threads; block p takes rows [p R, p R + R), R = ceil(N / P). Its
 *   threads form G = 256 / CW groups of CW = min(D, 256) columns; group g
 *   walks a contiguous share of the block's rows in order, summing dy while
 *   the id stays the same and adding the sum with one atomicAdd when it
 *   changes. With repeated ids the order of the additions is not fixed.
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

template <int V, int D>
__device__ __forceinline__ void zk_embedding_fwd4(const float *__restrict__ w,
                                                  const int *__restrict__ ids,
                                                  float *__restrict__ y, zk_i64 N) {
  static_assert(D % 4 == 0, "zk_embedding_fwd4 needs D a multiple of 4");
  zk_i64 e = ((zk_i64)blockIdx.x * blockDim.x + threadIdx.x) * 4;
  if (e >= N * D) return;
  zk_i64 n = e / D;
  int d = (int)(e - n * D);
  int id = ids[n];
  zk_f4 v = {0.0f, 0.0f, 0.0f, 0.0f};
  if (id >= 0 && id < V) v = *reinterpret_cast<const zk_f4 *>(w + (zk_i64)id * D + d);
  *reinterpret_cast<zk_f4 *>(y + e) = v;
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

/* ---- the deterministic backward (see the top of the file) */

#define ZK_EMB_R 1024    /* rows a chunk */
#define ZK_EMB_S 64      /* sorted entries a piece */
#define ZK_EMB_MAX_V 11248 /* ids the shared-memory cursors hold beside the chunk */

template <int V>
__device__ __forceinline__ void zk_emb_count(const int *__restrict__ ids, int *__restrict__ cnt,
                                             zk_i64 N) {
  static_assert(V <= ZK_EMB_MAX_V, "zk_emb_count: V too large for shared memory");
  __shared__ int hist[V];
  for (int v = threadIdx.x; v < V; v += blockDim.x) hist[v] = 0;
  __syncthreads();
  zk_i64 r0 = (zk_i64)blockIdx.x * ZK_EMB_R;
  for (int i = threadIdx.x; i < ZK_EMB_R; i += blockDim.x) {
    zk_i64 r = r0 + i;
    if (r < N) {
      int id = ids[r];
      if (id >= 0 && id < V) atomicAdd(&hist[id], 1);
    }
  }
  __syncthreads();
  int *row = cnt + (zk_i64)blockIdx.x * V;
  for (int v = threadIdx.x; v < V; v += blockDim.x) row[v] = hist[v];
}

template <int V, int C>
__device__ __forceinline__ void zk_emb_offsets(int *__restrict__ cnt, int *__restrict__ total) {
  int v = blockIdx.x * blockDim.x + threadIdx.x;
  if (v >= V) return;
  int run = 0;
  for (int c = 0; c < C; c++) {
    int t = cnt[(zk_i64)c * V + v];
    cnt[(zk_i64)c * V + v] = run;
    run += t;
  }
  total[v] = run;
}

/* 256 threads. */
template <int V>
__device__ __forceinline__ void zk_emb_place(const int *__restrict__ ids, const int *__restrict__ cnt,
                                             const int *__restrict__ total, int *__restrict__ start,
                                             int *__restrict__ sorted, zk_i64 N) {
  constexpr int NT = 256, NW = NT / 32, VW = (V + NW - 1) / NW; /* ids a warp scans */
  __shared__ int cursor[V];
  __shared__ int chunk[ZK_EMB_R]; /* the chunk's ids */
  __shared__ int wsum[NW];
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5, v0 = warp * VW;
  const int v1 = v0 + VW < V ? v0 + VW : V;
  /* warp w scans ids [v0, v1) 32 at a time, lanes on consecutive ids
   * (coalesced loads, no bank conflicts): first its share's sum... */
  int s = 0;
  for (int v = v0 + lane; v < v1; v += 32) s += total[v];
  s = zk_warp_sum_int(s);
  if (lane == 0) wsum[warp] = s;
  __syncthreads();
  int run = 0; /* rows with an id below v0 */
  for (int w = 0; w < warp; w++) run += wsum[w];
  /* ...then the running sum over its ids: start[v] = rows with an id below
   * v, the cursor = start[v] + v's rows in the chunks before this one */
  const int *crow = cnt + (zk_i64)blockIdx.x * V;
  for (int b = v0; b < v1; b += 32) {
    int v = b + lane, x = v < v1 ? total[v] : 0, incl = x;
    for (int o = 1; o < 32; o <<= 1) {
      int u = __shfl_up_sync(ZK_FULL_MASK, incl, o);
      if (lane >= o) incl += u;
    }
    if (v < v1) {
      int sv = run + incl - x;
      if (blockIdx.x == 0) start[v] = sv;
      cursor[v] = sv + crow[v];
    }
    run += __shfl_sync(ZK_FULL_MASK, incl, 31);
  }
  if (blockIdx.x == 0 && warp == NW - 1 && lane == 0) start[V] = run;
  zk_i64 r0 = (zk_i64)blockIdx.x * ZK_EMB_R;
  for (int i = t; i < ZK_EMB_R; i += NT) chunk[i] = r0 + i < N ? ids[r0 + i] : -1;
  __syncthreads();
  if (warp != 0) return;
  for (int i = 0; i < ZK_EMB_R; i += 32) {
    int id = chunk[i + lane];
    bool ok = id >= 0 && id < V;
    unsigned same = __match_any_sync(ZK_FULL_MASK, ok ? id : -1 - lane);
    int rank = __popc(same & ((1u << lane) - 1u));
    int pos = ok ? cursor[id] + rank : 0;
    __syncwarp();
    if (ok) {
      sorted[pos] = (int)(r0 + i + lane);
      if (rank == 0) cursor[id] += __popc(same);
    }
    __syncwarp();
  }
}

/* 256 threads, grid ceil(NP / 8). */
template <int V, int D>
__device__ __forceinline__ void zk_emb_sum(const float *__restrict__ dy, const int *__restrict__ ids,
                                           const int *__restrict__ sorted, const int *__restrict__ start,
                                           float *__restrict__ first, float *__restrict__ last,
                                           int *__restrict__ end, float *__restrict__ dw, zk_i64 N) {
  constexpr int CPT = (D + 31) / 32, S = ZK_EMB_S, U = CPT <= 1 ? 16 : CPT <= 2 ? 8 : 4, NW = 8;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  zk_i64 NP = (N + S - 1) / S, p = (zk_i64)blockIdx.x * NW + warp;
  zk_i64 nv = start[V];
  if (p < NP) {
    zk_i64 e0 = p * S, e1 = e0 + S < nv ? e0 + S : nv;
    int endv = -1;
    if (e0 < e1) {
      int before = e0 > 0 ? ids[sorted[e0 - 1]] : -1; /* the ids just outside the piece */
      int after = e1 < nv ? ids[sorted[e1]] : -1;
      float acc[CPT];
#pragma unroll
      for (int j = 0; j < CPT; j++) acc[j] = 0.0f;
      int cur = -1;
      zk_i64 a = e0; /* where cur's run began */
      /* A run [a, b) of id v ends: its sum goes where the top of the file says. */
      auto flush = [&](int v, zk_i64 b) {
        bool from_before = a == e0 && before == v, goes_on = b == e1 && after == v;
        float *dst = from_before ? first + p * D : goes_on ? last + p * D : dw + (zk_i64)v * D;
        if (from_before && !goes_on) endv = v;
#pragma unroll
        for (int j = 0; j < CPT; j++)
          if (lane + 32 * j < D) dst[lane + 32 * j] = acc[j];
      };
      for (zk_i64 eb = e0; eb < e1; eb += 32) {
        int n = e1 - eb < 32 ? (int)(e1 - eb) : 32;
        int myrow = lane < n ? sorted[eb + lane] : 0;
        int myid = lane < n ? ids[myrow] : -1;
        for (int k = 0; k < n; k += U) {
          float x[U][CPT];
          int idk[U];
#pragma unroll
          for (int u = 0; u < U; u++) {
            int row = __shfl_sync(ZK_FULL_MASK, myrow, k + u);
            idk[u] = __shfl_sync(ZK_FULL_MASK, myid, k + u);
#pragma unroll
            for (int j = 0; j < CPT; j++)
              x[u][j] = k + u < n && lane + 32 * j < D ? dy[(zk_i64)row * D + lane + 32 * j] : 0.0f;
          }
#pragma unroll
          for (int u = 0; u < U; u++) {
            if (k + u >= n) break;
            if (idk[u] != cur) {
              if (cur >= 0) flush(cur, eb + k + u);
              cur = idk[u];
              a = eb + k + u;
#pragma unroll
              for (int j = 0; j < CPT; j++) acc[j] = 0.0f;
            }
#pragma unroll
            for (int j = 0; j < CPT; j++) acc[j] += x[u][j];
          }
        }
      }
      if (cur >= 0) flush(cur, e1);
    }
    if (lane == 0) end[p] = endv;
  }
}

/* 256 threads, grid NP: block q joins the id whose rows end in piece q after
 * starting in an earlier one (end[q] >= 0; other blocks leave at once). Its
 * pieces p0 + 1 .. q are split into G = 256 / min(D, 256) equal runs, each
 * summed in order by a group of threads (one column each), and dw[v] =
 * last[p0] + the runs' sums in order. */
template <int V, int D>
__device__ __forceinline__ void zk_emb_join(const int *__restrict__ start, const float *__restrict__ first,
                                            const float *__restrict__ last, const int *__restrict__ end,
                                            float *__restrict__ dw) {
  constexpr int S = ZK_EMB_S, DC = D < 256 ? D : 256, G = 256 / DC, CPT = (D + DC - 1) / DC;
  __shared__ float part[G * CPT * DC];
  const zk_i64 q = blockIdx.x;
  const int v = end[q];
  if (v < 0) return;
  const zk_i64 p0 = start[v] / S, n = q - p0;
  const int t = threadIdx.x, col = t % DC, g = t / DC;
  if (g < G) {
    zk_i64 len = (n + G - 1) / G, r0 = p0 + 1 + g * len, r1 = r0 + len < q + 1 ? r0 + len : q + 1;
    float s[CPT];
#pragma unroll
    for (int j = 0; j < CPT; j++) s[j] = 0.0f;
#pragma unroll 16
    for (zk_i64 r = r0; r < r1; r++)
#pragma unroll
      for (int j = 0; j < CPT; j++)
        if (col + DC * j < D) s[j] += first[r * D + col + DC * j];
#pragma unroll
    for (int j = 0; j < CPT; j++) part[(g * CPT + j) * DC + col] = s[j];
  }
  __syncthreads();
  if (g != 0) return;
#pragma unroll
  for (int j = 0; j < CPT; j++) {
    int c = col + DC * j;
    if (c >= D) continue;
    float x = last[p0 * D + c];
    for (int gg = 0; gg < G; gg++) x += part[(gg * CPT + j) * DC + c - DC * j];
    dw[(zk_i64)v * D + c] = x;
  }
}

#endif /* ZK_EMBEDDING_CU */
