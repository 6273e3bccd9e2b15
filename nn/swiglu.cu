// SwiGLU: in [N, 2H] = (gate | up), out [N, H] = silu(gate) * up. Elementwise, fp32 math; 16-byte vectors of
// 8 elements when H % 8 == 0.
#include "core/cuda_util.cuh"
#include "nn/ops/swiglu.h"

namespace mue::cuda {

using namespace detail;

namespace {
// out[n, j] = g / (1 + exp(-g)) * u   traffic: read 2*N*H, write N*H bf16
__global__ void swiglu_forward_kernel(const bf* in, bf* out, int H, size_t total) {
  for (size_t k = blockIdx.x * size_t(blockDim.x) + threadIdx.x; k < total; k += size_t(gridDim.x) * blockDim.x) {
    const size_t n = k / H, j = k % H;
    const float g = __bfloat162float(in[n * 2 * H + j]), u = __bfloat162float(in[n * 2 * H + H + j]);
    out[k] = __float2bfloat16(g / (1.f + expf(-g)) * u);
  }
}

// dgate = d * u * sig * (1 + g (1 - sig)), dup = d * silu(g)   traffic: read 3*N*H, write 2*N*H bf16
__global__ void swiglu_backward_kernel(const bf* dout, const bf* in, bf* din, int H, size_t total) {
  for (size_t k = blockIdx.x * size_t(blockDim.x) + threadIdx.x; k < total; k += size_t(gridDim.x) * blockDim.x) {
    const size_t n = k / H, j = k % H;
    const float g = __bfloat162float(in[n * 2 * H + j]), u = __bfloat162float(in[n * 2 * H + H + j]);
    const float d = __bfloat162float(dout[k]);
    const float sig = 1.f / (1.f + expf(-g));
    din[n * 2 * H + j] = __float2bfloat16(d * u * sig * (1.f + g * (1.f - sig)));
    din[n * 2 * H + H + j] = __float2bfloat16(d * g * sig);
  }
}

// The same on vectors of 8 (H8 = H / 8 vectors per half row).
__global__ void swiglu_forward_vec_kernel(const uint4* in, uint4* out, int H8, size_t total8) {
  for (size_t k = blockIdx.x * size_t(blockDim.x) + threadIdx.x; k < total8; k += size_t(gridDim.x) * blockDim.x) {
    const size_t n = k / H8, j = k % H8;
    float g[8], u[8];
    unpack8(in[n * 2 * H8 + j], g), unpack8(in[n * 2 * H8 + H8 + j], u);
    #pragma unroll
    for (int e = 0; e < 8; ++e) g[e] = g[e] / (1.f + __expf(-g[e])) * u[e];
    out[k] = pack8(g);
  }
}
__global__ void swiglu_backward_vec_kernel(const uint4* dout, const uint4* in, uint4* din, int H8, size_t total8) {
  for (size_t k = blockIdx.x * size_t(blockDim.x) + threadIdx.x; k < total8; k += size_t(gridDim.x) * blockDim.x) {
    const size_t n = k / H8, j = k % H8;
    float g[8], u[8], d[8];
    unpack8(in[n * 2 * H8 + j], g), unpack8(in[n * 2 * H8 + H8 + j], u), unpack8(dout[k], d);
    #pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float sig = 1.f / (1.f + __expf(-g[e]));
      const float dg = d[e] * u[e] * sig * (1.f + g[e] * (1.f - sig));
      u[e] = d[e] * g[e] * sig, g[e] = dg;
    }
    din[n * 2 * H8 + j] = pack8(g), din[n * 2 * H8 + H8 + j] = pack8(u);
  }
}
}  // namespace

void swiglu_forward(Context& ctx, const bf16* in, bf16* out, int N, int H) {
  const size_t total = size_t(N) * size_t(H);
  if (N <= 0 || H <= 0) return;
  if (H % 8 == 0 && aligned16(in, out)) {
    swiglu_forward_vec_kernel<<<grid_for(total / 8, 256, sm_count() * 16), 256, 0, ctx.stream>>>(
        reinterpret_cast<const uint4*>(in), reinterpret_cast<uint4*>(out), H / 8, total / 8);
    return check_launch("swiglu_forward_vec_kernel");
  }
  swiglu_forward_kernel<<<grid_for(total, 256), 256, 0, ctx.stream>>>(B(in), B(out), H, total);
  check_launch("swiglu_forward_kernel");
}

void swiglu_backward(Context& ctx, const bf16* dout, const bf16* in, bf16* din, int N, int H) {
  const size_t total = size_t(N) * size_t(H);
  if (N <= 0 || H <= 0) return;
  if (H % 8 == 0 && aligned16(dout, in, din)) {
    swiglu_backward_vec_kernel<<<grid_for(total / 8, 256, sm_count() * 16), 256, 0, ctx.stream>>>(
        reinterpret_cast<const uint4*>(dout), reinterpret_cast<const uint4*>(in), reinterpret_cast<uint4*>(din), H / 8,
        total / 8);
    return check_launch("swiglu_backward_vec_kernel");
  }
  swiglu_backward_kernel<<<grid_for(total, 256), 256, 0, ctx.stream>>>(B(dout), B(in), B(din), H, total);
  check_launch("swiglu_backward_kernel");
}

}  // namespace mue::cuda
