// The MoE FFN branch of a block, written once for both backends:
//   logits = route(x) -> router (scores, top-a, gates, dispatch plan, balance / z losses, statistics; on the
//   device for CUDA, where the plan comes back to the host only when its statistics are asked for)
//   -> permute tokens by expert -> per expert: (g * SwiGLU(x W1_e^T)) W2_e^T, the gate g folded into the activation
//   -> combine: the sum over a token's experts (+ shared experts).
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "core/arena.h"
#include "moe/moe_backend.h"
#include "nn/ffn.h"

namespace mue {

template <class Backend>
class MoeFfn : public FfnBranch<Backend> {
 public:
  using A = typename Backend::act_t;
  using S = typename Backend::stat_t;
  using Param = ModelParam<Backend>;
  // The layer's tensors (push_ffn_tensors); the shared experts' only with ffn.shared > 0.
  struct Params {
    Param *router, *fc, *proj, *shared_fc = nullptr, *shared_proj = nullptr;
  };

  // acts: what the backward reads from the forward; scratch: what lives inside one call (shared by all layers).
  MoeFfn(const FfnConfig& s, int N, int D, Backend& be, Arena& acts, Arena& scratch, const Params& p,
         double route_scale)
      : s_(s), D_(D), be_(be), p_(p) {
    MUE_CHECK(s.shared == 0 || (p.shared_fc && p.shared_proj), "MoeFfn: shared experts without their tensors");
    const size_t E = s.experts, R = size_t(N) * s.active, h = s.expert_hidden;
    dims_.N = N, dims_.E = s.experts, dims_.active = s.active, dims_.groups = s.groups, dims_.sigmoid = s.sigmoid;
    dims_.route_scale = route_scale, dims_.balance_coef = s.balance_coef, dims_.z_coef = s.z_coef;
    logits_ = acts.take<A>(size_t(N) * E), dlogits_ = scratch.take<A>(size_t(N) * E);
    scores_ = acts.take<S>(size_t(N) * E), idx_ = acts.take<int32_t>(R), plan_ = acts.take<int32_t>(dims_.plan_size());
    xp_ = acts.take<A>(R * D), hfc_ = acts.take<A>(R * 2 * h), hsw_ = acts.take<A>(R * h);
    dhfc_ = scratch.take<A>(R * 2 * h), dhsw_ = scratch.take<A>(R * h);
    // One [R, D] buffer for three lives: yp (the forward's expert outputs, summed by the combine at once), dyp (the
    // combine's backward, read by the down-projection's backward) and dxp (written after that).
    yp_ = dyp_ = dxp_ = scratch.take<A>(R * D);
    tmp_ = scratch.take<A>(size_t(N) * D);
    src_token_ = acts.take<int32_t>(R), slot_row_ = acts.take<int32_t>(R);
    gates_ = acts.take<A>(R), dgates_ = scratch.take<A>(R);
    if (s.shared > 0) {
      const size_t Hs = size_t(s.shared) * s.shared_hidden;
      sfc_ = acts.take<A>(size_t(N) * 2 * Hs), ssw_ = acts.take<A>(size_t(N) * Hs);
      dsfc_ = scratch.take<A>(size_t(N) * 2 * Hs), dssw_ = scratch.take<A>(size_t(N) * Hs);
    }
  }

  // out = MoE(xn); the auxiliary loss (balance + z) of this layer is in aux_loss().
  void forward(const A* xn, A* out) override {
    const int N = dims_.N, D = D_, E = s_.experts, a = s_.active, h = s_.expert_hidden, R = N * a;
    Param &router = *p_.router, &fc = *p_.fc, &proj = *p_.proj;
    be_.matmul_forward(xn, router.weight, logits_, N, D, E, router.alpha);
    plan_on_host_ = route_forward(be_, dims_, logits_, scores_, idx_, gates_, src_token_, slot_row_, plan_, offsets_,
                                  stats_);
    const int32_t* off = host_offsets();
    // Experts on their contiguous row blocks.
    permute_rows(be_, xn, src_token_, xp_, R, D);
    expert_matmul_forward(be_, xp_, fc.weight, hfc_, off, plan_, R, E, D, 2 * h, fc.alpha);
    gate_swiglu_forward(be_, hfc_, gates_, slot_row_, hsw_, N, a, h);
    expert_matmul_forward(be_, hsw_, proj.weight, yp_, off, plan_, R, E, h, D, proj.alpha);
    combine_forward(be_, yp_, slot_row_, out, N, a, D);
    if (s_.shared > 0) {
      Param &sfc = *p_.shared_fc, &sproj = *p_.shared_proj;
      const int Hs = s_.shared * s_.shared_hidden;
      be_.matmul_forward(xn, sfc.weight, sfc_, N, D, 2 * Hs, sfc.alpha);
      be_.swiglu_forward(sfc_, ssw_, N, Hs);
      be_.matmul_forward(ssw_, sproj.weight, tmp_, N, Hs, D, sproj.alpha);
      be_.residual_forward(out, out, tmp_, size_t(N) * D);
    }
  }

  // dxn (overwritten) from dout; parameter gradients accumulate (or overwrite a stale one: ModelParam::accumulate).
  void backward(const A* xn, const A* dout, A* dxn) override {
    const int N = dims_.N, D = D_, E = s_.experts, a = s_.active, h = s_.expert_hidden, R = N * a;
    Param &router = *p_.router, &fc = *p_.fc, &proj = *p_.proj;
    const int32_t* off = host_offsets();
    combine_backward(be_, dout, src_token_, dyp_, R, D);
    expert_matmul_backward(be_, dyp_, hsw_, proj.weight, dhsw_, proj.grad, off, plan_, R, E, h, D, proj.alpha,
                           proj.accumulate());
    gate_swiglu_backward(be_, dhsw_, hfc_, gates_, slot_row_, dhfc_, dgates_, N, a, h);
    expert_matmul_backward(be_, dhfc_, xp_, fc.weight, dxp_, fc.grad, off, plan_, R, E, D, 2 * h, fc.alpha,
                           fc.accumulate());
    route_backward(be_, dims_, dgates_, logits_, scores_, idx_, plan_, dlogits_);
    be_.matmul_backward(dlogits_, xn, router.weight, dxn, router.grad, N, D, E, router.alpha, router.accumulate());
    unpermute_add(be_, dxp_, slot_row_, dxn, N, a, D);
    if (s_.shared > 0) {
      Param &sfc = *p_.shared_fc, &sproj = *p_.shared_proj;
      const int Hs = s_.shared * s_.shared_hidden;
      be_.matmul_backward(dout, ssw_, sproj.weight, dssw_, sproj.grad, N, Hs, D, sproj.alpha,
                          sproj.accumulate());
      be_.swiglu_backward(dssw_, sfc_, dsfc_, N, Hs);
      be_.matmul_backward(dsfc_, xn, sfc.weight, tmp_, sfc.grad, N, D, 2 * Hs, sfc.alpha, sfc.accumulate());
      be_.residual_forward(dxn, dxn, tmp_, size_t(N) * D);
    }
  }

  double aux_loss() const override {
    fetch_plan();
    return stats_.balance_loss + stats_.z_loss;
  }
  const BranchStats* stats() const override {
    fetch_plan();
    return &stats_;
  }
  void forget_host_copies() override { plan_on_host_ = false; }

 private:
  FfnConfig s_;
  RouterDims dims_;
  int D_;
  Backend& be_;
  Params p_;
  A *logits_, *dlogits_, *xp_, *hfc_, *hsw_, *yp_, *dxp_, *dhfc_, *dhsw_, *dyp_, *tmp_, *gates_, *dgates_;
  A *sfc_ = nullptr, *ssw_ = nullptr, *dsfc_ = nullptr, *dssw_ = nullptr;
  S* scores_;
  int32_t *idx_, *plan_, *src_token_, *slot_row_;
  // The router's plan on the host: expert offsets (the cuBLAS expert GEMMs' row counts) and statistics, read
  // from the device on first use after each forward.
  const int32_t* host_offsets() const { return plan_on_host_ ? offsets_.data() : nullptr; }  // if already there
  void fetch_plan() const {
    if (!plan_on_host_) read_plan(be_, dims_, plan_, offsets_, stats_);
    plan_on_host_ = true;
  }
  mutable std::vector<int32_t> offsets_;
  mutable BranchStats stats_;
  mutable bool plan_on_host_ = false;
};

// The FFN factory that knows both kinds: pass it to LM to build models with MoE layers.
template <class Backend>
std::unique_ptr<FfnBranch<Backend>> make_ffn(const ModelConfig& c, Backend& be, int layer,
                                             ParamStore<Backend>& params, int rows, Arena& acts, Arena& scratch,
                                             const ParamTable& table) {
  if (!c.ffn.moe()) return make_dense_ffn<Backend>(c, be, layer, params, rows, acts, scratch, table);
  typename MoeFfn<Backend>::Params p{&params.find(layer, "moe.router"), &params.find(layer, "moe.experts.fc"),
                                     &params.find(layer, "moe.experts.proj")};
  if (c.ffn.shared > 0)
    p.shared_fc = &params.find(layer, "moe.shared.fc"), p.shared_proj = &params.find(layer, "moe.shared.proj");
  return std::make_unique<MoeFfn<Backend>>(c.ffn, rows, c.d_model, be, acts, scratch, p, table.route_scale);
}

}  // namespace mue
