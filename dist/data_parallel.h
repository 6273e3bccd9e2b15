// Data-parallel training on a backend: every rank runs the same model on its share of the global batch
// (dist::Shard); after the backward, the mean of the ranks' gradients and losses replaces each rank's own, so
// the optimizer (grad norm, clip, divergence check, update) sees what one process would on the whole batch.
#pragma once
#include <memory>

#include "dist/communicator.h"
#include "nn/backend.h"
#ifdef MUE_HAVE_NCCL
#include "dist/nccl_reducer.h"
#endif

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

#ifdef MUE_HAVE_CUDA
// CUDA: NCCL on the backend's stream, its communicator bootstrapped through `comm` (which must be MPI).
inline std::unique_ptr<Reducer> backend_reducer(Communicator& comm, CudaBackend& be) {
#ifdef MUE_HAVE_NCCL
  return make_nccl_reducer(comm, be.ctx.stream);
#else
  (void)be;
  throw CollectiveError("train.device=cuda on " + std::to_string(comm.size()) +
                        " ranks needs NCCL, and mue was built without it");
#endif
}
#endif

// Whether this build can reduce a backend's gradients over several ranks ("cpu" | "cuda"); why not otherwise.
inline std::string cannot_reduce_on(const std::string& device) {
#ifndef MUE_HAVE_NCCL
  if (device == "cuda") return "train.device=cuda on more than one rank needs NCCL, and mue was built without it";
#endif
  (void)device;
  return "";
}

// The step's hook (experiments/device_step.h): the ranks' mean gradient (the model's whole gradient arena, one
// all-reduce) and mean loss (what the divergence check and the log read). Each rank's loss is the mean over
// its equal share of the batch, so the mean over ranks is the whole batch's mean and its gradient.
template <class Model, class Optimizer>
void mean_over_ranks(Reducer& r, Model& model, Optimizer& opt) {
  r.mean(model.grad_arena(), model.n_params());
  r.mean(opt.loss_out(), 1);
}

}  // namespace mue::dist
