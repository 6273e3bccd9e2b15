// Backends: the model is written once (nn/lm.h) against this small interface, and runs on the CPU reference
// (any scalar T; double in the gradient checks) or on CUDA (bf16 activations and weights, fp32 master weights,
// gradients and optimizer state). The optimizer's kernels and state are optim/'s (optim/adamw.h).
//
// Each op has one home, nn/ops/<op>.h (moe/ops/ for the MoE layer's): its CPU reference cpu::op next to the
// declaration of its CUDA launcher cuda::op, whose kernels are in nn/<op>.cu. The backends forward to them; the
// ops that forward one to one are listed once in MUE_NN_OPS, the rest are written out below. Conventions of all ops:
//   * rows N = B*T; a linear weight W is [Out, In] row-major and y = alpha * x W^T;
//   * weight gradients ACCUMULATE (+=); input gradients OVERWRITE, except where an op says otherwise (the norms'
//     dx, which always lands on the residual stream);
//   * CPU: everything in T; CUDA: activations and weights bf16 (weights: the bf16 shadow of the fp32 master
//     copy), weight gradients and statistics fp32, fp32 accumulation, every call asynchronous on ctx.stream.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "nn/ops/add_rows.h"
#include "nn/ops/attention.h"
#include "nn/ops/crossentropy.h"
#include "nn/ops/embedding.h"
#include "nn/ops/gated_residual.h"
#include "nn/ops/linear_crossentropy.h"
#include "nn/ops/loss_mean.h"
#include "nn/ops/matmul.h"
#include "nn/ops/modulate.h"
#include "nn/ops/mse.h"
#include "nn/ops/qk_norm.h"
#include "nn/ops/residual.h"
#include "nn/ops/rmsnorm.h"
#include "nn/ops/rope.h"
#include "nn/ops/silu.h"
#include "nn/ops/swiglu.h"

// The ops both backends forward one to one: CpuBackend<T>::op(args...) runs cpu::op<T>(args...), and
// CudaBackend::op(args...) runs cuda::op(ctx, args...) under the profiler label "op" (`bench --profile`).
#define MUE_NN_OPS(X)                                                                            \
  X(embedding_forward) X(embedding_backward)                                                     \
  X(rmsnorm_forward) X(rmsnorm_backward) X(residual_rmsnorm_forward) X(residual_forward)         \
  X(qk_norm_forward) X(qk_norm_backward) X(rope_forward) X(rope_backward)                        \
  X(attention_forward) X(attention_backward)                                                     \
  X(matmul_forward) X(matmul_backward) X(swiglu_forward) X(swiglu_backward)                      \
  X(crossentropy_forward) X(crossentropy_backward) X(crossentropy_forward_backward) X(loss_mean) \
  X(linear_crossentropy_backward)                                                                \
  X(silu_forward) X(silu_backward) X(modulate_forward) X(modulate_backward) X(add_rows)          \
  X(gated_residual_forward) X(gated_residual_backward) X(mse_mean) X(mse_backward)

#define MUE_CPU_FORWARD(name)                         \
  template <class... Args>                            \
  decltype(auto) name(Args&&... args) {               \
    return cpu::name<T>(std::forward<Args>(args)...); \
  }
#define MUE_CUDA_FORWARD(name)                           \
  template <class... Args>                               \
  decltype(auto) name(Args&&... args) {                  \
    auto op_ = ctx.op(#name);                            \
    return cuda::name(ctx, std::forward<Args>(args)...); \
  }

namespace mue {

template <class T>
struct CpuBackend {
  using act_t = T;     // activations
  using w_t = T;       // weights as the forward reads them (the master copy itself on the CPU)
  using master_t = T;  // master weights, gradients and optimizer state
  using stat_t = T;    // per-row statistics (rstd), losses
  static constexpr bool on_device = false;
  std::string device_name() const { return "cpu"; }

  void upload(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  void zero(void* p, size_t bytes) { std::memset(p, 0, bytes); }
  void sync_weights(const T*, T*, size_t) {}  // the forward reads the master copy directly
  void synchronize() {}
  void to_host(std::vector<double>& out, const T* p, size_t n) { out.assign(p, p + n); }
  void from_host(T* p, const std::vector<double>& in) { std::copy(in.begin(), in.end(), p); }

  MUE_NN_OPS(MUE_CPU_FORWARD)
  // The attention state saved for the backward: here the probabilities [B, H, T, T].
  size_t attention_state_size(int B, int T_, int H, int) const { return size_t(B) * H * T_ * T_; }
  // The loss's value on the host, for evaluation (training leaves it where the step's scalars are: mse_mean).
  double mse_forward(const T* pred, const T* target, size_t n) { return cpu::mse_forward(pred, target, n); }
  // No CUDA graphs here: a step always runs its ops (see CudaBackend::capture).
  static constexpr bool graphs = false;
  template <class F>
  bool capture(F) { return false; }
  bool graph_ready() const { return false; }
  void replay() {}
  // A training step without a host round trip: the upload queue (a plain copy here); the step's mean loss is left
  // where the step's scalars live (loss_mean, mse_mean: the optimizer's StepOut::loss, optim/step_scalars.h).
  void begin_uploads() {}
  void upload_async(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  void from_host_async(T* p, const std::vector<double>& in) { from_host(p, in); }
};

#ifdef MUE_HAVE_CUDA
struct CudaBackend {
  using act_t = bf16;
  using w_t = bf16;
  using master_t = float;
  using stat_t = float;
  static constexpr bool on_device = true;
  cuda::Context ctx;
  double* loss_dev = nullptr;  // device scalar for mse_forward

  // On CUDA device `device` (a data-parallel rank's own GPU: dist::cuda_device_of); everything it allocates is there.
  explicit CudaBackend(int device = 0) : ctx(device) { loss_dev = static_cast<double*>(cuda::device_alloc(sizeof(double))); }
  ~CudaBackend() { cuda::device_free(loss_dev); }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;
  std::string device_name() const { return ctx.device_name(); }

  void upload(void* dst, const void* src, size_t bytes) { auto op_ = ctx.op("upload"); cuda::copy_to_device(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) { ctx.synchronize(); cuda::copy_to_host(dst, src, bytes); }
  void zero(void* p, size_t bytes) { auto op_ = ctx.op("zero"); cuda::memset_zero(ctx, p, bytes); }
  void sync_weights(const float* master, bf16* shadow, size_t n) { auto op_ = ctx.op("sync_weights"); cuda::cast_f32_to_bf16(ctx, master, shadow, n); }
  void synchronize() { ctx.synchronize(); }
  void to_host(std::vector<double>& out, const bf16* p, size_t n) {
    std::vector<bf16> h(n);
    download(h.data(), p, n * sizeof(bf16));
    out.resize(n);
    for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(h[i]);
  }
  void from_host(bf16* p, const std::vector<double>& in) {
    std::vector<bf16> h(in.size());
    for (size_t i = 0; i < in.size(); ++i) h[i] = float_to_bf16(float(in[i]));
    upload(p, h.data(), h.size() * sizeof(bf16));
  }

  MUE_NN_OPS(MUE_CUDA_FORWARD)
  // The attention state saved for the backward: the log-sum-exp [B, H, T] (flash) or the probs (fallback).
  size_t attention_state_size(int B, int T_, int H, int hd) const { return cuda::attention_state_floats(B, T_, H, hd); }
  // The loss's value on the host, for evaluation (training keeps it on the device: mse_mean).
  double mse_forward(const bf16* pred, const bf16* target, size_t n) {
    auto op_ = ctx.op("mse_forward");
    cuda::mse_mean(ctx, pred, target, n, loss_dev);  // one block in a fixed order: the same bits every run
    double s = 0;
    download(&s, loss_dev, sizeof(double));
    return s;
  }
  // A step recorded once as a CUDA graph and replayed: capture(f) records f's launches (they do not run) and
  // returns whether the graph could be made (false when f waits for the device or fails: then nothing was
  // recorded, the caller runs f itself); replay() queues the graph.
  static constexpr bool graphs = true;
  template <class F>
  bool capture(F f) {
    try {
      ctx.capture_begin();
      f();
    } catch (const Error&) {
      ctx.capture_abort();
      return false;
    } catch (...) {
      ctx.capture_abort();
      throw;
    }
    return ctx.capture_end();
  }
  // Whether the captured graph is still there (a reallocated buffer it used drops it).
  bool graph_ready() const { return ctx.has_graph(); }
  void replay() { auto op_ = ctx.op("graph_step"); ctx.graph_launch(); }
  // A training step without a host round trip: the pinned upload queue; the step's mean loss is left at a device
  // scalar (loss_mean, mse_mean: the optimizer's StepOut::loss, optim/step_scalars.h).
  void begin_uploads() { ctx.begin_uploads(); }
  void upload_async(void* dst, const void* src, size_t bytes) { auto op_ = ctx.op("upload"); ctx.upload_async(dst, src, bytes); }
  void from_host_async(bf16* p, const std::vector<double>& in) {
    std::vector<bf16> h(in.size());
    for (size_t i = 0; i < in.size(); ++i) h[i] = float_to_bf16(float(in[i]));
    upload_async(p, h.data(), h.size() * sizeof(bf16));  // copied into the upload queue at once
  }
};
#endif

}  // namespace mue
