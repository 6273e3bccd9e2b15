// Gated residual (DiT): out[b,t] = x[b,t] + gate[b] * y[b,t], gate = chunk `igate` (width D) of mod [B, M*D].
#include "core/cuda_util.cuh"
#include "nn/ops/gated_residual.h"

namespace mue::cuda {

using namespace detail;

namespace {
constexpr int kFeat = 32;   // features per block of the backward (one warp wide)
constexpr int kSlices = 8;  // t-slices per block of the backward (blockDim.y)

// out[k] = x[k] + gate[b, i] * y[k] over k = (b*Tn + t)*D + i; out may alias x (each element read then written
// by the same thread).   traffic: read 2*N*D bf16 + B*D (gate, cached), write N*D bf16
__global__ void gated_residual_forward_kernel(bf* out, const bf* x, const bf* y, const bf* mod, size_t TD, int D,
                                              int M, int igate, size_t total) {
  for (size_t k = blockIdx.x * size_t(blockDim.x) + threadIdx.x; k < total; k += size_t(gridDim.x) * blockDim.x) {
    const size_t b = k / TD, i = k % size_t(D);
    const float g = __bfloat162float(mod[b * M * D + size_t(igate) * D + i]);
    out[k] = __float2bfloat16(__bfloat162float(x[k]) + g * __bfloat162float(y[k]));
  }
}

// Block (kFeat, kSlices) per (feature tile, sample b): thread (f, s) walks t = s, s+kSlices, ...:
//   dy[b,t,i] = gate[b,i] * dout[b,t,i] (overwrite; dy may alias dout) and dgate_i += dout * y in fp32;
// the slices are added in shared memory in a fixed order and each feature is added ONCE into the bf16 dmod
// (no atomics; deterministic).   traffic: read 2*N*D bf16, write N*D bf16, read-add-write B*D bf16
__global__ void gated_residual_backward_kernel(const bf* dout, const bf* y, const bf* mod, bf* dy, bf* dmod, int Tn,
                                               int D, int M, int igate) {
  __shared__ float part[kSlices][kFeat];
  const int f = threadIdx.x, s = threadIdx.y;
  const int i = blockIdx.x * kFeat + f;
  const size_t b = blockIdx.y;
  float dg = 0.f;
  if (i < D) {
    const float g = __bfloat162float(mod[b * M * D + size_t(igate) * D + i]);
    for (int t = s; t < Tn; t += kSlices) {
      const size_t k = (b * Tn + t) * D + i;
      const float d = __bfloat162float(dout[k]);
      dg += d * __bfloat162float(y[k]);
      dy[k] = __float2bfloat16(g * d);
    }
  }
  part[s][f] = dg;
  __syncthreads();
  if (s == 0 && i < D) {
    for (int k = 1; k < kSlices; ++k) dg += part[k][f];
    bf* p = dmod + b * M * D + size_t(igate) * D + i;
    *p = __float2bfloat16(__bfloat162float(*p) + dg);
  }
}
}  // namespace

void gated_residual_forward(Context& ctx, bf16* out, const bf16* x, const bf16* y, const bf16* mod, int B_, int Tn,
                            int D, int M, int igate) {
  if (B_ <= 0 || Tn <= 0 || D <= 0) return;
  MUE_CHECK(igate >= 0 && igate < M, "gated_residual_forward: chunk ", igate, " out of range [0, ", M, ")");
  const size_t TD = size_t(Tn) * size_t(D), total = size_t(B_) * TD;
  gated_residual_forward_kernel<<<grid_for(total, 256), 256, 0, ctx.stream>>>(B(out), B(x), B(y), B(mod), TD, D, M,
                                                                              igate, total);
  check_launch("gated_residual_forward_kernel");
}

void gated_residual_backward(Context& ctx, const bf16* dout, const bf16* y, const bf16* mod, bf16* dy, bf16* dmod,
                             int B_, int Tn, int D, int M, int igate) {
  if (B_ <= 0 || Tn <= 0 || D <= 0) return;
  MUE_CHECK(igate >= 0 && igate < M, "gated_residual_backward: chunk ", igate, " out of range [0, ", M, ")");
  const dim3 grid(unsigned((D + kFeat - 1) / kFeat), unsigned(B_)), block(kFeat, kSlices);
  gated_residual_backward_kernel<<<grid, block, 0, ctx.stream>>>(B(dout), B(y), B(mod), B(dy), B(dmod), Tn, D, M,
                                                                 igate);
  check_launch("gated_residual_backward_kernel");
}

}  // namespace mue::cuda
