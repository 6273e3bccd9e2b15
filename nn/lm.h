// The language model, written once for both backends (nn/backend.h):
//   tokens -> embedding -> L x [ x += Attn(RMSNorm(x)) ; x += FFN(RMSNorm(x)) ] -> RMSNorm -> head -> cross-entropy
// Attention is causal with RoPE (and, with model.qk_norm, every head's q and k RMS-normalized before it); FFN is
// a dense SwiGLU or an MoE layer. Every multiplier (output head, residual branches,
// attention scale) and every init comes from the ParamTable; nothing here scales on its own.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/rng.h"
#include "nn/backend.h"
#include "nn/param_table.h"

namespace mue {

// The FFN of every block: a dense SwiGLU of width `hidden`, or an MoE layer. For MoE the fields hold the final
// shape (granularity already applied: experts = N*g, active = a*g, expert_hidden = h/g).
struct FfnConfig {
  std::string type = "dense";  // dense | moe
  int experts = 8, active = 2, expert_hidden = 128;
  int shared = 0, shared_hidden = 0;  // shared experts (gate 1), each a SwiGLU of width shared_hidden
  int groups = 1;                     // group-balanced routing: active/groups experts from each group
  bool sigmoid = false;               // scores: softmax over experts (false) or sigmoid
  double balance_coef = 0.01, z_coef = 0.0;
  bool moe() const { return type == "moe"; }
  int active_width() const { return active * expert_hidden + shared * shared_hidden; }  // H_a
  void validate() const {
    MUE_CHECK(type == "dense" || type == "moe", "ffn.type must be dense or moe, got '", type, "'");
    if (!moe()) return;
    MUE_CHECK(experts > 0 && active > 0 && expert_hidden > 0, "ffn.experts, ffn.active and ffn.expert_hidden must be positive");
    MUE_CHECK(active <= experts, "ffn.active (", active, ") exceeds ffn.experts (", experts, ")");
    MUE_CHECK(groups > 0 && experts % groups == 0, "ffn.experts (", experts, ") is not divisible by ffn.groups (", groups, ")");
    MUE_CHECK(active % groups == 0, "ffn.active (", active, ") is not divisible by ffn.groups (", groups, ")");
    MUE_CHECK(shared >= 0 && (shared == 0 || shared_hidden > 0), "ffn.shared experts need ffn.shared_hidden > 0");
    MUE_CHECK(balance_coef >= 0 && z_coef >= 0, "ffn.balance_coef and ffn.z_coef must be >= 0");
  }
};

// The image side of the diffusion transformer (task "flow"); unused by the LM.
struct ImageConfig {
  int channels = 1, size = 28, patch = 2, classes = 10;
  int time_freq = 256;         // sinusoidal timestep features fed to the timestep MLP
  double label_dropout = 0.1;  // probability a training label is replaced by the null class (for CFG)
  int grid() const { return size / patch; }
  int patch_dim() const { return channels * patch * patch; }
};

struct ModelConfig {
  std::string task = "lm";  // lm | flow
  int vocab = 50257, vocab_pad = 50304;
  int d_model = 128, n_layers = 4, n_heads = 4, ffn_hidden = 512, seq_len = 256;
  double rope_theta = 10000, norm_eps = 1e-5;
  bool qk_norm = false;  // RMSNorm over each head's q and k (gains attn.qk_norm.w [2, hd]) before RoPE
  FfnConfig ffn;
  ImageConfig image;
  int head_dim() const { return d_model / n_heads; }
  void validate() const {
    MUE_CHECK(task == "lm" || task == "flow", "unknown task '", task, "' (known: lm, flow)");
    if (task == "flow") {
      MUE_CHECK(image.channels > 0, "image.channels must be positive, got ", image.channels);
      MUE_CHECK(image.size > 0 && image.patch > 0 && image.size % image.patch == 0,
                "image.size (", image.size, ") must be a positive multiple of image.patch (", image.patch, ")");
      MUE_CHECK(image.classes > 0 && image.time_freq > 0 && image.time_freq % 2 == 0,
                "image.classes must be positive and image.time_freq even");
      MUE_CHECK(d_model % 4 == 0, "model.d_model must be divisible by 4 for the 2-D position embedding");
      MUE_CHECK(image.label_dropout >= 0 && image.label_dropout <= 1, "image.label_dropout must be in [0, 1]");
      MUE_CHECK(seq_len == image.grid() * image.grid(), "internal: seq_len must be (size/patch)^2 for flow");
    }
    MUE_CHECK(vocab > 0, "model.vocab must be positive, got ", vocab);
    MUE_CHECK(vocab_pad >= vocab, "model.vocab_pad (", vocab_pad, ") must be >= model.vocab (", vocab, ")");
    MUE_CHECK(d_model > 0 && n_layers > 0 && n_heads > 0 && ffn_hidden > 0 && seq_len > 0,
              "model sizes must be positive");
    ffn.validate();
    MUE_CHECK(d_model % n_heads == 0, "model.d_model (", d_model, ") is not divisible by model.n_heads (", n_heads, ")");
    MUE_CHECK(head_dim() % 2 == 0, "head dimension d_model/n_heads = ", head_dim(), " must be even for RoPE");
    MUE_CHECK(rope_theta > 0, "model.rope_theta must be positive, got ", rope_theta);
    MUE_CHECK(norm_eps > 0 && std::isfinite(norm_eps), "model.norm_eps must be positive, got ", norm_eps);
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
    if (c.qk_norm) t.push_back({p + "attn.qk_norm.w", "attn.qk_norm.w", 2, c.head_dim(), TensorRole::norm});
    t.push_back({p + "attn.proj", "attn.proj", D, D, TensorRole::hidden, true});
    t.push_back({p + "ffn_norm.w", "ffn_norm.w", 1, D, TensorRole::norm});
    if (!c.ffn.moe()) {
      t.push_back({p + "ffn.fc", "ffn.fc", 2 * H, D, TensorRole::hidden});  // gate rows, then up rows
      t.push_back({p + "ffn.proj", "ffn.proj", D, H, TensorRole::hidden, true});
      continue;
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
  t.push_back({"final_norm.w", "final_norm.w", 1, D, TensorRole::norm});
  t.push_back({"head.w", "head.w", c.vocab_pad, D, TensorRole::head});
  return t;
}

// Per-tensor view of the parameter arenas.
template <class Backend>
struct LMParam {
  ParamRow row;
  typename Backend::master_t *value, *grad, *adam_m, *adam_v;
  typename Backend::w_t* weight;  // what the forward reads (bf16 shadow on CUDA, == value on CPU)
  double alpha;                   // forward multiplier (table multiplier x branch multiplier on residual outputs)
  // zero_grad does not clear grad: it marks it stale, and the step's first write overwrites it (a GEMM with
  // beta = 0 instead of a memset and a read-modify-write). Ops that can overwrite ask accumulate() (false for
  // that first write); ops that only add go through ParamStore::accumulating_grad, which zeroes a stale grad.
  bool grad_stale = false;
  bool accumulate() { return !std::exchange(grad_stale, false); }
};

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
  virtual void backward(const A* xn, const A* dout, A* dxn) = 0;  // dxn overwritten; param grads as LMParam says
  // The auxiliary loss and statistics of the last forward. They may wait for the device, so the models ask for
  // them only after the step's own loss has come back (no host sync inside the forward).
  virtual double aux_loss() const { return 0; }
  virtual const BranchStats* stats() const { return nullptr; }
  // A forward ran without this object's host code (a replayed CUDA graph): drop host copies of its results.
  virtual void forget_host_copies() {}
};

template <class Backend>
class DenseFfn : public FfnBranch<Backend> {
 public:
  using A = typename Backend::act_t;
  // p[0] = ffn.fc [2H, D], p[1] = ffn.proj [D, H]
  DenseFfn(Backend& be, LMParam<Backend>* p, int N, int D, int H, Arena& acts) : be_(be), p_(p), N_(N), D_(D), H_(H) {
    fc_ = acts.take<A>(size_t(N) * 2 * H), sw_ = acts.take<A>(size_t(N) * H);
    dfc_ = acts.take<A>(size_t(N) * 2 * H), dsw_ = acts.take<A>(size_t(N) * H);
  }
  void forward(const A* xn, A* out) override {
    be_.matmul_forward(xn, p_[0].weight, fc_, N_, D_, 2 * H_, p_[0].alpha);
    be_.swiglu_forward(fc_, sw_, N_, H_);
    be_.matmul_forward(sw_, p_[1].weight, out, N_, H_, D_, p_[1].alpha);
  }
  void backward(const A* xn, const A* dout, A* dxn) override {
    be_.matmul_backward(dout, sw_, p_[1].weight, dsw_, p_[1].grad, N_, H_, D_, p_[1].alpha, p_[1].accumulate());
    be_.swiglu_backward(dsw_, fc_, dfc_, N_, H_);
    be_.matmul_backward(dfc_, xn, p_[0].weight, dxn, p_[0].grad, N_, D_, 2 * H_, p_[0].alpha, p_[0].accumulate());
  }

 private:
  Backend& be_;
  LMParam<Backend>* p_;
  int N_, D_, H_;
  A *fc_, *sw_, *dfc_, *dsw_;
};

// Builds layer l's FFN branch from its parameters (the tensors after ffn_norm.w) and the activation arena.
template <class Backend>
using FfnFactory = std::function<std::unique_ptr<FfnBranch<Backend>>(const ModelConfig&, Backend&, int layer,
                                                                     LMParam<Backend>* params, int rows, Arena& acts,
                                                                     const ParamTable& table)>;

template <class Backend>
std::unique_ptr<FfnBranch<Backend>> make_dense_ffn(const ModelConfig& c, Backend& be, int, LMParam<Backend>* p,
                                                   int rows, Arena& acts, const ParamTable&) {
  MUE_CHECK(!c.ffn.moe(), "this model was built without the MoE layer (link moe/ and pass its factory)");
  return std::make_unique<DenseFfn<Backend>>(be, p, rows, c.d_model, c.ffn_hidden, acts);
}

// The parameters of a model: one packed arena each for master values, gradients, Adam moments and (on CUDA)
// the bf16 weights the forward reads, laid out in the order of the model's tensor list and checked against the
// ParamTable. Both models (LM, DiT) are a ParamStore plus their activations.
template <class Backend>
class ParamStore {
 public:
  using W = typename Backend::w_t;
  using M = typename Backend::master_t;
  using Param = LMParam<Backend>;

  ParamStore(const std::vector<TensorSpec>& specs, const ParamTable& table, Backend& be) : be_(be) {
    MUE_CHECK(specs.size() == table.rows.size(), "parameter table has ", table.rows.size(), " rows, the model has ",
              specs.size(), " tensors");
    for (int pass = 0; pass < 2; ++pass) {
      n_params_ = 0;
      params_.clear();
      for (size_t i = 0; i < specs.size(); ++i) {
        const ParamRow& r = table.rows[i];
        MUE_CHECK(r.tensor.name == specs[i].name && r.tensor.size() == specs[i].size(), "parameter table row ", i,
                  " is '", r.tensor.name, "', the model expects '", specs[i].name, "'");
        const size_t n = specs[i].size();
        // Packed views: each arena is one contiguous vector, so one kernel can sweep it (grad norm, refresh).
        params_.push_back({r, values_.take<M>(n, true), grads_.take<M>(n, true), adam_m_.take<M>(n, true),
                           adam_v_.take<M>(n, true), nullptr, table.forward_alpha(r.tensor.name)});
        if constexpr (std::is_same_v<W, M>) params_.back().weight = params_.back().value;
        else params_.back().weight = shadow_.take<W>(n, true);
        n_params_ += n;
      }
      if (pass == 0)
        for (Arena* a : {&values_, &grads_, &adam_m_, &adam_v_, &shadow_}) a->allocate(Backend::on_device);
    }
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
  // Gradients restart at zero (lazily: see LMParam::grad_stale). A backward ends with zero_stale_grads().
  // MUE_EAGER_ZERO_GRAD=1 clears the whole arena instead and every write adds: the older way, kept so that
  // the two can be timed against each other on one card and a suspect overwrite ruled out.
  void zero_grad() {
    if (eager_zero_grad_) return be_.zero(grads_.data(), grads_.bytes());
    for (auto& p : params_) p.grad_stale = true;
  }
  // p's gradient for an op that adds into it: zeroed first when stale.
  M* accumulating_grad(Param& p) {
    if (p.grad_stale) be_.zero(p.grad, sizeof(M) * p.row.tensor.size()), p.grad_stale = false;
    return p.grad;
  }
  // After a backward: the gradients of tensors it did not reach are zero.
  void zero_stale_grads() {
    for (auto& p : params_) accumulating_grad(p);
  }

  std::vector<Param>& params() { return params_; }
  const std::vector<Param>& params() const { return params_; }
  Param& P(size_t i) { return params_[i]; }
  Param& find(const std::string& name) {
    for (auto& p : params_)
      if (p.row.tensor.name == name) return p;
    fail("the model has no tensor '", name, "'");
  }
  size_t n_params() const { return n_params_; }
  M* grad_arena() { return params_.front().grad; }
  Backend& backend() { return be_; }

  // Host copies of master values / gradients (in double, for tests, checkpoints and logging).
  std::vector<double> host_values(const Param& p) const { return to_host(p.value, p.row.tensor.size()); }
  std::vector<double> host_grads(const Param& p) const {
    return p.grad_stale ? std::vector<double>(p.row.tensor.size()) : to_host(p.grad, p.row.tensor.size());
  }
  void set_values(Param& p, const std::vector<double>& v) {
    std::vector<M> h(v.begin(), v.end());
    be_.upload(p.value, h.data(), h.size() * sizeof(M));
    refresh_weights();
  }

 protected:
  Backend& be_;
  std::vector<Param> params_;

 private:
  std::vector<double> to_host(const M* p, size_t n) const {
    std::vector<M> h(n);
    be_.download(h.data(), p, n * sizeof(M));
    return std::vector<double>(h.begin(), h.end());
  }
  size_t n_params_ = 0;
  Arena values_, grads_, adam_m_, adam_v_, shadow_;
  const bool eager_zero_grad_ = [] {
    const char* v = std::getenv("MUE_EAGER_ZERO_GRAD");
    return v && std::strcmp(v, "0") != 0;
  }();
};

template <class Backend>
class LM : public ParamStore<Backend> {
 public:
  using A = typename Backend::act_t;
  using W = typename Backend::w_t;
  using M = typename Backend::master_t;
  using S = typename Backend::stat_t;
  using Param = LMParam<Backend>;

  LM(const ModelConfig& cfg, const ParamTable& table, Backend& be, int batch,
     FfnFactory<Backend> make_ffn = make_dense_ffn<Backend>)
      : ParamStore<Backend>((cfg.validate(), lm_tensors(cfg)), table, be),
        cfg_(cfg), table_(table), B_(batch), T_(cfg.seq_len), make_ffn_(std::move(make_ffn)) {
    MUE_CHECK(batch > 0, "batch must be positive");
    layout_activations();
  }

  // Mean cross-entropy over B*T positions; tokens and targets are host arrays of B*T. The auxiliary (MoE) losses
  // of this forward are in aux_loss(); backward() differentiates their sum. for_backward: backward() follows, so
  // the head's gradient is taken now, chunk by chunk with the loss (see head_loss); otherwise backward() computes
  // the head's logits again.
  double forward(const int32_t* tokens, const int32_t* targets, bool for_backward = false) {
    const int N = B_ * T_;
    be_.upload(tok_, tokens, sizeof(int32_t) * N);
    be_.upload(tgt_, targets, sizeof(int32_t) * N);
    forward_kernels(for_backward);
    std::vector<S> losses(N);
    be_.download(losses.data(), losses_, sizeof(S) * N);
    double sum = 0;
    for (S x : losses) sum += double(x);
    return sum / N;
  }
  // The auxiliary (MoE) losses of the last forward (read from the device when asked).
  double aux_loss() const {
    double s = 0;
    for (const Layer& a : layers_) s += a.ffn->aux_loss();
    return s;
  }

  // A training step's forward without a host round trip: upload_batch queues the batch on the backend's upload
  // queue (begin_uploads once per step first), forward_device runs the forward with the head's gradient (as
  // forward(..., true)) and leaves the mean loss in the backend's StepOut. backward() follows.
  void upload_batch(const int32_t* tokens, const int32_t* targets) {
    const size_t bytes = sizeof(int32_t) * size_t(B_) * T_;
    be_.upload_async(tok_, tokens, bytes);
    be_.upload_async(tgt_, targets, bytes);
  }
  void forward_device() {
    forward_kernels(true);
    be_.loss_mean(losses_, B_ * T_);
  }
  // After a replayed step (CUDA graph): the layers' host copies of the last forward's results are stale.
  void forget_host_copies() {
    for (Layer& a : layers_) a.ffn->forget_host_copies();
  }

 private:
  void forward_kernels(bool for_backward) {
    const int N = B_ * T_, D = cfg_.d_model, nh = cfg_.n_heads, hd = cfg_.head_dim();
    // The norm that reads res[l]: layer l's attention norm, or after the last layer the final one.
    const auto norm_of = [&](int l) {
      const bool last = l == cfg_.n_layers;
      const Param& p = params_[last ? params_.size() - 2 : layers_[l].attn_norm];
      return std::tuple{p.weight, last ? lnf_ : layers_[l].ln1, last ? rstdf_ : layers_[l].rstd1};
    };
    be_.embedding_forward(tok_, params_[0].weight, res_[0], N, D);
    const auto [w0, y0, r0] = norm_of(0);
    be_.rmsnorm_forward(res_[0], w0, y0, r0, N, D, cfg_.norm_eps);
    for (int l = 0; l < cfg_.n_layers; ++l) {
      Layer& a = layers_[l];
      const Param *qkv = &params_[a.qkv], *o = &params_[a.proj], *n2 = &params_[a.ffn_norm];
      be_.matmul_forward(a.ln1, qkv->weight, a.qkv_out, N, D, 3 * D, qkv->alpha);
      if (a.qk_norm)  // and RoPE
        be_.qk_norm_forward(a.qkv_out, params_[a.qk_norm].weight, a.qk_pre, a.qk_rstd, B_, T_, nh, hd, cfg_.norm_eps,
                            cfg_.rope_theta);
      else
        be_.rope_forward(a.qkv_out, B_, T_, nh, hd, cfg_.rope_theta);
      be_.attention_forward(a.qkv_out, a.att, a.attn_state, B_, T_, nh, hd, table_.attn_scale, true);
      be_.matmul_forward(a.att, o->weight, branch_, N, D, D, o->alpha);
      // Each residual add runs with the norm that reads its sum (same bits as the two ops).
      be_.residual_rmsnorm_forward(a.mid, res_[l], branch_, n2->weight, a.ln2, a.rstd2, N, D, cfg_.norm_eps);
      a.ffn->forward(a.ln2, branch_);
      const auto [w, y, r] = norm_of(l + 1);
      be_.residual_rmsnorm_forward(res_[l + 1], a.mid, branch_, w, y, r, N, D, cfg_.norm_eps);
    }
    head_loss(for_backward);
  }

 public:

  // Gradients of (mean cross-entropy + auxiliary losses) of the last forward, accumulated into the grad arena.
  void backward() {
    const int N = B_ * T_, D = cfg_.d_model, nh = cfg_.n_heads, hd = cfg_.head_dim();
    Param& nf = params_[params_.size() - 2];
    if (!head_grad_done_) head_loss(true);
    head_grad_done_ = false;
    be_.zero(dres_, sizeof(A) * size_t(N) * D);
    be_.rmsnorm_backward(dx_, res_[cfg_.n_layers], nf.weight, rstdf_, dres_, this->accumulating_grad(nf), N, D);
    for (int l = cfg_.n_layers - 1; l >= 0; --l) {
      Layer& a = layers_[l];
      Param *n1 = &params_[a.attn_norm], *qkv = &params_[a.qkv], *o = &params_[a.proj], *n2 = &params_[a.ffn_norm];
      // FFN branch: res[l+1] = mid + FFN(norm(mid))
      a.ffn->backward(a.ln2, dres_, dx_);
      be_.rmsnorm_backward(dx_, a.mid, n2->weight, a.rstd2, dres_, this->accumulating_grad(*n2), N,
                           D);  // dres is now d(mid)
      // attention branch: mid = res[l] + proj(attn(rope(qk_norm(qkv(norm(res[l]))))))
      be_.matmul_backward(dres_, a.att, o->weight, datt_, o->grad, N, D, D, o->alpha, o->accumulate());
      be_.attention_backward(datt_, a.qkv_out, a.att, a.attn_state, dqkv_, B_, T_, nh, hd, table_.attn_scale, true,
                             cfg_.rope_theta);  // also rotates d(q, k) back through RoPE
      if (a.qk_norm) {
        Param& qn = params_[a.qk_norm];
        be_.qk_norm_backward(dqkv_, a.qk_pre, qn.weight, a.qk_rstd, this->accumulating_grad(qn), N, nh, hd);
      }
      be_.matmul_backward(dqkv_, a.ln1, qkv->weight, dx_, qkv->grad, N, D, 3 * D, qkv->alpha, qkv->accumulate());
      be_.rmsnorm_backward(dx_, res_[l], n1->weight, a.rstd1, dres_, this->accumulating_grad(*n1), N,
                           D);  // dres is now d(res[l])
    }
    be_.embedding_backward(tok_, dres_, this->accumulating_grad(params_[0]), N, D);
    this->zero_stale_grads();
  }

  const ModelConfig& config() const { return cfg_; }
  const ParamTable& table() const { return table_; }
  int batch() const { return B_; }
  size_t activation_bytes() const { return acts_.bytes(); }
  // Per-layer FFN statistics of the last forward (nullptr for dense layers).
  const BranchStats* ffn_stats(int layer) const { return layers_[layer].ffn->stats(); }

  // Activations of the last forward, on the host, for coordinate checks (call before backward(), which reuses
  // the logits buffer): per layer the attention branch output, the FFN branch output and the block output, and
  // the logits. Names: "layers.L.attn_out", "layers.L.ffn_out", "layers.L.block_out", "logits".
  std::vector<std::pair<std::string, std::vector<double>>> probe() {
    const size_t N = size_t(B_) * T_, D = cfg_.d_model;
    std::vector<std::pair<std::string, std::vector<double>>> out;
    std::vector<double> a, b;
    for (int l = 0; l < cfg_.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      be_.to_host(a, res_[l], N * D), be_.to_host(b, layers_[l].mid, N * D);
      for (size_t i = 0; i < a.size(); ++i) a[i] = b[i] - a[i];
      out.push_back({p + "attn_out", a});
      be_.to_host(a, res_[l + 1], N * D);
      out.push_back({p + "block_out", a});
      for (size_t i = 0; i < a.size(); ++i) a[i] -= b[i];
      out.push_back({p + "ffn_out", a});
    }
    a.clear();
    for (int r0 = 0; r0 < int(N); r0 += head_rows_) {  // the logits again, chunk by chunk
      const int rows = std::min(head_rows_, int(N) - r0);
      be_.matmul_forward(lnf_ + size_t(r0) * D, params_.back().weight, logits_, rows, int(D), cfg_.vocab_pad,
                         params_.back().alpha);
      be_.to_host(b, logits_, size_t(rows) * cfg_.vocab_pad);
      a.insert(a.end(), b.begin(), b.end());
    }
    out.push_back({"logits", a});
    return out;
  }

  // Rows of logits computed at once (default: chunks of at most about 2^28 logits, split evenly; see
  // layout_activations); at most the default, which sized the buffer.
  int head_rows() const { return head_rows_; }
  void set_head_rows(int rows) {
    MUE_CHECK(rows > 0 && rows <= head_rows_max_, "head rows must be in [1, ", head_rows_max_, "], got ", rows);
    head_rows_ = rows;
  }

 private:
  // The head and the loss over chunks of head_rows_ rows, so that the logits never exist for all rows at once:
  // logits = lnf W^T and the per-row losses; with grad also, in the same pass, dlogits (in place) and through
  // the head dx_ (its rows of the chunk) and head.grad. The loss's gradient scale is 1/N, known in advance.
  void head_loss(bool grad) {
    const int N = B_ * T_, D = cfg_.d_model, Vp = cfg_.vocab_pad;
    Param& head = params_.back();
    for (int r0 = 0; r0 < N; r0 += head_rows_) {
      const int rows = std::min(head_rows_, N - r0);
      const A* x = lnf_ + size_t(r0) * D;
      be_.matmul_forward(x, head.weight, logits_, rows, D, Vp, head.alpha);
      if (!grad) {
        be_.crossentropy_forward(logits_, tgt_ + r0, losses_ + r0, rows, cfg_.vocab, Vp);
        continue;
      }
      be_.crossentropy_forward_backward(logits_, tgt_ + r0, losses_ + r0, logits_, rows, cfg_.vocab, Vp, 1.0 / N);
      be_.matmul_backward(logits_, x, head.weight, dx_ + size_t(r0) * D, head.grad, rows, D, Vp, head.alpha,
                          head.accumulate());
    }
    head_grad_done_ = grad;
  }

  struct Layer {
    // indices of its tensors in params_ (qk_norm: 0 when off)
    size_t attn_norm = 0, qkv = 0, qk_norm = 0, proj = 0, ffn_norm = 0;
    A *ln1, *qkv_out, *att, *mid, *ln2;
    A* qk_pre = nullptr;  // q, k before QK-norm [N, 2D]
    S *rstd1, *rstd2, *attn_state;  // attn_state: what attention keeps for its backward (backend's choice)
    S* qk_rstd = nullptr;           // [N, 2H]
    std::unique_ptr<FfnBranch<Backend>> ffn;
  };

  void layout_activations() {
    const size_t N = size_t(B_) * T_, D = cfg_.d_model;
    for (int pass = 0; pass < 2; ++pass) {
      Arena& a = acts_;
      tok_ = a.take<int32_t>(N), tgt_ = a.take<int32_t>(N);
      res_.assign(cfg_.n_layers + 1, nullptr);
      for (auto& r : res_) r = a.take<A>(N * D);
      layers_.clear();
      layers_.resize(cfg_.n_layers);
      std::vector<size_t> firsts;  // each layer's tensors start at its attn_norm.w
      for (size_t i = 0; i < params_.size(); ++i)
        if (params_[i].row.tensor.kind == "attn_norm.w") firsts.push_back(i);
      for (int l = 0; l < cfg_.n_layers; ++l) {
        Layer& L = layers_[l];
        // attn_norm.w, attn.qkv, [attn.qk_norm.w,] attn.proj, ffn_norm.w, then the FFN's own tensors
        size_t i = firsts[l];
        L.attn_norm = i++, L.qkv = i++;
        if (cfg_.qk_norm) L.qk_norm = i++;
        L.proj = i++, L.ffn_norm = i++;
        L.ln1 = a.take<A>(N * D), L.qkv_out = a.take<A>(N * 3 * D), L.att = a.take<A>(N * D);
        if (cfg_.qk_norm) L.qk_pre = a.take<A>(N * 2 * D), L.qk_rstd = a.take<S>(N * 2 * cfg_.n_heads);
        L.attn_state = a.take<S>(be_.attention_state_size(B_, T_, cfg_.n_heads, cfg_.head_dim()));
        L.mid = a.take<A>(N * D), L.ln2 = a.take<A>(N * D);
        L.rstd1 = a.take<S>(N), L.rstd2 = a.take<S>(N);
        L.ffn = make_ffn_(cfg_, be_, l, &params_[i], int(N), a, table_);
      }
      branch_ = a.take<A>(N * D), lnf_ = a.take<A>(N * D), rstdf_ = a.take<S>(N);
      // Chunks of at most about 2^28 logits (512 MiB in bf16), as even as multiples of 128 rows allow: chunks of
      // a few hundred rows made the head's weight-gradient GEMM (K = rows) slow (2^24 logits cost gpt2s 6 ms).
      const size_t fit = std::max<size_t>(1, (size_t(1) << 28) / size_t(cfg_.vocab_pad));
      const size_t chunks = (N + fit - 1) / fit, even = (N + chunks - 1) / chunks;
      head_rows_max_ = int(std::min(N, chunks > 1 ? (even + 127) / 128 * 128 : N));
      head_rows_ = head_rows_max_;
      logits_ = a.take<A>(size_t(head_rows_max_) * cfg_.vocab_pad), losses_ = a.take<S>(N);
      dres_ = a.take<A>(N * D), dx_ = a.take<A>(N * D), datt_ = a.take<A>(N * D), dqkv_ = a.take<A>(N * 3 * D);
      if (pass == 0) a.allocate(Backend::on_device);
    }
  }

  using ParamStore<Backend>::be_;
  using ParamStore<Backend>::params_;
  ModelConfig cfg_;
  ParamTable table_;
  int B_, T_;
  FfnFactory<Backend> make_ffn_;
  Arena acts_;
  int32_t *tok_ = nullptr, *tgt_ = nullptr;
  std::vector<A*> res_;
  std::vector<Layer> layers_;
  A *branch_ = nullptr, *lnf_ = nullptr, *logits_ = nullptr;
  S *rstdf_ = nullptr, *losses_ = nullptr;
  A *dres_ = nullptr, *dx_ = nullptr, *datt_ = nullptr, *dqkv_ = nullptr;
  int head_rows_ = 1, head_rows_max_ = 1;
  bool head_grad_done_ = false;  // the last forward took the head's gradient (forward(..., true))
};

}  // namespace mue
