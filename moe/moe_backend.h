// The MoE layer's ops for each backend, as overloads on the backend type (nn/backend.h knows nothing of MoE;
// this layer adds to it). Each op's home is moe/ops/<op>.h (CPU reference and CUDA launcher side by side); the
// ones that forward one to one are listed once in MUE_MOE_OPS; the router, whose CPU and CUDA sides split the work
// differently (the CPU computes the plan and statistics at once, CUDA leaves them on the device), is written out.
#pragma once
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "moe/ops/dispatch.h"
#include "moe/ops/expert_matmul.h"
#include "moe/ops/gate_swiglu.h"
#include "moe/ops/router.h"
#include "nn/backend.h"
#include "nn/ffn.h"

// op(CpuBackend<T>&, args...) runs cpu::op<T>(args...); op(CudaBackend&, args...) runs cuda::op(ctx, args...)
// under the profiler label "op". The expert GEMMs take the expert offsets twice: on the host (`off`, or null where
// only the device has them) and in backend memory (the router's plan, offsets first), which the CUDA kernels read.
#define MUE_MOE_OPS(X)                                                                              \
  X(permute_rows) X(unpermute_add) X(combine_forward) X(combine_backward)                           \
  X(gate_swiglu_forward) X(gate_swiglu_backward) X(expert_matmul_forward) X(expert_matmul_backward)

#define MUE_CPU_FORWARD_FREE(name)             \
  template <class T, class... Args>            \
  void name(CpuBackend<T>&, Args&&... args) {  \
    cpu::name<T>(std::forward<Args>(args)...); \
  }
#define MUE_CUDA_FORWARD_FREE(name)                  \
  template <class... Args>                           \
  void name(CudaBackend& be, Args&&... args) {       \
    auto op_ = be.ctx.op(#name);                     \
    cuda::name(be.ctx, std::forward<Args>(args)...); \
  }

namespace mue {

// Router forward: scores, top-a idx, gates, the dispatch rows (src_token, slot_row), the per-layer plan (in
// backend memory: offsets then statistics) and, on the CPU, the offsets on the host and the statistics. Returns
// whether those host copies are filled (true on the CPU; on CUDA read_plan fills them when asked).
template <class T>
bool route_forward(CpuBackend<T>&, const RouterDims& d, const T* logits, T* scores, int32_t* idx, T* gates,
                   int32_t* src_token, int32_t* slot_row, int32_t* plan, std::vector<int32_t>& offsets,
                   BranchStats& st) {
  const int N = d.N, E = d.E, a = d.active;
  cpu::router_forward(logits, scores, idx, gates, N, E, a, d.groups, d.sigmoid, d.route_scale);
  offsets.resize(E + 1);
  cpu::dispatch_plan(idx, N, a, E, offsets.data(), src_token, slot_row);
  std::copy(offsets.begin(), offsets.end(), plan);
  st.load.assign(E, 0.0);
  st.balance_loss = cpu::balance_loss<T>(scores, idx, N, E, a, d.balance_coef, nullptr, st.load.data());
  st.z_loss = d.z_coef > 0 ? cpu::z_loss<T>(logits, N, E, d.z_coef, nullptr) : 0.0;
  double ent = 0, ss = 0;
  for (size_t i = 0; i < size_t(N) * E; ++i) {
    const double p = double(scores[i]), l = double(logits[i]);
    ent -= p > 0 ? p * std::log(p) : 0.0, ss += l * l;
  }
  st.entropy = ent / N, st.logits_rms = std::sqrt(ss / (double(N) * E));
  st.route_margin = INFINITY;
  const int per_group = E / d.groups, take = a / d.groups;
  std::vector<char> chosen(E);
  for (int n = 0; n < N; ++n) {
    const T* l = logits + size_t(n) * E;
    std::fill(chosen.begin(), chosen.end(), 0);
    for (int k = 0; k < a; ++k) chosen[idx[size_t(n) * a + k]] = 1;
    for (int g = 0; g < d.groups && take < per_group; ++g) {
      double lo = INFINITY, hi = -INFINITY;
      for (int e = g * per_group; e < (g + 1) * per_group; ++e)
        chosen[e] ? lo = std::min(lo, double(l[e])) : hi = std::max(hi, double(l[e]));
      st.route_margin = std::min(st.route_margin, lo - hi);
    }
  }
  return true;
}
// dlogits (overwritten) from the gate gradients, the balance loss and the z loss.
template <class T>
void route_backward(CpuBackend<T>&, const RouterDims& d, const T* dgates, const T* logits, const T* scores,
                    const int32_t* idx, const int32_t*, T* dlogits) {
  const int N = d.N, E = d.E, a = d.active;
  std::vector<T> dscores(size_t(N) * E), dlz;
  cpu::balance_loss<T>(scores, idx, N, E, a, d.balance_coef, dscores.data(), nullptr);
  if (d.z_coef > 0) dlz.resize(size_t(N) * E), cpu::z_loss<T>(logits, N, E, d.z_coef, dlz.data());
  cpu::router_backward<T>(dgates, dscores.data(), dlz.empty() ? nullptr : dlz.data(), scores, idx, dlogits, N, E, a,
                          d.sigmoid, d.route_scale);
}

// The CPU router fills the host offsets and statistics in route_forward itself.
template <class T>
void read_plan(CpuBackend<T>&, const RouterDims&, const int32_t*, std::vector<int32_t>&, BranchStats&) {}

MUE_MOE_OPS(MUE_CPU_FORWARD_FREE)

#ifdef MUE_HAVE_CUDA
// The router runs on the device and leaves its plan (E+1 offsets and 4 statistics) there: the expert GEMM
// kernels read the offsets on the device, and read_plan brings the plan to the host only when asked (for the
// statistics and the auxiliary loss's value, after the step's loss has come back). The cuBLAS fallback of the
// expert GEMMs (widths not multiples of 8) reads the offsets it needs itself.
inline bool route_forward(CudaBackend& be, const RouterDims& d, const bf16* logits, float* scores, int32_t* idx,
                          bf16* gates, int32_t* src_token, int32_t* slot_row, int32_t* plan, std::vector<int32_t>&,
                          BranchStats&) {
  auto op_ = be.ctx.op("route_forward");
  cuda::router_forward(be.ctx, d, logits, scores, idx, gates, src_token, slot_row, plan);
  return false;
}
inline void read_plan(CudaBackend& be, const RouterDims& d, const int32_t* plan, std::vector<int32_t>& offsets,
                      BranchStats& st) {
  std::vector<int32_t> h(d.plan_size());
  be.download(h.data(), plan, sizeof(int32_t) * h.size());
  offsets.assign(h.begin(), h.begin() + d.E + 1);
  const double R = double(d.N) * d.active;
  st.load.resize(d.E);
  for (int e = 0; e < d.E; ++e) st.load[e] = (offsets[e + 1] - offsets[e]) / R;
  const auto stat = [&](int i) { float f; std::memcpy(&f, &h[d.E + 1 + i], sizeof f); return double(f); };
  st.balance_loss = stat(0), st.z_loss = stat(1), st.entropy = stat(2), st.logits_rms = stat(3);
}
inline void route_backward(CudaBackend& be, const RouterDims& d, const bf16* dgates, const bf16* logits,
                           const float* scores, const int32_t* idx, const int32_t* plan, bf16* dlogits) {
  auto op_ = be.ctx.op("route_backward");
  cuda::router_backward(be.ctx, d, dgates, logits, scores, idx, plan, dlogits);
}
MUE_MOE_OPS(MUE_CUDA_FORWARD_FREE)
#endif

}  // namespace mue
