// The MoE FFN branch of a block, written once for both backends:
//   logits = route(x) -> host router (scores, top-a, gates, balance / z losses, statistics)
//   -> permute tokens by expert -> per expert: SwiGLU(x W1_e^T) W2_e^T * c -> combine with gates (+ shared experts).
// The router's small [N, E] arithmetic runs on the host in double on every backend (v1: one device<->host copy
// of [N, E] per layer and step on CUDA; the fused router kernel without host sync is issue 6).
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "core/arena.h"
#include "moe/moe_backend.h"
#include "nn/lm.h"

namespace mue {

template <class Backend>
class MoeFfn : public FfnBranch<Backend> {
 public:
  using A = typename Backend::act_t;
  using Param = LMParam<Backend>;

  // Params in order: router, experts.fc, experts.proj, [shared.fc, shared.proj]
  MoeFfn(const FfnConfig& s, int N, int D, Backend& be, Arena& acts, Param* router, double route_scale)
      : s_(s), N_(N), D_(D), be_(be), router_(router), r_(route_scale) {
    const size_t E = s.experts, R = size_t(N) * s.active, h = s.expert_hidden;
    logits_ = acts.take<A>(size_t(N) * E), dlogits_ = acts.take<A>(size_t(N) * E);
    xp_ = acts.take<A>(R * D), hfc_ = acts.take<A>(R * 2 * h), hsw_ = acts.take<A>(R * h), yp_ = acts.take<A>(R * D);
    dxp_ = acts.take<A>(R * D), dhfc_ = acts.take<A>(R * 2 * h), dhsw_ = acts.take<A>(R * h), dyp_ = acts.take<A>(R * D);
    tmp_ = acts.take<A>(size_t(N) * D);
    src_token_ = acts.take<int32_t>(R), slot_row_ = acts.take<int32_t>(R);
    gates_dev_ = acts.take<A>(R), dgates_dev_ = acts.take<A>(R);
    if (s.shared > 0) {
      const size_t Hs = size_t(s.shared) * s.shared_hidden;
      sfc_ = acts.take<A>(size_t(N) * 2 * Hs), ssw_ = acts.take<A>(size_t(N) * Hs);
      dsfc_ = acts.take<A>(size_t(N) * 2 * Hs), dssw_ = acts.take<A>(size_t(N) * Hs);
    }
  }

  // out = MoE(xn); also returns the auxiliary loss (balance + z) of this layer.
  double forward(const A* xn, A* out) override {
    const int N = N_, D = D_, E = s_.experts, a = s_.active, h = s_.expert_hidden, R = N * a;
    Param &router = router_[0], &fc = router_[1], &proj = router_[2];
    be_.matmul_forward(xn, router.weight, logits_, N, D, E, router.alpha);
    // Host router in double.
    be_.to_host(h_logits_, logits_, size_t(N) * E);
    h_scores_.resize(size_t(N) * E), h_idx_.resize(R), h_gates_.resize(R), offsets_.resize(E + 1);
    std::vector<int32_t> src(R), slot(R);
    cpu::router_forward(h_logits_.data(), h_scores_.data(), h_idx_.data(), h_gates_.data(), N, E, a, s_.groups,
                        s_.sigmoid, r_);
    cpu::dispatch_plan(h_idx_.data(), N, a, E, offsets_.data(), src.data(), slot.data());
    stats_.load.assign(E, 0.0);
    stats_.balance_loss = cpu::balance_loss<double>(h_scores_.data(), h_idx_.data(), N, E, a, s_.balance_coef,
                                                    nullptr, stats_.load.data());
    stats_.z_loss = s_.z_coef > 0 ? cpu::z_loss<double>(h_logits_.data(), N, E, s_.z_coef, nullptr) : 0.0;
    double ent = 0, ss = 0;
    for (double p : h_scores_) ent -= p > 0 ? p * std::log(p) : 0.0;
    for (double l : h_logits_) ss += l * l;
    stats_.entropy = ent / N;
    stats_.logits_rms = std::sqrt(ss / double(h_logits_.size()));
    be_.upload(src_token_, src.data(), sizeof(int32_t) * R);
    be_.upload(slot_row_, slot.data(), sizeof(int32_t) * R);
    be_.from_host(gates_dev_, h_gates_);
    // Experts on their contiguous row blocks.
    permute_rows(be_, xn, src_token_, xp_, R, D);
    expert_matmul_forward(be_, xp_, fc.weight, hfc_, offsets_.data(), E, D, 2 * h, fc.alpha);
    be_.swiglu_forward(hfc_, hsw_, R, h);
    expert_matmul_forward(be_, hsw_, proj.weight, yp_, offsets_.data(), E, h, D, proj.alpha);
    combine_forward(be_, yp_, slot_row_, gates_dev_, out, N, a, D);
    if (s_.shared > 0) {
      Param &sfc = router_[3], &sproj = router_[4];
      const int Hs = s_.shared * s_.shared_hidden;
      be_.matmul_forward(xn, sfc.weight, sfc_, N, D, 2 * Hs, sfc.alpha);
      be_.swiglu_forward(sfc_, ssw_, N, Hs);
      be_.matmul_forward(ssw_, sproj.weight, tmp_, N, Hs, D, sproj.alpha);
      be_.residual_forward(out, out, tmp_, size_t(N) * D);
    }
    return stats_.balance_loss + stats_.z_loss;
  }

  // dxn (overwritten) from dout; parameter gradients accumulate.
  void backward(const A* xn, const A* dout, A* dxn) override {
    const int N = N_, D = D_, E = s_.experts, a = s_.active, h = s_.expert_hidden, R = N * a;
    Param &router = router_[0], &fc = router_[1], &proj = router_[2];
    combine_backward(be_, dout, yp_, slot_row_, gates_dev_, dyp_, dgates_dev_, N, a, D);
    expert_matmul_backward(be_, dyp_, hsw_, proj.weight, dhsw_, proj.grad, offsets_.data(), E, h, D, proj.alpha);
    be_.swiglu_backward(dhsw_, hfc_, dhfc_, R, h);
    expert_matmul_backward(be_, dhfc_, xp_, fc.weight, dxp_, fc.grad, offsets_.data(), E, D, 2 * h, fc.alpha);
    // Router: gate gradients + aux-loss gradients -> dlogits (host, double) -> router matmul.
    std::vector<double> dgates, dscores(size_t(N) * E), dlz;
    be_.to_host(dgates, dgates_dev_, R);
    cpu::balance_loss<double>(h_scores_.data(), h_idx_.data(), N, E, a, s_.balance_coef, dscores.data(), nullptr);
    if (s_.z_coef > 0) dlz.resize(size_t(N) * E), cpu::z_loss<double>(h_logits_.data(), N, E, s_.z_coef, dlz.data());
    std::vector<double> dl(size_t(N) * E);
    cpu::router_backward<double>(dgates.data(), dscores.data(), dlz.empty() ? nullptr : dlz.data(), h_scores_.data(),
                                 h_idx_.data(), dl.data(), N, E, a, s_.sigmoid, r_);
    be_.from_host(dlogits_, dl);
    be_.matmul_backward(dlogits_, xn, router.weight, dxn, router.grad, N, D, E, router.alpha);
    unpermute_add(be_, dxp_, slot_row_, dxn, N, a, D);
    if (s_.shared > 0) {
      Param &sfc = router_[3], &sproj = router_[4];
      const int Hs = s_.shared * s_.shared_hidden;
      be_.matmul_backward(dout, ssw_, sproj.weight, dssw_, sproj.grad, N, Hs, D, sproj.alpha);
      be_.swiglu_backward(dssw_, sfc_, dsfc_, N, Hs);
      be_.matmul_backward(dsfc_, xn, sfc.weight, tmp_, sfc.grad, N, D, 2 * Hs, sfc.alpha);
      be_.residual_forward(dxn, dxn, tmp_, size_t(N) * D);
    }
  }

  const BranchStats* stats() const override { return &stats_; }

 private:
  FfnConfig s_;
  int N_, D_;
  Backend& be_;
  Param* router_;
  double r_;
  A *logits_, *dlogits_, *xp_, *hfc_, *hsw_, *yp_, *dxp_, *dhfc_, *dhsw_, *dyp_, *tmp_, *gates_dev_, *dgates_dev_;
  A *sfc_ = nullptr, *ssw_ = nullptr, *dsfc_ = nullptr, *dssw_ = nullptr;
  int32_t *src_token_, *slot_row_;
  std::vector<double> h_logits_, h_scores_, h_gates_;
  std::vector<int32_t> h_idx_, offsets_;
  BranchStats stats_;
};

// The FFN factory that knows both kinds: pass it to LM to build models with MoE layers.
template <class Backend>
std::unique_ptr<FfnBranch<Backend>> make_ffn(const ModelConfig& c, Backend& be, int layer, LMParam<Backend>* p,
                                             int rows, Arena& acts, const ParamTable& table) {
  if (!c.ffn.moe()) return make_dense_ffn<Backend>(c, be, layer, p, rows, acts, table);
  return std::make_unique<MoeFfn<Backend>>(c.ffn, rows, c.d_model, be, acts, p, table.route_scale);
}

}  // namespace mue
