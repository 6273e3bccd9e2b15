// The training step's loss: the mean of the per-row losses, left where the step's scalars live (on the
// device for CUDA: no host round trip inside the step). CPU reference; CUDA launcher (kernel: nn/loss_mean.cu).
#pragma once
#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// *out = mean of n per-row losses, summed in double.
template <class T>
void loss_mean(const T* losses, int n, double* out) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(losses[i]);
  *out = s / double(n);
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// *out = mean of n per-row losses (double, deterministic): the training step's loss, left on the device.
void loss_mean(Context& ctx, const float* losses, int n, double* out);

}  // namespace mue::cuda
#endif
