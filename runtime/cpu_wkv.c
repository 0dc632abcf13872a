/* cpu_wkv.c: CPU kernels of RWKV v4's WKV recurrence (wkv4, wkv4_bwd).
 *
 * Each (batch, channel) pair is an independent scan along time. With
 * d = -exp(w[c]) < 0 the recurrence keeps
 *
 *     a = sum_{i<t} e^((t-1-i) d + k_i) v_i,   b = sum_{i<t} e^((t-1-i) d + k_i)
 *
 * as (p, q, o): a = p e^o, b = q e^o, with o the largest exponent seen, so
 * nothing overflows however large k gets. The scans run in double; the
 * optional bf16 rounding (attribute i0) models the reference, which returns
 * y and the gradients as bf16 tensors.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu.h"

/* x rounded to the nearest bf16 (ties to even), returned as a float; NaN stays NaN. */
static float wkv_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return x;
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  float r;
  memcpy(&r, &u, sizeof r);
  return r;
}

/* Sizes of k [B, T, C] (input ki of node n). */
static void wkv_sizes(const zoo_cpu *c, const zoo_node *n, int ki, int64_t *B, int64_t *T,
                      int64_t *C) {
  int64_t d[ZOO_MAX_DIMS];
  zoo_cpu_dims(c, n->in[ki], d);
  *B = d[0], *T = d[1], *C = d[2];
}

/* One step of the stable scan: folds e^(x) (value) into (p, q, o) scaled by
 * e^(shift) first, i.e. (p, q) <- e^shift (p, q) + e^x (val, 1). */
static void wkv_fold(double *p, double *q, double *o, double shift, double x, double val) {
  double no = fmax(*o + shift, x);
  double A = exp(*o + shift - no), Bx = exp(x - no);
  *p = A * *p + Bx * val;
  *q = A * *q + Bx;
  *o = no;
}

/* wkv4 (w, u, k, v; i0 = bf16) -> y */
int zoo_cpu_wkv4(zoo_cpu *c, const zoo_node *n) {
  int64_t B, T, C;
  wkv_sizes(c, n, 2, &B, &T, &C);
  const float *W = zoo_cpu_f32(c, n->in[0]), *U = zoo_cpu_f32(c, n->in[1]);
  const float *K = zoo_cpu_f32(c, n->in[2]), *V = zoo_cpu_f32(c, n->in[3]);
  float *Y = zoo_cpu_f32(c, n->out[0]);
  int bf16 = n->attrs.i[0] != 0;
#pragma omp parallel for if (B * T * C > 65536)
  for (int64_t bc = 0; bc < B * C; bc++) {
    int64_t b = bc / C, ch = bc % C;
    double d = -exp((double)W[ch]), u = U[ch];
    double p = 0, q = 0, o = -INFINITY;
    for (int64_t t = 0; t < T; t++) {
      int64_t at = (b * T + t) * C + ch;
      double kt = K[at], vt = V[at];
      /* y_t: the state plus the current token weighted by e^(u + k_t) */
      double yp = p, yq = q, yo = o;
      wkv_fold(&yp, &yq, &yo, 0, u + kt, vt);
      float y = (float)(yp / yq);
      Y[at] = bf16 ? wkv_bf16(y) : y;
      wkv_fold(&p, &q, &o, d, kt, vt);
    }
  }
  return 0;
}

/* wkv4_bwd (dy, w, u, k, v; i0) -> dw, du, dk, dv.
 *
 * With den_t = b_t + e^(u + k_t) and g_t = dy_t / den_t:
 *   du     = sum_t g_t e^(u + k_t) (v_t - y_t)
 *   dd     = sum_t g_t sum_{i<t} (t-1-i) e^((t-1-i) d + k_i) (v_i - y_t),  dw = dd * d
 *   dv_i   = g_i e^(u + k_i) + e^(k_i) S_i,         S_i = sum_{t>i} e^((t-1-i) d) g_t
 *   dk_i   = g_i e^(u + k_i) (v_i - y_i) + e^(k_i) (v_i S_i - R_i),
 *                                                   R_i = sum_{t>i} e^((t-1-i) d) g_t y_t
 * A forward scan gives y_t, den_t (as D_t e^(m_t)), du and dd (the t-weighted
 * sums ride along in the same scaling); a backward scan carries S and R scaled
 * by e^r, r their largest exponent. */
int zoo_cpu_wkv4_bwd(zoo_cpu *c, const zoo_node *n) {
  int64_t B, T, C;
  wkv_sizes(c, n, 3, &B, &T, &C);
  const float *DY = zoo_cpu_f32(c, n->in[0]);
  const float *W = zoo_cpu_f32(c, n->in[1]), *U = zoo_cpu_f32(c, n->in[2]);
  const float *K = zoo_cpu_f32(c, n->in[3]), *V = zoo_cpu_f32(c, n->in[4]);
  float *DW = zoo_cpu_f32(c, n->out[0]), *DU = zoo_cpu_f32(c, n->out[1]);
  float *DK = zoo_cpu_f32(c, n->out[2]), *DV = zoo_cpu_f32(c, n->out[3]);
  int bf16 = n->attrs.i[0] != 0;
  /* per (b, c, t): y_t, 1 / D_t, m_t; then per (b, c): du, dw partials */
  double *work = zoo_cpu_scratch(c, (size_t)(B * C * (3 * T + 2)) * sizeof(double));
  double *part = work + B * C * 3 * T;
#pragma omp parallel for if (B * T * C > 65536)
  for (int64_t bc = 0; bc < B * C; bc++) {
    int64_t b = bc / C, ch = bc % C;
    double *ys = work + bc * 3 * T, *iden = ys + T, *ms = iden + T;
    double d = -exp((double)W[ch]), u = U[ch];
    double p = 0, q = 0, o = -INFINITY, dp = 0, dq = 0; /* dp, dq: t-weighted p, q */
    double du = 0, dd = 0;
    for (int64_t t = 0; t < T; t++) {
      int64_t at = (b * T + t) * C + ch;
      double kt = K[at], vt = V[at];
      double g = bf16 ? wkv_bf16(DY[at]) : DY[at];
      double m = fmax(o, u + kt), A = exp(o - m), E = exp(u + kt - m);
      double den = A * q + E, y = (A * p + E * vt) / den; /* true den = den e^m */
      ys[t] = y, iden[t] = 1 / den, ms[t] = m;
      du += g * E * (vt - y) / den;
      dd += g * A * (dp - dq * y) / den;
      /* advance: every old term ages by one step (weight t-1-i grows by 1) */
      double no = fmax(o + d, kt), Ao = exp(o + d - no), Bk = exp(kt - no);
      dp = Ao * (dp + p), dq = Ao * (dq + q);
      p = Ao * p + Bk * vt, q = Ao * q + Bk;
      o = no;
    }
    part[2 * bc] = dd * d, part[2 * bc + 1] = du;
    double s = 0, r = 0, e = -INFINITY; /* S = s e^e, R = r e^e */
    for (int64_t i = T - 1; i >= 0; i--) {
      int64_t at = (b * T + i) * C + ch;
      double ki = K[at], vi = V[at];
      double g = bf16 ? wkv_bf16(DY[at]) : DY[at];
      double gi = g * iden[i]; /* g_i = gi e^(-m_i) */
      double Ed = exp(u + ki - ms[i]), Es = exp(ki + e);
      double dv = gi * Ed + Es * s;
      double dk = gi * Ed * (vi - ys[i]) + Es * (vi * s - r);
      DV[at] = bf16 ? wkv_bf16((float)dv) : (float)dv;
      DK[at] = bf16 ? wkv_bf16((float)dk) : (float)dk;
      /* S_{i-1} = e^d S_i + g_i, R_{i-1} = e^d R_i + g_i y_i */
      double ne = fmax(e + d, -ms[i]), Ae = exp(e + d - ne), Bg = exp(-ms[i] - ne);
      s = Ae * s + Bg * gi;
      r = Ae * r + Bg * gi * ys[i];
      e = ne;
    }
  }
  for (int64_t ch = 0; ch < C; ch++) {
    double dw = 0, du = 0;
    for (int64_t b = 0; b < B; b++) dw += part[2 * (b * C + ch)], du += part[2 * (b * C + ch) + 1];
    DW[ch] = bf16 ? wkv_bf16((float)dw) : (float)dw;
    DU[ch] = bf16 ? wkv_bf16((float)du) : (float)du;
  }
  return 0;
}
