// AdamW over every tensor of a model, with the per-tensor lr / wd / eps of its ParamTable, global grad-norm
// clipping, and the schedule factor. Works for any model exposing params() / grad_arena() / n_params().
#pragma once
#include <cmath>
#include <vector>

#include "nn/backend.h"

namespace mue {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95;
  double grad_clip = 1.0;  // <= 0: off
};

struct StepStats {
  double grad_norm = 0;  // before clipping
  double lr_factor = 0;
};

template <class Model>
StepStats adamw_update(Model& model, const AdamWConfig& cfg, int t /* 1-based */, double lr_factor) {
  auto& be = model.backend();
  StepStats st;
  st.lr_factor = lr_factor;
  st.grad_norm = std::sqrt(be.sum_squares(model.grad_arena(), model.n_params()));
  double scale = 1.0;
  if (cfg.grad_clip > 0 && st.grad_norm > cfg.grad_clip) scale = cfg.grad_clip / st.grad_norm;
  if (!std::isfinite(st.grad_norm)) return st;  // the trainer marks the run diverged; weights stay untouched
  auto& ps = model.params();
  // Packed arenas (every tensor right after the previous one in value, grad, m, v and the weights the forward
  // reads): one call over all of them. Otherwise one call per tensor.
  std::vector<AdamSegment> segs;
  bool packed = !ps.empty();
  size_t end = 0;
  for (auto& p : ps) {
    packed = packed && p.value == ps[0].value + end && p.grad == ps[0].grad + end && p.adam_m == ps[0].adam_m + end &&
             p.adam_v == ps[0].adam_v + end && p.weight == ps[0].weight + end;
    end += p.row.tensor.size();
    segs.push_back({end, p.row.lr, p.row.wd, p.row.eps});
  }
  if (packed) {
    be.adamw_step_all(ps[0].value, ps[0].grad, ps[0].adam_m, ps[0].adam_v, ps[0].weight, segs, lr_factor, cfg.beta1,
                      cfg.beta2, t, scale);
    return st;
  }
  for (auto& p : ps)
    be.adamw_step(p.value, p.grad, p.adam_m, p.adam_v, p.weight, p.row.tensor.size(), p.row.lr * lr_factor,
                  cfg.beta1, cfg.beta2, p.row.eps, p.row.wd, t, scale);
  return st;
}

}  // namespace mue
