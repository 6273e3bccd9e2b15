// The MoE data-movement ops for each backend, as overloads on the backend type (nn/backend.h knows nothing of
// MoE; this layer adds to it).
#pragma once
#include <cmath>
#include <cstring>
#include <vector>

#include "moe/moe_cpu.h"
#include "moe/router_dims.h"
#include "nn/ffn.h"
#include "nn/backend.h"
#ifdef MUE_HAVE_CUDA
#include "moe/moe_cuda.h"
#endif

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

template <class T>
void permute_rows(CpuBackend<T>&, const T* x, const int32_t* src, T* xp, int rows, int D) { cpu::permute_rows(x, src, xp, rows, D); }
template <class T>
void unpermute_add(CpuBackend<T>&, const T* dxp, const int32_t* slot, T* dx, int N, int a, int D) { cpu::unpermute_add(dxp, slot, dx, N, a, D); }
template <class T>
void combine_forward(CpuBackend<T>&, const T* yp, const int32_t* slot, T* out, int N, int a, int D) { cpu::combine_forward(yp, slot, out, N, a, D); }
// The combine's backward: dyp[r] = dout[src_token[r]] (the gates' part is in gate_swiglu_backward).
template <class T>
void combine_backward(CpuBackend<T>&, const T* dout, const int32_t* src, T* dyp, int rows, int D) { cpu::permute_rows(dout, src, dyp, rows, D); }
template <class T>
void gate_swiglu_forward(CpuBackend<T>&, const T* hfc, const T* g, const int32_t* slot, T* hsw, int N, int a, int h) { cpu::gate_swiglu_forward(hfc, g, slot, hsw, N, a, h); }
template <class T>
void gate_swiglu_backward(CpuBackend<T>&, const T* dhsw, const T* hfc, const T* g, const int32_t* slot, T* dhfc, T* dg, int N, int a, int h) { cpu::gate_swiglu_backward(dhsw, hfc, g, slot, dhfc, dg, N, a, h); }

// off: the expert offsets on the host, or null where only the device has them; plan: the router's plan in
// backend memory (offsets first), which the CUDA kernels read instead.
template <class T>
void expert_matmul_forward(CpuBackend<T>&, const T* x, const T* w, T* y, const int32_t* off, const int32_t*, int, int E, int In, int Out, double a) { cpu::expert_matmul_forward(x, w, y, off, E, In, Out, a); }
template <class T>
void expert_matmul_backward(CpuBackend<T>&, const T* dy, const T* x, const T* w, T* dx, T* dw, const int32_t* off, const int32_t*, int, int E, int In, int Out, double a, bool accumulate = true) { cpu::expert_matmul_backward(dy, x, w, dx, dw, off, E, In, Out, a, accumulate); }

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
inline void expert_matmul_forward(CudaBackend& be, const bf16* x, const bf16* w, bf16* y, const int32_t* off, const int32_t* plan, int rows, int E, int In, int Out, double a) { auto op_ = be.ctx.op("expert_matmul_forward"); cuda::expert_matmul_forward(be.ctx, x, w, y, off, plan, rows, E, In, Out, float(a)); }
inline void expert_matmul_backward(CudaBackend& be, const bf16* dy, const bf16* x, const bf16* w, bf16* dx, float* dw, const int32_t* off, const int32_t* plan, int rows, int E, int In, int Out, double a, bool accumulate = true) { auto op_ = be.ctx.op("expert_matmul_backward"); cuda::expert_matmul_backward(be.ctx, dy, x, w, dx, dw, off, plan, rows, E, In, Out, float(a), accumulate); }
inline void permute_rows(CudaBackend& be, const bf16* x, const int32_t* src, bf16* xp, int rows, int D) { auto op_ = be.ctx.op("permute_rows"); cuda::permute_rows(be.ctx, x, src, xp, rows, D); }
inline void unpermute_add(CudaBackend& be, const bf16* dxp, const int32_t* slot, bf16* dx, int N, int a, int D) { auto op_ = be.ctx.op("unpermute_add"); cuda::unpermute_add(be.ctx, dxp, slot, dx, N, a, D); }
inline void combine_forward(CudaBackend& be, const bf16* yp, const int32_t* slot, bf16* out, int N, int a, int D) { auto op_ = be.ctx.op("combine_forward"); cuda::combine_forward(be.ctx, yp, slot, out, N, a, D); }
inline void combine_backward(CudaBackend& be, const bf16* dout, const int32_t* src, bf16* dyp, int rows, int D) { auto op_ = be.ctx.op("combine_backward"); cuda::permute_rows(be.ctx, dout, src, dyp, rows, D); }
inline void gate_swiglu_forward(CudaBackend& be, const bf16* hfc, const bf16* g, const int32_t* slot, bf16* hsw, int N, int a, int h) { auto op_ = be.ctx.op("gate_swiglu_forward"); cuda::gate_swiglu_forward(be.ctx, hfc, g, slot, hsw, N, a, h); }
inline void gate_swiglu_backward(CudaBackend& be, const bf16* dhsw, const bf16* hfc, const bf16* g, const int32_t* slot, bf16* dhfc, bf16* dg, int N, int a, int h) { auto op_ = be.ctx.op("gate_swiglu_backward"); cuda::gate_swiglu_backward(be.ctx, dhsw, hfc, g, slot, dhfc, dg, N, a, h); }
#endif

}  // namespace mue
