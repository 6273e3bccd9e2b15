// AdamW over every tensor of a model, with the per-tensor lr / wd / eps of its ParamTable, global grad-norm
// clipping, and the schedule factor. Works for any model exposing params() / grad_arena() / n_params().
#pragma once
#include <cmath>
#include <vector>

#include "core/error.h"
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

// Whether the model's tensors lie back to back in every arena (value, grad, m, v and the weights the forward
// reads), and the segment table of them for the one-launch step.
template <class Params>
bool packed_segments(const Params& ps, std::vector<AdamSegment>& segs) {
  segs.clear();
  bool packed = !ps.empty();
  size_t end = 0;
  for (auto& p : ps) {
    packed = packed && p.value == ps[0].value + end && p.grad == ps[0].grad + end && p.adam_m == ps[0].adam_m + end &&
             p.adam_v == ps[0].adam_v + end && p.weight == ps[0].weight + end;
    end += p.row.tensor.size();
    segs.push_back({end, p.row.lr, p.row.wd, p.row.eps});
  }
  return packed;
}

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
  // Packed arenas: one call over all of them. Otherwise one call per tensor.
  std::vector<AdamSegment> segs;
  if (packed_segments(ps, segs)) {
    be.adamw_step_all(ps[0].value, ps[0].grad, ps[0].adam_m, ps[0].adam_v, ps[0].weight, segs, lr_factor, cfg.beta1,
                      cfg.beta2, t, scale);
    return st;
  }
  for (auto& p : ps)
    be.adamw_step(p.value, p.grad, p.adam_m, p.adam_v, p.weight, p.row.tensor.size(), p.row.lr * lr_factor,
                  cfg.beta1, cfg.beta2, p.row.eps, p.row.wd, t, scale);
  return st;
}

// The StepIn of 0-based step `step` under this AdamW config and schedule factor (divergence bound: none).
inline StepIn adamw_step_in(const AdamWConfig& cfg, int step, double lr_factor) {
  StepIn in;
  in.lr_factor = lr_factor, in.beta1 = cfg.beta1, in.beta2 = cfg.beta2, in.t = step + 1, in.clip = cfg.grad_clip;
  in.step = step;
  return in;
}

// The same step with every scalar on the device (nn/step_scalars.h): the caller has set the StepIn (lr factor,
// betas, t, clip, divergence bound) and the forward has left its mean loss in the StepOut; the squared grad
// norm, the divergence check and the update then run without a host round trip (the same arithmetic as
// adamw_update). Needs packed arenas.
template <class Model>
void adamw_update_dev(Model& model) {
  auto& be = model.backend();
  be.grad_norm_sq(model.grad_arena(), model.n_params());
  be.track_divergence();
  auto& ps = model.params();
  std::vector<AdamSegment> segs;
  MUE_CHECK(packed_segments(ps, segs), "adamw_update_dev: the parameter arenas are not packed");
  be.adamw_step_all_dev(ps[0].value, ps[0].grad, ps[0].adam_m, ps[0].adam_v, ps[0].weight, segs);
}

}  // namespace mue
