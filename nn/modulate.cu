// adaLN modulation (DiT): y[b,t] = rmsnorm(x[b,t]) * (1 + scale[b]) + shift[b], no learned norm weight.
// shift and scale are chunks `ishift`, `iscale` (width D) of the per-sample mod [B, M*D]. fp32 statistics.
#include "core/cuda_util.cuh"
#include "nn/ops/modulate.h"

namespace mue::cuda {

using namespace detail;

namespace {
constexpr int kFeat = 32;   // features per block of the dmod reduction (one warp wide)
constexpr int kSlices = 8;  // t-slices per block of the dmod reduction (blockDim.y)

// One block per row n = b*Tn + t: rstd[n] = 1/sqrt(mean(x^2)+eps), y = x*rstd*(1+scale[b]) + shift[b]
// traffic: read 2*N*D bf16 (x twice, the second time from L1/L2) + 2*B*D (mod chunks, cached), write N*D bf16
//          + N fp32
__global__ void modulate_forward_kernel(const bf* x, const bf* mod, bf* y, float* rstd, int Tn, int D, int M,
                                        int ishift, int iscale, float eps) {
  const size_t n = blockIdx.x, b = n / size_t(Tn);
  const bf* xr = x + n * D;
  const bf* sh = mod + b * M * D + size_t(ishift) * D;
  const bf* sc = mod + b * M * D + size_t(iscale) * D;
  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = __bfloat162float(xr[i]);
    ss += v * v;
  }
  ss = block_reduce(ss, SumOp{}, 0.f);
  const float r = rsqrtf(ss / float(D) + eps);
  if (threadIdx.x == 0) rstd[n] = r;
  for (int i = threadIdx.x; i < D; i += blockDim.x)
    y[n * D + i] = __float2bfloat16(__bfloat162float(xr[i]) * r * (1.f + __bfloat162float(sc[i])) +
                                    __bfloat162float(sh[i]));
}

// One block per row: with g' = dy*(1+scale), dot = mean(g' * xhat), dx += rstd*(g' - xhat*dot)
// (bf16 read-add-write). traffic: read 2*N*D (dy, x; each twice, second time cached) + N*D (dx) bf16,
// write N*D bf16
__global__ void modulate_backward_dx_kernel(const bf* dy, const bf* x, const bf* mod, const float* rstd, bf* dx,
                                            int Tn, int D, int M, int iscale) {
  const size_t n = blockIdx.x, b = n / size_t(Tn);
  const bf* xr = x + n * D;
  const bf* g = dy + n * D;
  const bf* sc = mod + b * M * D + size_t(iscale) * D;
  bf* dxr = dx + n * D;
  const float r = rstd[n];
  float dot = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x)
    dot += __bfloat162float(g[i]) * (1.f + __bfloat162float(sc[i])) * __bfloat162float(xr[i]) * r;
  dot = block_reduce(dot, SumOp{}, 0.f) / float(D);
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float gs = __bfloat162float(g[i]) * (1.f + __bfloat162float(sc[i]));
    const float xhat = __bfloat162float(xr[i]) * r;
    dxr[i] = __float2bfloat16(__bfloat162float(dxr[i]) + r * (gs - xhat * dot));
  }
}

// Block (kFeat, kSlices) per (feature tile, sample b): thread (f, s) sums over t = s, s+kSlices, ... in fp32
//   dshift_i = sum_t dy[b,t,i],   dscale_i = sum_t dy[b,t,i] * x[b,t,i] * rstd[b,t]
// then the slices are added in shared memory in a fixed order and each feature is added ONCE into the bf16
// dmod (no atomics: every (b, i) belongs to exactly one thread; deterministic).
// traffic: read 2*N*D bf16 + N fp32 (rstd), read-add-write 2*B*D bf16
__global__ void modulate_backward_dmod_kernel(const bf* dy, const bf* x, const float* rstd, bf* dmod, int Tn, int D,
                                              int M, int ishift, int iscale) {
  __shared__ float part[2][kSlices][kFeat];
  const int f = threadIdx.x, s = threadIdx.y;
  const int i = blockIdx.x * kFeat + f;
  const size_t b = blockIdx.y;
  float dsh = 0.f, dsc = 0.f;
  if (i < D) {
    for (int t = s; t < Tn; t += kSlices) {
      const size_t row = b * Tn + t;
      const float g = __bfloat162float(dy[row * D + i]);
      dsh += g;
      dsc += g * __bfloat162float(x[row * D + i]) * rstd[row];
    }
  }
  part[0][s][f] = dsh;
  part[1][s][f] = dsc;
  __syncthreads();
  if (s == 0 && i < D) {
    for (int k = 1; k < kSlices; ++k) dsh += part[0][k][f], dsc += part[1][k][f];
    // Sequential read-add-writes, so even ishift == iscale adds both terms.
    bf* p = dmod + b * M * D + size_t(ishift) * D + i;
    *p = __float2bfloat16(__bfloat162float(*p) + dsh);
    p = dmod + b * M * D + size_t(iscale) * D + i;
    *p = __float2bfloat16(__bfloat162float(*p) + dsc);
  }
}
}  // namespace

void modulate_forward(Context& ctx, const bf16* x, const bf16* mod, bf16* y, float* rstd, int B_, int Tn, int D,
                      int M, int ishift, int iscale, float eps) {
  if (B_ <= 0 || Tn <= 0 || D <= 0) return;
  MUE_CHECK(ishift >= 0 && ishift < M && iscale >= 0 && iscale < M, "modulate_forward: chunks ", ishift, ", ",
            iscale, " out of range [0, ", M, ")");
  const unsigned rows = unsigned(size_t(B_) * size_t(Tn));
  modulate_forward_kernel<<<rows, threads_for_row(D), 0, ctx.stream>>>(B(x), B(mod), B(y), rstd, Tn, D, M, ishift,
                                                                       iscale, eps);
  check_launch("modulate_forward_kernel");
}

void modulate_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* mod, const float* rstd, bf16* dx,
                       bf16* dmod, int B_, int Tn, int D, int M, int ishift, int iscale) {
  if (B_ <= 0 || Tn <= 0 || D <= 0) return;
  MUE_CHECK(ishift >= 0 && ishift < M && iscale >= 0 && iscale < M, "modulate_backward: chunks ", ishift, ", ",
            iscale, " out of range [0, ", M, ")");
  const unsigned rows = unsigned(size_t(B_) * size_t(Tn));
  modulate_backward_dx_kernel<<<rows, threads_for_row(D), 0, ctx.stream>>>(B(dy), B(x), B(mod), rstd, B(dx), Tn, D,
                                                                           M, iscale);
  check_launch("modulate_backward_dx_kernel");
  const dim3 grid(unsigned((D + kFeat - 1) / kFeat), unsigned(B_)), block(kFeat, kSlices);
  modulate_backward_dmod_kernel<<<grid, block, 0, ctx.stream>>>(B(dy), B(x), rstd, B(dmod), Tn, D, M, ishift,
                                                                iscale);
  check_launch("modulate_backward_dmod_kernel");
}

}  // namespace mue::cuda
