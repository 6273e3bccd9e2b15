// The training step (LM or DiT) on the device's step scalars (optim/step_scalars.h, kept by the optimizer): the
// host uploads the batch and the step's scalars and queues the step; nothing in it waits for the device. Where the backend has CUDA graphs
// (and use_graph, and no data-parallel hook: set_hooks), the second step is recorded once as a graph and every later step replays it, so the launches
// of hundreds of ops cost one. The first step always runs op by op: it sizes every scratch buffer the graph
// then reuses (should one grow later, e.g. in an evaluation, the graph is dropped and recorded again). Should the capture fail (an op that waits for the device, e.g. the cuBLAS fallback of expert
// widths that are not multiples of 8), the steps keep running op by op.
#pragma once
#include <chrono>
#include <functional>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "optim/adamw.h"
#include "optim/step_scalars.h"

namespace mue {

// One graph per backend: at most one DeviceStep with use_graph per model's backend.
template <class Model>
class DeviceStep {
 public:
  using Backend = std::remove_reference_t<decltype(std::declval<Model&>().backend())>;
  DeviceStep(Model& model, AdamW<Backend>& opt, bool use_graph)
      : model_(model), opt_(opt), try_graph_(use_graph && Backend::graphs) {}

  // Queues step in.step (in.t etc. as for AdamW::update_dev); upload() queues its batch with the model's
  // upload_batch (LM: tokens, targets; DiT: x_t, v, t, labels).
  template <class Upload>
  void run(const StepIn& in, Upload upload) {
    auto& be = model_.backend();
    be.begin_uploads();
    opt_.set_step_in(in);
    upload();
    if (graph_ && !be.graph_ready()) graph_ = false, try_graph_ = true, eager_runs_ = 0;  // dropped: record again
    if (!graph_ && try_graph_ && eager_runs_ >= 1) {  // after a step op by op has sized every buffer
      try_graph_ = false;
      const auto t0 = std::chrono::steady_clock::now();
      graph_ = be.capture([&] { body(); });
      capture_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ++captures_;
      capture_failed_ = !graph_;
    }
    if (graph_) {
      be.replay();
      model_.forget_host_copies();
    } else {
      body();
      ++eager_runs_;
    }
  }
  // The data-parallel collectives inside the step (dist/data_parallel.h). Unset (one rank): nothing runs. Set
  // (before the first step), the steps run op by op, never as a graph: a hook runs host code that a replay would
  // skip (the NCCL reducer's watchdog bookkeeping of each collective; MPI on the CPU; with gradient buckets, the
  // model's on_grads_final callback during the backward: dist::BucketedMean).
  struct Hooks {
    std::function<void()> after_backward;  // the ranks' mean gradient (or, ZeRO-1, each share's) and mean loss
    std::function<void()> after_norm;      // ZeRO-1: the sum over the ranks of their shares' squared grad norms
    std::function<void()> after_update;    // ZeRO-1: every rank's updated share of the weights to every rank
  };
  void set_hooks(Hooks h) {
    MUE_CHECK(eager_runs_ == 0 && !graph_, "DeviceStep::set_hooks after the first step");
    hooks_ = std::move(h);
    if (hooks_.after_backward || hooks_.after_norm || hooks_.after_update) try_graph_ = false;
  }
  void set_after_backward(std::function<void()> f) { set_hooks({std::move(f), {}, {}}); }
  bool graph() const { return graph_; }
  bool capture_failed() const { return capture_failed_; }
  // Host time spent recording and instantiating graphs (nothing runs on the device meanwhile), and how often.
  double capture_seconds() const { return capture_seconds_; }
  int captures() const { return captures_; }

 private:
  void body() {
    model_.zero_grad();
    model_.forward_device(opt_.loss_out());
    model_.backward();
    if (hooks_.after_backward) hooks_.after_backward();
    opt_.grad_norm_sq_dev();
    if (hooks_.after_norm) hooks_.after_norm();
    opt_.update_owned_dev();
    if (hooks_.after_update) hooks_.after_update();
  }
  Model& model_;
  AdamW<Backend>& opt_;
  Hooks hooks_;
  bool try_graph_, graph_ = false, capture_failed_ = false;
  int eager_runs_ = 0, captures_ = 0;
  double capture_seconds_ = 0;
};

}  // namespace mue
