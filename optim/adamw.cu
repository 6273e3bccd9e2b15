// Optimizer kernels: the AdamW step over a packed fp32 parameter vector (refreshing its bf16 shadow) and the
// sum of squares used for the global gradient norm.
#include "core/cuda_util.cuh"
#include "optim/adamw_ops.h"

#include <cmath>

namespace mue::cuda {

using namespace detail;

namespace {
// PyTorch AdamW, fp32: m, v updated in place, p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p), shadow = bf16(p).
// c1 = 1 - b1^t, c2 = 1 - b2^t come from the host (computed in double).
// traffic: read 4n fp32 (p, g, m, v), write 3n fp32 + n bf16. adamw_element: the update of element i, shared by
// every AdamW kernel here (the same arithmetic in the same order, so their results agree to the bit).
__device__ __forceinline__ void adamw_update(float& p, float g, float& m, float& v, float lr, float b1, float b2,
                                             float eps, float wd, float c1, float c2, float grad_scale) {
  // Explicitly rounded operations: the compiler may not contract them into FMAs differently where this is
  // inlined (a four-wide loop and a scalar one would otherwise disagree in the last bit).
  const float gi = __fmul_rn(g, grad_scale);
  m = __fadd_rn(__fmul_rn(b1, m), __fmul_rn(1.f - b1, gi));
  v = __fadd_rn(__fmul_rn(b2, v), __fmul_rn(__fmul_rn(1.f - b2, gi), gi));
  const float upd = __fdiv_rn(__fdiv_rn(m, c1), __fadd_rn(sqrtf(__fdiv_rn(v, c2)), eps));
  p = __fsub_rn(p, __fmul_rn(lr, __fadd_rn(upd, __fmul_rn(wd, p))));
}
__device__ __forceinline__ void adamw_element(size_t i, float* p, const float* g, float* m, float* v, bf* p_bf16,
                                              float lr, float b1, float b2, float eps, float wd, float c1, float c2,
                                              float grad_scale) {
  float pi = p[i], mi = m[i], vi = v[i];
  adamw_update(pi, g[i], mi, vi, lr, b1, b2, eps, wd, c1, c2, grad_scale);
  m[i] = mi, v[i] = vi, p[i] = pi;
  if (p_bf16) p_bf16[i] = __float2bfloat16(pi);
}
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, bf* p_bf16, size_t n, float lr, float b1,
                             float b2, float eps, float wd, float c1, float c2, float grad_scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    adamw_element(i, p, g, m, v, p_bf16, lr, b1, b2, eps, wd, c1, c2, grad_scale);
}

// The same over a packed arena of many tensors: each element finds its tensor by a binary search of the segment
// ends (in shared memory, with each tensor's lr computed once per block). traffic: as above, one launch
__device__ void adamw_all_body(float* p, const float* g, float* m, float* v, bf* p_bf16, size_t n,
                               const AdamWSegment* segs, int nseg, double lr_factor, float b1, float b2, float c1,
                               float c2, float grad_scale, bool vec4) {
  extern __shared__ char seg_smem[];
  unsigned long long* end = reinterpret_cast<unsigned long long*>(seg_smem);
  float* hp = reinterpret_cast<float*>(end + nseg);  // lr, wd, eps per tensor
  for (int i = threadIdx.x; i < nseg; i += blockDim.x) {
    const AdamWSegment s = segs[i];
    end[i] = s.end, hp[3 * i] = float(s.lr_base * lr_factor), hp[3 * i + 1] = s.wd, hp[3 * i + 2] = s.eps;
  }
  __syncthreads();
  const auto segment_of = [&](size_t i) {  // the first segment whose end is past i
    int lo = 0, hi = nseg - 1;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (end[mid] > i) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  };
  const auto element = [&](size_t i) {
    const int s = segment_of(i);
    adamw_element(i, p, g, m, v, p_bf16, hp[3 * s], b1, b2, hp[3 * s + 2], hp[3 * s + 1], c1, c2, grad_scale);
  };
  const size_t first = blockIdx.x * size_t(blockDim.x) + threadIdx.x, stride = size_t(gridDim.x) * blockDim.x;
  if (!vec4) {
    for (size_t i = first; i < n; i += stride) element(i);
    return;
  }
  // Four consecutive elements per thread as 16-byte loads and stores (one search; elements of a group that
  // straddles two tensors go one by one). The arithmetic per element is adamw_update's either way.
  for (size_t q = first; q < n / 4; q += stride) {
    const size_t i = 4 * q;
    const int s = segment_of(i);
    if (end[s] < i + 4) {
      for (int k = 0; k < 4; ++k) element(i + k);
      continue;
    }
    const float4 g4 = reinterpret_cast<const float4*>(g)[q];
    float4 p4 = reinterpret_cast<float4*>(p)[q], m4 = reinterpret_cast<float4*>(m)[q],
           v4 = reinterpret_cast<float4*>(v)[q];
    const float lr = hp[3 * s], wd = hp[3 * s + 1], eps = hp[3 * s + 2];
    adamw_update(p4.x, g4.x, m4.x, v4.x, lr, b1, b2, eps, wd, c1, c2, grad_scale);
    adamw_update(p4.y, g4.y, m4.y, v4.y, lr, b1, b2, eps, wd, c1, c2, grad_scale);
    adamw_update(p4.z, g4.z, m4.z, v4.z, lr, b1, b2, eps, wd, c1, c2, grad_scale);
    adamw_update(p4.w, g4.w, m4.w, v4.w, lr, b1, b2, eps, wd, c1, c2, grad_scale);
    reinterpret_cast<float4*>(p)[q] = p4, reinterpret_cast<float4*>(m)[q] = m4, reinterpret_cast<float4*>(v)[q] = v4;
    if (p_bf16) {
      const __nv_bfloat162 lo = __floats2bfloat162_rn(p4.x, p4.y), hi = __floats2bfloat162_rn(p4.z, p4.w);
      uint2 packed;
      packed.x = *reinterpret_cast<const uint32_t*>(&lo), packed.y = *reinterpret_cast<const uint32_t*>(&hi);
      reinterpret_cast<uint2*>(p_bf16)[q] = packed;
    }
  }
  for (size_t i = n / 4 * 4 + first; i < n; i += stride) element(i);
}
__global__ void adamw_all_kernel(float* p, const float* g, float* m, float* v, bf* p_bf16, size_t n,
                                 const AdamWSegment* segs, int nseg, double lr_factor, float b1, float b2, float c1,
                                 float c2, float grad_scale, bool vec4) {
  adamw_all_body(p, g, m, v, p_bf16, n, segs, nseg, lr_factor, b1, b2, c1, c2, grad_scale, vec4);
}
// The same with the step's scalars read on the device (StepInDev) and the clip scale from the squared grad norm
// the step computed (StepOut): no value comes from the host, so the launch can be replayed in a CUDA graph. A
// non-finite grad norm leaves every parameter untouched (the step is marked diverged).
__global__ void adamw_all_dev_kernel(float* p, const float* g, float* m, float* v, bf* p_bf16, size_t n,
                                     const AdamWSegment* segs, int nseg, const StepInDev* in, const StepOut* out,
                                     bool vec4) {
  const double nsq = out->norm_sq;
  if (!isfinite(nsq)) return;
  const double norm = sqrt(nsq);
  const float scale = float(in->clip > 0 && norm > in->clip ? in->clip / norm : 1.0);
  adamw_all_body(p, g, m, v, p_bf16, n, segs, nseg, in->lr_factor, in->beta1, in->beta2, in->c1, in->c2, scale,
                 vec4);
}

// This block's sum of g[i]^2 in double over its grid-stride slice (each thread sums its own, then the block).
// A 16-byte-aligned g is read four floats a load (scalar loads keep too few bytes in flight), the tail of n % 4
// after them.
__device__ double block_sum_squares(const float* g, size_t n) {
  double s = 0.0;
  const size_t first = blockIdx.x * size_t(blockDim.x) + threadIdx.x, stride = size_t(gridDim.x) * blockDim.x;
  size_t done = 0;
  if ((reinterpret_cast<uintptr_t>(g) & 15) == 0) {
    const float4* g4 = reinterpret_cast<const float4*>(g);
    for (size_t i = first; i < n / 4; i += stride) {
      const float4 x = g4[i];
      s += double(x.x) * x.x + double(x.y) * x.y + double(x.z) * x.z + double(x.w) * x.w;
    }
    done = n / 4 * 4;
  }
  for (size_t i = done + first; i < n; i += stride) {
    const double x = g[i];
    s += x * x;
  }
  return block_reduce(s, SumOp{}, 0.0);
}
// Deterministic sum of squares in double: each block writes its partial (fixed grid for a given n), one block
// adds the partials in a fixed order. traffic: read n fp32
__global__ void sum_squares_part_kernel(const float* g, size_t n, double* part) {
  const double s = block_sum_squares(g, n);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}
__global__ void sum_parts_kernel(const double* part, int parts, double* out) {
  double s = 0.0;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) s += part[i];
  s = block_reduce(s, SumOp{}, 0.0);
  if (threadIdx.x == 0) *out = s;
}
// Records the step as the first diverged one (same test as mue::step_diverged).
__global__ void track_divergence_kernel(const StepInDev* in, StepOut* out) {
  const double loss = out->loss, nsq = out->norm_sq;
  const bool bad = !isfinite(loss) || !isfinite(nsq) || loss > in->loss_bound;
  if (bad && out->first_bad < 0) out->first_bad = in->step, out->bad_loss = loss;
}

// The all-tensor kernels' 16-byte path: fp32 arrays 16-byte aligned, the bf16 shadow (if any) 8-byte aligned.
bool adamw_vec4_ok(const float* p, const float* g, const float* m, const float* v, const bf16* p_bf16) {
  return aligned16(p, g, m, v) && reinterpret_cast<uintptr_t>(p_bf16) % 8 == 0;
}
}  // namespace

void adamw_step(Context& ctx, float* p, const float* g, float* m, float* v, bf16* p_bf16, size_t n, float lr,
                float beta1, float beta2, float eps, float wd, int t, float grad_scale) {
  if (n == 0) return;
  MUE_CHECK(t >= 1, "adamw_step: step t = ", t, " (must start at 1)");
  const float c1 = float(1.0 - std::pow(double(beta1), t)), c2 = float(1.0 - std::pow(double(beta2), t));
  adamw_kernel<<<grid_for(n, 256), 256, 0, ctx.stream>>>(p, g, m, v, B(p_bf16), n, lr, beta1, beta2, eps, wd, c1,
                                                          c2, grad_scale);
  check_launch("adamw_kernel");
}

void adamw_step_all(Context& ctx, float* p, const float* g, float* m, float* v, bf16* p_bf16, size_t n,
                    const AdamWSegment* segs, int nseg, double lr_factor, float beta1, float beta2, int t,
                    float grad_scale) {
  if (n == 0 || nseg == 0) return;
  MUE_CHECK(t >= 1, "adamw_step_all: step t = ", t, " (must start at 1)");
  const float c1 = float(1.0 - std::pow(double(beta1), t)), c2 = float(1.0 - std::pow(double(beta2), t));
  const size_t smem = size_t(nseg) * (sizeof(unsigned long long) + 3 * sizeof(float));
  if (smem > 48 * 1024) allow_smem(reinterpret_cast<const void*>(adamw_all_kernel), smem, "adamw_all_kernel");
  adamw_all_kernel<<<grid_for(n, 256), 256, smem, ctx.stream>>>(p, g, m, v, B(p_bf16), n, segs, nseg, lr_factor,
                                                                  beta1, beta2, c1, c2, grad_scale,
                                                                  adamw_vec4_ok(p, g, m, v, p_bf16));
  check_launch("adamw_all_kernel");
}

void sum_squares_to(Context& ctx, const float* g, size_t n, double* out) {
  const unsigned parts = n == 0 ? 1u : grid_for(n, 256, 1024);
  double* part = static_cast<double*>(ctx.scratch(5, sizeof(double) * parts));
  if (n == 0) {
    check(cudaMemsetAsync(out, 0, sizeof(double), ctx.stream), "cudaMemsetAsync");
    return;
  }
  sum_squares_part_kernel<<<parts, 256, 0, ctx.stream>>>(g, n, part);
  check_launch("sum_squares_part_kernel");
  sum_parts_kernel<<<1, 1024, 0, ctx.stream>>>(part, int(parts), out);
  check_launch("sum_parts_kernel");
}

void track_divergence(Context& ctx, const StepInDev* in, StepOut* out) {
  track_divergence_kernel<<<1, 1, 0, ctx.stream>>>(in, out);
  check_launch("track_divergence_kernel");
}

void adamw_step_all_dev(Context& ctx, float* p, const float* g, float* m, float* v, bf16* p_bf16, size_t n,
                        const AdamWSegment* segs, int nseg, const StepInDev* in, const StepOut* out) {
  if (n == 0 || nseg == 0) return;
  const size_t smem = size_t(nseg) * (sizeof(unsigned long long) + 3 * sizeof(float));
  if (smem > 48 * 1024) allow_smem(reinterpret_cast<const void*>(adamw_all_dev_kernel), smem, "adamw_all_dev_kernel");
  adamw_all_dev_kernel<<<grid_for(n, 256), 256, smem, ctx.stream>>>(p, g, m, v, B(p_bf16), n, segs, nseg, in, out,
                                                                      adamw_vec4_ok(p, g, m, v, p_bf16));
  check_launch("adamw_all_dev_kernel");
}

}  // namespace mue::cuda
