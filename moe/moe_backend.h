// The MoE data-movement ops for each backend, as overloads on the backend type (nn/backend.h knows nothing of
// MoE; this layer adds to it).
#pragma once
#include "moe/moe_cpu.h"
#include "nn/backend.h"
#ifdef MUE_HAVE_CUDA
#include "moe/moe_cuda.h"
#endif

namespace mue {

template <class T>
void permute_rows(CpuBackend<T>&, const T* x, const int32_t* src, T* xp, int rows, int D) { cpu::permute_rows(x, src, xp, rows, D); }
template <class T>
void unpermute_add(CpuBackend<T>&, const T* dxp, const int32_t* slot, T* dx, int N, int a, int D) { cpu::unpermute_add(dxp, slot, dx, N, a, D); }
template <class T>
void combine_forward(CpuBackend<T>&, const T* yp, const int32_t* slot, const T* g, T* out, int N, int a, int D) { cpu::combine_forward(yp, slot, g, out, N, a, D); }
template <class T>
void combine_backward(CpuBackend<T>&, const T* dout, const T* yp, const int32_t* slot, const T* g, T* dyp, T* dg, int N, int a, int D) { cpu::combine_backward(dout, yp, slot, g, dyp, dg, N, a, D); }

template <class T>
void expert_matmul_forward(CpuBackend<T>&, const T* x, const T* w, T* y, const int32_t* off, int E, int In, int Out, double a) { cpu::expert_matmul_forward(x, w, y, off, E, In, Out, a); }
template <class T>
void expert_matmul_backward(CpuBackend<T>&, const T* dy, const T* x, const T* w, T* dx, T* dw, const int32_t* off, int E, int In, int Out, double a) { cpu::expert_matmul_backward(dy, x, w, dx, dw, off, E, In, Out, a); }

#ifdef MUE_HAVE_CUDA
inline void expert_matmul_forward(CudaBackend& be, const bf16* x, const bf16* w, bf16* y, const int32_t* off, int E, int In, int Out, double a) { cuda::expert_matmul_forward(be.ctx, x, w, y, off, E, In, Out, float(a)); }
inline void expert_matmul_backward(CudaBackend& be, const bf16* dy, const bf16* x, const bf16* w, bf16* dx, float* dw, const int32_t* off, int E, int In, int Out, double a) { cuda::expert_matmul_backward(be.ctx, dy, x, w, dx, dw, off, E, In, Out, float(a)); }
inline void permute_rows(CudaBackend& be, const bf16* x, const int32_t* src, bf16* xp, int rows, int D) { cuda::permute_rows(be.ctx, x, src, xp, rows, D); }
inline void unpermute_add(CudaBackend& be, const bf16* dxp, const int32_t* slot, bf16* dx, int N, int a, int D) { cuda::unpermute_add(be.ctx, dxp, slot, dx, N, a, D); }
inline void combine_forward(CudaBackend& be, const bf16* yp, const int32_t* slot, const bf16* g, bf16* out, int N, int a, int D) { cuda::combine_forward(be.ctx, yp, slot, g, out, N, a, D); }
inline void combine_backward(CudaBackend& be, const bf16* dout, const bf16* yp, const int32_t* slot, const bf16* g, bf16* dyp, bf16* dg, int N, int a, int D) { cuda::combine_backward(be.ctx, dout, yp, slot, g, dyp, dg, N, a, D); }
#endif

}  // namespace mue
