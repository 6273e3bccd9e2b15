// The training loop: config -> table -> model -> steps, logging to one HDF5 file per run.
#pragma once
#include <cmath>
#include <string>

#include "experiments/run_config.h"

namespace mue {

struct RunResult {
  std::string path, status, device;
  int steps_done = 0;
  double first_loss = 0, final_train_loss = 0, final_val_loss = NAN, best_val_loss = NAN, tok_per_s = 0;
};

// Runs (or refuses to run) one training job. Throws mue::Error for bad input before touching any file.
RunResult train_run(const RunConfig& cfg, bool verbose = true);

// "cpu" or "cuda" for train.device = auto|cpu|cuda (errors if cuda is asked for and not there).
std::string resolve_device(const std::string& requested);

std::string utc_now_iso();

}  // namespace mue
