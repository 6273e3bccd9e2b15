// The optimizer's ops, each with its CPU reference and its CUDA launcher (optim/adamw.cu): the AdamW update of a
// packed parameter vector (refreshing its bf16 shadow on CUDA), the sum of squares of the global gradient norm,
// and the step scalars' divergence check.
#pragma once
#include <cmath>
#include <cstddef>

#include "optim/step_scalars.h"
#ifdef MUE_HAVE_CUDA
#include "core/cuda_context.h"
#include "core/dtype.h"
#endif

namespace mue::cpu {

// ---- AdamW (PyTorch convention, decoupled weight decay scaled by lr) ----
template <class T>
void adamw_step(T* p, const T* g, T* m, T* v, size_t n, double lr, double b1, double b2, double eps, double wd,
                int t, double grad_scale) {
  const double c1 = 1.0 - std::pow(b1, t), c2 = 1.0 - std::pow(b2, t);
#pragma omp parallel for schedule(static) if (n > (size_t(1) << 16))  // elementwise: the same result on any thread count
  for (size_t i = 0; i < n; ++i) {
    double gi = double(g[i]) * grad_scale;
    m[i] = T(b1 * m[i] + (1 - b1) * gi);
    v[i] = T(b2 * v[i] + (1 - b2) * gi * gi);
    double upd = (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
    p[i] = T(p[i] - lr * (upd + wd * p[i]));
  }
}

template <class T>
double sum_squares(const T* g, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(g[i]) * double(g[i]);
  return s;
}

}  // namespace mue::cpu

#ifdef MUE_HAVE_CUDA
namespace mue::cuda {

// One AdamW step (PyTorch convention): g' = g*grad_scale; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
// p -= lr * ( (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps) + wd * p ); p_bf16 = bf16(p).
void adamw_step(Context& ctx, float* p, const float* g, float* m, float* v, bf16* p_bf16, size_t n, float lr,
                float beta1, float beta2, float eps, float wd, int t, float grad_scale);

// The same over packed arenas of n elements in one launch: elements [segs[i-1].end, segs[i].end) are tensor i,
// with lr = float(lr_base * lr_factor) (rounded as the per-tensor call rounds it), wd, eps. segs is on the device.
struct AdamWSegment {
  unsigned long long end;
  double lr_base;
  float wd, eps;
};
void adamw_step_all(Context& ctx, float* p, const float* g, float* m, float* v, bf16* p_bf16, size_t n,
                    const AdamWSegment* segs, int nseg, double lr_factor, float beta1, float beta2, int t,
                    float grad_scale);

// The step's scalars as the device reads them (from mue::StepIn: the bias corrections computed on the host in
// double, as adamw_step_all computes them); mue::StepOut is written by the kernels below.
struct StepInDev {
  double lr_factor, clip, loss_bound;
  float beta1, beta2, c1, c2;
  int step;
};
// *out = sum of squares of n fp32 values, in double, deterministic (two passes, partials in scratch slot 5).
void sum_squares_to(Context& ctx, const float* g, size_t n, double* out);
// out->first_bad = in->step (and bad_loss) if the step diverged and none did before (mue::step_diverged).
void track_divergence(Context& ctx, const StepInDev* in, StepOut* out);
// adamw_step_all with lr factor, betas, bias corrections from *in and the clip scale from out->norm_sq;
// nothing is updated when the norm is not finite.
void adamw_step_all_dev(Context& ctx, float* p, const float* g, float* m, float* v, bf16* p_bf16, size_t n,
                        const AdamWSegment* segs, int nseg, const StepInDev* in, const StepOut* out);

}  // namespace mue::cuda
#endif
