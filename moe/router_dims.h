// The router's shape and coefficients, as the MoE layer hands them to the CPU and CUDA routers.
#pragma once

namespace mue {

struct RouterDims {
  int N = 0, E = 0, active = 0, groups = 1;  // tokens, experts, experts per token, routing groups
  bool sigmoid = false;                       // scores: sigmoid(logits) instead of softmax
  double route_scale = 1;                     // gates = route_scale * s_k / sum_chosen s  (from the param table)
  double balance_coef = 0, z_coef = 0;
  // The per-layer plan the router leaves on the device: offsets [E+1] then 4 float statistics (as bits).
  int plan_size() const { return E + 5; }
};

}  // namespace mue
