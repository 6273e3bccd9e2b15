// MoE data movement on the GPU: permute tokens into expert-contiguous rows, gather them back, and combine the
// expert outputs with the gates. All are pure bandwidth: each reads and writes R*D (or N*a*D) bf16 once.
// One thread block per output row; threads stride over D with fp32 arithmetic.
#include "core/cuda_util.cuh"
#include "moe/moe_cuda.h"

namespace mue::cuda {

namespace {
using detail::B;
using detail::bf;
using detail::check_launch;
int threads_for(int D) { return D >= 256 ? 256 : D >= 128 ? 128 : 64; }

// xp[r, :] = x[src[r], :]   traffic: read R*D, write R*D
__global__ void permute_rows_kernel(const bf* x, const int32_t* src, bf* xp, int D) {
  const int r = blockIdx.x;
  const bf* in = x + size_t(src[r]) * D;
  bf* out = xp + size_t(r) * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) out[i] = in[i];
}

// dx[n, :] += sum_k dxp[slot[n*a+k], :]   traffic: read (a+1)*N*D, write N*D
__global__ void unpermute_add_kernel(const bf* dxp, const int32_t* slot, bf* dx, int a, int D) {
  const int n = blockIdx.x;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float acc = __bfloat162float(dx[size_t(n) * D + i]);
    for (int k = 0; k < a; ++k) acc += __bfloat162float(dxp[size_t(slot[size_t(n) * a + k]) * D + i]);
    dx[size_t(n) * D + i] = __float2bfloat16(acc);
  }
}

// out[n, :] = sum_k g[n,k] yp[slot[n*a+k], :]   traffic: read a*N*D, write N*D
__global__ void combine_forward_kernel(const bf* yp, const int32_t* slot, const bf* g, bf* out, int a, int D) {
  const int n = blockIdx.x;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float acc = 0.f;
    for (int k = 0; k < a; ++k)
      acc += __bfloat162float(g[size_t(n) * a + k]) * __bfloat162float(yp[size_t(slot[size_t(n) * a + k]) * D + i]);
    out[size_t(n) * D + i] = __float2bfloat16(acc);
  }
}

// One block per (n, k): dyp[row] = g dout[n]; dg[n,k] = dout[n] . yp[row]   traffic: read 2*N*a*D, write N*a*D
__global__ void combine_backward_kernel(const bf* dout, const bf* yp, const int32_t* slot, const bf* g, bf* dyp,
                                        bf* dg, int a, int D) {
  const int nk = blockIdx.x, n = nk / a;
  const size_t row = size_t(slot[nk]);
  const float gate = __bfloat162float(g[nk]);
  float dot = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float d = __bfloat162float(dout[size_t(n) * D + i]);
    dot += d * __bfloat162float(yp[row * D + i]);
    dyp[row * D + i] = __float2bfloat16(gate * d);
  }
  __shared__ float red[32];
  for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = dot;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) dg[nk] = __float2bfloat16(v);
  }
}
}  // namespace

void permute_rows(Context& ctx, const bf16* x, const int32_t* src_token, bf16* xp, int rows, int D) {
  if (rows == 0) return;
  permute_rows_kernel<<<rows, threads_for(D), 0, ctx.stream>>>(B(x), src_token, B(xp), D);
  check_launch("permute_rows");
}
void unpermute_add(Context& ctx, const bf16* dxp, const int32_t* slot_row, bf16* dx, int N, int a, int D) {
  if (N == 0) return;
  unpermute_add_kernel<<<N, threads_for(D), 0, ctx.stream>>>(B(dxp), slot_row, B(dx), a, D);
  check_launch("unpermute_add");
}
void combine_forward(Context& ctx, const bf16* yp, const int32_t* slot_row, const bf16* gates, bf16* out, int N, int a,
                     int D) {
  if (N == 0) return;
  combine_forward_kernel<<<N, threads_for(D), 0, ctx.stream>>>(B(yp), slot_row, B(gates), B(out), a, D);
  check_launch("combine_forward");
}
void combine_backward(Context& ctx, const bf16* dout, const bf16* yp, const int32_t* slot_row, const bf16* gates,
                      bf16* dyp, bf16* dgates, int N, int a, int D) {
  if (N == 0) return;
  combine_backward_kernel<<<N * a, threads_for(D), 0, ctx.stream>>>(B(dout), B(yp), slot_row, B(gates), B(dyp),
                                                                    B(dgates), a, D);
  check_launch("combine_backward");
}

}  // namespace mue::cuda
