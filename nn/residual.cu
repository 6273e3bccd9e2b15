// Residual add on the bf16 stream.
#include "core/cuda_util.cuh"
#include "nn/ops/residual.h"

namespace mue::cuda {

using namespace detail;

namespace {
// out[i] = bf16(float(a[i]) + float(b[i])); out may alias a or b   traffic: read 2n, write n bf16
__global__ void residual_forward_kernel(bf* out, const bf* a, const bf* b, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}
// The same on 16-byte vectors of 8 (n8 = n / 8); out may alias a or b element for element.
__global__ void residual_forward_vec_kernel(uint4* out, const uint4* a, const uint4* b, uint32_t n8) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += gridDim.x * blockDim.x) {
    float x[8], y[8];
    unpack8(a[i], x), unpack8(b[i], y);
    #pragma unroll
    for (int k = 0; k < 8; ++k) x[k] += y[k];
    out[i] = pack8(x);
  }
}
}  // namespace

void residual_forward(Context& ctx, bf16* out, const bf16* a, const bf16* b, size_t n) {
  if (n == 0) return;
  if (n % 8 == 0 && n / 8 < (size_t(1) << 31) && aligned16(out, a, b)) {
    residual_forward_vec_kernel<<<grid_for(n / 8, 256, sm_count() * 16), 256, 0, ctx.stream>>>(
        reinterpret_cast<uint4*>(out), reinterpret_cast<const uint4*>(a), reinterpret_cast<const uint4*>(b),
        uint32_t(n / 8));
    return check_launch("residual_forward_vec_kernel");
  }
  residual_forward_kernel<<<grid_for(n, 256), 256, 0, ctx.stream>>>(B(out), B(a), B(b), n);
  check_launch("residual_forward_kernel");
}

}  // namespace mue::cuda
