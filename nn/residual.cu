// Residual add on the bf16 stream.
#include "core/cuda_util.cuh"
#include "nn/ops_cuda.h"

namespace mue::cuda {

using namespace detail;

namespace {
// out[i] = bf16(float(a[i]) + float(b[i])); out may alias a or b   traffic: read 2n, write n bf16
__global__ void residual_forward_kernel(bf* out, const bf* a, const bf* b, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}
}  // namespace

void residual_forward(Context& ctx, bf16* out, const bf16* a, const bf16* b, size_t n) {
  if (n == 0) return;
  residual_forward_kernel<<<grid_for(n, 256), 256, 0, ctx.stream>>>(B(out), B(a), B(b), n);
  check_launch("residual_forward_kernel");
}

}  // namespace mue::cuda
