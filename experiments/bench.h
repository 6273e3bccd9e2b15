// `mue bench`: training-step throughput of a preset on random tokens (spec section 7).
#pragma once
#include <string>
#include <vector>

namespace mue {

struct BenchResult {
  std::string preset, device, unit = "tok/s";
  double ms_per_step = 0, tok_per_s = 0, mfu = 0, flops_per_token = 0;
  double param_mib = 0, activation_mib = 0;
  int steps = 0;
  double device_mib = 0;  // device memory in use after the timed steps (the peak: nothing is freed per step)
  double allocated_peak_mib = 0;  // of it, mue's own buffers at their peak (cuda::peak_allocated_bytes)
  bool graph = false;     // the timed steps replayed a CUDA graph (CUDA, train.cuda_graph)
  struct Op {
    std::string name;
    double ms_per_step = 0, calls_per_step = 0;
  };
  std::vector<Op> profile;  // --profile: per-op device time per step, largest first
};

// preset: a name under experiments/configs/bench/ or a path to a JSON config; overrides: key=value on top of it.
// profile: after the timed steps, run kProfileSteps more with an event pair around every op (CUDA only).
BenchResult run_bench(const std::string& preset, int steps, const std::string& device, bool profile = false,
                      const std::vector<std::string>& overrides = {});
constexpr int kProfileSteps = 5;
// FLOPs per token for MFU: 6 * (non-embedding parameters, head included) + 12 * L * d * T (attention).
double flops_per_token(int64_t non_embedding_params, int n_layers, int d_model, int seq_len);
std::string bench_preset_path(const std::string& preset);
// `mue bench PRESET --head-gemms`: the LM head's three GEMMs at the preset's shape, cuBLAS's default against
// cuBLASLt's heuristic algorithms (nn/ops/matmul_algos.h); prints one line per algorithm. GPU only.
void bench_head_gemms(const std::string& preset, const std::string& device, const std::vector<std::string>& overrides,
                      int max_algos = 16, int reps = 20);

}  // namespace mue
