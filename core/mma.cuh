// Warp-level tensor-core building blocks shared by the hand-written CUDA kernels (flash attention, grouped
// expert GEMMs): cp.async copies, ldmatrix loads and the PTX mma.sync.m16n8k16 bf16 -> fp32 product.
//
// Fragment layout (lane l, g = l / 4, q = l % 4): of a 16 x 8 fp32 accumulator c[4], c[0], c[1] are row g,
// columns 2q, 2q + 1 and c[2], c[3] row g + 8; of a 16 x 16 A operand (4 x bf16x2) the same rows and columns,
// a[2], a[3] at columns + 8; of a 16 x 8 B operand (2 x bf16x2) b0 holds rows (k) 2q, 2q + 1 of column g, b1
// rows + 8. Only included by .cu files.
#pragma once
#include "core/cuda_util.cuh"

namespace mue::cuda::detail {

// 16-byte asynchronous global -> shared copy; zero-fills the destination when !valid (src must still be a
// mapped address). Completes at cp_async_wait.
__device__ inline void cp_async16(void* smem_dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(unsigned(__cvta_generic_to_shared(smem_dst))),
               "l"(src), "r"(valid ? 16 : 0));
}
// 4-byte asynchronous copy (no alignment beyond 4 bytes needed), zero-filled when !valid.
__device__ inline void cp_async4(void* smem_dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(unsigned(__cvta_generic_to_shared(smem_dst))),
               "l"(src), "r"(valid ? 4 : 0));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ inline void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
__device__ inline uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }
__device__ inline void ldsm_x4(uint32_t (&r)[4], const bf* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ inline void ldsm_x4_trans(uint32_t (&r)[4], const bf* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
__device__ inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ inline uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace mue::cuda::detail
