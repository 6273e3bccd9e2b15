// The FFN branch of a block, y = FFN(xn), for both models (LM, DiT): its tensors, the interface, the dense SwiGLU,
// and the factory type through which a model builds each layer's branch (moe/moe_layer.h's make_ffn adds MoE).
#pragma once
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "nn/model_config.h"
#include "nn/param_store.h"
#include "nn/param_table.h"

namespace mue {

// Layer l's FFN tensors, appended to a model's tensor list (after the layer's own).
inline void push_ffn_tensors(std::vector<TensorSpec>& t, const ModelConfig& c, int l) {
  const std::string p = layer_tensor_name(l, "");
  const int D = c.d_model, H = c.ffn_hidden;
  if (!c.ffn.moe()) {
    t.push_back({p + "ffn.fc", "ffn.fc", 2 * H, D, TensorRole::hidden});  // gate rows, then up rows
    t.push_back({p + "ffn.proj", "ffn.proj", D, H, TensorRole::hidden, true});
    return;
  }
  const FfnConfig& f = c.ffn;
  const int h = f.expert_hidden, E = f.experts;
  // Experts stacked: expert e's fc rows [e*2h, (e+1)*2h), proj rows [e*D, (e+1)*D).
  t.push_back({p + "moe.router", "moe.router", E, D, TensorRole::router});
  t.push_back({p + "moe.experts.fc", "moe.experts.fc", E * 2 * h, D, TensorRole::hidden});
  t.push_back({p + "moe.experts.proj", "moe.experts.proj", E * D, h, TensorRole::hidden, true});
  if (f.shared > 0) {
    const int Hs = f.shared * f.shared_hidden;
    t.push_back({p + "moe.shared.fc", "moe.shared.fc", 2 * Hs, D, TensorRole::hidden});
    t.push_back({p + "moe.shared.proj", "moe.shared.proj", D, Hs, TensorRole::hidden, true});
  }
}

// Statistics a branch may report after its forward (MoE routers do).
struct BranchStats {
  std::vector<double> load;  // fraction of assignments per expert
  double entropy = 0, balance_loss = 0, z_loss = 0;
  double logits_rms = 0;  // RMS of the router logits
  // Smallest gap, over tokens and groups, between the lowest chosen and the highest unchosen logit (CPU router
  // only; NaN elsewhere): how close the routing is to a tie, for tests that need the same choice on two backends.
  double route_margin = NAN;
};

// The FFN branch of a block: y = FFN(xn). Dense here; the MoE layer (moe/) implements the same interface.
template <class Backend>
struct FfnBranch {
  using A = typename Backend::act_t;
  virtual ~FfnBranch() = default;
  virtual void forward(const A* xn, A* out) = 0;
  virtual void backward(const A* xn, const A* dout, A* dxn) = 0;  // dxn overwritten; param grads as ModelParam says
  // The auxiliary loss and statistics of the last forward. They may wait for the device, so the models ask for
  // them only after the step's own loss has come back (no host sync inside the forward).
  virtual double aux_loss() const { return 0; }
  virtual const BranchStats* stats() const { return nullptr; }
  // A forward ran without this object's host code (a replayed CUDA graph): drop host copies of its results.
  virtual void forget_host_copies() {}
};

// out = SwiGLU(xn fc^T) proj^T, fc = [gate rows; up rows] [2H, D], proj [D, H].
template <class Backend>
class DenseFfn : public FfnBranch<Backend> {
 public:
  using A = typename Backend::act_t;
  using Param = ModelParam<Backend>;
  // acts: what the backward reads from the forward; scratch: what lives inside one backward call.
  DenseFfn(Backend& be, Param& fc, Param& proj, int N, int D, int H, Arena& acts, Arena& scratch)
      : be_(be), fc_w_(fc), proj_w_(proj), N_(N), D_(D), H_(H) {
    fc_ = acts.take<A>(size_t(N) * 2 * H), sw_ = acts.take<A>(size_t(N) * H);
    dfc_ = scratch.take<A>(size_t(N) * 2 * H), dsw_ = scratch.take<A>(size_t(N) * H);
  }
  void forward(const A* xn, A* out) override {
    be_.matmul_forward(xn, fc_w_.weight, fc_, N_, D_, 2 * H_, fc_w_.alpha);
    be_.swiglu_forward(fc_, sw_, N_, H_);
    be_.matmul_forward(sw_, proj_w_.weight, out, N_, H_, D_, proj_w_.alpha);
  }
  void backward(const A* xn, const A* dout, A* dxn) override {
    be_.matmul_backward(dout, sw_, proj_w_.weight, dsw_, proj_w_.grad, N_, H_, D_, proj_w_.alpha,
                        proj_w_.accumulate());
    be_.swiglu_backward(dsw_, fc_, dfc_, N_, H_);
    be_.matmul_backward(dfc_, xn, fc_w_.weight, dxn, fc_w_.grad, N_, D_, 2 * H_, fc_w_.alpha, fc_w_.accumulate());
  }

 private:
  Backend& be_;
  Param &fc_w_, &proj_w_;
  int N_, D_, H_;
  A *fc_, *sw_, *dfc_, *dsw_;
};

// Builds layer l's FFN branch from the model's parameters (its tensors as push_ffn_tensors names them), the
// activation arena (buffers kept from the forward for the backward) and the scratch arena, which every layer's
// branch shares (buffers that live only inside one call of forward or backward: the model rewinds it per layer).
template <class Backend>
using FfnFactory = std::function<std::unique_ptr<FfnBranch<Backend>>(const ModelConfig&, Backend&, int layer,
                                                                     ParamStore<Backend>& params, int rows, Arena& acts,
                                                                     Arena& scratch, const ParamTable& table)>;

template <class Backend>
std::unique_ptr<FfnBranch<Backend>> make_dense_ffn(const ModelConfig& c, Backend& be, int layer,
                                                   ParamStore<Backend>& params, int rows, Arena& acts,
                                                   Arena& scratch, const ParamTable&) {
  MUE_CHECK(!c.ffn.moe(), "this model was built without the MoE layer (link moe/ and pass its factory)");
  return std::make_unique<DenseFfn<Backend>>(be, params.find(layer, "ffn.fc"), params.find(layer, "ffn.proj"), rows,
                                             c.d_model, c.ffn_hidden, acts, scratch);
}

}  // namespace mue
