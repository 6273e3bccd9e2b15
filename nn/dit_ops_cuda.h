// CUDA versions of the diffusion-transformer ops of nn/dit_ops_cpu.h (same semantics; bf16 activations,
// fp32 statistics and accumulation). Asynchronous on ctx.stream.
#pragma once
#ifdef MUE_HAVE_CUDA
#include <cstddef>
#include <cstdint>

#include "nn/ops_cuda.h"

namespace mue::cuda {

void silu_forward(Context& ctx, const bf16* x, bf16* y, size_t n);
void silu_backward(Context& ctx, const bf16* dy, const bf16* x, bf16* dx, size_t n);  // dx overwritten

// y[b,t] = rmsnorm(x[b,t]) * (1 + mod[b, iscale]) + mod[b, ishift]; mod is [B, M*D]; rstd [B*Tn] fp32.
void modulate_forward(Context& ctx, const bf16* x, const bf16* mod, bf16* y, float* rstd, int B, int Tn, int D, int M,
                      int ishift, int iscale, float eps);
// dx += ..., dmod[b, ishift] += sum_t dy, dmod[b, iscale] += sum_t dy * xhat   (both accumulate)
void modulate_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* mod, const float* rstd, bf16* dx,
                       bf16* dmod, int B, int Tn, int D, int M, int ishift, int iscale);

// out[b,t] = x[b,t] + mod[b, igate] * y[b,t]   (out may alias x)
void gated_residual_forward(Context& ctx, bf16* out, const bf16* x, const bf16* y, const bf16* mod, int B, int Tn,
                            int D, int M, int igate);
// dy = mod[b, igate] * dout (overwrite); dmod[b, igate] += sum_t dout * y (accumulate)
void gated_residual_backward(Context& ctx, const bf16* dout, const bf16* y, const bf16* mod, bf16* dy, bf16* dmod,
                             int B, int Tn, int D, int M, int igate);

// x[b,t,:] += v[t,:]
void add_rows(Context& ctx, bf16* x, const bf16* v, int B, int Tn, int D);

// *out += sum (pred - target)^2 (fp32 device scalar); dpred = 2 (pred - target) / n
// out->loss = mean squared error over n (double, one block: deterministic).
void mse_mean(Context& ctx, const bf16* pred, const bf16* target, size_t n, double* out);
void mse_sum(Context& ctx, const bf16* pred, const bf16* target, size_t n, float* out);
void mse_backward(Context& ctx, const bf16* pred, const bf16* target, bf16* dpred, size_t n);

}  // namespace mue::cuda
#endif
