// Linear layer y = alpha * x W^T through cuBLAS (bf16 operands, fp32 accumulation).
// cuBLAS is column-major: a row-major [R, C] matrix is, as stored, the column-major [C, R] matrix (its
// transpose, leading dimension C). So with x [N,In], W [Out,In], y [N,Out] all row-major:
//   forward   y^T  (Out x N)  = W  x^T        -> A = W  stored In x Out, op T;  B = x  stored In x N, op N
//   dx        dx^T (In x N)   = W^T dy^T      -> A = W  stored In x Out, op N;  B = dy stored Out x N, op N
//   dw        dw^T (In x Out) = x^T dy        -> A = x  stored In x N,   op N;  B = dy stored Out x N, op T
// Traffic (each GEMM): reads both operands once (more when tiles re-read from L2), writes the output once.
#include "core/cuda_util.cuh"
#include "nn/ops/matmul.h"

namespace mue::cuda {

using namespace detail;

void matmul_forward(Context& ctx, const bf16* x, const bf16* w, bf16* y, int N, int In, int Out, float alpha) {
  if (N <= 0 || Out <= 0) return;
  const float beta = 0.f;
  check_cublas(cublasGemmEx(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, Out, N, In, &alpha, w, CUDA_R_16BF, In, x,
                            CUDA_R_16BF, In, &beta, y, CUDA_R_16BF, Out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx(matmul_forward N=", N, " In=", In, " Out=", Out, ")");
}

void matmul_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* w, bf16* dx, float* dw, int N,
                     int In, int Out, float alpha, bool accumulate) {
  if (In <= 0 || Out <= 0) return;
  if (N <= 0 && !accumulate && dw) memset_zero(ctx, dw, sizeof(float) * size_t(In) * Out);
  if (dx && N > 0) {
    const float beta = 0.f;
    check_cublas(cublasGemmEx(ctx.cublas, CUBLAS_OP_N, CUBLAS_OP_N, In, N, Out, &alpha, w, CUDA_R_16BF, In, dy,
                              CUDA_R_16BF, Out, &beta, dx, CUDA_R_16BF, In, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx(matmul_backward dx N=", N, " In=", In, " Out=", Out, ")");
  }
  if (dw && N > 0) {
    const float beta = accumulate ? 1.f : 0.f;
    check_cublas(cublasGemmEx(ctx.cublas, CUBLAS_OP_N, CUBLAS_OP_T, In, Out, N, &alpha, x, CUDA_R_16BF, In, dy,
                              CUDA_R_16BF, Out, &beta, dw, CUDA_R_32F, In, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx(matmul_backward dw N=", N, " In=", In, " Out=", Out, ")");
  }
}

}  // namespace mue::cuda
