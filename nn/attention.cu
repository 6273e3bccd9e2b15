// Multi-head attention, the straightforward materialized version (the fallback of nn/flash_attention.cu for
// head dims it does not cover): scores and probabilities for every (b, h)
// are full [T, T] matrices. q, k, v are first permuted out of qkv [B, T, 3, H, hd] into [B, H, T, hd] scratch
// so that each (b, h) is one contiguous [T, hd] matrix, and the products are strided-batched cuBLAS GEMMs
// (bf16 operands, fp32 accumulation) with batch B*H.
//
// Scratch slots of ctx (grow-only, reused across calls):
//   0: q, k, v   [B, H, T, hd] bf16 each
//   1: scores S (forward) / dP (backward)   [B, H, T, T] fp32
//   2: o (forward) / do, dq, dk, dv (backward)   [B, H, T, hd] bf16 each
//   3: dS (backward)   [B, H, T, T] bf16
//
// Column-major view (see nn/matmul.cu): a row-major [T, hd] matrix M is stored as the column-major M^T (hd x T,
// ld hd); a row-major [T, T] matrix P is stored as P^T (T x T, ld T). With that:
//   S  = Q K^T   ->  S^T  = K Q^T    : A = K op T (lda hd), B = Q op N (ldb hd), m = n = T, k = hd
//   O  = P V     ->  O^T  = V^T P^T  : A = V op N (lda hd), B = P op N (ldb T),  m = hd, n = k = T
//   dP = dO V^T  ->  dP^T = V dO^T   : A = V op T,          B = dO op N,          m = n = T, k = hd
//   dQ = dS K    ->  like O = P V with (dS, K)
//   dK = dS^T Q  ->  dK^T = Q^T dS   : A = Q op N (lda hd), B = dS op T (ldb T), m = hd, n = k = T
//   dV = P^T dO  ->  like dK with (P, dO)
#include "core/cuda_util.cuh"
#include "nn/ops/attention.h"

namespace mue::cuda {

using namespace detail;

namespace {
// q/k/v[b, h, t, :] = qkv[b, t, part, h, :] for part 0, 1, 2   traffic: read 3*B*T*D, write 3*B*T*D bf16
__global__ void permute_qkv_kernel(const bf* qkv, bf* q, bf* k, bf* v, int T, int H, int hd, size_t total) {
  const size_t D = size_t(H) * hd;
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total;
       idx += size_t(gridDim.x) * blockDim.x) {
    // idx enumerates the destination [B, H, T, hd]
    const int i = int(idx % hd);
    const int t = int((idx / hd) % T);
    const int h = int((idx / (size_t(hd) * T)) % H);
    const size_t b = idx / (size_t(hd) * T * H);
    const bf* src = qkv + (b * T + t) * 3 * D + size_t(h) * hd + i;
    q[idx] = src[0];
    k[idx] = src[D];
    v[idx] = src[2 * D];
  }
}

// out[b, t, h, :] = x[b, h, t, :]   traffic: read B*T*D, write B*T*D bf16
__global__ void unpermute_kernel(const bf* x, bf* out, int T, int H, int hd, size_t total) {
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total;
       idx += size_t(gridDim.x) * blockDim.x) {
    const int i = int(idx % hd);
    const int t = int((idx / hd) % T);
    const int h = int((idx / (size_t(hd) * T)) % H);
    const size_t b = idx / (size_t(hd) * T * H);
    out[((b * T + t) * H + h) * hd + i] = x[idx];
  }
}

// The dout of [B, T, H, hd] into [B, H, T, hd]   traffic: read B*T*D, write B*T*D bf16
__global__ void permute_kernel(const bf* x, bf* out, int T, int H, int hd, size_t total) {
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total;
       idx += size_t(gridDim.x) * blockDim.x) {
    const int i = int(idx % hd);
    const int t = int((idx / hd) % T);
    const int h = int((idx / (size_t(hd) * T)) % H);
    const size_t b = idx / (size_t(hd) * T * H);
    out[idx] = x[((b * T + t) * H + h) * hd + i];
  }
}

// dq/dk/dv [B, H, T, hd] back into dqkv [B, T, 3, H, hd] (every element written)
// traffic: read 3*B*T*D, write 3*B*T*D bf16
__global__ void unpermute_qkv_kernel(const bf* dq, const bf* dk, const bf* dv, bf* dqkv, int T, int H, int hd,
                                     size_t total) {
  const size_t D = size_t(H) * hd;
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total;
       idx += size_t(gridDim.x) * blockDim.x) {
    const int i = int(idx % hd);
    const int t = int((idx / hd) % T);
    const int h = int((idx / (size_t(hd) * T)) % H);
    const size_t b = idx / (size_t(hd) * T * H);
    bf* dst = dqkv + (b * T + t) * 3 * D + size_t(h) * hd + i;
    dst[0] = dq[idx];
    dst[D] = dk[idx];
    dst[2 * D] = dv[idx];
  }
}

// One warp per row r = (b, h, t) of the fp32 scores: P[r, s] = softmax over s (s <= t when causal) of S[r, s]
// (scale already applied by the GEMM), masked entries written as 0; fp32 math, bf16 probs.
// traffic: read B*H*T*T fp32 (twice, the second time from cache), write B*H*T*T bf16
__global__ void softmax_forward_kernel(const float* S, bf* P, int T, size_t rows, bool causal) {
  const size_t r = blockIdx.x * size_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;  // whole warps leave together
  const int t = int(r % T);
  const int smax = causal ? t : T - 1;
  const float* srow = S + r * T;
  bf* prow = P + r * T;
  // online max / sum per lane, then merged across the warp
  float m = -INFINITY, sum = 0.f;
  for (int s = lane; s <= smax; s += 32) {
    const float x = srow[s];
    if (x > m) {
      sum *= expf(m - x);
      m = x;
    }
    sum += expf(x - m);
  }
  const float M = warp_reduce(m, MaxOp{});
  sum = (m == -INFINITY) ? 0.f : sum * expf(m - M);
  sum = warp_reduce(sum, SumOp{});
  const float inv = 1.f / sum;
  for (int s = lane; s < T; s += 32) prow[s] = __float2bfloat16(s <= smax ? expf(srow[s] - M) * inv : 0.f);
}

// One warp per row r = (b, h, t): dS[r, s] = scale * P[r, s] * (dP[r, s] - sum_s' P[r, s'] dP[r, s']).
// Masked entries have P = 0 and get dS = 0.
// traffic: read B*H*T*T (fp32 dP + bf16 P, twice), write B*H*T*T bf16
__global__ void softmax_backward_kernel(const float* dP, const bf* P, bf* dS, int T, size_t rows, float scale) {
  const size_t r = blockIdx.x * size_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float* dprow = dP + r * T;
  const bf* prow = P + r * T;
  bf* dsrow = dS + r * T;
  float pdp = 0.f;
  for (int s = lane; s < T; s += 32) pdp += __bfloat162float(prow[s]) * dprow[s];
  pdp = warp_reduce(pdp, SumOp{});
  for (int s = lane; s < T; s += 32)
    dsrow[s] = __float2bfloat16(scale * __bfloat162float(prow[s]) * (dprow[s] - pdp));
}

// Strided-batched GEMM over the B*H (b, h) slices: C = alpha * op(A) op(B), bf16 A/B, fp32 accumulation.
void gemm_batched(Context& ctx, const char* what, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                  float alpha, const void* A, int lda, long long sa, const void* Bm, int ldb, long long sb, void* C,
                  cudaDataType_t ctype, int ldc, long long sc, int batch) {
  const float beta = 0.f;
  check_cublas(cublasGemmStridedBatchedEx(ctx.cublas, ta, tb, m, n, k, &alpha, A, CUDA_R_16BF, lda, sa, Bm,
                                          CUDA_R_16BF, ldb, sb, &beta, C, ctype, ldc, sc, batch, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT),
               "cublasGemmStridedBatchedEx(", what, " m=", m, " n=", n, " k=", k, " batch=", batch, ")");
}

constexpr int kThreads = 256;
unsigned rows_grid(size_t rows) { return unsigned((rows + kThreads / 32 - 1) / (kThreads / 32)); }
}  // namespace

void attention_materialized_forward(Context& ctx, const bf16* qkv, bf16* out, bf16* probs, int B, int T, int H,
                                    int hd, float scale, bool causal) {
  if (B <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
  const size_t n = size_t(B) * H * T * hd, rows = size_t(B) * H * T, tt = size_t(T) * T;
  const int batch = B * H;
  bf* q = static_cast<bf*>(ctx.scratch(0, 3 * n * sizeof(bf)));
  bf* k = q + n;
  bf* v = k + n;
  float* S = static_cast<float*>(ctx.scratch(1, rows * T * sizeof(float)));
  bf* o = static_cast<bf*>(ctx.scratch(2, n * sizeof(bf)));

  permute_qkv_kernel<<<grid_for(n, kThreads), kThreads, 0, ctx.stream>>>(detail::B(qkv), q, k, v, T, H, hd, n);
  check_launch("permute_qkv_kernel");
  // S = scale * Q K^T
  gemm_batched(ctx, "attention scores", CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, scale, k, hd, (long long)T * hd, q, hd,
               (long long)T * hd, S, CUDA_R_32F, T, (long long)tt, batch);
  softmax_forward_kernel<<<rows_grid(rows), kThreads, 0, ctx.stream>>>(S, detail::B(probs), T, rows, causal);
  check_launch("softmax_forward_kernel");
  // O = P V
  gemm_batched(ctx, "attention P.V", CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, 1.f, v, hd, (long long)T * hd, probs, T,
               (long long)tt, o, CUDA_R_16BF, hd, (long long)T * hd, batch);
  unpermute_kernel<<<grid_for(n, kThreads), kThreads, 0, ctx.stream>>>(o, detail::B(out), T, H, hd, n);
  check_launch("unpermute_kernel");
}

void attention_materialized_backward(Context& ctx, const bf16* dout, const bf16* qkv, const bf16* probs, bf16* dqkv,
                                     int B, int T, int H, int hd, float scale, bool causal) {
  (void)causal;  // masked entries of probs are 0, so dS is 0 there without looking at the mask
  if (B <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
  const size_t n = size_t(B) * H * T * hd, rows = size_t(B) * H * T, tt = size_t(T) * T;
  const int batch = B * H;
  const long long sm = (long long)T * hd;
  bf* q = static_cast<bf*>(ctx.scratch(0, 3 * n * sizeof(bf)));
  bf* k = q + n;
  bf* v = k + n;
  float* dP = static_cast<float*>(ctx.scratch(1, rows * T * sizeof(float)));
  bf* dO = static_cast<bf*>(ctx.scratch(2, 4 * n * sizeof(bf)));
  bf* dq = dO + n;
  bf* dk = dq + n;
  bf* dv = dk + n;
  bf* dS = static_cast<bf*>(ctx.scratch(3, rows * T * sizeof(bf)));
  const bf* P = detail::B(probs);

  permute_qkv_kernel<<<grid_for(n, kThreads), kThreads, 0, ctx.stream>>>(detail::B(qkv), q, k, v, T, H, hd, n);
  check_launch("permute_qkv_kernel");
  permute_kernel<<<grid_for(n, kThreads), kThreads, 0, ctx.stream>>>(detail::B(dout), dO, T, H, hd, n);
  check_launch("permute_kernel");
  // dP = dO V^T
  gemm_batched(ctx, "attention dP", CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, 1.f, v, hd, sm, dO, hd, sm, dP, CUDA_R_32F,
               T, (long long)tt, batch);
  softmax_backward_kernel<<<rows_grid(rows), kThreads, 0, ctx.stream>>>(dP, P, dS, T, rows, scale);
  check_launch("softmax_backward_kernel");
  // dQ = dS K ; dK = dS^T Q ; dV = P^T dO
  gemm_batched(ctx, "attention dQ", CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, 1.f, k, hd, sm, dS, T, (long long)tt, dq,
               CUDA_R_16BF, hd, sm, batch);
  gemm_batched(ctx, "attention dK", CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.f, q, hd, sm, dS, T, (long long)tt, dk,
               CUDA_R_16BF, hd, sm, batch);
  gemm_batched(ctx, "attention dV", CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.f, dO, hd, sm, P, T, (long long)tt, dv,
               CUDA_R_16BF, hd, sm, batch);
  unpermute_qkv_kernel<<<grid_for(n, kThreads), kThreads, 0, ctx.stream>>>(dq, dk, dv, detail::B(dqkv), T, H, hd, n);
  check_launch("unpermute_qkv_kernel");
}

}  // namespace mue::cuda
