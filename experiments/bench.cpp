#include "experiments/bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "experiments/device_step.h"
#include "experiments/run_config.h"
#include "experiments/flow.h"
#include "experiments/trainer.h"
#include "moe/moe_layer.h"
#include "nn/ops/matmul_algos.h"

#ifndef MUE_SOURCE_DIR
#define MUE_SOURCE_DIR "."
#endif

namespace mue {

namespace {
// Parameters a token passes through, for MFU: everything but the embeddings, experts weighted by a/N.
template <class Model>
int64_t active_non_embedding_params(Model& model, const ModelConfig& m) {
  int64_t n = 0;
  for (const auto& p : model.params()) {
    if (p.row.tensor.role == TensorRole::embedding) continue;
    const int64_t size = int64_t(p.row.tensor.size());
    n += p.row.tensor.kind.rfind("moe.experts.", 0) == 0 ? size * m.ffn.active / m.ffn.experts : size;
  }
  return n;
}

// Median wall time of `steps` training steps after min(3, steps) warm-up steps. prepare(s) builds step s's
// inputs on the host (untimed) and returns the step itself, which is timed between two device syncs.
template <class Backend, class Prepare>
double median_step_ms(Backend& be, int steps, Prepare prepare) {
  const int warmup = std::min(3, steps);
  std::vector<double> ms;
  for (int s = 0; s < warmup + steps; ++s) {
    auto step = prepare(s);
    be.synchronize();
    auto t0 = std::chrono::steady_clock::now();
    step();
    be.synchronize();
    const double dt = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (s >= warmup) ms.push_back(dt);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Device memory in use and the per-op profile (CUDA); nothing on the CPU.
template <class Backend, class Step>
void measure_device(Backend&, BenchResult&, bool, Step) {}
#ifdef MUE_HAVE_CUDA
template <class Step>
void measure_device(CudaBackend& be, BenchResult& r, bool profile, Step step) {
  r.device_mib = be.ctx.memory_used() / 1048576.0;
  r.allocated_peak_mib = cuda::peak_allocated_bytes() / 1048576.0;
  if (!profile) return;
  be.ctx.profiling = true;
  for (int s = 0; s < kProfileSteps; ++s) step(s), be.ctx.profile_collect();
  be.ctx.profiling = false;
  for (const auto& t : be.ctx.profile_totals())
    r.profile.push_back({t.name, t.ms / kProfileSteps, double(t.calls) / kProfileSteps});
  std::sort(r.profile.begin(), r.profile.end(), [](auto& a, auto& b) { return a.ms_per_step > b.ms_per_step; });
}
#endif

// Step s's scalars in the benches: constant LR factor, the config's betas and clip.
StepIn bench_step_in(const RunConfig& c, int s) { return adamw_step_in(c.adamw, s, 1.0); }

constexpr double kH100PeakBf16 = 989e12;  // dense bf16 tensor-core peak of an H100 SXM (spec section 7)

template <class Backend>
BenchResult bench_with(const RunConfig& c, Backend& be, int steps, bool profile) {
  BenchResult r;
  r.device = be.device_name();
  const ParamTable table = make_param_table(c.rule, c.model, c.reference, c.hp);
  LM<Backend> model(c.model, table, be, c.train.batch, make_ffn<Backend>);
  model.init_weights(c.train.seed);
  const int B = c.train.batch, T = c.model.seq_len, N = B * T;
  std::vector<int32_t> x(N), y(N);
  const int64_t non_emb = active_non_embedding_params(model, c.model);
  r.flops_per_token = flops_per_token(non_emb, c.model.n_layers, c.model.d_model, T);
  r.param_mib = model.n_params() * double(sizeof(typename Backend::master_t)) / 1048576.0;
  r.activation_mib = model.activation_bytes() / 1048576.0;
  r.steps = steps;
  // The trainer's step (experiments/device_step.h): a CUDA graph from the second step on where train.cuda_graph;
  // the per-op profile runs it op by op.
  const auto step_in = [&](int s) { return bench_step_in(c, s); };
  AdamW<Backend> opt(model, c.adamw);
  opt.reset_step_out();
  DeviceStep<LM<Backend>> graph_step(model, opt, c.train.cuda_graph), op_step(model, opt, false);
  r.ms_per_step = median_step_ms(be, steps, [&](int s) {
    for (int i = 0; i < N; ++i) x[i] = int32_t(rng_index(7, uint64_t(s), uint64_t(i), uint64_t(c.model.vocab)));
    for (int i = 0; i < N; ++i) y[i] = int32_t(rng_index(8, uint64_t(s), uint64_t(i), uint64_t(c.model.vocab)));
    return [&, s] { graph_step.run(step_in(s), [&] { model.upload_batch(x.data(), y.data()); }); };
  });
  r.graph = graph_step.graph();
  r.tok_per_s = N / (r.ms_per_step / 1e3);
  r.mfu = r.tok_per_s * r.flops_per_token / kH100PeakBf16;
  measure_device(be, r, profile, [&](int s) { op_step.run(step_in(s), [&] { model.upload_batch(x.data(), y.data()); }); });
  return r;
}
// DiT: images/s on random images; MFU counts per image 6 * N_active_non_emb * tokens + 12 L d T^2 (attention).
template <class Backend>
BenchResult bench_flow_with(const RunConfig& c, Backend& be, int steps, bool profile) {
  BenchResult r;
  r.device = be.device_name();
  const ParamTable table = make_param_table(c.rule, c.model, c.reference, c.hp);
  DiT<Backend> model(c.model, table, be, c.train.batch, make_ffn<Backend>);
  model.init_weights(c.train.seed);
  const int B = c.train.batch, T = c.model.seq_len, npix = c.model.image.channels * c.model.image.size * c.model.image.size;
  const int64_t non_emb = active_non_embedding_params(model, c.model);
  r.flops_per_token = T * flops_per_token(non_emb, c.model.n_layers, c.model.d_model, T);  // per image
  r.param_mib = model.n_params() * double(sizeof(typename Backend::master_t)) / 1048576.0;
  r.activation_mib = model.activation_bytes() / 1048576.0;
  std::vector<float> x(size_t(B) * npix);
  std::vector<int32_t> y(B);
  r.steps = steps;
  AdamW<Backend> opt(model, c.adamw);
  opt.reset_step_out();
  DeviceStep<DiT<Backend>> graph_step(model, opt, c.train.cuda_graph), op_step(model, opt, false);
  const auto upload = [&](const FlowBatch& fb) {
    return [&] { model.upload_batch(fb.xt.data(), fb.v.data(), fb.t.data(), fb.labels.data()); };
  };
  r.ms_per_step = median_step_ms(be, steps, [&](int s) {
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(rng_uniform(9, s, i) * 2 - 1);
    for (int b = 0; b < B; ++b) y[b] = int32_t(rng_index(10, s, b, c.model.image.classes));
    return [&, s, fb = make_flow_batch(x, y, B, npix, 11, s, 0.1, c.model.image.classes)] {
      graph_step.run(bench_step_in(c, s), upload(fb));
    };
  });
  r.graph = graph_step.graph();
  r.tok_per_s = B / (r.ms_per_step / 1e3);  // images per second
  r.mfu = r.tok_per_s * r.flops_per_token / kH100PeakBf16;
  const FlowBatch fb = make_flow_batch(x, y, B, npix, 11, 0, 0.1, c.model.image.classes);
  measure_device(be, r, profile, [&](int s) { op_step.run(bench_step_in(c, s), upload(fb)); });
  return r;
}
}  // namespace

double flops_per_token(int64_t non_embedding_params, int n_layers, int d_model, int seq_len) {
  return 6.0 * double(non_embedding_params) + 12.0 * n_layers * d_model * double(seq_len);
}

std::string bench_preset_path(const std::string& preset) {
  if (std::filesystem::exists(preset)) return preset;
  for (const std::string dir : {std::string("experiments/configs/bench"), std::string(MUE_SOURCE_DIR) + "/experiments/configs/bench"}) {
    std::string p = dir + "/" + preset + ".json";
    if (std::filesystem::exists(p)) return p;
  }
  fail("unknown bench preset '", preset, "' (look in experiments/configs/bench/, or pass a config path)");
}

BenchResult run_bench(const std::string& preset, int steps, const std::string& device, bool profile,
                      const std::vector<std::string>& overrides) {
  MUE_CHECK(steps > 0, "bench needs --steps > 0");
  std::vector<std::string> over = overrides;
  over.push_back("train.device=" + device);
  RunConfig c = resolve_config(bench_preset_path(preset), over);
  const std::string dev = resolve_device(c.train.device);
  check_memory_fits(c, dev);
  std::printf("bench %s: memory estimate %s\n", preset.c_str(), format_memory(estimate_memory(c)).c_str());
  BenchResult r;
#ifdef MUE_HAVE_CUDA
  if (dev == "cuda") {
    CudaBackend be;
    r = c.task == "flow" ? bench_flow_with(c, be, steps, profile) : bench_with(c, be, steps, profile);
  }
#endif
  if (dev == "cpu") {
    CpuBackend<float> be;
    MUE_CHECK(!profile, "bench --profile needs the CUDA device (per-op times come from CUDA events)");
    r = c.task == "flow" ? bench_flow_with(c, be, steps, false) : bench_with(c, be, steps, false);
  }
  r.unit = c.task == "flow" ? "img/s" : "tok/s";
  r.preset = preset;
  return r;
}

void bench_head_gemms(const std::string& preset, const std::string& device, const std::vector<std::string>& overrides,
                      int max_algos, int reps) {
  std::vector<std::string> over = overrides;
  over.push_back("train.device=" + device);
  RunConfig c = resolve_config(bench_preset_path(preset), over);
  MUE_CHECK(c.task == "lm", "bench --head-gemms: ", preset, " is not a language model (task ", c.task, ")");
  const std::string dev = resolve_device(c.train.device);
  MUE_CHECK(dev == "cuda", "bench --head-gemms times cuBLAS on a GPU; the device here is ", dev);
#ifdef MUE_HAVE_CUDA
  CudaBackend be;
  const size_t N = size_t(c.train.batch) * c.model.seq_len;
  const int rows = head_chunk_rows(N, c.model.vocab_pad), D = c.model.d_model, V = c.model.vocab_pad;
  std::printf("bench %s --head-gemms on %s: the head's GEMMs on a chunk of %d of the step's %zu rows (d %d, %d head "
              "rows; matmul.cu's calls), median of %d launches each; cuBLASLt's heuristic algorithms after the "
              "default\n", preset.c_str(), be.device_name().c_str(), rows, N, D, V, reps);
  const double flops = 2.0 * rows * D * V;
  std::printf("  %-8s %-64s %9s %9s %9s %12s\n", "gemm", "algorithm", "ms", "TFLOP/s", "default/", "max |diff|");
  double def_ms = 0;
  for (const auto& t : cuda::time_matmul_algos(be.ctx, rows, D, V, max_algos, reps)) {
    if (t.algo == cuda::kGemmDefault) def_ms = t.ms;
    if (!t.ok) {
      std::printf("  %-8s %-64s %9s\n", t.gemm.c_str(), t.algo.c_str(), "refused");
      continue;
    }
    std::printf("  %-8s %-64s %9.4f %9.1f %8.2fx %12.3g\n", t.gemm.c_str(), t.algo.c_str(), t.ms,
                flops / (t.ms * 1e9), def_ms / t.ms, t.max_abs_diff);
  }
#else
  (void)max_algos, (void)reps;
#endif
}

}  // namespace mue
