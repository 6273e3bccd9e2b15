// RMSNorm: y = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps); fp32 statistics, bf16 activations.
#include "core/cuda_util.cuh"
#include "nn/ops_cuda.h"

namespace mue::cuda {

using namespace detail;

namespace {
// One block per row: rstd[n] = 1/sqrt(mean(x^2)+eps), y = x*rstd*w
// traffic: read 2*N*D bf16 (x twice, the second time from L1/L2) + D (w), write N*D bf16 + N fp32
__global__ void rmsnorm_forward_kernel(const bf* x, const bf* w, bf* y, float* rstd, int D, float eps) {
  const size_t n = blockIdx.x;
  const bf* xr = x + n * D;
  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float v = __bfloat162float(xr[i]);
    ss += v * v;
  }
  ss = block_reduce(ss, SumOp{}, 0.f);
  const float r = rsqrtf(ss / float(D) + eps);
  if (threadIdx.x == 0) rstd[n] = r;
  for (int i = threadIdx.x; i < D; i += blockDim.x)
    y[n * D + i] = __float2bfloat16(__bfloat162float(xr[i]) * r * __bfloat162float(w[i]));
}

// Grid-stride over rows; per row: dot = mean(dy*w*xhat), dx += rstd*(dy*w - xhat*dot) (bf16 read-add-write).
// dw partial sums live in dynamic shared memory (D floats, thread i owns columns i, i+blockDim, ...) and are
// atomically added to dw once per block at the end.
// traffic: read 2*N*D (x, dy; read twice, second time cached) + N*D (dx) bf16, write N*D bf16,
//          gridDim.x * D fp32 atomics
__global__ void rmsnorm_backward_kernel(const bf* dy, const bf* x, const bf* w, const float* rstd, bf* dx,
                                        float* dw, int N, int D) {
  extern __shared__ float dw_part[];
  for (int i = threadIdx.x; i < D; i += blockDim.x) dw_part[i] = 0.f;
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const bf* xr = x + size_t(n) * D;
    const bf* g = dy + size_t(n) * D;
    bf* dxr = dx + size_t(n) * D;
    const float r = rstd[n];
    float dot = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x)
      dot += __bfloat162float(g[i]) * __bfloat162float(w[i]) * __bfloat162float(xr[i]) * r;
    dot = block_reduce(dot, SumOp{}, 0.f) / float(D);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
      const float gi = __bfloat162float(g[i]), xhat = __bfloat162float(xr[i]) * r;
      dw_part[i] += gi * xhat;
      const float d = r * (gi * __bfloat162float(w[i]) - xhat * dot);
      dxr[i] = __float2bfloat16(__bfloat162float(dxr[i]) + d);
    }
  }
  for (int i = threadIdx.x; i < D; i += blockDim.x) atomicAdd(dw + i, dw_part[i]);
}
}  // namespace

void rmsnorm_forward(Context& ctx, const bf16* x, const bf16* w, bf16* y, float* rstd, int N, int D, float eps) {
  if (N <= 0 || D <= 0) return;
  rmsnorm_forward_kernel<<<N, threads_for_row(D), 0, ctx.stream>>>(B(x), B(w), B(y), rstd, D, eps);
  check_launch("rmsnorm_forward_kernel");
}

void rmsnorm_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* w, const float* rstd, bf16* dx,
                      float* dw, int N, int D) {
  if (N <= 0 || D <= 0) return;
  const size_t smem = size_t(D) * sizeof(float);
  if (smem > 48 * 1024) {
    int dev = 0, max_smem = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
          "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
    // (+256: block_reduce's static shared buffer)
    MUE_CHECK(smem + 256 <= size_t(max_smem), "rmsnorm_backward: D = ", D, " needs ", smem,
              " bytes of shared memory, the device allows ", max_smem);
    check(cudaFuncSetAttribute(rmsnorm_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
          "cudaFuncSetAttribute(rmsnorm_backward_kernel, ", smem, " bytes shared)");
  }
  // Enough blocks to fill the GPU; each then amortizes its dw flush over N / grid rows.
  const int grid = N < 1024 ? N : 1024;
  rmsnorm_backward_kernel<<<grid, threads_for_row(D), smem, ctx.stream>>>(B(dy), B(x), B(w), rstd, B(dx), dw, N, D);
  check_launch("rmsnorm_backward_kernel");
}

}  // namespace mue::cuda
