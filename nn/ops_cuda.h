// CUDA versions of the nn/ ops. Same semantics as the CPU reference in nn/ops_cpu.h (see there for the math);
// here activations and weights are bf16 (weights: the bf16 shadow of the fp32 master copy), weight gradients
// and norm statistics are fp32, accumulation is fp32. Every call is asynchronous on ctx.stream.
// Conventions shared with the CPU path:
//   * rows N = B*T; a linear weight W is [Out, In] row-major and y = alpha * x W^T;
//   * weight gradients ACCUMULATE (+=); input gradients OVERWRITE, except rmsnorm_backward's dx, which
//     accumulates because it always lands on the residual stream.
#pragma once
#ifdef MUE_HAVE_CUDA
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda_context.h"
#include "core/dtype.h"

namespace mue::cuda {

// out[n, :] = wte[tok[n], :]
void embedding_forward(Context& ctx, const int32_t* tok, const bf16* wte, bf16* out, int N, int D);
// dwte[tok[n], :] += dout[n, :]   (atomic fp32 adds; order-dependent only in rounding)
void embedding_backward(Context& ctx, const int32_t* tok, const bf16* dout, float* dwte, int N, int D);

// y = x / rms(x) * w, rstd[n] = 1/sqrt(mean(x^2) + eps)
void rmsnorm_forward(Context& ctx, const bf16* x, const bf16* w, bf16* y, float* rstd, int N, int D, float eps);
// sum = a + b (bf16, may alias a or b), then y, rstd = rmsnorm(sum): the residual add and the next norm in one
// pass, with the same bits as residual_forward followed by rmsnorm_forward.
void residual_rmsnorm_forward(Context& ctx, bf16* sum, const bf16* a, const bf16* b, const bf16* w, bf16* y,
                              float* rstd, int N, int D, float eps);
// dx += d/dx, dw += d/dw
void rmsnorm_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* w, const float* rstd, bf16* dx,
                      float* dw, int N, int D);

// out[j] += sum over p of part[p, j] (part [parts, cols] fp32), in a fixed order: how the norms' backwards add
// their per-block weight-gradient partials without atomics.
void add_column_sums(Context& ctx, const float* part, float* out, int parts, int cols);

// QK-norm, in place on the q and k parts of qkv [B, T, 3, H, hd]: every head's q (k) RMS-normalized over hd with
// gains w[0, :] (w[1, :]), then rotated by RoPE when rope_theta > 0 (rope_forward fused); the pre-norm q, k saved
// in pre [B*T, 2, H, hd], rstd [B*T, 2H]. hd <= 256.
void qk_norm_forward(Context& ctx, bf16* qkv, const bf16* w, bf16* pre, float* rstd, int B, int T, int H, int hd,
                     float eps, float rope_theta);
// In place on dq, dk of dqkv (d of the normalized q, k in, RoPE already rotated back; d of the pre-norm q, k
// out); dw [2, hd] accumulates.
void qk_norm_backward(Context& ctx, bf16* dqkv, const bf16* pre, const bf16* w, const float* rstd, float* dw, int N,
                      int H, int hd);

// y[N,Out] = alpha * x[N,In] W[Out,In]^T   (cuBLAS, bf16 in, fp32 accumulate)
void matmul_forward(Context& ctx, const bf16* x, const bf16* w, bf16* y, int N, int In, int Out, float alpha);
// dx = alpha * dy W (skipped if dx == nullptr); dw += alpha * dy^T x (accumulate) or dw = alpha * dy^T x
void matmul_backward(Context& ctx, const bf16* dy, const bf16* x, const bf16* w, bf16* dx, float* dw, int N,
                     int In, int Out, float alpha, bool accumulate = true);

// out = a + b (n elements)
void residual_forward(Context& ctx, bf16* out, const bf16* a, const bf16* b, size_t n);

// Rotary position embedding, in place on the q and k parts of qkv [B, T, 3, H, hd] (v untouched).
// Pairs (2i, 2i+1) of each head are rotated by angle t * theta^(-2i/hd).
void rope_forward(Context& ctx, bf16* qkv, int B, int T, int H, int hd, float theta);
// The transpose (inverse) rotation, in place on dq and dk.
void rope_backward(Context& ctx, bf16* dqkv, int B, int T, int H, int hd, float theta);

// Multi-head attention on qkv [B, T, 3, H, hd] (RoPE already applied): out [B, T, H*hd]. scale multiplies q.k.
// Fused flash kernels (nn/flash_attention.cu) for head dims 16/32/64/128: `state` is the log-sum-exp
// [B, H, T] fp32; other head dims fall back to the materialized path, whose state is the bf16 probs
// [B, H, T, T]. attention_state_floats says how many floats the state takes.
bool flash_attention_enabled(int hd);
// Whether head dim hd runs the Hopper (wgmma) kernels: 64 and 128, unless the kernel variant flash_sm90=0
// (core/kernel_variants.h; read at every call).
bool flash_sm90_enabled(int hd);
size_t attention_state_floats(int B, int T, int H, int hd);
void attention_forward(Context& ctx, const bf16* qkv, bf16* out, float* state, int B, int T, int H, int hd,
                       float scale, bool causal);
// dqkv (overwritten) from dout, the saved qkv, the forward's out and its state. rope_theta > 0: qkv was rotated
// by RoPE of that base after the projection, and dq, dk come back rotated back (rope_backward fused: the flash
// kernels rotate as they store).
void attention_backward(Context& ctx, const bf16* dout, const bf16* qkv, const bf16* out, const float* state,
                        bf16* dqkv, int B, int T, int H, int hd, float scale, bool causal, float rope_theta = 0.f);
// The materialized path: probs [B, H, T, T] bf16 (masked entries 0) saved for the backward.
void attention_materialized_forward(Context& ctx, const bf16* qkv, bf16* out, bf16* probs, int B, int T, int H,
                                    int hd, float scale, bool causal);
void attention_materialized_backward(Context& ctx, const bf16* dout, const bf16* qkv, const bf16* probs,
                                     bf16* dqkv, int B, int T, int H, int hd, float scale, bool causal);

// SwiGLU: in [N, 2H] holds (gate | up); out[N, H] = silu(gate) * up.
void swiglu_forward(Context& ctx, const bf16* in, bf16* out, int N, int H);
void swiglu_backward(Context& ctx, const bf16* dout, const bf16* in, bf16* din, int N, int H);

// Softmax cross-entropy over the first V of Vp columns (padding columns ignored).
// losses[n] = logsumexp(logits[n, :V]) - logits[n, target[n]]  (fp32)
void crossentropy_forward(Context& ctx, const bf16* logits, const int32_t* targets, float* losses, int N, int V,
                          int Vp);
// dlogits = dloss * (softmax - onehot) on the first V columns, 0 on padding (dlogits may alias logits);
// `losses` are the forward's, from which each row's logsumexp is recovered.
void crossentropy_backward(Context& ctx, const bf16* logits, const int32_t* targets, const float* losses,
                           bf16* dlogits, int N, int V, int Vp, float dloss);
// Both at once, as training needs them: losses and dlogits (may alias logits), each row read from memory once.
void crossentropy_forward_backward(Context& ctx, const bf16* logits, const int32_t* targets, float* losses,
                                   bf16* dlogits, int N, int V, int Vp, float dloss);

// *out = mean of n per-row losses (double, deterministic): the training step's loss, left on the device.
void loss_mean(Context& ctx, const float* losses, int n, double* out);

}  // namespace mue::cuda
#endif
