// The scalars of one training step that the device reads (StepIn, written before the step) and writes (StepOut,
// read back only when the host asks): with them the step has no host round trip inside, so the host can queue
// the next step while this one runs, and the whole step can be replayed as a CUDA graph. The optimizer
// (optim/adamw.h) owns them; the model's forward writes the mean loss into StepOut::loss.
#pragma once
#include <cmath>

namespace mue {

struct StepIn {
  double lr_factor = 1;          // the schedule's factor for this step
  double beta1 = 0.9, beta2 = 0.95;
  int t = 1;                     // AdamW step, 1-based (bias corrections 1 - beta^t)
  double clip = 0;               // global grad-norm clip (<= 0: off)
  int step = 0;                  // 0-based, recorded as first_bad
  double loss_bound = INFINITY;  // a mean loss above it marks the step diverged (non-finite loss or norm always do)
};

struct StepOut {
  double loss = 0;     // mean of the last training forward's per-row losses
  double norm_sq = 0;  // squared global grad norm of the last step (before clipping)
  int first_bad = -1;  // first step found diverged, -1 while none
  double bad_loss = 0; // its mean loss
};

// Whether a step with this mean loss and squared grad norm counts as diverged.
inline bool step_diverged(double loss, double norm_sq, double loss_bound) {
  return !std::isfinite(loss) || !std::isfinite(norm_sq) || loss > loss_bound;
}

// The clip scale for a squared grad norm (1 when clipping is off or not needed).
inline double clip_scale(double norm_sq, double clip) {
  const double norm = std::sqrt(norm_sq);
  return clip > 0 && norm > clip ? clip / norm : 1.0;
}

}  // namespace mue
