// The diffusion transformer for rectified-flow training (DiT-style), written once for both backends:
//   x_t [B,C,S,S] -> patchify -> linear patch embedding + fixed 2-D sin-cos positions -> L blocks -> final
//   adaLN + linear -> v_hat (per patch). Conditioning c = MLP(sinusoidal(t)) + class embedding (index `classes`
//   is the null class used for classifier-free guidance). Each block, adaLN-Zero:
//     (shift1, scale1, gate1, shift2, scale2, gate2) = SiLU(c) W_ada^T        (W_ada zero-initialised)
//     x += gate1 * Attn(rmsnorm(x) * (1 + scale1) + shift1)                   (bidirectional, no RoPE)
//     x += gate2 * FFN(rmsnorm(x) * (1 + scale2) + shift2)                    (dense SwiGLU or MoE)
// Loss: mean ||v_hat - v||^2 with v = eps - x_0, compared in patch space (patchify is a permutation).
// No biases anywhere (the LM has none either). Multipliers and inits come from the ParamTable.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "nn/backend.h"
#include "nn/ops/patchify.h"
#include "nn/ops/sincos.h"
#include "nn/ffn.h"
#include "nn/model_config.h"
#include "nn/param_store.h"

namespace mue {

// The DiT's tensors in arena order. Roles: the patch embedding and the class embedding are input layers
// (embedding), the timestep MLP, attention, adaLN and FFN matrices are hidden, the final linear is the head.
// adaLN-Zero: the modulation weights and the final linear start at zero, so every block starts as the identity.
inline std::vector<TensorSpec> dit_tensors(const ModelConfig& c) {
  const int D = c.d_model, P = c.image.patch_dim();
  const char* zero = "adaLN-Zero";
  std::vector<TensorSpec> t;
  t.push_back({"patch.w", "patch.w", D, P, TensorRole::embedding});
  t.push_back({"time.fc1", "time.fc1", D, c.image.time_freq, TensorRole::hidden});
  t.push_back({"time.fc2", "time.fc2", D, D, TensorRole::hidden});
  t.push_back({"class.emb", "class.emb", c.image.classes + 1, D, TensorRole::embedding});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = layer_tensor_name(l, "");
    t.push_back({p + "ada.w", "ada.w", 6 * D, D, TensorRole::hidden, false, zero});
    t.push_back({p + "attn.qkv", "attn.qkv", 3 * D, D, TensorRole::hidden});
    if (c.qk_norm) t.push_back({p + "attn.qk_norm.w", "attn.qk_norm.w", 2, c.head_dim(), TensorRole::norm});
    t.push_back({p + "attn.proj", "attn.proj", D, D, TensorRole::hidden, true});
    push_ffn_tensors(t, c, l);
  }
  t.push_back({"final.ada", "final.ada", 2 * D, D, TensorRole::hidden, false, zero});
  t.push_back({"final.w", "final.w", P, D, TensorRole::head, false, zero});
  return t;
}

template <class Backend>
class DiT : public ParamStore<Backend> {
 public:
  using A = typename Backend::act_t;
  using S = typename Backend::stat_t;
  using Param = ModelParam<Backend>;

  DiT(const ModelConfig& cfg, const ParamTable& table, Backend& be, int batch,
      FfnFactory<Backend> make_ffn = make_dense_ffn<Backend>)
      : ParamStore<Backend>((cfg.validate(), dit_tensors(cfg)), table, be),
        cfg_(cfg), table_(table), B_(batch), make_ffn_(std::move(make_ffn)) {
    MUE_CHECK(cfg_.task == "flow", "DiT needs model task 'flow'");
    MUE_CHECK(batch > 0, "batch must be positive");
    T_ = cfg_.image.grid() * cfg_.image.grid();
    patch_ = &this->find("patch.w"), time_fc1_ = &this->find("time.fc1"), time_fc2_ = &this->find("time.fc2");
    class_emb_ = &this->find("class.emb"), final_ada_ = &this->find("final.ada"), final_w_ = &this->find("final.w");
    layout_activations();
    auto pos = cpu::sincos_2d(cfg_.image.grid(), cfg_.d_model);
    be_.from_host(pos_, pos);
  }

  // x_t and the target v as images [B, C, S, S] (host, double), t [B], labels [B] (classes = null class).
  // Returns the mean squared error; the predicted velocity stays on the device for prediction().
  double forward(const double* xt, const double* v, const double* t, const int32_t* labels) {
    stage_inputs(xt, v, t, labels, false);
    forward_kernels();
    return v ? be_.mse_forward(out_, target_, size_t(B_) * T_ * cfg_.image.patch_dim()) : 0.0;
  }
  // The auxiliary (MoE) losses of the last forward (read from the device when asked).
  double aux_loss() const {
    double s = 0;
    for (const Layer& a : layers_) s += a.ffn->aux_loss();
    return s;
  }
  // A training step's forward without a host round trip (as LM::upload_batch / forward_device): the inputs go
  // up through the backend's upload queue, the mean squared error is left at `loss` (where the backend computes).
  void upload_batch(const double* xt, const double* v, const double* t, const int32_t* labels) {
    MUE_CHECK(v, "DiT::upload_batch needs the target velocity");
    stage_inputs(xt, v, t, labels, true);
  }
  void forward_device(double* loss) {
    forward_kernels();
    be_.mse_mean(out_, target_, size_t(B_) * T_ * cfg_.image.patch_dim(), loss);
  }
  void forget_host_copies() {
    for (Layer& a : layers_) a.ffn->forget_host_copies();
  }

 private:
  // Patchified x_t (and v), the timestep features and the labels into their device buffers: queued
  // (upload_async) or synchronous.
  void stage_inputs(const double* xt, const double* v, const double* t, const int32_t* labels, bool async) {
    const int B = B_, N = B * T_, P = cfg_.image.patch_dim(), F = cfg_.image.time_freq;
    const int C = cfg_.image.channels, Sz = cfg_.image.size, p = cfg_.image.patch;
    const auto put = [&](A* dst, const std::vector<double>& h) {
      if (async) be_.from_host_async(dst, h);
      else be_.from_host(dst, h);
    };
    std::vector<double> tok(size_t(N) * P), feat(size_t(B) * F);
    cpu::patchify(xt, tok.data(), B, C, Sz, p);
    put(xin_, tok);
    if (v) {
      cpu::patchify(v, tok.data(), B, C, Sz, p);
      put(target_, tok);
    }
    cpu::timestep_features(t, feat.data(), B, F);
    put(tfeat_, feat);
    if (async) be_.upload_async(labels_, labels, sizeof(int32_t) * B);
    else be_.upload(labels_, labels, sizeof(int32_t) * B);
  }
  void forward_kernels() {
    const int B = B_, Tn = T_, D = cfg_.d_model, N = B * Tn, P = cfg_.image.patch_dim(), F = cfg_.image.time_freq;
    // conditioning
    be_.matmul_forward(tfeat_, time_fc1_->weight, t1_, B, F, D, time_fc1_->alpha);
    be_.silu_forward(t1_, t1s_, size_t(B) * D);
    be_.matmul_forward(t1s_, time_fc2_->weight, cond_, B, D, D, time_fc2_->alpha);
    be_.embedding_forward(labels_, class_emb_->weight, branch_, B, D);
    be_.residual_forward(cond_, cond_, branch_, size_t(B) * D);
    be_.silu_forward(cond_, conds_, size_t(B) * D);
    // tokens
    be_.matmul_forward(xin_, patch_->weight, res_[0], N, P, D, patch_->alpha);
    be_.add_rows(res_[0], pos_, B, Tn, D);
    for (int l = 0; l < cfg_.n_layers; ++l) {
      Layer& a = layers_[l];
      const Param *ada = a.ada, *qkv = a.qkv, *o = a.proj;
      be_.matmul_forward(conds_, ada->weight, a.mod, B, D, 6 * D, ada->alpha);
      be_.modulate_forward(res_[l], a.mod, a.xn1, a.rstd1, B, Tn, D, 6, 0, 1, cfg_.norm_eps);
      be_.matmul_forward(a.xn1, qkv->weight, a.qkv_out, N, D, 3 * D, qkv->alpha);
      if (a.qk_norm)
        be_.qk_norm_forward(a.qkv_out, a.qk_norm->weight, a.qk_pre, a.qk_rstd, B, Tn, cfg_.n_heads,
                            cfg_.head_dim(), cfg_.norm_eps, 0.0);  // no RoPE in the DiT
      be_.attention_forward(a.qkv_out, a.att, a.attn_state, B, Tn, cfg_.n_heads, cfg_.head_dim(), table_.attn_scale, false);
      be_.matmul_forward(a.att, o->weight, a.attn_out, N, D, D, o->alpha);
      be_.gated_residual_forward(a.mid, res_[l], a.attn_out, a.mod, B, Tn, D, 6, 2);
      be_.modulate_forward(a.mid, a.mod, a.xn2, a.rstd2, B, Tn, D, 6, 3, 4, cfg_.norm_eps);
      a.ffn->forward(a.xn2, a.ffn_out);
      be_.gated_residual_forward(res_[l + 1], a.mid, a.ffn_out, a.mod, B, Tn, D, 6, 5);
    }
    const Param &fada = *final_ada_, &fw = *final_w_;
    be_.matmul_forward(conds_, fada.weight, fmod_, B, D, 2 * D, fada.alpha);
    be_.modulate_forward(res_[cfg_.n_layers], fmod_, xo_, rstdo_, B, Tn, D, 2, 0, 1, cfg_.norm_eps);
    be_.matmul_forward(xo_, fw.weight, out_, N, D, P, fw.alpha);
  }

 public:

  // The last forward's predicted velocity as images [B, C, S, S] (host).
  std::vector<double> prediction() {
    const int C = cfg_.image.channels, Sz = cfg_.image.size;
    std::vector<double> tok, img(size_t(B_) * C * Sz * Sz);
    be_.to_host(tok, out_, size_t(B_) * T_ * cfg_.image.patch_dim());
    cpu::unpatchify(tok.data(), img.data(), B_, C, Sz, cfg_.image.patch);
    return img;
  }

  void backward() {
    const int B = B_, Tn = T_, D = cfg_.d_model, N = B * Tn, P = cfg_.image.patch_dim(), F = cfg_.image.time_freq;
    Param &fada = *final_ada_, &fw = *final_w_;
    be_.zero(dconds_, sizeof(A) * size_t(B) * D);
    be_.zero(dmod_, sizeof(A) * size_t(B) * 6 * D);
    be_.mse_backward(out_, target_, dout_, size_t(N) * P);
    be_.matmul_backward(dout_, xo_, fw.weight, dx_, fw.grad, N, D, P, fw.alpha, fw.accumulate());
    be_.zero(dres_, sizeof(A) * size_t(N) * D);
    be_.zero(dfmod_, sizeof(A) * size_t(B) * 2 * D);
    be_.modulate_backward(dx_, res_[cfg_.n_layers], fmod_, rstdo_, dres_, dfmod_, B, Tn, D, 2, 0, 1);
    be_.matmul_backward(dfmod_, conds_, fada.weight, dtmp_, fada.grad, B, D, 2 * D, fada.alpha, fada.accumulate());
    be_.residual_forward(dconds_, dconds_, dtmp_, size_t(B) * D);
    for (int l = cfg_.n_layers - 1; l >= 0; --l) {
      Layer& a = layers_[l];
      Param *ada = a.ada, *qkv = a.qkv, *o = a.proj;
      be_.zero(dmod_, sizeof(A) * size_t(B) * 6 * D);
      // FFN: res[l+1] = mid + gate2 * FFN(modulate(mid))
      be_.gated_residual_backward(dres_, a.ffn_out, a.mod, dbranch_, dmod_, B, Tn, D, 6, 5);
      a.ffn->backward(a.xn2, dbranch_, dx_);
      be_.modulate_backward(dx_, a.mid, a.mod, a.rstd2, dres_, dmod_, B, Tn, D, 6, 3, 4);  // dres = d(mid)
      // attention: mid = res[l] + gate1 * proj(attn(qk_norm(qkv(modulate(res[l])))))
      be_.gated_residual_backward(dres_, a.attn_out, a.mod, dbranch_, dmod_, B, Tn, D, 6, 2);
      be_.matmul_backward(dbranch_, a.att, o->weight, datt_, o->grad, N, D, D, o->alpha, o->accumulate());
      be_.attention_backward(datt_, a.qkv_out, a.att, a.attn_state, dqkv_, B, Tn, cfg_.n_heads, cfg_.head_dim(),
                             table_.attn_scale, false, 0.0);  // no RoPE in the DiT
      if (a.qk_norm) {
        Param& qn = *a.qk_norm;
        be_.qk_norm_backward(dqkv_, a.qk_pre, qn.weight, a.qk_rstd, this->accumulating_grad(qn), N, cfg_.n_heads,
                             cfg_.head_dim());
      }
      be_.matmul_backward(dqkv_, a.xn1, qkv->weight, dx_, qkv->grad, N, D, 3 * D, qkv->alpha, qkv->accumulate());
      be_.modulate_backward(dx_, res_[l], a.mod, a.rstd1, dres_, dmod_, B, Tn, D, 6, 0, 1);  // dres = d(res[l])
      be_.matmul_backward(dmod_, conds_, ada->weight, dtmp_, ada->grad, B, D, 6 * D, ada->alpha, ada->accumulate());
      be_.residual_forward(dconds_, dconds_, dtmp_, size_t(B) * D);
      this->grads_final_from(*ada);  // layer l's first tensor: it and all after it are done
    }
    // token input: res[0] = xin W_patch^T + pos
    Param& pw = *patch_;
    be_.matmul_backward(dres_, xin_, pw.weight, nullptr, pw.grad, N, P, D, pw.alpha, pw.accumulate());
    // conditioning: conds = silu(cond), cond = fc2(silu(fc1(tfeat))) + class_emb[label]
    be_.silu_backward(dconds_, cond_, dcond_, size_t(B) * D);
    be_.embedding_backward(labels_, dcond_, this->accumulating_grad(*class_emb_), B, D, class_emb_->row.tensor.rows);
    Param &f1 = *time_fc1_, &f2 = *time_fc2_;
    be_.matmul_backward(dcond_, t1s_, f2.weight, dtmp_, f2.grad, B, D, D, f2.alpha, f2.accumulate());
    be_.silu_backward(dtmp_, t1_, dt1_, size_t(B) * D);
    be_.matmul_backward(dt1_, tfeat_, f1.weight, nullptr, f1.grad, B, F, D, f1.alpha, f1.accumulate());
    this->zero_stale_grads();
  }

  const ModelConfig& config() const { return cfg_; }
  int batch() const { return B_; }
  size_t activation_bytes() const { return acts_.bytes() + ffn_scratch_.bytes(); }
  const BranchStats* ffn_stats(int layer) const { return layers_[layer].ffn->stats(); }

 private:
  struct Layer {
    Param *ada, *qkv, *qk_norm, *proj;  // qk_norm: nullptr when off
    A *mod, *xn1, *qkv_out, *att, *attn_out, *mid, *xn2, *ffn_out;
    A* qk_pre = nullptr;            // q, k before QK-norm [N, 2D]
    S *rstd1, *rstd2, *attn_state;  // attn_state: what attention keeps for its backward (backend's choice)
    S* qk_rstd = nullptr;           // [N, 2H]
    std::unique_ptr<FfnBranch<Backend>> ffn;
  };

  void layout_activations() {
    const size_t B = B_, N = size_t(B_) * T_, D = cfg_.d_model, P = cfg_.image.patch_dim(), F = cfg_.image.time_freq;
    for (int pass = 0; pass < 2; ++pass) {
      Arena& a = acts_;
      Arena& scratch = ffn_scratch_;
      xin_ = a.take<A>(N * P), target_ = a.take<A>(N * P), out_ = a.take<A>(N * P), dout_ = a.take<A>(N * P);
      tfeat_ = a.take<A>(B * F), labels_ = a.take<int32_t>(B), pos_ = a.take<A>(size_t(T_) * D);
      t1_ = a.take<A>(B * D), t1s_ = a.take<A>(B * D), cond_ = a.take<A>(B * D), conds_ = a.take<A>(B * D);
      dconds_ = a.take<A>(B * D), dcond_ = a.take<A>(B * D), dt1_ = a.take<A>(B * D), dtmp_ = a.take<A>(B * 6 * D);
      dmod_ = a.take<A>(B * 6 * D), fmod_ = a.take<A>(B * 2 * D), dfmod_ = a.take<A>(B * 2 * D);
      res_.assign(cfg_.n_layers + 1, nullptr);
      for (auto& r : res_) r = a.take<A>(N * D);
      layers_.clear();
      layers_.resize(cfg_.n_layers);
      for (int l = 0; l < cfg_.n_layers; ++l) {
        Layer& L = layers_[l];
        L.ada = &this->find(l, "ada.w"), L.qkv = &this->find(l, "attn.qkv");
        L.qk_norm = cfg_.qk_norm ? &this->find(l, "attn.qk_norm.w") : nullptr, L.proj = &this->find(l, "attn.proj");
        L.mod = a.take<A>(B * 6 * D), L.xn1 = a.take<A>(N * D), L.qkv_out = a.take<A>(N * 3 * D);
        if (cfg_.qk_norm) L.qk_pre = a.take<A>(N * 2 * D), L.qk_rstd = a.take<S>(N * 2 * cfg_.n_heads);
        L.attn_state = a.take<S>(be_.attention_state_size(B_, T_, cfg_.n_heads, cfg_.head_dim()));
        L.att = a.take<A>(N * D), L.attn_out = a.take<A>(N * D);
        L.mid = a.take<A>(N * D), L.xn2 = a.take<A>(N * D), L.ffn_out = a.take<A>(N * D);
        L.rstd1 = a.take<S>(N), L.rstd2 = a.take<S>(N);
        scratch.rewind();  // every layer's branch reuses the same scratch (one layer's call at a time)
        L.ffn = make_ffn_(cfg_, be_, l, *this, int(N), a, scratch, table_);
      }
      xo_ = a.take<A>(N * D), rstdo_ = a.take<S>(N), branch_ = a.take<A>(B * D);
      dres_ = a.take<A>(N * D), dx_ = a.take<A>(N * D), dbranch_ = a.take<A>(N * D), datt_ = a.take<A>(N * D);
      dqkv_ = a.take<A>(N * 3 * D);
      if (pass == 0) a.allocate(Backend::on_device), scratch.allocate(Backend::on_device);
    }
  }

  using ParamStore<Backend>::be_;
  ModelConfig cfg_;
  ParamTable table_;
  int B_, T_ = 0;
  FfnFactory<Backend> make_ffn_;
  Param *patch_ = nullptr, *time_fc1_ = nullptr, *time_fc2_ = nullptr, *class_emb_ = nullptr;
  Param *final_ada_ = nullptr, *final_w_ = nullptr;
  Arena acts_;
  Arena ffn_scratch_;  // the FFN branches' buffers that live inside one forward or backward call, shared by layers
  std::vector<Layer> layers_;
  std::vector<A*> res_;
  int32_t* labels_ = nullptr;
  A *xin_, *target_, *out_, *dout_, *tfeat_, *pos_, *t1_, *t1s_, *cond_, *conds_, *dconds_, *dcond_, *dt1_, *dtmp_;
  A *dmod_, *fmod_, *dfmod_, *xo_, *branch_, *dres_, *dx_, *dbranch_, *datt_, *dqkv_;
  S* rstdo_;
};

}  // namespace mue
