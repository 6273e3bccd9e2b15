// AdamW over every tensor of a model, with the per-tensor lr / wd / eps of its ParamTable, global grad-norm
// clipping, and the schedule factor. Works for any model exposing params() / grad_arena() / n_params().
#pragma once
#include <cmath>

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
  for (auto& p : model.params())
    be.adamw_step(p.value, p.grad, p.adam_m, p.adam_v, p.weight, p.row.tensor.size(), p.row.lr * lr_factor,
                  cfg.beta1, cfg.beta2, p.row.eps, p.row.wd, t, scale);
  return st;
}

}  // namespace mue
