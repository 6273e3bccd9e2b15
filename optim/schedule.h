// Learning-rate schedules: a factor in [0, 1] that multiplies every tensor's table LR.
#pragma once
#include <cmath>
#include <string>

#include "core/error.h"

namespace mue {

struct Schedule {
  std::string kind = "cosine";  // constant | cosine (linear warmup + cosine) | wsd (warmup, stable, linear decay)
  int warmup = 0;               // steps of linear warmup from 0
  int total = 1;                // total steps
  double min_factor = 0.1;      // floor: wsd's last step; cosine reaches it at s = total, one past the last step
  double decay_fraction = 0.2;  // wsd: fraction of the run spent decaying

  void validate() const {
    MUE_CHECK(kind == "constant" || kind == "cosine" || kind == "wsd", "unknown schedule '", kind,
              "' (known: constant, cosine, wsd)");
    MUE_CHECK(warmup >= 0 && total > 0, "schedule needs warmup >= 0 and steps > 0");
    MUE_CHECK(min_factor >= 0 && min_factor <= 1, "optim.min_lr_factor must be in [0, 1]");
    MUE_CHECK(decay_fraction >= 0 && decay_fraction <= 1, "optim.decay_fraction must be in [0, 1]");
  }

  // Factor for step s (0-based: the factor used by the s-th update).
  double factor(int s) const {
    if (warmup > 0 && s < warmup) return double(s + 1) / warmup;
    if (kind == "constant") return 1.0;
    if (kind == "cosine") {
      double p = total > warmup ? double(s - warmup) / (total - warmup) : 1.0;
      p = std::min(1.0, std::max(0.0, p));
      return min_factor + (1 - min_factor) * 0.5 * (1 + std::cos(M_PI * p));
    }
    int decay_start = total - int(std::lround(decay_fraction * total));
    if (s < decay_start || total == decay_start) return 1.0;
    double p = double(s - decay_start + 1) / (total - decay_start);
    return 1.0 - (1 - min_factor) * std::min(1.0, p);
  }
};

}  // namespace mue
