// The parameters of a model: one packed arena each for master values, gradients and (on CUDA) the bf16 weights
// the forward reads (the optimizer keeps its own state: optim/adamw.h), laid out in the order of the model's tensor list and checked against the
// ParamTable. Both models (LM, DiT) are a ParamStore plus their activations; they hold named handles into it.
#pragma once
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/kernel_variants.h"
#include "core/rng.h"
#include "nn/param_table.h"

namespace mue {

// Per-tensor view of the parameter arenas.
template <class Backend>
struct ModelParam {
  ParamRow row;
  typename Backend::master_t *value, *grad;
  typename Backend::w_t* weight;  // what the forward reads (bf16 shadow on CUDA, == value on CPU)
  double alpha;                   // forward multiplier (table multiplier x branch multiplier on residual outputs)
  // zero_grad does not clear grad: it marks it stale, and the step's first write overwrites it (a GEMM with
  // beta = 0 instead of a memset and a read-modify-write). Ops that can overwrite ask accumulate() (false for
  // that first write); ops that only add go through ParamStore::accumulating_grad, which zeroes a stale grad.
  bool grad_stale = false;
  bool accumulate() { return !std::exchange(grad_stale, false); }
};

template <class Backend>
class ParamStore {
 public:
  using W = typename Backend::w_t;
  using M = typename Backend::master_t;
  using Param = ModelParam<Backend>;

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
        params_.push_back({r, values_.take<M>(n, true), grads_.take<M>(n, true), nullptr,
                           table.forward_alpha(r.tensor.name)});
        if constexpr (std::is_same_v<W, M>) params_.back().weight = params_.back().value;
        else params_.back().weight = shadow_.take<W>(n, true);
        n_params_ += n;
      }
      if (pass == 0)
        for (Arena* a : {&values_, &grads_, &shadow_}) a->allocate(Backend::on_device);
    }
  }
  // The models hold pointers into params_.
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;

  // Weights from the table's init column (zeros where the model declared a zero init: TensorSpec::zero_init),
  // drawn by the counter-based RNG per (seed, tensor name, index), so every backend and every precision starts
  // from the same numbers.
  // Each number is a function of its index alone, so the threads share out a tensor and give the same weights on
  // any thread count; the draws (a log and a cosine each) were most of a d128 LM's setup done on one thread.
  void init_weights(uint64_t seed) {
    for (auto& p : params_) {
      std::vector<M> host(p.row.tensor.size());
      const uint64_t stream = hash_name(p.row.tensor.name.c_str());
      const bool ones = p.row.init == "ones", zeros = p.row.init == "zeros";
      const double init_std = p.row.init_std;
      const size_t n = host.size();
#pragma omp parallel for schedule(static) if (n > (size_t(1) << 14))
      for (size_t i = 0; i < n; ++i)
        host[i] = ones ? M(1) : zeros ? M(0) : M(init_std * rng_normal(seed, stream, i));
      be_.upload(p.value, host.data(), host.size() * sizeof(M));
    }
    refresh_weights();
  }
  // After the master weights change outside the optimizer (init, load), refresh what the forward reads.
  void refresh_weights() {
    if constexpr (!std::is_same_v<W, M>) be_.sync_weights(params_.front().value, params_.front().weight, n_params_);
  }
  // Gradients restart at zero (lazily: see ModelParam::grad_stale). A backward ends with zero_stale_grads().
  // The kernel variant eager_zero_grad=1 (core/kernel_variants.h) clears the whole arena instead and every write
  // adds: the older way, kept so that the two can be timed against each other and a suspect overwrite ruled out.
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
  void zero_stale_grads() { grads_final_from(params_.front()); }
  // A backward calls this where the gradients of tensor p and of every tensor after it in the arena are final
  // (after a layer; at its end for all): their stale gradients are zeroed, then on_grads_final hears of it.
  void grads_final_from(Param& p) {
    for (size_t i = size_t(&p - params_.data()); i < params_.size(); ++i) accumulating_grad(params_[i]);
    if (on_grads_final_) on_grads_final_(size_t(p.grad - grad_arena()));
  }
  // Called with the arena element from which on the gradients are final, as the backward goes: data parallel
  // (dist/) starts the ranks' mean of what is final while the backward makes the rest. Empty: nothing.
  void set_on_grads_final(std::function<void(size_t first)> f) { on_grads_final_ = std::move(f); }

  std::vector<Param>& params() { return params_; }
  const std::vector<Param>& params() const { return params_; }
  Param& P(size_t i) { return params_[i]; }
  Param& find(const std::string& name) {
    for (auto& p : params_)
      if (p.row.tensor.name == name) return p;
    fail("the model has no tensor '", name, "'");
  }
  // Layer l's tensor of this kind ("attn.qkv" is "layers.<l>.attn.qkv").
  Param& find(int layer, const std::string& kind) { return find(layer_tensor_name(layer, kind)); }
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

 private:
  std::vector<double> to_host(const M* p, size_t n) const {
    std::vector<M> h(n);
    be_.download(h.data(), p, n * sizeof(M));
    return std::vector<double>(h.begin(), h.end());
  }
  std::vector<Param> params_;
  size_t n_params_ = 0;
  Arena values_, grads_, shadow_;
  std::function<void(size_t)> on_grads_final_;
  const bool eager_zero_grad_ = kernel_variants().eager_zero_grad;
};

}  // namespace mue
