// The language model, written once for both backends (nn/backend.h):
//   tokens -> embedding -> L x [ x += Attn(RMSNorm(x)) ; x += FFN(RMSNorm(x)) ] -> RMSNorm -> head -> cross-entropy
// Attention is causal with RoPE; FFN is a dense SwiGLU. Every multiplier (output head, residual branches,
// attention scale) and every init comes from the ParamTable; nothing here scales on its own.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/rng.h"
#include "nn/backend.h"
#include "nn/param_table.h"

namespace mue {

struct ModelConfig {
  int vocab = 50257, vocab_pad = 50304;
  int d_model = 128, n_layers = 4, n_heads = 4, ffn_hidden = 512, seq_len = 256;
  double rope_theta = 10000, norm_eps = 1e-5;
  int head_dim() const { return d_model / n_heads; }
  void validate() const {
    MUE_CHECK(vocab > 0 && vocab_pad >= vocab, "model.vocab_pad (", vocab_pad, ") must be >= model.vocab (", vocab, ")");
    MUE_CHECK(d_model > 0 && n_layers > 0 && n_heads > 0 && ffn_hidden > 0 && seq_len > 0,
              "model sizes must be positive");
    MUE_CHECK(d_model % n_heads == 0, "model.d_model (", d_model, ") is not divisible by model.n_heads (", n_heads, ")");
    MUE_CHECK(head_dim() % 2 == 0, "head dimension d_model/n_heads = ", head_dim(), " must be even for RoPE");
  }
};

// The tensors of the LM, in arena order.
inline std::vector<TensorSpec> lm_tensors(const ModelConfig& c) {
  const int D = c.d_model, H = c.ffn_hidden;
  std::vector<TensorSpec> t;
  t.push_back({"embed.wte", "embed.wte", c.vocab_pad, D, TensorRole::embedding});
  for (int l = 0; l < c.n_layers; ++l) {
    std::string p = "layers." + std::to_string(l) + ".";
    t.push_back({p + "attn_norm.w", "attn_norm.w", 1, D, TensorRole::norm});
    t.push_back({p + "attn.qkv", "attn.qkv", 3 * D, D, TensorRole::hidden});
    t.push_back({p + "attn.proj", "attn.proj", D, D, TensorRole::hidden, true});
    t.push_back({p + "ffn_norm.w", "ffn_norm.w", 1, D, TensorRole::norm});
    t.push_back({p + "ffn.fc", "ffn.fc", 2 * H, D, TensorRole::hidden});  // gate rows, then up rows
    t.push_back({p + "ffn.proj", "ffn.proj", D, H, TensorRole::hidden, true});
  }
  t.push_back({"final_norm.w", "final_norm.w", 1, D, TensorRole::norm});
  t.push_back({"head.w", "head.w", c.vocab_pad, D, TensorRole::head});
  return t;
}

template <class Backend>
class LM {
 public:
  using A = typename Backend::act_t;
  using W = typename Backend::w_t;
  using M = typename Backend::master_t;
  using S = typename Backend::stat_t;

  struct Param {
    ParamRow row;
    M *value, *grad, *adam_m, *adam_v;
    W* weight;  // what the forward reads (bf16 shadow on CUDA, == value on CPU)
    double alpha;
  };

  LM(const ModelConfig& cfg, const ParamTable& table, Backend& be, int batch)
      : cfg_(cfg), table_(table), be_(be), B_(batch), T_(cfg.seq_len) {
    cfg_.validate();
    MUE_CHECK(batch > 0, "batch must be positive");
    layout_params();
    layout_activations();
  }

  // Weights from the table's init column, drawn by the counter-based RNG per (seed, tensor name, index),
  // so every backend and every precision starts from the same numbers.
  void init_weights(uint64_t seed) {
    for (auto& p : params_) {
      std::vector<M> host(p.row.tensor.size());
      const uint64_t stream = hash_name(p.row.tensor.name.c_str());
      for (size_t i = 0; i < host.size(); ++i)
        host[i] = p.row.init == "ones" ? M(1) : p.row.init == "zeros" ? M(0)
                                               : M(p.row.init_std * rng_normal(seed, stream, i));
      be_.upload(p.value, host.data(), host.size() * sizeof(M));
    }
    refresh_weights();
  }
  // After the master weights change outside the optimizer (init, load), refresh what the forward reads.
  void refresh_weights() {
    if constexpr (!std::is_same_v<W, M>) be_.sync_weights(params_.front().value, params_.front().weight, n_params_);
  }

  // Mean cross-entropy over B*T positions; tokens and targets are host arrays of B*T.
  double forward(const int32_t* tokens, const int32_t* targets) {
    const int N = B_ * T_, D = cfg_.d_model, H = cfg_.ffn_hidden, nh = cfg_.n_heads, hd = cfg_.head_dim();
    be_.upload(tok_, tokens, sizeof(int32_t) * N);
    be_.upload(tgt_, targets, sizeof(int32_t) * N);
    be_.embedding_forward(tok_, P(0).weight, res_[0], N, D);
    for (int l = 0; l < cfg_.n_layers; ++l) {
      Layer& a = layers_[l];
      const Param *n1 = &P(1 + 6 * l), *qkv = n1 + 1, *o = n1 + 2, *n2 = n1 + 3, *fc = n1 + 4, *pr = n1 + 5;
      be_.rmsnorm_forward(res_[l], n1->weight, a.ln1, a.rstd1, N, D, cfg_.norm_eps);
      be_.matmul_forward(a.ln1, qkv->weight, a.qkv, N, D, 3 * D, qkv->alpha);
      be_.rope_forward(a.qkv, B_, T_, nh, hd, cfg_.rope_theta);
      be_.attention_forward(a.qkv, a.att, a.probs, B_, T_, nh, hd, table_.attn_scale, true);
      be_.matmul_forward(a.att, o->weight, branch_, N, D, D, o->alpha);
      be_.residual_forward(a.mid, res_[l], branch_, size_t(N) * D);
      be_.rmsnorm_forward(a.mid, n2->weight, a.ln2, a.rstd2, N, D, cfg_.norm_eps);
      be_.matmul_forward(a.ln2, fc->weight, a.fc, N, D, 2 * H, fc->alpha);
      be_.swiglu_forward(a.fc, a.sw, N, H);
      be_.matmul_forward(a.sw, pr->weight, branch_, N, H, D, pr->alpha);
      be_.residual_forward(res_[l + 1], a.mid, branch_, size_t(N) * D);
    }
    const Param &nf = P(params_.size() - 2), &head = P(params_.size() - 1);
    be_.rmsnorm_forward(res_[cfg_.n_layers], nf.weight, lnf_, rstdf_, N, D, cfg_.norm_eps);
    be_.matmul_forward(lnf_, head.weight, logits_, N, D, cfg_.vocab_pad, head.alpha);
    be_.crossentropy_forward(logits_, tgt_, losses_, N, cfg_.vocab, cfg_.vocab_pad);
    std::vector<S> losses(N);
    be_.download(losses.data(), losses_, sizeof(S) * N);
    double sum = 0;
    for (S x : losses) sum += double(x);
    return sum / N;
  }

  // Gradients of the mean loss of the last forward, accumulated into the gradient arena.
  void backward() {
    const int N = B_ * T_, D = cfg_.d_model, H = cfg_.ffn_hidden, nh = cfg_.n_heads, hd = cfg_.head_dim();
    Param &nf = P(params_.size() - 2), &head = P(params_.size() - 1);
    be_.crossentropy_backward(logits_, tgt_, logits_, N, cfg_.vocab, cfg_.vocab_pad, 1.0 / N);
    be_.matmul_backward(logits_, lnf_, head.weight, dx_, head.grad, N, D, cfg_.vocab_pad, head.alpha);
    be_.zero(dres_, sizeof(A) * size_t(N) * D);
    be_.rmsnorm_backward(dx_, res_[cfg_.n_layers], nf.weight, rstdf_, dres_, nf.grad, N, D);
    for (int l = cfg_.n_layers - 1; l >= 0; --l) {
      Layer& a = layers_[l];
      Param *n1 = &P(1 + 6 * l), *qkv = n1 + 1, *o = n1 + 2, *n2 = n1 + 3, *fc = n1 + 4, *pr = n1 + 5;
      // FFN branch: res[l+1] = mid + proj(swiglu(fc(norm(mid))))
      be_.matmul_backward(dres_, a.sw, pr->weight, dsw_, pr->grad, N, H, D, pr->alpha);
      be_.swiglu_backward(dsw_, a.fc, dfc_, N, H);
      be_.matmul_backward(dfc_, a.ln2, fc->weight, dx_, fc->grad, N, D, 2 * H, fc->alpha);
      be_.rmsnorm_backward(dx_, a.mid, n2->weight, a.rstd2, dres_, n2->grad, N, D);  // dres is now d(mid)
      // attention branch: mid = res[l] + proj(attn(rope(qkv(norm(res[l])))))
      be_.matmul_backward(dres_, a.att, o->weight, datt_, o->grad, N, D, D, o->alpha);
      be_.attention_backward(datt_, a.qkv, a.probs, dqkv_, B_, T_, nh, hd, table_.attn_scale, true);
      be_.rope_backward(dqkv_, B_, T_, nh, hd, cfg_.rope_theta);
      be_.matmul_backward(dqkv_, a.ln1, qkv->weight, dx_, qkv->grad, N, D, 3 * D, qkv->alpha);
      be_.rmsnorm_backward(dx_, res_[l], n1->weight, a.rstd1, dres_, n1->grad, N, D);  // dres is now d(res[l])
    }
    be_.embedding_backward(tok_, dres_, P(0).grad, N, D);
  }

  void zero_grad() { be_.zero(grads_.data(), grads_.bytes()); }

  std::vector<Param>& params() { return params_; }
  const std::vector<Param>& params() const { return params_; }
  Param& P(size_t i) { return params_[i]; }
  size_t n_params() const { return n_params_; }
  M* grad_arena() { return params_.front().grad; }
  const ModelConfig& config() const { return cfg_; }
  const ParamTable& table() const { return table_; }
  Backend& backend() { return be_; }
  int batch() const { return B_; }
  size_t activation_bytes() const { return acts_.bytes(); }

  // Host copies of master values / gradients (in double, for tests, checkpoints and logging).
  std::vector<double> host_values(const Param& p) const { return to_host(p.value, p.row.tensor.size()); }
  std::vector<double> host_grads(const Param& p) const { return to_host(p.grad, p.row.tensor.size()); }
  void set_values(Param& p, const std::vector<double>& v) {
    std::vector<M> h(v.begin(), v.end());
    be_.upload(p.value, h.data(), h.size() * sizeof(M));
    refresh_weights();
  }

 private:
  struct Layer {
    A *ln1, *qkv, *probs, *att, *mid, *ln2, *fc, *sw;
    S *rstd1, *rstd2;
  };

  std::vector<double> to_host(const M* p, size_t n) const {
    std::vector<M> h(n);
    be_.download(h.data(), p, n * sizeof(M));
    return std::vector<double>(h.begin(), h.end());
  }

  void layout_params() {
    auto specs = lm_tensors(cfg_);
    MUE_CHECK(specs.size() == table_.rows.size(), "parameter table has ", table_.rows.size(), " rows, model has ",
              specs.size(), " tensors");
    for (int pass = 0; pass < 2; ++pass) {
      n_params_ = 0;
      params_.clear();
      for (size_t i = 0; i < specs.size(); ++i) {
        const ParamRow& r = table_.rows[i];
        MUE_CHECK(r.tensor.name == specs[i].name && r.tensor.size() == specs[i].size(),
                  "parameter table row ", i, " is '", r.tensor.name, "', model expects '", specs[i].name, "'");
        const size_t n = specs[i].size();
        params_.push_back({r, values_.take<M>(n, true), grads_.take<M>(n, true), adam_m_.take<M>(n, true),
                           adam_v_.take<M>(n, true),
                           nullptr, table_.forward_alpha(r.tensor.name)});
        if constexpr (std::is_same_v<W, M>) params_.back().weight = params_.back().value;
        else params_.back().weight = shadow_.take<W>(n, true);
        n_params_ += n;
      }
      if (pass == 0)
        for (Arena* a : {&values_, &grads_, &adam_m_, &adam_v_, &shadow_}) a->allocate(Backend::on_device);
    }
  }

  void layout_activations() {
    const size_t N = size_t(B_) * T_, D = cfg_.d_model, H = cfg_.ffn_hidden;
    for (int pass = 0; pass < 2; ++pass) {
      Arena& a = acts_;
      tok_ = a.take<int32_t>(N), tgt_ = a.take<int32_t>(N);
      res_.assign(cfg_.n_layers + 1, nullptr);
      for (auto& r : res_) r = a.take<A>(N * D);
      layers_.assign(cfg_.n_layers, {});
      for (auto& L : layers_) {
        L.ln1 = a.take<A>(N * D), L.qkv = a.take<A>(N * 3 * D), L.att = a.take<A>(N * D);
        L.probs = a.take<A>(size_t(B_) * cfg_.n_heads * T_ * T_);
        L.mid = a.take<A>(N * D), L.ln2 = a.take<A>(N * D), L.fc = a.take<A>(N * 2 * H), L.sw = a.take<A>(N * H);
        L.rstd1 = a.take<S>(N), L.rstd2 = a.take<S>(N);
      }
      branch_ = a.take<A>(N * D), lnf_ = a.take<A>(N * D), rstdf_ = a.take<S>(N);
      logits_ = a.take<A>(N * cfg_.vocab_pad), losses_ = a.take<S>(N);
      dres_ = a.take<A>(N * D), dx_ = a.take<A>(N * D), datt_ = a.take<A>(N * D);
      dqkv_ = a.take<A>(N * 3 * D), dfc_ = a.take<A>(N * 2 * H), dsw_ = a.take<A>(N * H);
      if (pass == 0) a.allocate(Backend::on_device);
    }
  }

  ModelConfig cfg_;
  ParamTable table_;
  Backend& be_;
  int B_, T_;
  size_t n_params_ = 0;
  Arena values_, grads_, adam_m_, adam_v_, shadow_, acts_;
  std::vector<Param> params_;
  int32_t *tok_ = nullptr, *tgt_ = nullptr;
  std::vector<A*> res_;
  std::vector<Layer> layers_;
  A *branch_ = nullptr, *lnf_ = nullptr, *logits_ = nullptr;
  S *rstdf_ = nullptr, *losses_ = nullptr;
  A *dres_ = nullptr, *dx_ = nullptr, *datt_ = nullptr, *dqkv_ = nullptr, *dfc_ = nullptr, *dsw_ = nullptr;
};

}  // namespace mue
