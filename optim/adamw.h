// The optimizer: AdamW over every tensor of a model, with the per-tensor lr / wd / eps of its ParamTable, global
// grad-norm clipping and the schedule factor. It owns its state: the Adam moments (two packed arenas in the
// model's tensor order, over the elements it owns: all of them, or with ZeRO-1 one rank's share), the segment
// table of the one-launch update and the step scalars (optim/step_scalars.h); the model keeps values, gradients
// and the bf16 weights the forward reads, which the update refreshes.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/error.h"
#include "nn/backend.h"
#include "nn/param_store.h"
#include "optim/adamw_ops.h"
#include "optim/step_scalars.h"

namespace mue {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95;
  double grad_clip = 1.0;  // <= 0: off
};

struct StepStats {
  double grad_norm = 0;  // before clipping
  double lr_factor = 0;
};

// One tensor of the packed arenas for the all-tensor update: it ends at element `end` (exclusive).
struct AdamSegment {
  size_t end;
  double lr, wd, eps;
  bool operator==(const AdamSegment&) const = default;
};

// A range [begin, end) of elements of a model's packed parameter arenas.
struct OwnedRange {
  size_t begin = 0, end = 0;
  size_t size() const { return end - begin; }
};

// The StepIn of 0-based step `step` under this AdamW config and schedule factor (divergence bound: none).
inline StepIn adamw_step_in(const AdamWConfig& cfg, int step, double lr_factor) {
  StepIn in;
  in.lr_factor = lr_factor, in.beta1 = cfg.beta1, in.beta2 = cfg.beta2, in.t = step + 1, in.clip = cfg.grad_clip;
  in.step = step;
  return in;
}

// The optimizer's kernels on one backend, with the state they keep there: the segment table and the step
// scalars. step() takes its scalars from the host; the *_dev calls read and write the step scalars where they
// live (the device on CUDA), so a whole training step needs no host round trip.
template <class Backend>
class AdamWKernels;

template <class T>
class AdamWKernels<CpuBackend<T>> {
 public:
  AdamWKernels(CpuBackend<T>&, std::vector<AdamSegment> segs) : segs_(std::move(segs)) {}

  double sum_squares(const T* g, size_t n) { return cpu::sum_squares(g, n); }
  // Over packed arenas: tensor i is elements [segs[i-1].end, segs[i].end) (a loop here, one launch on CUDA).
  void step(T* p, const T* g, T* m, T* v, T*, double lr_factor, double b1, double b2, int t, double gs) {
    size_t begin = 0;
    for (const AdamSegment& s : segs_) {
      cpu::adamw_step(p + begin, g + begin, m + begin, v + begin, s.end - begin, s.lr * lr_factor, b1, b2, s.eps,
                      s.wd, t, gs);
      begin = s.end;
    }
  }

  // The step scalars: plain host values here, the same calls as on the device.
  void set_step_in(const StepIn& in) { in_ = in; }
  void reset_step_out() { out_ = StepOut{}; }
  StepOut read_step_out() { return out_; }
  double* loss_out() { return &out_.loss; }  // where the training forward leaves its mean loss
  double* norm_sq_out() { return &out_.norm_sq; }
  void grad_norm_sq(const T* g, size_t n) { out_.norm_sq = cpu::sum_squares(g, n); }
  void track_divergence() {
    if (out_.first_bad < 0 && step_diverged(out_.loss, out_.norm_sq, in_.loss_bound))
      out_.first_bad = in_.step, out_.bad_loss = out_.loss;
  }
  void step_dev(T* p, const T* g, T* m, T* v, T* w) {
    if (!std::isfinite(out_.norm_sq)) return;
    step(p, g, m, v, w, in_.lr_factor, in_.beta1, in_.beta2, in_.t, clip_scale(out_.norm_sq, in_.clip));
  }

 private:
  std::vector<AdamSegment> segs_;
  StepIn in_;
  StepOut out_;
};

#ifdef MUE_HAVE_CUDA
template <>
class AdamWKernels<CudaBackend> {
 public:
  // The segment table goes to the device once: it changes only with the model, which outlives this object.
  AdamWKernels(CudaBackend& be, const std::vector<AdamSegment>& segs)
      : be_(be), n_(segs.empty() ? 0 : segs.back().end), nseg_(int(segs.size())) {
    norm_acc_ = static_cast<double*>(cuda::device_alloc(sizeof(double)));
    in_dev_ = static_cast<cuda::StepInDev*>(cuda::device_alloc(sizeof(cuda::StepInDev)));
    out_dev_ = static_cast<StepOut*>(cuda::device_alloc(sizeof(StepOut)));
    std::vector<cuda::AdamWSegment> dev(segs.size());
    for (size_t i = 0; i < segs.size(); ++i) dev[i] = {segs[i].end, segs[i].lr, float(segs[i].wd), float(segs[i].eps)};
    segs_dev_ = static_cast<cuda::AdamWSegment*>(cuda::device_alloc(sizeof(cuda::AdamWSegment) * dev.size()));
    if (!dev.empty()) cuda::copy_to_device(segs_dev_, dev.data(), sizeof(cuda::AdamWSegment) * dev.size());
  }
  ~AdamWKernels() {
    cuda::device_free(norm_acc_), cuda::device_free(segs_dev_);
    cuda::device_free(in_dev_), cuda::device_free(out_dev_);
  }
  AdamWKernels(const AdamWKernels&) = delete;
  AdamWKernels& operator=(const AdamWKernels&) = delete;

  double sum_squares(const float* g, size_t n) {
    auto op_ = be_.ctx.op("sum_squares");
    cuda::sum_squares_to(be_.ctx, g, n, norm_acc_);
    double s = 0;
    be_.download(&s, norm_acc_, sizeof(double));
    return s;
  }
  void step(float* p, const float* g, float* m, float* v, bf16* shadow, double lr_factor, double b1, double b2,
            int t, double gs) {
    if (nseg_ == 0) return;
    auto op_ = be_.ctx.op("adamw_step");
    cuda::adamw_step_all(be_.ctx, p, g, m, v, shadow, n_, segs_dev_, nseg_, lr_factor, float(b1), float(b2), t,
                         float(gs));
  }

  // The step scalars live on the device; only read_step_out waits for it. StepIn goes up through the backend's
  // upload queue (begin_uploads first).
  void set_step_in(const StepIn& in) {
    // the bias corrections exactly as adamw_step_all computes them (from the float betas, in double)
    const float b1 = float(in.beta1), b2 = float(in.beta2);
    const cuda::StepInDev d{in.lr_factor, in.clip, in.loss_bound, b1, b2, float(1.0 - std::pow(double(b1), in.t)),
                            float(1.0 - std::pow(double(b2), in.t)), in.step};
    be_.ctx.upload_async(in_dev_, &d, sizeof d);
  }
  void reset_step_out() {
    const StepOut o;
    be_.ctx.upload_async(out_dev_, &o, sizeof o);
  }
  StepOut read_step_out() {
    StepOut o;
    be_.download(&o, out_dev_, sizeof o);
    return o;
  }
  double* loss_out() { return field(offsetof(StepOut, loss)); }
  double* norm_sq_out() { return field(offsetof(StepOut, norm_sq)); }
  void grad_norm_sq(const float* g, size_t n) {
    auto op_ = be_.ctx.op("sum_squares");
    cuda::sum_squares_to(be_.ctx, g, n, field(offsetof(StepOut, norm_sq)));
  }
  void track_divergence() { cuda::track_divergence(be_.ctx, in_dev_, out_dev_); }
  void step_dev(float* p, const float* g, float* m, float* v, bf16* shadow) {
    if (nseg_ == 0) return;
    auto op_ = be_.ctx.op("adamw_step");
    cuda::adamw_step_all_dev(be_.ctx, p, g, m, v, shadow, n_, segs_dev_, nseg_, in_dev_, out_dev_);
  }

 private:
  double* field(size_t offset) { return reinterpret_cast<double*>(reinterpret_cast<char*>(out_dev_) + offset); }
  CudaBackend& be_;
  size_t n_;
  int nseg_;
  double* norm_acc_ = nullptr;  // device scalar for sum_squares (fixed order: the same bits every run)
  cuda::AdamWSegment* segs_dev_ = nullptr;
  cuda::StepInDev* in_dev_ = nullptr;
  StepOut* out_dev_ = nullptr;
};
#endif

template <class Backend>
class AdamW {
 public:
  using M = typename Backend::master_t;

  // The model's parameter arenas must be packed (ParamStore lays them out so); the moments start at zero.
  // `owned`: the elements of the packed arenas this optimizer keeps moments for and updates (ZeRO-1: a rank's
  // share; the others' ranks update the rest); by default all of them.
  AdamW(ParamStore<Backend>& model, const AdamWConfig& cfg, OwnedRange owned = {0, SIZE_MAX})
      : model_(model), cfg_(cfg), segments_(segments_of(model)),
        owned_{std::min(owned.begin, model.n_params()), std::min(owned.end, model.n_params())},
        kernels_(model.backend(), segments_within(segments_, owned_)) {
    MUE_CHECK(owned.begin <= owned.end, "AdamW: owned range [", owned.begin, ", ", owned.end, ") ends before it begins");
    const size_t n = owned_.size();
    for (int pass = 0; pass < 2; ++pass) {
      m_ = m_arena_.take<M>(n, true), v_ = v_arena_.take<M>(n, true);
      if (pass == 0) m_arena_.allocate(Backend::on_device), v_arena_.allocate(Backend::on_device);
    }
  }
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One update with the step's scalars from the host: t is 1-based. The grad norm comes back to the host; a
  // non-finite one leaves the weights untouched (the trainer marks the run diverged).
  StepStats update(int t, double lr_factor) {
    MUE_CHECK(owns_all(), "AdamW::update needs the whole model (a share's grad norm is not the global one)");
    StepStats st;
    st.lr_factor = lr_factor;
    st.grad_norm = std::sqrt(kernels_.sum_squares(model_.grad_arena(), model_.n_params()));
    double scale = 1.0;
    if (cfg_.grad_clip > 0 && st.grad_norm > cfg_.grad_clip) scale = cfg_.grad_clip / st.grad_norm;
    if (!std::isfinite(st.grad_norm)) return st;
    auto& p = model_.params().front();
    kernels_.step(p.value, p.grad, m_, v_, p.weight, lr_factor, cfg_.beta1, cfg_.beta2, t, scale);
    return st;
  }

  // The same update with every scalar on the device: the caller has set the StepIn (set_step_in: lr factor,
  // betas, t, clip, divergence bound) and the forward has left its mean loss at loss_out(); the squared grad norm,
  // the divergence check and the update then run without a host round trip (the same arithmetic as update()).
  // In two halves where the owned range is a share (ZeRO-1): grad_norm_sq_dev leaves the share's squared norm at
  // norm_sq_out(), the caller sums it over the ranks, and update_owned_dev checks divergence and updates the share.
  void update_dev() {
    grad_norm_sq_dev();
    update_owned_dev();
  }
  void grad_norm_sq_dev() { kernels_.grad_norm_sq(model_.grad_arena() + owned_.begin, owned_.size()); }
  void update_owned_dev() {
    kernels_.track_divergence();
    auto& p = model_.params().front();
    const size_t b = owned_.begin;
    kernels_.step_dev(p.value + b, p.grad + b, m_, v_, p.weight + b);
  }
  void set_step_in(const StepIn& in) { kernels_.set_step_in(in); }
  void reset_step_out() { kernels_.reset_step_out(); }
  StepOut read_step_out() { return kernels_.read_step_out(); }
  double* loss_out() { return kernels_.loss_out(); }
  double* norm_sq_out() { return kernels_.norm_sq_out(); }

  // The owned elements' moments (packed, owned().size() each, where the backend computes), for checkpoints and
  // the optimizer state's size.
  const OwnedRange& owned() const { return owned_; }
  bool owns_all() const { return owned_.begin == 0 && owned_.end == model_.n_params(); }
  const M* m_owned() const { return m_; }
  const M* v_owned() const { return v_; }
  size_t state_bytes() const { return 2 * owned_.size() * sizeof(M); }
  // Tensor i's moments (the model's i-th tensor), for checkpoints: only where this optimizer owns all of it.
  M* m(size_t i) { return m_ + owned_offset(i); }
  M* v(size_t i) { return v_ + owned_offset(i); }
  // Loads the owned part of tensor i's moments from host arrays of the whole tensor (a checkpoint's).
  void load_moments(size_t i, const M* m_host, const M* v_host) {
    const size_t begin = std::max(offset(i), owned_.begin), end = std::min(segments_.at(i).end, owned_.end);
    if (begin >= end) return;
    auto& be = model_.backend();
    be.upload(m_ + (begin - owned_.begin), m_host + (begin - offset(i)), (end - begin) * sizeof(M));
    be.upload(v_ + (begin - owned_.begin), v_host + (begin - offset(i)), (end - begin) * sizeof(M));
  }
  const AdamWConfig& config() const { return cfg_; }
  const std::vector<AdamSegment>& segments() const { return segments_; }
  AdamWKernels<Backend>& kernels() { return kernels_; }

 private:
  // The segment table of the model's tensors, checking that they lie back to back in every arena.
  static std::vector<AdamSegment> segments_of(ParamStore<Backend>& model) {
    auto& ps = model.params();
    std::vector<AdamSegment> segs;
    size_t end = 0;
    for (auto& p : ps) {
      MUE_CHECK(p.value == ps[0].value + end && p.grad == ps[0].grad + end && p.weight == ps[0].weight + end,
                "AdamW: the model's parameter arenas are not packed (tensor '", p.row.tensor.name, "')");
      end += p.row.tensor.size();
      segs.push_back({end, p.row.lr, p.row.wd, p.row.eps});
    }
    MUE_CHECK(!segs.empty() && end == model.n_params(), "AdamW: a model without parameters");
    return segs;
  }
  // The segments cut to the owned range and counted from its start: a tensor split between shares keeps its
  // lr / wd / eps on both sides (the update is element-wise).
  static std::vector<AdamSegment> segments_within(const std::vector<AdamSegment>& segs, OwnedRange owned) {
    std::vector<AdamSegment> cut;
    size_t begin = 0;
    for (const AdamSegment& s : segs) {
      if (s.end > owned.begin && begin < owned.end)
        cut.push_back({std::min(s.end, owned.end) - owned.begin, s.lr, s.wd, s.eps});
      begin = s.end;
    }
    return cut;
  }
  size_t offset(size_t i) const { return i == 0 ? 0 : segments_.at(i - 1).end; }
  size_t owned_offset(size_t i) const {
    MUE_CHECK(offset(i) >= owned_.begin && segments_.at(i).end <= owned_.end, "AdamW: tensor ", i,
              " is not within the owned elements");
    return offset(i) - owned_.begin;
  }

  ParamStore<Backend>& model_;
  AdamWConfig cfg_;
  std::vector<AdamSegment> segments_;
  OwnedRange owned_;
  AdamWKernels<Backend> kernels_;
  Arena m_arena_, v_arena_;
  M *m_ = nullptr, *v_ = nullptr;
};

}  // namespace mue
