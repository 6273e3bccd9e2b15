// MoE data movement on the GPU: permute tokens into expert-contiguous rows, gather them back, and combine the
// expert outputs (already gate-weighted: moe/gate_swiglu.cu). All are pure bandwidth: each reads and writes R*D
// (or N*a*D) bf16 once.
// One thread block per output row (kGatherRows rows for the gather); threads stride over D (16-byte vectors of 8
// when D % 8 == 0), fp32 math.
#include "core/cuda_util.cuh"
#include "core/kernel_variants.h"
#include "moe/ops/dispatch.h"

namespace mue::cuda {

namespace {
using detail::B;
using detail::bf;
using detail::aligned16;
using detail::check_launch;
using detail::load_w;
using detail::store_w;

// xp[r, :] = x[src[r], :]   traffic: read R*D (x itself, N*D, mostly from L2), write R*D
// kGatherRows rows per block: each thread issues its loads of all of them before it stores any, so it has that
// many loads in flight instead of one. With one row per block a short row leaves too few bytes in flight per SM to
// cover the memory latency: at D = 256 a block is one warp of 16-byte loads, and an SM holds at most 32 blocks
// (16 KB in flight). kGatherRows = gather_rows(D): the kernel variant gather_rows (1, 2, 4, 8) when set, else
// the fewest rows that make a block move at least 4 KB (8 at D = 256, 4 at D = 768; bench/RESULTS.md has the
// gain).
template <int W, int kGatherRows>
__global__ void permute_rows_kernel(const bf* x, const int32_t* src, bf* xp, int rows, int D) {
  const int r0 = blockIdx.x * kGatherRows, nr = min(kGatherRows, rows - r0);
  const bf* in[kGatherRows];
  #pragma unroll
  for (int k = 0; k < kGatherRows; ++k) in[k] = x + size_t(src[r0 + min(k, nr - 1)]) * D;  // past the end: again
  for (int i = threadIdx.x * W; i < D; i += blockDim.x * W) {
    float v[kGatherRows][W];
    #pragma unroll
    for (int k = 0; k < kGatherRows; ++k) load_w<W>(in[k] + i, v[k]);
    #pragma unroll
    for (int k = 0; k < kGatherRows; ++k)
      if (k < nr) store_w<W>(xp + size_t(r0 + k) * D + i, v[k]);
  }
}

// out[n, :] (+)= sum_k yp[slot[n*a+k], :]: the combine (kAdd false) and the unpermutation of the gradients (kAdd).
// traffic: read a*N*D (+ N*D with kAdd), write N*D
template <int W, bool kAdd>
__global__ void sum_expert_rows_kernel(const bf* yp, const int32_t* slot, bf* out, int a, int D) {
  const int n = blockIdx.x;
  for (int i = threadIdx.x * W; i < D; i += blockDim.x * W) {
    float acc[W] = {}, v[W];
    if constexpr (kAdd) load_w<W>(out + size_t(n) * D + i, acc);
    for (int k = 0; k < a; ++k) {
      load_w<W>(yp + size_t(slot[size_t(n) * a + k]) * D + i, v);
      #pragma unroll
      for (int j = 0; j < W; ++j) acc[j] += v[j];
    }
    store_w<W>(out + size_t(n) * D + i, acc);
  }
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

int gather_rows(int D) {  // read at every launch (a captured graph keeps what it saw), so a test can vary it
  if (const int forced = kernel_variants().gather_rows) return forced;
  int k = 1;
  while (k < 8 && size_t(k) * D * sizeof(bf16) < 4096) k *= 2;
  return k;
}
template <int kRows>
void permute_rows_by(Context& ctx, const bf16* x, const int32_t* src_token, bf16* xp, int rows, int D) {
  launch_rows(ctx, permute_rows_kernel<8, kRows>, permute_rows_kernel<1, kRows>, (rows + kRows - 1) / kRows, D,
              aligned16(x, xp), "permute_rows", B(x), src_token, B(xp), rows, D);
}
}  // namespace

void permute_rows(Context& ctx, const bf16* x, const int32_t* src_token, bf16* xp, int rows, int D) {
  if (rows == 0) return;
  switch (gather_rows(D)) {
    case 2: return permute_rows_by<2>(ctx, x, src_token, xp, rows, D);
    case 4: return permute_rows_by<4>(ctx, x, src_token, xp, rows, D);
    case 8: return permute_rows_by<8>(ctx, x, src_token, xp, rows, D);
    default: return permute_rows_by<1>(ctx, x, src_token, xp, rows, D);
  }
}
void unpermute_add(Context& ctx, const bf16* dxp, const int32_t* slot_row, bf16* dx, int N, int a, int D) {
  if (N == 0) return;
  launch_rows(ctx, sum_expert_rows_kernel<8, true>, sum_expert_rows_kernel<1, true>, N, D, aligned16(dxp, dx),
              "unpermute_add", B(dxp), slot_row, B(dx), a, D);
}
void combine_forward(Context& ctx, const bf16* yp, const int32_t* slot_row, bf16* out, int N, int a, int D) {
  if (N == 0) return;
  launch_rows(ctx, sum_expert_rows_kernel<8, false>, sum_expert_rows_kernel<1, false>, N, D, aligned16(yp, out),
              "combine_forward", B(yp), slot_row, B(out), a, D);
}

}  // namespace mue::cuda
