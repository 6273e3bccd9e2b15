// The language model, written once for both backends (nn/backend.h):
//   tokens -> embedding -> L x [ x += Attn(RMSNorm(x)) ; x += FFN(RMSNorm(x)) ] -> RMSNorm -> head -> cross-entropy
// Attention is causal with RoPE (and, with model.qk_norm, every head's q and k RMS-normalized before it); FFN is
// a dense SwiGLU or an MoE layer. Every multiplier (output head, residual branches,
// attention scale) and every init comes from the ParamTable; nothing here scales on its own.
#pragma once
#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "nn/backend.h"
#include "nn/ffn.h"
#include "nn/model_config.h"
#include "nn/param_store.h"

namespace mue {

// The tensors of the LM, in arena order.
inline std::vector<TensorSpec> lm_tensors(const ModelConfig& c) {
  const int D = c.d_model;
  std::vector<TensorSpec> t;
  t.push_back({"embed.wte", "embed.wte", c.vocab_pad, D, TensorRole::embedding});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = layer_tensor_name(l, "");
    t.push_back({p + "attn_norm.w", "attn_norm.w", 1, D, TensorRole::norm});
    t.push_back({p + "attn.qkv", "attn.qkv", 3 * D, D, TensorRole::hidden});
    if (c.qk_norm) t.push_back({p + "attn.qk_norm.w", "attn.qk_norm.w", 2, c.head_dim(), TensorRole::norm});
    t.push_back({p + "attn.proj", "attn.proj", D, D, TensorRole::hidden, true});
    t.push_back({p + "ffn_norm.w", "ffn_norm.w", 1, D, TensorRole::norm});
    push_ffn_tensors(t, c, l);
  }
  t.push_back({"final_norm.w", "final_norm.w", 1, D, TensorRole::norm});
  t.push_back({"head.w", "head.w", c.vocab_pad, D, TensorRole::head});
  return t;
}

// Rows of logits the head computes at once for N rows: chunks of at most about 2^28 logits (512 MiB in bf16), as
// even as multiples of 128 rows allow: chunks of a few hundred rows make the head's weight-gradient GEMM
// (K = rows) slow (bench/RESULTS.md).
inline int head_chunk_rows(size_t N, int vocab_pad) {
  const size_t fit = std::max<size_t>(1, (size_t(1) << 28) / size_t(vocab_pad));
  const size_t chunks = (N + fit - 1) / fit, even = (N + chunks - 1) / chunks;
  return int(std::min(N, chunks > 1 ? (even + 127) / 128 * 128 : N));
}

template <class Backend>
class LM : public ParamStore<Backend> {
 public:
  using A = typename Backend::act_t;
  using S = typename Backend::stat_t;
  using Param = ModelParam<Backend>;

  LM(const ModelConfig& cfg, const ParamTable& table, Backend& be, int batch,
     FfnFactory<Backend> make_ffn = make_dense_ffn<Backend>)
      : ParamStore<Backend>((cfg.validate(), lm_tensors(cfg)), table, be),
        cfg_(cfg), table_(table), B_(batch), T_(cfg.seq_len), make_ffn_(std::move(make_ffn)) {
    MUE_CHECK(batch > 0, "batch must be positive");
    embed_ = &this->find("embed.wte"), final_norm_ = &this->find("final_norm.w"), head_ = &this->find("head.w");
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
  // forward(..., true)) and leaves the mean loss at `loss`, a scalar where the backend computes (the optimizer's
  // StepOut::loss). backward() follows.
  void upload_batch(const int32_t* tokens, const int32_t* targets) {
    const size_t bytes = sizeof(int32_t) * size_t(B_) * T_;
    be_.upload_async(tok_, tokens, bytes);
    be_.upload_async(tgt_, targets, bytes);
  }
  void forward_device(double* loss) {
    forward_kernels(true);
    be_.loss_mean(losses_, B_ * T_, loss);
  }
  // After a replayed step (CUDA graph): the layers' host copies of the last forward's results are stale.
  void forget_host_copies() {
    for (Layer& a : layers_) a.ffn->forget_host_copies();
  }

 private:
  // tokens -> embedding -> L x [ x += Attn(RMSNorm(x)) ; x += FFN(RMSNorm(x)) ] -> RMSNorm -> head -> loss.
  // Each residual add runs with the norm that reads its sum (the same bits as the two ops): the attention norm
  // of the next layer, after the last layer the final norm.
  void forward_kernels(bool for_backward) {
    const int N = B_ * T_, D = cfg_.d_model, nh = cfg_.n_heads, hd = cfg_.head_dim();
    be_.embedding_forward(tok_, embed_->weight, res_[0], N, D);
    const Layer& first = layers_[0];
    be_.rmsnorm_forward(res_[0], first.attn_norm->weight, first.ln1, first.rstd1, N, D, cfg_.norm_eps);
    for (int l = 0; l < cfg_.n_layers; ++l) {
      Layer& a = layers_[l];
      // attention branch: mid = res[l] + proj(attn(rope(qk_norm(qkv(ln1)))))
      be_.matmul_forward(a.ln1, a.qkv->weight, a.qkv_out, N, D, 3 * D, a.qkv->alpha);
      if (a.qk_norm)  // and RoPE
        be_.qk_norm_forward(a.qkv_out, a.qk_norm->weight, a.qk_pre, a.qk_rstd, B_, T_, nh, hd, cfg_.norm_eps,
                            cfg_.rope_theta);
      else
        be_.rope_forward(a.qkv_out, B_, T_, nh, hd, cfg_.rope_theta);
      be_.attention_forward(a.qkv_out, a.att, a.attn_state, B_, T_, nh, hd, table_.attn_scale, true);
      be_.matmul_forward(a.att, a.proj->weight, branch_, N, D, D, a.proj->alpha);
      be_.residual_rmsnorm_forward(a.mid, res_[l], branch_, a.ffn_norm->weight, a.ln2, a.rstd2, N, D, cfg_.norm_eps);
      // FFN branch: res[l+1] = mid + FFN(ln2)
      a.ffn->forward(a.ln2, branch_);
      if (l + 1 < cfg_.n_layers) {
        const Layer& next = layers_[l + 1];
        be_.residual_rmsnorm_forward(res_[l + 1], a.mid, branch_, next.attn_norm->weight, next.ln1, next.rstd1, N,
                                     D, cfg_.norm_eps);
      } else {
        be_.residual_rmsnorm_forward(res_[l + 1], a.mid, branch_, final_norm_->weight, lnf_, rstdf_, N, D,
                                     cfg_.norm_eps);
      }
    }
    head_loss(for_backward);
  }

  // The head and the loss over chunks of head_rows_ rows, so that the logits never exist for all rows at once:
  // logits = lnf W^T and the per-row losses; with grad also, in the same pass, through the head dx_ (its rows of
  // the chunk) and head.grad (linear_crossentropy_backward; on CUDA at d = 128, or under the kernel variant
  // fused_head, without dlogits in memory). The loss's gradient scale is 1/N, known in advance.
  void head_loss(bool grad) {
    const int N = B_ * T_, D = cfg_.d_model, Vp = cfg_.vocab_pad;
    Param& head = *head_;
    for (int r0 = 0; r0 < N; r0 += head_rows_) {
      const int rows = std::min(head_rows_, N - r0);
      const A* x = lnf_ + size_t(r0) * D;
      be_.matmul_forward(x, head.weight, logits_, rows, D, Vp, head.alpha);
      if (!grad) {
        be_.crossentropy_forward(logits_, tgt_ + r0, losses_ + r0, rows, cfg_.vocab, Vp);
        continue;
      }
      be_.linear_crossentropy_backward(logits_, tgt_ + r0, x, head.weight, losses_ + r0, dx_ + size_t(r0) * D,
                                       head.grad, rows, D, cfg_.vocab, Vp, head.alpha, 1.0 / N, head.accumulate());
    }
    head_grad_done_ = grad;
  }

 public:
  // Gradients of (mean cross-entropy + auxiliary losses) of the last forward, accumulated into the grad arena:
  // the forward's steps in reverse, from the head (taken with the loss, see head_loss) to the embedding.
  void backward() {
    const int N = B_ * T_, D = cfg_.d_model, nh = cfg_.n_heads, hd = cfg_.head_dim();
    if (!head_grad_done_) head_loss(true);
    head_grad_done_ = false;
    be_.zero(dres_, sizeof(A) * size_t(N) * D);
    be_.rmsnorm_backward(dx_, res_[cfg_.n_layers], final_norm_->weight, rstdf_, dres_,
                         this->accumulating_grad(*final_norm_), N, D);
    for (int l = cfg_.n_layers - 1; l >= 0; --l) {
      Layer& a = layers_[l];
      Param &qkv = *a.qkv, &proj = *a.proj;
      // FFN branch: res[l+1] = mid + FFN(norm(mid))
      a.ffn->backward(a.ln2, dres_, dx_);
      be_.rmsnorm_backward(dx_, a.mid, a.ffn_norm->weight, a.rstd2, dres_, this->accumulating_grad(*a.ffn_norm), N,
                           D);  // dres is now d(mid)
      // attention branch: mid = res[l] + proj(attn(rope(qk_norm(qkv(norm(res[l]))))))
      be_.matmul_backward(dres_, a.att, proj.weight, datt_, proj.grad, N, D, D, proj.alpha, proj.accumulate());
      be_.attention_backward(datt_, a.qkv_out, a.att, a.attn_state, dqkv_, B_, T_, nh, hd, table_.attn_scale, true,
                             cfg_.rope_theta);  // also rotates d(q, k) back through RoPE
      if (a.qk_norm)
        be_.qk_norm_backward(dqkv_, a.qk_pre, a.qk_norm->weight, a.qk_rstd, this->accumulating_grad(*a.qk_norm), N,
                             nh, hd);
      be_.matmul_backward(dqkv_, a.ln1, qkv.weight, dx_, qkv.grad, N, D, 3 * D, qkv.alpha, qkv.accumulate());
      be_.rmsnorm_backward(dx_, res_[l], a.attn_norm->weight, a.rstd1, dres_, this->accumulating_grad(*a.attn_norm),
                           N, D);  // dres is now d(res[l])
      this->grads_final_from(*a.attn_norm);  // layer l's first tensor: it and all after it are done
    }
    be_.embedding_backward(tok_, dres_, this->accumulating_grad(*embed_), N, D, embed_->row.tensor.rows);
    this->zero_stale_grads();
  }

  const ModelConfig& config() const { return cfg_; }
  const ParamTable& table() const { return table_; }
  int batch() const { return B_; }
  size_t activation_bytes() const { return acts_.bytes() + ffn_scratch_.bytes(); }
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
      be_.to_host(a, res_[l], N * D), be_.to_host(b, layers_[l].mid, N * D);
      for (size_t i = 0; i < a.size(); ++i) a[i] = b[i] - a[i];
      out.push_back({layer_tensor_name(l, "attn_out"), a});
      be_.to_host(a, res_[l + 1], N * D);
      out.push_back({layer_tensor_name(l, "block_out"), a});
      for (size_t i = 0; i < a.size(); ++i) a[i] -= b[i];
      out.push_back({layer_tensor_name(l, "ffn_out"), a});
    }
    a.clear();
    for (int r0 = 0; r0 < int(N); r0 += head_rows_) {  // the logits again, chunk by chunk
      const int rows = std::min(head_rows_, int(N) - r0);
      be_.matmul_forward(lnf_ + size_t(r0) * D, head_->weight, logits_, rows, int(D), cfg_.vocab_pad, head_->alpha);
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
  struct Layer {
    Param *attn_norm, *qkv, *qk_norm, *proj, *ffn_norm;  // qk_norm: nullptr when off
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
      Arena& scratch = ffn_scratch_;
      tok_ = a.take<int32_t>(N), tgt_ = a.take<int32_t>(N);
      res_.assign(cfg_.n_layers + 1, nullptr);
      for (auto& r : res_) r = a.take<A>(N * D);
      layers_.clear();
      layers_.resize(cfg_.n_layers);
      for (int l = 0; l < cfg_.n_layers; ++l) {
        Layer& L = layers_[l];
        L.attn_norm = &this->find(l, "attn_norm.w"), L.qkv = &this->find(l, "attn.qkv");
        L.qk_norm = cfg_.qk_norm ? &this->find(l, "attn.qk_norm.w") : nullptr;
        L.proj = &this->find(l, "attn.proj"), L.ffn_norm = &this->find(l, "ffn_norm.w");
        L.ln1 = a.take<A>(N * D), L.qkv_out = a.take<A>(N * 3 * D), L.att = a.take<A>(N * D);
        if (cfg_.qk_norm) L.qk_pre = a.take<A>(N * 2 * D), L.qk_rstd = a.take<S>(N * 2 * cfg_.n_heads);
        L.attn_state = a.take<S>(be_.attention_state_size(B_, T_, cfg_.n_heads, cfg_.head_dim()));
        L.mid = a.take<A>(N * D), L.ln2 = a.take<A>(N * D);
        L.rstd1 = a.take<S>(N), L.rstd2 = a.take<S>(N);
        scratch.rewind();  // every layer's branch reuses the same scratch (one layer's call at a time)
        L.ffn = make_ffn_(cfg_, be_, l, *this, int(N), a, scratch, table_);
      }
      branch_ = a.take<A>(N * D), lnf_ = a.take<A>(N * D), rstdf_ = a.take<S>(N);
      head_rows_max_ = head_chunk_rows(N, cfg_.vocab_pad);
      head_rows_ = head_rows_max_;
      logits_ = a.take<A>(size_t(head_rows_max_) * cfg_.vocab_pad), losses_ = a.take<S>(N);
      dres_ = a.take<A>(N * D), dx_ = a.take<A>(N * D), datt_ = a.take<A>(N * D), dqkv_ = a.take<A>(N * 3 * D);
      if (pass == 0) a.allocate(Backend::on_device), scratch.allocate(Backend::on_device);
    }
  }

  using ParamStore<Backend>::be_;
  ModelConfig cfg_;
  ParamTable table_;
  int B_, T_;
  FfnFactory<Backend> make_ffn_;
  Param *embed_ = nullptr, *final_norm_ = nullptr, *head_ = nullptr;
  Arena acts_;
  Arena ffn_scratch_;  // the FFN branches' buffers that live inside one forward or backward call, shared by layers
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
