// The MoE router (token choice, dropless): logits = x W_r^T [N,E] -> scores (softmax over E, or sigmoid)
// -> top-a experts per token (a/G from each of G groups; ties to the lower index) -> gates g = r * s / sum_chosen(s)
// (r the route scale), with the load-balancing and z auxiliary losses. The choice of experts is not differentiated;
// gates, scores and logits are. CPU reference; CUDA launchers (kernels: moe/router.cu, which also builds the
// dispatch plan of moe/ops/dispatch.h on the device).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue {

// The router's shape and coefficients, as the MoE layer hands them to the CPU and CUDA routers.
struct RouterDims {
  int N = 0, E = 0, active = 0, groups = 1;  // tokens, experts, experts per token, routing groups
  bool sigmoid = false;                       // scores: sigmoid(logits) instead of softmax
  double route_scale = 1;                     // gates = route_scale * s_k / sum_chosen s  (from the param table)
  double balance_coef = 0, z_coef = 0;
  // The per-layer plan the router leaves on the device: offsets [E+1] then 4 float statistics (as bits).
  int plan_size() const { return E + 5; }
};

}  // namespace mue

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

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// Router forward on the device (moe/router.cu): scores [N,E] fp32, idx [N,a], gates [N,a], the dispatch rows
// src_token / slot_row [N*a], and plan [E+5]: expert offsets, then balance loss, z loss, mean entropy and logits
// RMS as float bits (the only thing the host reads back). E <= 1024.
void router_forward(Context& ctx, const RouterDims& d, const bf16* logits, float* scores, int32_t* idx, bf16* gates,
                    int32_t* src_token, int32_t* slot_row, int32_t* plan);
// dlogits [N,E] (overwritten) from the gate gradients, the balance loss (via plan's counts) and the z loss.
void router_backward(Context& ctx, const RouterDims& d, const bf16* dgates, const bf16* logits, const float* scores,
                     const int32_t* idx, const int32_t* plan, bf16* dlogits);

}  // namespace mue::cuda
#endif
