// Data-parallel training on a backend: every rank runs the same model on its share of the global batch
// (dist::Shard); after the backward, the mean of the ranks' gradients and losses replaces each rank's own, so
// the optimizer (grad norm, clip, divergence check, update) sees what one process would on the whole batch.
#pragma once
#include <memory>
#include <string>

#include "dist/communicator.h"
#include "dist/nccl_reducer.h"
#include "nn/backend.h"

namespace mue::dist {

// The reducer of the memory a backend computes in. CPU: host memory, through the communicator.
template <class T>
std::unique_ptr<Reducer> backend_reducer(Communicator& comm, CpuBackend<T>&) {
  struct Host final : Reducer {
    Communicator& comm;
    explicit Host(Communicator& c) : comm(c) {}
    void mean(float* d, size_t n) override { comm.mean(d, n); }
    void mean(double* d, size_t n) override { comm.mean(d, n); }
  };
  return std::make_unique<Host>(comm);
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
inline std::unique_ptr<Reducer> backend_reducer(Communicator& comm, CudaBackend& be) {
#ifdef MUE_HAVE_NCCL
  return start_nccl(comm, be.ctx, nccl_timeout_s());
#else
  throw CollectiveError(cannot_reduce_on("cuda") + " (" + std::to_string(comm.size()) + " ranks)");
#endif
}
#endif

// The step's hook (experiments/device_step.h): the ranks' mean gradient (the model's whole gradient arena, one
// all-reduce after the backward; buckets overlapped with the backward are not written yet) and mean loss (what the divergence check and the log read). Each rank's loss is the mean over
// its equal share of the batch, so the mean over ranks is the whole batch's mean and its gradient.
template <class Model, class Optimizer>
void mean_over_ranks(Reducer& r, Model& model, Optimizer& opt) {
  r.mean(model.grad_arena(), model.n_params());
  r.mean(opt.loss_out(), 1);
}

// ZeRO-1 (train.zero=1): the same step with the optimizer split over the ranks, each owning one share of the
// parameter arena (Communicator::share) and its moments. Through the host communicator, so for the CPU backend
// alone (its arenas are host memory, its weights are its fp32 values); CUDA refuses zero=1 at start-up.
// After the backward: the mean gradient of this rank's share (one reduce-scatter) and the mean loss.
template <class Model, class Optimizer>
void mean_share_over_ranks(Communicator& comm, Model& model, Optimizer& opt) {
  comm.reduce_scatter_mean(model.grad_arena(), model.n_params());
  comm.mean(opt.loss_out(), 1);
}
// After the optimizer's norm of its share: the global squared norm, so that clip and the divergence check see
// the whole gradient's (the sum of the shares' squares; only its rounding differs from one sum over all).
template <class Optimizer>
void sum_norm_over_ranks(Communicator& comm, Optimizer& opt) {
  comm.sum(opt.norm_sq_out(), 1);
}
// After each rank updated its share: every rank's share of the weights to every rank.
template <class Model>
void gather_weights(Communicator& comm, Model& model) {
  comm.allgather_shares(model.params().front().value, model.n_params());
}

}  // namespace mue::dist
