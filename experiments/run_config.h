// A run's configuration: built-in defaults, overlaid by a JSON file and key=value overrides (core/config.h),
// then read into the typed structs the layers below use.
#pragma once
#include <string>

#include "core/config.h"
#include "nn/lm.h"
#include "optim/adamw.h"
#include "optim/rules.h"
#include "optim/schedule.h"

namespace mue {

struct TrainConfig {
  int batch = 16, steps = 200, log_every = 10, eval_every = 50, eval_batches = 8;
  uint64_t seed = 1, data_seed = 1;
  std::string device = "auto";  // auto | cpu | cuda
  double diverge_factor = 0;     // stop as diverged when loss > factor * initial loss after warmup (0: off)
  bool cuda_graph = true;        // on CUDA: replay the training step as a CUDA graph
  int zero = 0;                  // data parallel: 1 = ZeRO-1 (each rank keeps its share of the Adam moments)
  double bucket_mb = 25;         // data parallel, zero=0: MiB per all-reduce started during the backward (0: one after it)
};

struct RunConfig {
  std::string name, task;
  ModelConfig model, reference;
  std::string rule;
  Hyper hp;
  AdamWConfig adamw;
  Schedule schedule;
  TrainConfig train;
  std::string data_tokens, data_images;
  std::vector<double> eval_t;  // flow: fixed t values of the held-out loss
  int sample_steps = 50;
  double guidance = 1.5;
  std::string out_dir;
  bool overwrite = false;
  bool checkpoint = false;    // at every evaluation
  int checkpoint_every = 0;   // steps (0: off)
  double checkpoint_minutes = 10;  // wall minutes since the last checkpoint (0: off)
  bool resume = true;         // continue a killed or failed run from its checkpoint
  bool writes_checkpoints() const { return checkpoint || checkpoint_every > 0 || checkpoint_minutes > 0; }
  json raw;  // the fully resolved JSON (stored in the run's HDF5 file)
};

json default_config();
// defaults <- file (if not empty) <- overrides, then validated.
RunConfig resolve_config(const std::string& file, const std::vector<std::string>& overrides);
RunConfig parse_config(const json& resolved);
// "64e8a" -> experts 64, active 8; a clear error otherwise.
void parse_shape(const std::string& name, int& experts, int& active);
// A run file's stored config text (defaults <- it), checked as a config file is; errors name `where`.
RunConfig stored_config(const std::string& text, const std::string& where);
// The keys ("train.steps") in which the run `stored` (a run file's config, resolved as a config file is: keys it
// lacks take their defaults, e.g. keys added to mue since) is another run than `want` (a resolved config), in key
// order; the output options ("out") are not part of a run. Empty when both are the same run.
std::vector<std::string> config_differences(const json& want, json stored);
// What a run will hold in memory, from the config alone (before anything is allocated): the parameter count,
// their fp32 value, gradient and two Adam moments, and the activations one training step keeps (a rough upper
// estimate: every saved tensor of every layer in fp32 as the CPU path keeps them, attention probabilities
// included, plus one chunk of the head's logits).
struct MemoryEstimate {
  double params = 0, state_bytes = 0, activation_bytes = 0;
  double total() const { return state_bytes + activation_bytes; }
};
MemoryEstimate estimate_memory(const RunConfig& c);
// Refuses, in one line, a run whose estimate cannot fit this machine's physical memory: on the CPU the whole
// estimate, on the GPU what the host holds of it (the parameter table, staged weights).
void check_memory_fits(const RunConfig& c, const std::string& device);
std::string format_memory(const MemoryEstimate& m);

// Documentation of every key, for --help and the README.
std::string config_keys_help();

}  // namespace mue
