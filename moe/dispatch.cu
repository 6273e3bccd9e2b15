// MoE data movement on the GPU: permute tokens into expert-contiguous rows, gather them back, and combine the
// expert outputs with the gates. All are pure bandwidth: each reads and writes R*D (or N*a*D) bf16 once.
// One thread block per output row; threads stride over D (16-byte vectors of 8 when D % 8 == 0), fp32 math.
#include "core/cuda_util.cuh"
#include "moe/moe_cuda.h"

namespace mue::cuda {

namespace {
using detail::B;
using detail::bf;
using detail::aligned16;
using detail::check_launch;

// W consecutive elements of a row as floats: W = 8 is one 16-byte vector (rows with D % 8 == 0), W = 1 a scalar.
template <int W>
__device__ inline void load_w(const bf* p, float (&f)[W]) {
  if constexpr (W == 8) detail::unpack8(*reinterpret_cast<const uint4*>(p), f);
  else f[0] = __bfloat162float(*p);
}
template <int W>
__device__ inline void store_w(bf* p, const float (&f)[W]) {
  if constexpr (W == 8) *reinterpret_cast<uint4*>(p) = detail::pack8(f);
  else *p = __float2bfloat16(f[0]);
}

// xp[r, :] = x[src[r], :]   traffic: read R*D, write R*D
template <int W>
__global__ void permute_rows_kernel(const bf* x, const int32_t* src, bf* xp, int D) {
  const int r = blockIdx.x;
  const bf* in = x + size_t(src[r]) * D;
  bf* out = xp + size_t(r) * D;
  for (int i = threadIdx.x * W; i < D; i += blockDim.x * W) {
    float v[W];
    load_w<W>(in + i, v), store_w<W>(out + i, v);
  }
}

// dx[n, :] += sum_k dxp[slot[n*a+k], :]   traffic: read (a+1)*N*D, write N*D
template <int W>
__global__ void unpermute_add_kernel(const bf* dxp, const int32_t* slot, bf* dx, int a, int D) {
  const int n = blockIdx.x;
  for (int i = threadIdx.x * W; i < D; i += blockDim.x * W) {
    float acc[W], v[W];
    load_w<W>(dx + size_t(n) * D + i, acc);
    for (int k = 0; k < a; ++k) {
      load_w<W>(dxp + size_t(slot[size_t(n) * a + k]) * D + i, v);
      #pragma unroll
      for (int j = 0; j < W; ++j) acc[j] += v[j];
    }
    store_w<W>(dx + size_t(n) * D + i, acc);
  }
}

// out[n, :] = sum_k g[n,k] yp[slot[n*a+k], :]   traffic: read a*N*D, write N*D
template <int W>
__global__ void combine_forward_kernel(const bf* yp, const int32_t* slot, const bf* g, bf* out, int a, int D) {
  const int n = blockIdx.x;
  for (int i = threadIdx.x * W; i < D; i += blockDim.x * W) {
    float acc[W] = {}, v[W];
    for (int k = 0; k < a; ++k) {
      const float gk = __bfloat162float(g[size_t(n) * a + k]);
      load_w<W>(yp + size_t(slot[size_t(n) * a + k]) * D + i, v);
      #pragma unroll
      for (int j = 0; j < W; ++j) acc[j] += gk * v[j];
    }
    store_w<W>(out + size_t(n) * D + i, acc);
  }
}

// One block per (n, k): dyp[row] = g dout[n]; dg[n,k] = dout[n] . yp[row]   traffic: read 2*N*a*D, write N*a*D
template <int W>
__global__ void combine_backward_kernel(const bf* dout, const bf* yp, const int32_t* slot, const bf* g, bf* dyp,
                                        bf* dg, int a, int D) {
  const int nk = blockIdx.x, n = nk / a;
  const size_t row = size_t(slot[nk]);
  const float gate = __bfloat162float(g[nk]);
  float dot = 0.f;
  for (int i = threadIdx.x * W; i < D; i += blockDim.x * W) {
    float d[W], y[W];
    load_w<W>(dout + size_t(n) * D + i, d), load_w<W>(yp + row * D + i, y);
    #pragma unroll
    for (int j = 0; j < W; ++j) dot += d[j] * y[j], d[j] *= gate;
    store_w<W>(dyp + row * D + i, d);
  }
  dot = detail::block_reduce(dot, detail::SumOp{}, 0.f);
  if (threadIdx.x == 0) dg[nk] = __float2bfloat16(dot);
}

// Launches kernel<8> (16-byte vectors) when D % 8 == 0 and the row arrays are 16-byte aligned, else kernel<1>; threads cover a row's chunks, 32 to 256.
template <class K8, class K1, class... Args>
void launch_rows(Context& ctx, K8 k8, K1 k1, int blocks, int D, bool aligned, const char* name, Args... args) {
  const int W = D % 8 == 0 && aligned ? 8 : 1, chunks = D / W;
  const int threads = chunks >= 256 ? 256 : (chunks + 31) / 32 * 32;
  if (W == 8) k8<<<blocks, threads, 0, ctx.stream>>>(args...);
  else k1<<<blocks, threads, 0, ctx.stream>>>(args...);
  check_launch(name);
}
}  // namespace

void permute_rows(Context& ctx, const bf16* x, const int32_t* src_token, bf16* xp, int rows, int D) {
  if (rows == 0) return;
  launch_rows(ctx, permute_rows_kernel<8>, permute_rows_kernel<1>, rows, D, aligned16(x, xp), "permute_rows", B(x),
              src_token, B(xp), D);
}
void unpermute_add(Context& ctx, const bf16* dxp, const int32_t* slot_row, bf16* dx, int N, int a, int D) {
  if (N == 0) return;
  launch_rows(ctx, unpermute_add_kernel<8>, unpermute_add_kernel<1>, N, D, aligned16(dxp, dx), "unpermute_add",
              B(dxp), slot_row, B(dx), a, D);
}
void combine_forward(Context& ctx, const bf16* yp, const int32_t* slot_row, const bf16* gates, bf16* out, int N, int a,
                     int D) {
  if (N == 0) return;
  launch_rows(ctx, combine_forward_kernel<8>, combine_forward_kernel<1>, N, D, aligned16(yp, out), "combine_forward",
              B(yp), slot_row, B(gates), B(out), a, D);
}
void combine_backward(Context& ctx, const bf16* dout, const bf16* yp, const int32_t* slot_row, const bf16* gates,
                      bf16* dyp, bf16* dgates, int N, int a, int D) {
  if (N == 0) return;
  launch_rows(ctx, combine_backward_kernel<8>, combine_backward_kernel<1>, N * a, D, aligned16(dout, yp, dyp),
              "combine_backward", B(dout), B(yp), slot_row, B(gates), B(dyp), B(dgates), a, D);
}

}  // namespace mue::cuda
