// SiLU: y = x * sigmoid(x). Elementwise, fp32 math on bf16 activations.
#include "core/cuda_util.cuh"
#include "nn/ops/silu.h"

namespace mue::cuda {

using namespace detail;

namespace {
// y[i] = x / (1 + exp(-x))   traffic: read n, write n bf16
__global__ void silu_forward_kernel(const bf* x, bf* y, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float v = __bfloat162float(x[i]);
    y[i] = __float2bfloat16(v / (1.f + expf(-v)));
  }
}

// dx[i] = dy * s * (1 + x (1 - s)), s = sigmoid(x)   traffic: read 2n, write n bf16 (dx may alias dy)
__global__ void silu_backward_kernel(const bf* dy, const bf* x, bf* dx, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float v = __bfloat162float(x[i]), g = __bfloat162float(dy[i]);
    const float s = 1.f / (1.f + expf(-v));
    dx[i] = __float2bfloat16(g * s * (1.f + v * (1.f - s)));
  }
}
}  // namespace

void silu_forward(Context& ctx, const bf16* x, bf16* y, size_t n) {
  if (n == 0) return;
  silu_forward_kernel<<<grid_for(n, 256), 256, 0, ctx.stream>>>(B(x), B(y), n);
  check_launch("silu_forward_kernel");
}

void silu_backward(Context& ctx, const bf16* dy, const bf16* x, bf16* dx, size_t n) {
  if (n == 0) return;
  silu_backward_kernel<<<grid_for(n, 256), 256, 0, ctx.stream>>>(B(dy), B(x), B(dx), n);
  check_launch("silu_backward_kernel");
}

}  // namespace mue::cuda
