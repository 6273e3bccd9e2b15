// The training step's mean loss, left on the device (no host round trip inside the step).
#include "core/cuda_util.cuh"
#include "nn/ops/loss_mean.h"

namespace mue::cuda {

using namespace detail;

namespace {
// *out = mean of n fp32 losses, summed in double by one block (deterministic).
__global__ void loss_mean_kernel(const float* losses, int n, double* out) {
  double s = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += double(losses[i]);
  s = block_reduce(s, SumOp{}, 0.0);
  if (threadIdx.x == 0) *out = s / double(n);
}
}  // namespace

void loss_mean(Context& ctx, const float* losses, int n, double* out) {
  MUE_CHECK(n > 0, "loss_mean: no rows");
  loss_mean_kernel<<<1, 1024, 0, ctx.stream>>>(losses, n, out);
  check_launch("loss_mean_kernel");
}

}  // namespace mue::cuda
