// Expert GEMMs of the MoE layer on contiguous row blocks (tokens already permuted by expert). Each expert is
// its own group of one GEMM in cublasGemmGroupedBatchedEx (the row counts differ); the pointer arrays are
// built on the host from the host-side offsets and written to the device by a kernel that takes them as
// launch parameters (stream-ordered, no sync). Traffic per expert: its rows of x
// and y, and its weight, once. Layout conventions as in nn/matmul.cu (row-major seen as column-major).
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "core/cuda_util.cuh"
#include "moe/moe_cuda.h"

namespace mue::cuda {

using namespace detail;

bool grouped_gemm_enabled() {
  const char* v = std::getenv("MUE_GROUPED_GEMM");
  return !(v && v[0] == '0');
}

namespace {
// Up to kSize groups' pointers, passed by value as a kernel parameter (3 KiB, under the 4 KiB limit).
struct PointerChunk {
  static constexpr int kSize = 128;
  const void *a[kSize], *b[kSize];
  void* c[kSize];
  int first, count, groups;
};
__global__ void write_pointers_kernel(PointerChunk c, void** dev) {
  const int i = threadIdx.x;
  if (i >= c.count) return;
  dev[c.first + i] = const_cast<void*>(c.a[i]);
  dev[c.groups + c.first + i] = const_cast<void*>(c.b[i]);
  dev[2 * c.groups + c.first + i] = c.c[i];
}

// Non-empty experts' GEMMs C_e = alpha op(A_e) op(B_e) + beta C_e in one grouped call (or a loop).
struct Groups {
  std::vector<cublasOperation_t> ta, tb;
  std::vector<int> m, n, k, lda, ldb, ldc, size;
  std::vector<float> alpha, beta;
  std::vector<const void*> A, B;
  std::vector<void*> C;
  void add(cublasOperation_t a, cublasOperation_t b, int m_, int n_, int k_, const void* A_, int lda_, const void* B_,
           int ldb_, void* C_, int ldc_, float al, float be) {
    ta.push_back(a), tb.push_back(b), m.push_back(m_), n.push_back(n_), k.push_back(k_);
    A.push_back(A_), lda.push_back(lda_), B.push_back(B_), ldb.push_back(ldb_), C.push_back(C_), ldc.push_back(ldc_);
    alpha.push_back(al), beta.push_back(be), size.push_back(1);
  }
  void run(Context& ctx, cudaDataType_t ctype, const char* what) {
    const int G = int(m.size());
    if (G == 0) return;
    if (grouped_gemm_enabled()) {
      // Device copies of the pointer arrays (A, B, C back to back) in scratch slot 7, written by kernels that
      // take them as launch parameters: stream-ordered, no host sync, nothing on the host to keep alive.
      void** dev = static_cast<void**>(ctx.scratch(7, sizeof(void*) * 3 * G));
      for (int g0 = 0; g0 < G; g0 += PointerChunk::kSize) {
        PointerChunk c{};
        c.first = g0, c.count = std::min(PointerChunk::kSize, G - g0), c.groups = G;
        for (int i = 0; i < c.count; ++i) c.a[i] = A[g0 + i], c.b[i] = B[g0 + i], c.c[i] = C[g0 + i];
        write_pointers_kernel<<<1, PointerChunk::kSize, 0, ctx.stream>>>(c, dev);
        check_launch("write_pointers_kernel");
      }
      cublasStatus_t s = cublasGemmGroupedBatchedEx(
          ctx.cublas, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
          reinterpret_cast<const void* const*>(dev), CUDA_R_16BF, lda.data(),
          reinterpret_cast<const void* const*>(dev + G), CUDA_R_16BF, ldb.data(), beta.data(), dev + 2 * G, ctype,
          ldc.data(), G, size.data(), CUBLAS_COMPUTE_32F);
      if (s == CUBLAS_STATUS_SUCCESS) return;
      if (s != CUBLAS_STATUS_NOT_SUPPORTED) check_cublas(s, "cublasGemmGroupedBatchedEx(", what, ")");
    }
    for (int g = 0; g < G; ++g)
      check_cublas(cublasGemmEx(ctx.cublas, ta[g], tb[g], m[g], n[g], k[g], &alpha[g], A[g], CUDA_R_16BF, lda[g], B[g],
                                CUDA_R_16BF, ldb[g], &beta[g], C[g], ctype, ldc[g], CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx(", what, ")");
  }
};
}  // namespace

void expert_matmul_forward(Context& ctx, const bf16* x, const bf16* w, bf16* y, const int32_t* off, int E, int In,
                           int Out, float alpha) {
  Groups g;
  for (int e = 0; e < E; ++e)
    if (const int n = off[e + 1] - off[e])
      g.add(CUBLAS_OP_T, CUBLAS_OP_N, Out, n, In, w + size_t(e) * Out * In, In, x + size_t(off[e]) * In, In,
            y + size_t(off[e]) * Out, Out, alpha, 0.f);
  g.run(ctx, CUDA_R_16BF, "expert forward");
}

void expert_matmul_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* w, bf16* dx, float* dw,
                            const int32_t* off, int E, int In, int Out, float alpha) {
  Groups gdx, gdw;
  for (int e = 0; e < E; ++e)
    if (const int n = off[e + 1] - off[e]) {
      gdx.add(CUBLAS_OP_N, CUBLAS_OP_N, In, n, Out, w + size_t(e) * Out * In, In, dy + size_t(off[e]) * Out, Out,
              dx + size_t(off[e]) * In, In, alpha, 0.f);
      gdw.add(CUBLAS_OP_N, CUBLAS_OP_T, In, Out, n, x + size_t(off[e]) * In, In, dy + size_t(off[e]) * Out, Out,
              dw + size_t(e) * Out * In, In, alpha, 1.f);
    }
  gdx.run(ctx, CUDA_R_16BF, "expert backward dx");
  gdw.run(ctx, CUDA_R_32F, "expert backward dw");
}

}  // namespace mue::cuda
