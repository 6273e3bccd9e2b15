// Backends: the model is written once (nn/lm.h) against this small interface, and runs on the CPU reference
// (any scalar T; double in the gradient checks) or on CUDA (bf16 activations and weights, fp32 master weights,
// gradients and optimizer state). The optimizer's kernels and state are optim/'s (optim/adamw.h).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "nn/dit_ops_cpu.h"
#include "nn/ops_cpu.h"
#ifdef MUE_HAVE_CUDA
#include "nn/dit_ops_cuda.h"
#include "nn/ops_cuda.h"
#endif

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

  void embedding_forward(const int32_t* tok, const T* wte, T* out, int N, int D) { cpu::embedding_forward(tok, wte, out, N, D); }
  void embedding_backward(const int32_t* tok, const T* dout, T* dwte, int N, int D) { cpu::embedding_backward(tok, dout, dwte, N, D); }
  void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int N, int D, double eps) { cpu::rmsnorm_forward(x, w, y, rstd, N, D, eps); }
  void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int N, int D) { cpu::rmsnorm_backward(dy, x, w, rstd, dx, dw, N, D); }
  void matmul_forward(const T* x, const T* w, T* y, int N, int In, int Out, double a) { cpu::matmul_forward(x, w, y, N, In, Out, a); }
  void matmul_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, int N, int In, int Out, double a, bool accumulate = true) { cpu::matmul_backward(dy, x, w, dx, dw, N, In, Out, a, accumulate); }
  void residual_forward(T* out, const T* a, const T* b, size_t n) { cpu::residual_forward(out, a, b, n); }
  void residual_rmsnorm_forward(T* sum, const T* a, const T* b, const T* w, T* y, T* rstd, int N, int D, double eps) {
    residual_forward(sum, a, b, size_t(N) * D);
    rmsnorm_forward(sum, w, y, rstd, N, D, eps);
  }
  // QK-norm, then RoPE when rope_theta > 0 (one kernel on CUDA)
  void qk_norm_forward(T* qkv, const T* w, T* pre, T* rstd, int B, int T_, int H, int hd, double eps, double rope_theta) {
    cpu::qk_norm_forward(qkv, w, pre, rstd, B * T_, H, hd, eps);
    if (rope_theta > 0) cpu::rope_forward(qkv, B, T_, H, hd, rope_theta);
  }
  void qk_norm_backward(T* dqkv, const T* pre, const T* w, const T* rstd, T* dw, int N, int H, int hd) { cpu::qk_norm_backward(dqkv, pre, w, rstd, dw, N, H, hd); }
  void rope_forward(T* qkv, int B, int T_, int H, int hd, double th) { cpu::rope_forward(qkv, B, T_, H, hd, th); }
  void rope_backward(T* dqkv, int B, int T_, int H, int hd, double th) { cpu::rope_backward(dqkv, B, T_, H, hd, th); }
  // The attention state saved for the backward: here the probabilities [B, H, T, T].
  size_t attention_state_size(int B, int T_, int H, int) const { return size_t(B) * H * T_ * T_; }
  void attention_forward(const T* qkv, T* out, T* probs, int B, int T_, int H, int hd, double s, bool c) { cpu::attention_forward(qkv, out, probs, B, T_, H, hd, s, c); }
  // rope_theta > 0: d(q, k) rotated back by RoPE (the CUDA kernels fuse this rotation into their stores)
  void attention_backward(const T* dout, const T* qkv, const T*, const T* probs, T* dqkv, int B, int T_, int H, int hd, double s, bool c, double rope_theta) {
    cpu::attention_backward(dout, qkv, probs, dqkv, B, T_, H, hd, s, c);
    if (rope_theta > 0) cpu::rope_backward(dqkv, B, T_, H, hd, rope_theta);
  }
  void swiglu_forward(const T* in, T* out, int N, int H) { cpu::swiglu_forward(in, out, N, H); }
  void swiglu_backward(const T* dout, const T* in, T* din, int N, int H) { cpu::swiglu_backward(dout, in, din, N, H); }
  void crossentropy_forward(const T* logits, const int32_t* tgt, T* losses, int N, int V, int Vp) { cpu::crossentropy_forward(logits, tgt, losses, N, V, Vp); }
  void crossentropy_backward(const T* logits, const int32_t* tgt, const T* losses, T* dlogits, int N, int V, int Vp, double dl) { cpu::crossentropy_backward(logits, tgt, losses, dlogits, N, V, Vp, dl); }
  void crossentropy_forward_backward(const T* logits, const int32_t* tgt, T* losses, T* dlogits, int N, int V, int Vp, double dl) {
    crossentropy_forward(logits, tgt, losses, N, V, Vp);
    crossentropy_backward(logits, tgt, losses, dlogits, N, V, Vp, dl);
  }
  // diffusion transformer ops
  void silu_forward(const T* x, T* y, size_t n) { cpu::silu_forward(x, y, n); }
  void silu_backward(const T* dy, const T* x, T* dx, size_t n) { cpu::silu_backward(dy, x, dx, n); }
  void modulate_forward(const T* x, const T* mod, T* y, T* rstd, int B, int Tn, int D, int M, int ish, int isc, double eps) { cpu::modulate_forward(x, mod, y, rstd, B, Tn, D, M, ish, isc, eps); }
  void modulate_backward(const T* dy, const T* x, const T* mod, const T* rstd, T* dx, T* dmod, int B, int Tn, int D, int M, int ish, int isc) { cpu::modulate_backward(dy, x, mod, rstd, dx, dmod, B, Tn, D, M, ish, isc); }
  void gated_residual_forward(T* out, const T* x, const T* y, const T* mod, int B, int Tn, int D, int M, int ig) { cpu::gated_residual_forward(out, x, y, mod, B, Tn, D, M, ig); }
  void gated_residual_backward(const T* dout, const T* y, const T* mod, T* dy, T* dmod, int B, int Tn, int D, int M, int ig) { cpu::gated_residual_backward(dout, y, mod, dy, dmod, B, Tn, D, M, ig); }
  void add_rows(T* x, const T* v, int B, int Tn, int D) { cpu::add_rows(x, v, B, Tn, D); }
  double mse_forward(const T* pred, const T* target, size_t n) { return cpu::mse_forward(pred, target, n); }
  void mse_backward(const T* pred, const T* target, T* dpred, size_t n) { cpu::mse_backward(pred, target, dpred, n); }
  // No CUDA graphs here: a step always runs its ops (see CudaBackend::capture).
  static constexpr bool graphs = false;
  template <class F>
  bool capture(F) { return false; }
  bool graph_ready() const { return false; }
  void replay() {}
  // A training step without a host round trip: the upload queue (a plain copy here), and the step's mean loss
  // left at a scalar where it lives (the optimizer's StepOut::loss, optim/step_scalars.h).
  void begin_uploads() {}
  void upload_async(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  void from_host_async(T* p, const std::vector<double>& in) { from_host(p, in); }
  void loss_mean(const T* losses, int n, double* out) {
    double s = 0;
    for (int i = 0; i < n; ++i) s += double(losses[i]);
    *out = s / double(n);
  }
  void mse_mean(const T* pred, const T* target, size_t n, double* out) { *out = cpu::mse_forward(pred, target, n); }
};

#ifdef MUE_HAVE_CUDA
struct CudaBackend {
  using act_t = bf16;
  using w_t = bf16;
  using master_t = float;
  using stat_t = float;
  static constexpr bool on_device = true;
  cuda::Context ctx;
  float* norm_acc = nullptr;  // device scalar for mse_forward

  CudaBackend() { norm_acc = static_cast<float*>(cuda::device_alloc(sizeof(float))); }
  ~CudaBackend() { cuda::device_free(norm_acc); }
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

  void embedding_forward(const int32_t* tok, const bf16* wte, bf16* out, int N, int D) { auto op_ = ctx.op("embedding_forward"); cuda::embedding_forward(ctx, tok, wte, out, N, D); }
  void embedding_backward(const int32_t* tok, const bf16* dout, float* dwte, int N, int D) { auto op_ = ctx.op("embedding_backward"); cuda::embedding_backward(ctx, tok, dout, dwte, N, D); }
  void rmsnorm_forward(const bf16* x, const bf16* w, bf16* y, float* rstd, int N, int D, double eps) { auto op_ = ctx.op("rmsnorm_forward"); cuda::rmsnorm_forward(ctx, x, w, y, rstd, N, D, float(eps)); }
  void rmsnorm_backward(const bf16* dy, const bf16* x, const bf16* w, const float* rstd, bf16* dx, float* dw, int N, int D) { auto op_ = ctx.op("rmsnorm_backward"); cuda::rmsnorm_backward(ctx, dy, x, w, rstd, dx, dw, N, D); }
  void matmul_forward(const bf16* x, const bf16* w, bf16* y, int N, int In, int Out, double a) { auto op_ = ctx.op("matmul_forward"); cuda::matmul_forward(ctx, x, w, y, N, In, Out, float(a)); }
  void matmul_backward(const bf16* dy, const bf16* x, const bf16* w, bf16* dx, float* dw, int N, int In, int Out, double a, bool accumulate = true) { auto op_ = ctx.op("matmul_backward"); cuda::matmul_backward(ctx, dy, x, w, dx, dw, N, In, Out, float(a), accumulate); }
  void residual_forward(bf16* out, const bf16* a, const bf16* b, size_t n) { auto op_ = ctx.op("residual_forward"); cuda::residual_forward(ctx, out, a, b, n); }
  void residual_rmsnorm_forward(bf16* sum, const bf16* a, const bf16* b, const bf16* w, bf16* y, float* rstd, int N, int D, double eps) { auto op_ = ctx.op("residual_rmsnorm_forward"); cuda::residual_rmsnorm_forward(ctx, sum, a, b, w, y, rstd, N, D, float(eps)); }
  void qk_norm_forward(bf16* qkv, const bf16* w, bf16* pre, float* rstd, int B, int T_, int H, int hd, double eps, double rope_theta) { auto op_ = ctx.op("qk_norm_forward"); cuda::qk_norm_forward(ctx, qkv, w, pre, rstd, B, T_, H, hd, float(eps), float(rope_theta)); }
  void qk_norm_backward(bf16* dqkv, const bf16* pre, const bf16* w, const float* rstd, float* dw, int N, int H, int hd) { auto op_ = ctx.op("qk_norm_backward"); cuda::qk_norm_backward(ctx, dqkv, pre, w, rstd, dw, N, H, hd); }
  void rope_forward(bf16* qkv, int B, int T_, int H, int hd, double th) { auto op_ = ctx.op("rope_forward"); cuda::rope_forward(ctx, qkv, B, T_, H, hd, float(th)); }
  void rope_backward(bf16* dqkv, int B, int T_, int H, int hd, double th) { auto op_ = ctx.op("rope_backward"); cuda::rope_backward(ctx, dqkv, B, T_, H, hd, float(th)); }
  // The attention state saved for the backward: the log-sum-exp [B, H, T] (flash) or the probs (fallback).
  size_t attention_state_size(int B, int T_, int H, int hd) const { return cuda::attention_state_floats(B, T_, H, hd); }
  void attention_forward(const bf16* qkv, bf16* out, float* state, int B, int T_, int H, int hd, double s, bool c) { auto op_ = ctx.op("attention_forward"); cuda::attention_forward(ctx, qkv, out, state, B, T_, H, hd, float(s), c); }
  void attention_backward(const bf16* dout, const bf16* qkv, const bf16* out, const float* state, bf16* dqkv, int B, int T_, int H, int hd, double s, bool c, double rope_theta) { auto op_ = ctx.op("attention_backward"); cuda::attention_backward(ctx, dout, qkv, out, state, dqkv, B, T_, H, hd, float(s), c, float(rope_theta)); }
  void swiglu_forward(const bf16* in, bf16* out, int N, int H) { auto op_ = ctx.op("swiglu_forward"); cuda::swiglu_forward(ctx, in, out, N, H); }
  void swiglu_backward(const bf16* dout, const bf16* in, bf16* din, int N, int H) { auto op_ = ctx.op("swiglu_backward"); cuda::swiglu_backward(ctx, dout, in, din, N, H); }
  void crossentropy_forward(const bf16* logits, const int32_t* tgt, float* losses, int N, int V, int Vp) { auto op_ = ctx.op("crossentropy_forward"); cuda::crossentropy_forward(ctx, logits, tgt, losses, N, V, Vp); }
  void crossentropy_backward(const bf16* logits, const int32_t* tgt, const float* losses, bf16* dlogits, int N, int V, int Vp, double dl) { auto op_ = ctx.op("crossentropy_backward"); cuda::crossentropy_backward(ctx, logits, tgt, losses, dlogits, N, V, Vp, float(dl)); }
  void crossentropy_forward_backward(const bf16* logits, const int32_t* tgt, float* losses, bf16* dlogits, int N, int V, int Vp, double dl) { auto op_ = ctx.op("crossentropy_fused"); cuda::crossentropy_forward_backward(ctx, logits, tgt, losses, dlogits, N, V, Vp, float(dl)); }
  // diffusion transformer ops
  void silu_forward(const bf16* x, bf16* y, size_t n) { auto op_ = ctx.op("silu_forward"); cuda::silu_forward(ctx, x, y, n); }
  void silu_backward(const bf16* dy, const bf16* x, bf16* dx, size_t n) { auto op_ = ctx.op("silu_backward"); cuda::silu_backward(ctx, dy, x, dx, n); }
  void modulate_forward(const bf16* x, const bf16* mod, bf16* y, float* rstd, int B, int Tn, int D, int M, int ish, int isc, double eps) { auto op_ = ctx.op("modulate_forward"); cuda::modulate_forward(ctx, x, mod, y, rstd, B, Tn, D, M, ish, isc, float(eps)); }
  void modulate_backward(const bf16* dy, const bf16* x, const bf16* mod, const float* rstd, bf16* dx, bf16* dmod, int B, int Tn, int D, int M, int ish, int isc) { auto op_ = ctx.op("modulate_backward"); cuda::modulate_backward(ctx, dy, x, mod, rstd, dx, dmod, B, Tn, D, M, ish, isc); }
  void gated_residual_forward(bf16* out, const bf16* x, const bf16* y, const bf16* mod, int B, int Tn, int D, int M, int ig) { auto op_ = ctx.op("gated_residual_forward"); cuda::gated_residual_forward(ctx, out, x, y, mod, B, Tn, D, M, ig); }
  void gated_residual_backward(const bf16* dout, const bf16* y, const bf16* mod, bf16* dy, bf16* dmod, int B, int Tn, int D, int M, int ig) { auto op_ = ctx.op("gated_residual_backward"); cuda::gated_residual_backward(ctx, dout, y, mod, dy, dmod, B, Tn, D, M, ig); }
  void add_rows(bf16* x, const bf16* v, int B, int Tn, int D) { auto op_ = ctx.op("add_rows"); cuda::add_rows(ctx, x, v, B, Tn, D); }
  double mse_forward(const bf16* pred, const bf16* target, size_t n) {
    auto op_ = ctx.op("mse_forward");
    cuda::memset_zero(ctx, norm_acc, sizeof(float));
    cuda::mse_sum(ctx, pred, target, n, norm_acc);
    float s = 0;
    download(&s, norm_acc, sizeof(float));
    return double(s) / double(n);
  }
  void mse_backward(const bf16* pred, const bf16* target, bf16* dpred, size_t n) { auto op_ = ctx.op("mse_backward"); cuda::mse_backward(ctx, pred, target, dpred, n); }
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
  // A training step without a host round trip: the pinned upload queue, and the step's mean loss left at a
  // device scalar (the optimizer's StepOut::loss, optim/step_scalars.h).
  void begin_uploads() { ctx.begin_uploads(); }
  void upload_async(void* dst, const void* src, size_t bytes) { auto op_ = ctx.op("upload"); ctx.upload_async(dst, src, bytes); }
  void from_host_async(bf16* p, const std::vector<double>& in) {
    std::vector<bf16> h(in.size());
    for (size_t i = 0; i < in.size(); ++i) h[i] = float_to_bf16(float(in[i]));
    upload_async(p, h.data(), h.size() * sizeof(bf16));  // copied into the upload queue at once
  }
  void loss_mean(const float* losses, int n, double* out) { auto op_ = ctx.op("loss_mean"); cuda::loss_mean(ctx, losses, n, out); }
  void mse_mean(const bf16* pred, const bf16* target, size_t n, double* out) { auto op_ = ctx.op("mse_forward"); cuda::mse_mean(ctx, pred, target, n, out); }
};
#endif

}  // namespace mue
