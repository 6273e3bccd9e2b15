// Flow-matching loss: mean squared error and its gradient. CPU reference; CUDA launchers (kernels: nn/mse.cu).
#pragma once
#include <cstddef>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// flow-matching MSE: loss = mean (pred - target)^2 over n values; dpred = 2 (pred - target) / n
template <class T>
double mse_forward(const T* pred, const T* target, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(pred[i] - target[i]) * double(pred[i] - target[i]);
  return s / double(n);
}
template <class T>
void mse_backward(const T* pred, const T* target, T* dpred, size_t n) {
  for (size_t i = 0; i < n; ++i) dpred[i] = T(2.0 / double(n)) * (pred[i] - target[i]);
}
// *out = mse_forward: the step's loss where the step's scalars live (see nn/ops/loss_mean.h).
template <class T>
void mse_mean(const T* pred, const T* target, size_t n, double* out) {
  *out = mse_forward(pred, target, n);
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// *out = mean squared error over n (double, one block: deterministic): the step's loss, left on the device.
void mse_mean(Context& ctx, const bf16* pred, const bf16* target, size_t n, double* out);
// dpred = 2 (pred - target) / n
void mse_backward(Context& ctx, const bf16* pred, const bf16* target, bf16* dpred, size_t n);

}  // namespace mue::cuda
#endif
