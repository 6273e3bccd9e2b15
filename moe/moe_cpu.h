// Mixture-of-Experts ops, CPU reference (templated on T; the tests run them in double).
// Token-choice, dropless routing:
//   logits = x W_r^T [N,E] -> scores (softmax over E, or sigmoid) -> top-a experts per token (a/G from each of
//   G groups; ties to the lower index) -> gates g = s / sum_chosen(s), times the route scale r
//   -> tokens permuted by expert (counting sort) -> each expert a SwiGLU -> combine: out[n] = sum_k w[n,k] y[n,k]
//   (w[n,k] applied inside the expert, before its down-projection: gate_swiglu_forward).
// The choice of experts is not differentiated; gates, router, experts and inputs are.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "nn/ops_cpu.h"

namespace mue::cpu {

// Top-a per token from scores [N,E] in G equal groups (a/G per group). idx [N,a] sorted by group then score.
template <class T>
void topk_select(const T* scores, int32_t* idx, int N, int E, int a, int G) {
  const int per_group = E / G, take = a / G;
  std::vector<int32_t> order(per_group);
  for (int n = 0; n < N; ++n) {
    const T* s = scores + size_t(n) * E;
    for (int g = 0; g < G; ++g) {
      for (int i = 0; i < per_group; ++i) order[i] = g * per_group + i;
      // Deterministic ties: higher score first, then lower expert index.
      std::partial_sort(order.begin(), order.begin() + take, order.end(),
                        [&](int32_t x, int32_t y) { return s[x] > s[y] || (s[x] == s[y] && x < y); });
      for (int k = 0; k < take; ++k) idx[size_t(n) * a + g * take + k] = order[k];
    }
  }
}

// scores = softmax(logits) or sigmoid(logits); then top-a; gates w[n,k] = r * s_k / sum_chosen s.
template <class T>
void router_forward(const T* logits, T* scores, int32_t* idx, T* gates, int N, int E, int a, int G, bool sigmoid,
                    double route_scale) {
  for (int n = 0; n < N; ++n) {
    const T* l = logits + size_t(n) * E;
    T* s = scores + size_t(n) * E;
    if (sigmoid) {
      for (int e = 0; e < E; ++e) s[e] = T(1) / (T(1) + std::exp(-l[e]));
    } else {
      T mx = *std::max_element(l, l + E), z = 0;
      for (int e = 0; e < E; ++e) z += (s[e] = std::exp(l[e] - mx));
      for (int e = 0; e < E; ++e) s[e] /= z;
    }
  }
  topk_select(scores, idx, N, E, a, G);
  for (int n = 0; n < N; ++n) {
    T sum = 0;
    for (int k = 0; k < a; ++k) sum += scores[size_t(n) * E + idx[size_t(n) * a + k]];
    for (int k = 0; k < a; ++k) gates[size_t(n) * a + k] = T(route_scale) * scores[size_t(n) * E + idx[size_t(n) * a + k]] / sum;
  }
}

// dlogits (overwritten) from dgates [N,a] and dscores_extra [N,E] (aux-loss gradient w.r.t. the scores; may be
// nullptr), plus dlogits_extra [N,E] added as is (z-loss; may be nullptr).
template <class T>
void router_backward(const T* dgates, const T* dscores_extra, const T* dlogits_extra, const T* scores,
                     const int32_t* idx, T* dlogits, int N, int E, int a, bool sigmoid, double route_scale) {
  std::vector<T> ds(E);
  for (int n = 0; n < N; ++n) {
    const T* s = scores + size_t(n) * E;
    for (int e = 0; e < E; ++e) ds[e] = dscores_extra ? dscores_extra[size_t(n) * E + e] : T(0);
    // w_k = r s_k / S, S = sum_j s_j:  dL/ds_j = r (dw_j / S - sum_k dw_k s_k / S^2)
    T S = 0, dot = 0;
    for (int k = 0; k < a; ++k) {
      T sk = s[idx[size_t(n) * a + k]];
      S += sk, dot += dgates[size_t(n) * a + k] * sk;
    }
    for (int k = 0; k < a; ++k)
      ds[idx[size_t(n) * a + k]] += T(route_scale) * (dgates[size_t(n) * a + k] / S - dot / (S * S));
    T* dl = dlogits + size_t(n) * E;
    if (sigmoid) {
      for (int e = 0; e < E; ++e) dl[e] = ds[e] * s[e] * (T(1) - s[e]);
    } else {
      T sds = 0;
      for (int e = 0; e < E; ++e) sds += s[e] * ds[e];
      for (int e = 0; e < E; ++e) dl[e] = s[e] * (ds[e] - sds);
    }
    if (dlogits_extra)
      for (int e = 0; e < E; ++e) dl[e] += dlogits_extra[size_t(n) * E + e];
  }
}

// Counting sort of the N*a (token, slot) assignments by expert.
// offsets [E+1]: expert e owns permuted rows [offsets[e], offsets[e+1]);
// src_token [N*a]: the token of each permuted row; slot_row [N*a]: the permuted row of assignment (n, k).
// Within an expert, rows keep token order (stable), so the layout is deterministic.
inline void dispatch_plan(const int32_t* idx, int N, int a, int E, int32_t* offsets, int32_t* src_token,
                          int32_t* slot_row) {
  std::vector<int32_t> count(E + 1, 0);
  for (int i = 0; i < N * a; ++i) ++count[idx[i] + 1];
  for (int e = 0; e < E; ++e) count[e + 1] += count[e];
  std::copy(count.begin(), count.end(), offsets);
  for (int i = 0; i < N * a; ++i) {
    const int32_t row = count[idx[i]]++;
    src_token[row] = i / a;
    slot_row[i] = row;
  }
}

// xp[r] = x[src_token[r]]
template <class T>
void permute_rows(const T* x, const int32_t* src_token, T* xp, int rows, int D) {
  for (int r = 0; r < rows; ++r) std::copy(x + size_t(src_token[r]) * D, x + size_t(src_token[r] + 1) * D, xp + size_t(r) * D);
}
// The transpose, gathered per token so it needs no atomics: dx[n] += sum_k dxp[slot_row[n*a+k]]
template <class T>
void unpermute_add(const T* dxp, const int32_t* slot_row, T* dx, int N, int a, int D) {
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < a; ++k) {
      const T* src = dxp + size_t(slot_row[size_t(n) * a + k]) * D;
      for (int i = 0; i < D; ++i) dx[size_t(n) * D + i] += src[i];
    }
}

// out[n] = sum_k yp[slot_row[n*a+k]]   (overwrites out; the gates are already in yp, see gate_swiglu_forward)
template <class T>
void combine_forward(const T* yp, const int32_t* slot_row, T* out, int N, int a, int D) {
  std::fill(out, out + size_t(N) * D, T(0));
  unpermute_add(yp, slot_row, out, N, a, D);
}
// The experts' SwiGLU with the gate folded in: for assignment i = (n, k) and its row r = slot_row[i], hfc[r] =
// (x | y), h each: hsw[r] = gates[i] * silu(x) * y. An expert's output is linear in hsw, so scaling it before the
// down-projection gives the gate-weighted sum, and the combine becomes a plain sum (its backward a plain gather:
// no pass that reads the expert outputs again for the gates' gradient).
template <class T>
void gate_swiglu_forward(const T* hfc, const T* gates, const int32_t* slot_row, T* hsw, int N, int a, int h) {
  for (size_t i = 0; i < size_t(N) * a; ++i) {
    T* out = hsw + size_t(slot_row[i]) * h;
    swiglu_forward(hfc + size_t(slot_row[i]) * 2 * h, out, 1, h);
    for (int j = 0; j < h; ++j) out[j] *= gates[i];
  }
}
// Its backward, from dhsw: dhfc[r] (overwritten; the plain SwiGLU's backward of gates[i] * dhsw[r]) and dgates[i]
// = dhsw[r] . SwiGLU(hfc[r]).
template <class T>
void gate_swiglu_backward(const T* dhsw, const T* hfc, const T* gates, const int32_t* slot_row, T* dhfc, T* dgates,
                          int N, int a, int h) {
  std::vector<T> scaled(h), plain(h);
  for (size_t i = 0; i < size_t(N) * a; ++i) {
    const size_t r = size_t(slot_row[i]);
    const T* d = dhsw + r * h;
    swiglu_forward(hfc + r * 2 * h, plain.data(), 1, h);
    T dot = 0;
    for (int j = 0; j < h; ++j) dot += d[j] * plain[j], scaled[j] = gates[i] * d[j];
    swiglu_backward(scaled.data(), hfc + r * 2 * h, dhfc + r * 2 * h, 1, h);
    dgates[i] = dot;
  }
}
// Switch-Transformer load balancing: loss = coef * E * sum_e f_e P_e with f_e the fraction of the N*a
// assignments that went to e (not differentiated) and P_e the mean score of e. Returns the loss; writes
// dscores [N,E] = coef * E * f_e / N (overwritten) when dscores != nullptr; load[E] = f_e.
template <class T>
double balance_loss(const T* scores, const int32_t* idx, int N, int E, int a, double coef, T* dscores, double* load) {
  std::vector<double> f(E, 0.0), P(E, 0.0);
  std::vector<int64_t> count(E, 0);
  for (int i = 0; i < N * a; ++i) ++count[idx[i]];
  for (int e = 0; e < E; ++e) f[e] = double(count[e]) / (double(N) * a);  // exact counts: same f on every backend
  for (int n = 0; n < N; ++n)
    for (int e = 0; e < E; ++e) P[e] += double(scores[size_t(n) * E + e]) / N;
  double loss = 0;
  for (int e = 0; e < E; ++e) loss += f[e] * P[e];
  if (dscores)
    for (int n = 0; n < N; ++n)
      for (int e = 0; e < E; ++e) dscores[size_t(n) * E + e] = T(coef * E * f[e] / N);
  if (load) std::copy(f.begin(), f.end(), load);
  return coef * E * loss;
}

// Router z-loss: coef * mean_n logsumexp(logits[n])^2; dlogits (overwritten) = coef * 2 lse softmax / N.
template <class T>
double z_loss(const T* logits, int N, int E, double coef, T* dlogits) {
  double loss = 0;
  for (int n = 0; n < N; ++n) {
    const T* l = logits + size_t(n) * E;
    T mx = *std::max_element(l, l + E), z = 0;
    for (int e = 0; e < E; ++e) z += std::exp(l[e] - mx);
    const T lse = std::log(z) + mx;
    loss += double(lse * lse) / N;
    if (dlogits)
      for (int e = 0; e < E; ++e) dlogits[size_t(n) * E + e] = T(coef * 2.0 / N) * lse * std::exp(l[e] - lse);
  }
  return coef * loss;
}

}  // namespace mue::cpu

namespace mue::cpu {
// Expert GEMMs over contiguous row blocks: rows [off[e], off[e+1]) of x use expert e's weight w + e*w_stride.
// y_e = alpha x_e W_e^T;  backward: dx_e = alpha dy_e W_e (overwrite), dW_e += alpha dy_e^T x_e.
template <class T>
void expert_matmul_forward(const T* x, const T* w, T* y, const int32_t* off, int E, int In, int Out, double alpha) {
  for (int e = 0; e < E; ++e)
    if (const int n = off[e + 1] - off[e])
      matmul_forward(x + size_t(off[e]) * In, w + size_t(e) * Out * In, y + size_t(off[e]) * Out, n, In, Out, alpha);
}
template <class T>
void expert_matmul_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, const int32_t* off, int E, int In,
                            int Out, double alpha, bool accumulate = true) {
  for (int e = 0; e < E; ++e) {
    T* dw_e = dw + size_t(e) * Out * In;
    if (const int n = off[e + 1] - off[e])
      matmul_backward(dy + size_t(off[e]) * Out, x + size_t(off[e]) * In, w + size_t(e) * Out * In,
                      dx + size_t(off[e]) * In, dw_e, n, In, Out, alpha, accumulate);
    else if (!accumulate)
      std::fill(dw_e, dw_e + size_t(Out) * In, T(0));  // an expert without rows: its gradient is zero
  }
}
}  // namespace mue::cpu
