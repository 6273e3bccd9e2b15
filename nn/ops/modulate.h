// adaLN modulation of the DiT: an RMSNorm without weight, then a per-sample scale and shift. CPU reference;
// CUDA launchers (kernels: nn/modulate.cu).
#pragma once
#include <cmath>
#include <cstddef>

#include "core/cuda_context.h"  // empty without CUDA

namespace mue::cpu {

// adaLN modulation: y[b,t] = rmsnorm(x[b,t]) * (1 + scale[b]) + shift[b]   (no learned norm weight)
// mod [B, M*D] holds the per-sample chunks; shift and scale are chunks `ishift`, `iscale` of width D.
template <class T>
void modulate_forward(const T* x, const T* mod, T* y, T* rstd, int B, int Tn, int D, int M, int ishift, int iscale,
                      double eps) {
  for (int b = 0; b < B; ++b) {
    const T *sh = mod + size_t(b) * M * D + size_t(ishift) * D, *sc = mod + size_t(b) * M * D + size_t(iscale) * D;
    for (int t = 0; t < Tn; ++t) {
      const size_t row = size_t(b) * Tn + t;
      const T* xr = x + row * D;
      T ss = 0;
      for (int i = 0; i < D; ++i) ss += xr[i] * xr[i];
      const T r = T(1) / std::sqrt(ss / T(D) + T(eps));
      rstd[row] = r;
      for (int i = 0; i < D; ++i) y[row * D + i] = xr[i] * r * (T(1) + sc[i]) + sh[i];
    }
  }
}
// dx += (rmsnorm backward of dy*(1+scale)); dmod[shift] += sum_t dy; dmod[scale] += sum_t dy * xhat
template <class T>
void modulate_backward(const T* dy, const T* x, const T* mod, const T* rstd, T* dx, T* dmod, int B, int Tn, int D,
                       int M, int ishift, int iscale) {
  for (int b = 0; b < B; ++b) {
    const T* sc = mod + size_t(b) * M * D + size_t(iscale) * D;
    T *dsh = dmod + size_t(b) * M * D + size_t(ishift) * D, *dsc = dmod + size_t(b) * M * D + size_t(iscale) * D;
    for (int t = 0; t < Tn; ++t) {
      const size_t row = size_t(b) * Tn + t;
      const T *xr = x + row * D, *g = dy + row * D;
      const T r = rstd[row];
      T dot = 0;
      for (int i = 0; i < D; ++i) dot += g[i] * (T(1) + sc[i]) * xr[i] * r;
      dot /= T(D);
      for (int i = 0; i < D; ++i) {
        const T xhat = xr[i] * r;
        dsh[i] += g[i];
        dsc[i] += g[i] * xhat;
        dx[row * D + i] += r * (g[i] * (T(1) + sc[i]) - xhat * dot);
      }
    }
  }
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// y[b,t] = rmsnorm(x[b,t]) * (1 + mod[b, iscale]) + mod[b, ishift]; mod is [B, M*D]; rstd [B*Tn] fp32.
void modulate_forward(Context& ctx, const bf16* x, const bf16* mod, bf16* y, float* rstd, int B, int Tn, int D, int M,
                      int ishift, int iscale, float eps);
// dx += ..., dmod[b, ishift] += sum_t dy, dmod[b, iscale] += sum_t dy * xhat   (both accumulate)
void modulate_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* mod, const float* rstd, bf16* dx,
                       bf16* dmod, int B, int Tn, int D, int M, int ishift, int iscale);

}  // namespace mue::cuda
#endif
