// Rotary position embedding, in place on the q and k parts of qkv [B, T, 3, H, hd] (v untouched); 16-byte
// vectors when hd % 8 == 0.
#include "core/cuda_util.cuh"
#include "nn/ops/rope.h"
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

// The same, one thread per (b, t, h, 8 columns) when hd % 8 == 0: q's and k's 16-byte vectors rotated with one
// set of 4 angles.   traffic: as above, in 16-byte vectors
__global__ void rope_vec_kernel(bf* qkv, int T, int H, int hd, float log2_theta, float sign, size_t total) {
  const int vh = hd / 8;
  for (size_t k = blockIdx.x * size_t(blockDim.x) + threadIdx.x; k < total; k += size_t(gridDim.x) * blockDim.x) {
    const int v = int(k % vh);
    const int h = int((k / vh) % H);
    const size_t bt = k / (size_t(vh) * H);
    const int t = int(bt % T);
    const size_t D = size_t(H) * hd;
    uint4* q = reinterpret_cast<uint4*>(qkv + bt * 3 * D + size_t(h) * hd + 8 * v);
    uint4* kk = reinterpret_cast<uint4*>(reinterpret_cast<bf*>(q) + D);
    float fq[8], fk[8], c[4], s[4];
    unpack8(*q, fq), unpack8(*kk, fk);
    rope_cos_sin4(t, v, hd, log2_theta, c, s);
    rope_rotate8(fq, c, s, sign), rope_rotate8(fk, c, s, sign);
    *q = pack8(fq), *kk = pack8(fk);
  }
}

void rope_launch(Context& ctx, bf16* qkv, int B, int T, int H, int hd, float theta, float sign, const char* name) {
  if (size_t(B) * T * H * hd == 0) return;
  if (hd % 8 == 0 && aligned16(qkv)) {
    const size_t total = size_t(B) * T * H * (hd / 8);
    rope_vec_kernel<<<grid_for(total, 256), 256, 0, ctx.stream>>>(detail::B(qkv), T, H, hd, log2f(theta), sign, total);
  } else {
    const size_t total = size_t(B) * T * H * (hd / 2);
    rope_kernel<<<grid_for(total, 256), 256, 0, ctx.stream>>>(detail::B(qkv), T, H, hd, log2f(theta), sign, total);
  }
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
