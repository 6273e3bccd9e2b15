// Flow-matching MSE: the sum of squared errors (the caller divides by n) and its gradient.
#include "core/cuda_util.cuh"
#include "nn/ops/mse.h"

namespace mue::cuda {

using namespace detail;

namespace {
// dpred[i] = scale * (pred - target), scale = 2/n   traffic: read 2n, write n bf16 (dpred may alias pred)
__global__ void mse_backward_kernel(const bf* pred, const bf* target, bf* dpred, size_t n, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dpred[i] = __float2bfloat16(scale * (__bfloat162float(pred[i]) - __bfloat162float(target[i])));
}
// *out = mean of (pred - target)^2 over n, summed in double by one block (deterministic).
__global__ void mse_mean_kernel(const bf* pred, const bf* target, size_t n, double* out) {
  double s = 0.0;
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double d = double(__bfloat162float(pred[i])) - double(__bfloat162float(target[i]));
    s += d * d;
  }
  s = block_reduce(s, SumOp{}, 0.0);
  if (threadIdx.x == 0) *out = s / double(n);
}
}  // namespace

void mse_mean(Context& ctx, const bf16* pred, const bf16* target, size_t n, double* out) {
  MUE_CHECK(n > 0, "mse_mean: no elements");
  mse_mean_kernel<<<1, 1024, 0, ctx.stream>>>(B(pred), B(target), n, out);
  check_launch("mse_mean_kernel");
}

void mse_backward(Context& ctx, const bf16* pred, const bf16* target, bf16* dpred, size_t n) {
  if (n == 0) return;
  const float scale = float(2.0 / double(n));
  mse_backward_kernel<<<grid_for(n, 256), 256, 0, ctx.stream>>>(B(pred), B(target), B(dpred), n, scale);
  check_launch("mse_backward_kernel");
}

}  // namespace mue::cuda
