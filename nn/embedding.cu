// Token embedding lookup. Forward is a row gather, backward a scatter-add into the fp32 gradient.
#include "core/cuda_util.cuh"
#include "nn/ops/embedding.h"

namespace mue::cuda {

using namespace detail;

namespace {
// One block per row n: out[n, :] = wte[tok[n], :]   traffic: read N*D, write N*D bf16
__global__ void embedding_forward_kernel(const int32_t* tok, const bf* wte, bf* out, int D) {
  const size_t n = blockIdx.x;
  const bf* src = wte + size_t(tok[n]) * D;
  bf* dst = out + n * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = src[i];
}

// One block per row n: dwte[tok[n], :] += dout[n, :] with fp32 atomics (repeated tokens hit the same row)
// traffic: read N*D bf16, read-modify-write N*D fp32
__global__ void embedding_backward_kernel(const int32_t* tok, const bf* dout, float* dwte, int D) {
  const size_t n = blockIdx.x;
  const bf* src = dout + n * D;
  float* dst = dwte + size_t(tok[n]) * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) atomicAdd(dst + i, __bfloat162float(src[i]));
}
}  // namespace

void embedding_forward(Context& ctx, const int32_t* tok, const bf16* wte, bf16* out, int N, int D) {
  if (N <= 0 || D <= 0) return;
  embedding_forward_kernel<<<N, threads_for_row(D), 0, ctx.stream>>>(tok, B(wte), B(out), D);
  check_launch("embedding_forward_kernel");
}

void embedding_backward(Context& ctx, const int32_t* tok, const bf16* dout, float* dwte, int N, int D) {
  if (N <= 0 || D <= 0) return;
  embedding_backward_kernel<<<N, threads_for_row(D), 0, ctx.stream>>>(tok, B(dout), dwte, D);
  check_launch("embedding_backward_kernel");
}

}  // namespace mue::cuda
