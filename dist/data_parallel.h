// Data-parallel training on a backend: every rank runs the same model on its share of the global batch
// (dist::Shard); after the backward, the mean of the ranks' gradients and losses replaces each rank's own, so
// the optimizer (grad norm, clip, divergence check, update) sees what one process would on the whole batch.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/nccl_reducer.h"
#include "nn/backend.h"

namespace mue::dist {

// The reducer of the memory a backend computes in. CPU: host memory, the communicator itself (not owned: it
// lives as long as the process).
template <class T>
std::shared_ptr<Reducer> backend_reducer(Communicator& comm, CpuBackend<T>&) {
  return std::shared_ptr<Reducer>(std::shared_ptr<Reducer>(), &comm);
}

// Whether this build can average a backend's gradients over several ranks (device "cpu" | "cuda"): "" if so,
// else why not. CUDA: NCCL's reducer (dist/nccl_reducer.h), where mue was built with NCCL; its timeout
// (MUE_NCCL_TIMEOUT) is read here, so that a bad value stops every rank at start-up.
inline std::string cannot_reduce_on(const std::string& device) {
  if (device != "cuda") return "";
#ifdef MUE_HAVE_NCCL
  try {
    (void)nccl_timeout_s();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
#else
  return "train.device=cuda on more than one rank needs NCCL, and mue was built without it: install NCCL (e.g. "
         "libnccl-dev) and rebuild, or train on one GPU";
#endif
}
#ifdef MUE_HAVE_CUDA
// This rank's GPU: device 0 for one process (today's path); on several ranks, its local rank's (dist::device_of_rank).
inline int cuda_device_of(const Communicator& comm) {
  return comm.size() == 1 ? 0 : device_of_rank(comm.rank(), local_rank_from_env(), cuda::device_count());
}
// The CUDA backend's reducer: NCCL on the backend's stream. Without NCCL, refused at start-up by
// cannot_reduce_on; here so that the trainer compiles for every backend.
inline std::shared_ptr<Reducer> backend_reducer(Communicator& comm, CudaBackend& be) {
#ifdef MUE_HAVE_NCCL
  return start_nccl(comm, be.ctx, nccl_timeout_s());
#else
  throw CollectiveError(cannot_reduce_on("cuda") + " (" + std::to_string(comm.size()) + " ranks)");
#endif
}
#endif

// The step's hook (experiments/device_step.h): the ranks' mean gradient (the model's whole gradient arena, one
// all-reduce after the backward: train.bucket_mb=0) and mean loss (what the divergence check and the log read).
// Each rank's loss is the mean over its equal share of the batch, so the mean over ranks is the whole batch's
// mean and its gradient.
template <class Model, class Optimizer>
void mean_over_ranks(Reducer& r, Model& model, Optimizer& opt) {
  r.mean(model.grad_arena(), model.n_params());
  r.mean(opt.loss_out(), 1);
}

// The same mean in buckets overlapped with the backward (train.bucket_mb > 0, as PyTorch DDP): the gradient arena
// cut at tensor boundaries into buckets of at least `bytes` (the last may be smaller), from its end, since the
// backward makes the last tensors' gradients first. The model reports (ParamStore::set_on_grads_final) when the
// gradients of elements [first, n) are final; every bucket wholly inside starts its mean then (start_mean), and
// after the backward the step waits for them all. Each element is reduced by the same collective as in one
// all-reduce of the arena.
struct BucketedMean {
  Reducer& r;
  float* grads;
  std::vector<Share> buckets;  // ranges of the arena, from its end
  size_t started = 0;
  void on_final(size_t first) {
    for (; started < buckets.size() && buckets[started].begin >= first; ++started)
      r.start_mean(grads + buckets[started].begin, buckets[started].size());
  }
  // After the backward (whose end reports first = 0): the mean loss, queued after every bucket's mean.
  void finish(double* loss) {
    MUE_CHECK(started == buckets.size(), "data parallel: the backward left ", buckets.size() - started,
              " gradient buckets unreduced");
    started = 0;
    r.wait_started();
    r.mean(loss, 1);
  }
};
template <class Model>
std::vector<Share> gradient_buckets(Model& model, double bytes) {
  std::vector<Share> buckets;
  const auto& ps = model.params();
  size_t end = model.n_params();
  for (size_t i = ps.size(); i-- > 0;) {
    const size_t begin = size_t(ps[i].grad - model.grad_arena());
    if (i == 0 || double(end - begin) * sizeof(*ps[i].grad) >= bytes) buckets.push_back({begin, end}), end = begin;
  }
  return buckets;
}

// ZeRO-1 (train.zero=1): the same step with the optimizer split over the ranks, each owning one share of the
// parameter arena (Communicator::share) and its moments, on the backend's reducer (the host communicator on the
// CPU, NCCL on CUDA). After the backward: the mean gradient of this rank's share (one reduce-scatter) and the
// mean loss.
template <class Model, class Optimizer>
void mean_share_over_ranks(Reducer& r, Model& model, Optimizer& opt) {
  r.reduce_scatter_mean(model.grad_arena(), model.n_params());
  r.mean(opt.loss_out(), 1);
}
// After the optimizer's norm of its share: the global squared norm, so that clip and the divergence check see
// the whole gradient's (the sum of the shares' squares; only its rounding differs from one sum over all).
template <class Optimizer>
void sum_norm_over_ranks(Reducer& r, Optimizer& opt) {
  r.sum(opt.norm_sq_out(), 1);
}
// After each rank updated its share: every rank's share of the weights the forward reads to every rank (the
// CPU's fp32 values; CUDA's bf16 weights, so that there the fp32 values outside a rank's share are its own stale
// copy until gather_values).
template <class Model>
void gather_weights(Reducer& r, Model& model) {
  r.allgather_shares(model.params().front().weight, model.n_params());
}
template <class Model>
void gather_values(Reducer& r, Model& model) {
  r.allgather_shares(model.params().front().value, model.n_params());
}

}  // namespace mue::dist
