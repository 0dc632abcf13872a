/* cross_entropy.cu: cross_entropy, cross_entropy_bwd and accuracy (ops.def).
 * Needs softmax.cu (zk_row_lse, zk_row_argmax), pasted before it.
 *
 * Shapes: logits [N, V] (leading axes flattened), targets i32 [N]; a row is
 * labelled when its target != IGNORE. Constants: V, N, IGNORE.
 *
 * cross_entropy, two kernels sharing a scratch array rowloss [N] floats:
 *   zk_ce_rows<V, IGNORE>: one warp per row (256-thread blocks, grid
 *     ceil(N / 8)): rowloss[r] = logsumexp(row) - row[target], 0 on ignored rows.
 *     A target outside [0, V) gives NaN (the data layer rejects those).
 *   zk_ce_finish<N, IGNORE>: one block of 1024 threads: loss = sum(rowloss) /
 *     labelled (0 when none), summed in a fixed order.
 * cross_entropy_bwd, two kernels sharing scratch count [1] float:
 *   zk_ce_count<N, IGNORE>: one block of 1024 threads counts labelled rows.
 *   zk_ce_bwd_rows<V, IGNORE>: one warp per row: dlogits = dloss / count *
 *     (softmax(row) - onehot(target)), zeros on ignored rows.
 * cross_entropy_step, the three above in one pass over the logits (the training
 * graph's rewrite, compiler/train_graph.c): zk_ce_count (when the gradient is
 * wanted), then zk_ce_step_rows<V, IGNORE, GRAD>: one warp per row makes its
 *   loss, its hit and (GRAD) its gradient row from one logsumexp (or
 *   zk_ce_step_row_block: a block per row, the row held in registers, when V
 *   is a multiple of 1024 up to 16384, as the LM head's 8192); then
 *   zk_ce_step_finish<N, IGNORE>: loss and (correct, labelled). Scratch: count,
 *   rowloss [N], hit [N].
 * accuracy, two kernels sharing scratch hit [N] ints:
 *   zk_acc_rows<V, IGNORE>: one warp per row: hit = labelled and the row's first
 *     maximum is the target.
 *   zk_acc_finish<N, IGNORE>: one block of 1024 threads: out[0] = correct,
 *     out[1] = labelled (exact integer sums, stored as floats).
 */
#ifndef ZK_CROSS_ENTROPY_CU
#define ZK_CROSS_ENTROPY_CU

template <int V, int IGNORE>
__device__ __forceinline__ void zk_ce_rows(const float *__restrict__ logits,
                                           const int *__restrict__ targets,
                                           float *__restrict__ rowloss, int N) {
  zk_i64 row = (zk_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  int t = targets[row];
  float loss = 0.0f;
  if (t != IGNORE) {
    const float *xr = logits + row * V;
    float lse = zk_row_lse<V>(xr);
    loss = (t >= 0 && t < V) ? lse - xr[t] : __int_as_float(0x7fc00000);
  }
  if ((threadIdx.x & 31) == 0) rowloss[row] = loss;
}

template <int N, int IGNORE>
__device__ __forceinline__ void zk_ce_finish(const float *__restrict__ rowloss,
                                             const int *__restrict__ targets,
                                             float *__restrict__ out) {
  __shared__ float shf[32];
  __shared__ int shi[32];
  float s = 0.0f;
  int cnt = 0;
  for (int r = threadIdx.x; r < N; r += blockDim.x) {
    if (targets[r] != IGNORE) {
      s += rowloss[r];
      cnt++;
    }
  }
  s = zk_block_sum(s, shf);
  cnt = zk_block_sum_int(cnt, shi);
  if (threadIdx.x == 0) out[0] = cnt > 0 ? s / (float)cnt : 0.0f;
}

/* Whether rows [row0, row0 + R) below N hold a labelled one (R at most the
 * block's threads); every thread of the block calls it. */
template <int IGNORE>
__device__ __forceinline__ bool zk_ce_any_labelled(const int *__restrict__ targets, zk_i64 row0, int R, zk_i64 N) {
  __shared__ int shi[32];
  int tid = threadIdx.x;
  return zk_block_sum_int(tid < R && row0 + tid < N && targets[row0 + tid] != IGNORE, shi) > 0;
}

template <int N, int IGNORE>
__device__ __forceinline__ void zk_ce_count(const int *__restrict__ targets,
                                            float *__restrict__ count) {
  __shared__ int shi[32];
  int cnt = 0;
  for (int r = threadIdx.x; r < N; r += blockDim.x) cnt += targets[r] != IGNORE;
  cnt = zk_block_sum_int(cnt, shi);
  if (threadIdx.x == 0) count[0] = (float)cnt;
}

/* Row dr of zeros, by one warp. */
template <int V>
__device__ __forceinline__ void zk_ce_zero_row(float *__restrict__ dr) {
  int lane = threadIdx.x & 31;
  if (V % 128 == 0) {
    zk_f4 z = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = lane; j < V / 4; j += 32) ((zk_f4 *)dr)[j] = z;
  } else {
    for (int j = lane; j < V; j += 32) dr[j] = 0.0f;
  }
}

/* The gradient of four logits v at indices e .. e + 3 of a row whose
 * logsumexp is lse and target t: scale (softmax - onehot). */
__device__ __forceinline__ zk_f4 zk_ce_grad4(zk_f4 v, int e, int t, float lse, float scale) {
  zk_f4 g;
  g.x = scale * (expf(v.x - lse) - (e == t ? 1.0f : 0.0f));
  g.y = scale * (expf(v.y - lse) - (e + 1 == t ? 1.0f : 0.0f));
  g.z = scale * (expf(v.z - lse) - (e + 2 == t ? 1.0f : 0.0f));
  g.w = scale * (expf(v.w - lse) - (e + 3 == t ? 1.0f : 0.0f));
  return g;
}

/* dr = scale * (softmax(xr) - onehot(t)) for a row whose logsumexp is lse, by
 * one warp. */
template <int V>
__device__ __forceinline__ void zk_ce_grad_row(const float *__restrict__ xr, float lse, int t,
                                               float scale, float *__restrict__ dr) {
  int lane = threadIdx.x & 31;
  if (V % 128 == 0) { /* 16-byte loads and stores */
    const zk_f4 *x4 = (const zk_f4 *)xr;
    zk_f4 *d4 = (zk_f4 *)dr;
    for (int j = lane; j < V / 4; j += 32) d4[j] = zk_ce_grad4(x4[j], 4 * j, t, lse, scale);
    return;
  }
  for (int j = lane; j < V; j += 32) dr[j] = scale * (expf(xr[j] - lse) - (j == t ? 1.0f : 0.0f));
}

template <int V, int IGNORE>
__device__ __forceinline__ void zk_ce_bwd_rows(const float *__restrict__ dloss,
                                               const float *__restrict__ logits,
                                               const int *__restrict__ targets,
                                               const float *__restrict__ count,
                                               float *__restrict__ dlogits, int N) {
  zk_i64 row = (zk_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  int t = targets[row];
  if (t == IGNORE) {
    zk_ce_zero_row<V>(dlogits + row * V);
    return;
  }
  const float *xr = logits + row * V;
  float scale = dloss[0] / count[0]; /* count >= 1: this row is labelled */
  zk_ce_grad_row<V>(xr, zk_row_lse<V>(xr), t, scale, dlogits + row * V);
}

/* The training step's loss head in one pass over the logits (cross_entropy_step):
 * one warp per row finds the row's logsumexp and first maximum together, stores
 * its loss and hit, and (GRAD) writes its gradient row from the same lse. */
template <int V, int IGNORE, bool GRAD>
__device__ __forceinline__ void zk_ce_step_rows(const float *__restrict__ logits,
                                                const int *__restrict__ targets,
                                                const float *__restrict__ dloss,
                                                const float *__restrict__ count,
                                                float *__restrict__ rowloss, int *__restrict__ hit,
                                                float *__restrict__ dlogits, int N) {
  zk_i64 row = (zk_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  int t = targets[row], h = 0;
  float loss = 0.0f;
  if (t == IGNORE) {
    if (GRAD) zk_ce_zero_row<V>(dlogits + row * V);
  } else {
    const float *xr = logits + row * V;
    float lse;
    int arg;
    zk_row_scan<V, true, true>(xr, lse, arg);
    loss = (t >= 0 && t < V) ? lse - xr[t] : __int_as_float(0x7fc00000);
    h = arg == t;
    if (GRAD) zk_ce_grad_row<V>(xr, lse, t, dloss[0] / count[0], dlogits + row * V);
  }
  if ((threadIdx.x & 31) == 0) {
    rowloss[row] = loss;
    hit[row] = h;
  }
}

/* The same for rows of V = 1024 k floats, one block of 256 threads per row
 * (grid N): the row stays in registers (V / 256 floats a thread, read as
 * float4s at j 256 + tid), so the gradient pass needs no second read of the
 * logits from memory. The row's (max, sum) and first maximum are merged over
 * each warp, then over the 8 warps in warp order. */
template <int V, int IGNORE, bool GRAD>
__device__ __forceinline__ void zk_ce_step_row_block(const float *__restrict__ logits,
                                                     const int *__restrict__ targets,
                                                     const float *__restrict__ dloss,
                                                     const float *__restrict__ count,
                                                     float *__restrict__ rowloss, int *__restrict__ hit,
                                                     float *__restrict__ dlogits) {
  constexpr int Q = V / 1024; /* float4s a thread */
  __shared__ float shm[8], shs[8], shb[8];
  __shared__ int shi[8];
  int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  zk_i64 row = blockIdx.x;
  int t = targets[row];
  zk_f4 *d4 = (zk_f4 *)(dlogits + row * V);
  if (t == IGNORE) {
    if (GRAD) {
      zk_f4 z = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < Q; j++) d4[j * 256 + tid] = z;
    }
    if (tid == 0) rowloss[row] = 0.0f, hit[row] = 0;
    return;
  }
  const zk_f4 *x4 = (const zk_f4 *)(logits + row * V);
  zk_f4 v[Q];
  float m = ZK_NEG_INF, best = ZK_NEG_INF;
  int bi = 0x7fffffff;
#pragma unroll
  for (int j = 0; j < Q; j++) {
    v[j] = x4[j * 256 + tid];
    int e = 4 * (j * 256 + tid); /* a thread's indices increase with j */
    if (v[j].x > best || bi == 0x7fffffff) best = v[j].x, bi = e;
    if (v[j].y > best) best = v[j].y, bi = e + 1;
    if (v[j].z > best) best = v[j].z, bi = e + 2;
    if (v[j].w > best) best = v[j].w, bi = e + 3;
    m = fmaxf(m, fmaxf(fmaxf(v[j].x, v[j].y), fmaxf(v[j].z, v[j].w)));
  }
  float s = 0.0f;
  if (m != ZK_NEG_INF)
#pragma unroll
    for (int j = 0; j < Q; j++)
      s += expf(v[j].x - m) + expf(v[j].y - m) + expf(v[j].z - m) + expf(v[j].w - m);
  zk_warp_lse(m, s);
  zk_warp_argmax(best, bi);
  if (lane == 0) shm[warp] = m, shs[warp] = s, shb[warp] = best, shi[warp] = bi;
  __syncthreads();
  m = shm[0], s = shs[0], best = shb[0], bi = shi[0];
#pragma unroll
  for (int k = 1; k < 8; k++) {
    zk_lse_merge(m, s, shm[k], shs[k]);
    zk_argmax_merge(best, bi, shb[k], shi[k]);
  }
  float lse = m + logf(s);
  if (tid == 0) {
    rowloss[row] = (t >= 0 && t < V) ? lse - logits[row * V + t] : __int_as_float(0x7fc00000);
    hit[row] = bi == t;
  }
  if (!GRAD) return;
  float scale = dloss[0] / count[0];
#pragma unroll
  for (int j = 0; j < Q; j++) d4[j * 256 + tid] = zk_ce_grad4(v[j], 4 * (j * 256 + tid), t, lse, scale);
}

/* loss = sum(rowloss) / labelled (0 when none), metrics = (correct, labelled):
 * one block of 1024 threads, sums in a fixed order. */
template <int N, int IGNORE>
__device__ __forceinline__ void zk_ce_step_finish(const float *__restrict__ rowloss,
                                                  const int *__restrict__ hit,
                                                  const int *__restrict__ targets,
                                                  float *__restrict__ loss,
                                                  float *__restrict__ metrics) {
  __shared__ float shf[32];
  __shared__ int shi[32];
  float s = 0.0f;
  int labelled = 0, correct = 0;
  for (int r = threadIdx.x; r < N; r += blockDim.x) {
    if (targets[r] != IGNORE) {
      s += rowloss[r];
      labelled++;
      correct += hit[r];
    }
  }
  s = zk_block_sum(s, shf);
  labelled = zk_block_sum_int(labelled, shi);
  correct = zk_block_sum_int(correct, shi);
  if (threadIdx.x == 0) {
    loss[0] = labelled > 0 ? s / (float)labelled : 0.0f;
    metrics[0] = (float)correct;
    metrics[1] = (float)labelled;
  }
}

template <int V, int IGNORE>
__device__ __forceinline__ void zk_acc_rows(const float *__restrict__ logits,
                                            const int *__restrict__ targets,
                                            int *__restrict__ hit, int N) {
  zk_i64 row = (zk_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= N) return;
  int t = targets[row];
  int h = 0;
  if (t != IGNORE) h = zk_row_argmax<V>(logits + row * V) == t;
  if ((threadIdx.x & 31) == 0) hit[row] = h;
}

template <int N, int IGNORE>
__device__ __forceinline__ void zk_acc_finish(const int *__restrict__ hit,
                                              const int *__restrict__ targets,
                                              float *__restrict__ out) {
  __shared__ int shi[32];
  int correct = 0, labelled = 0;
  for (int r = threadIdx.x; r < N; r += blockDim.x) {
    if (targets[r] != IGNORE) {
      labelled++;
      correct += hit[r];
    }
  }
  correct = zk_block_sum_int(correct, shi);
  labelled = zk_block_sum_int(labelled, shi);
  if (threadIdx.x == 0) {
    out[0] = (float)correct;
    out[1] = (float)labelled;
  }
}

#endif /* ZK_CROSS_ENTROPY_CU */
