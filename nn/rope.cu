// Rotary position embedding, in place on the q and k parts of qkv [B, T, 3, H, hd] (v untouched).
#include "core/cuda_util.cuh"
#include "nn/ops_cuda.h"
#include "nn/rope.cuh"

namespace mue::cuda {

using namespace detail;

namespace {
// One thread per (b, t, h, pair i): rotates q and k pair (2i, 2i+1) by sign * t * theta^(-2i/hd).
// sign = +1 forward, -1 backward (the inverse rotation is the transpose).
// traffic: read and write 2*B*T*H*hd bf16 (the q and k thirds of qkv)
__global__ void rope_kernel(bf* qkv, int T, int H, int hd, float log2_theta, float sign, size_t total) {
  const int half = hd / 2;
  for (size_t k = blockIdx.x * size_t(blockDim.x) + threadIdx.x; k < total; k += size_t(gridDim.x) * blockDim.x) {
    const int i = int(k % half);
    const int h = int((k / half) % H);
    const size_t bt = k / (size_t(half) * H);
    const int t = int(bt % T);
    float s, c;
    rope_cos_sin(t, i, hd, log2_theta, c, s);
    s *= sign;
    const size_t D = size_t(H) * hd;
    bf* p = qkv + bt * 3 * D + size_t(h) * hd + 2 * i;
    for (int part = 0; part < 2; ++part, p += D) {
      const float a = __bfloat162float(p[0]), b = __bfloat162float(p[1]);
      p[0] = __float2bfloat16(a * c - b * s);
      p[1] = __float2bfloat16(a * s + b * c);
    }
  }
}

void rope_launch(Context& ctx, bf16* qkv, int B, int T, int H, int hd, float theta, float sign, const char* name) {
  const size_t total = size_t(B) * T * H * (hd / 2);
  if (total == 0) return;
  rope_kernel<<<grid_for(total, 256), 256, 0, ctx.stream>>>(detail::B(qkv), T, H, hd, log2f(theta), sign, total);
  check_launch(name);
}
}  // namespace

void rope_forward(Context& ctx, bf16* qkv, int B, int T, int H, int hd, float theta) {
  rope_launch(ctx, qkv, B, T, H, hd, theta, 1.f, "rope_kernel (forward)");
}

void rope_backward(Context& ctx, bf16* dqkv, int B, int T, int H, int hd, float theta) {
  rope_launch(ctx, dqkv, B, T, H, hd, theta, -1.f, "rope_kernel (backward)");
}

}  // namespace mue::cuda
