// Data-parallel training on a backend: every rank runs the same model on its share of the global batch
// (dist::Shard); after the backward, the mean of the ranks' gradients and losses replaces each rank's own, so
// the optimizer (grad norm, clip, divergence check, update) sees what one process would on the whole batch.
#pragma once
#include <memory>
#include <string>

#include "dist/communicator.h"
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
// else why not. The CUDA backend's reducer is NCCL's (ncclAllReduce on the backend's stream, inside the step's
// graph, its communicator bootstrapped through MPI), which is not written yet.
inline std::string cannot_reduce_on(const std::string& device) {
  if (device == "cuda") return "train.device=cuda on more than one rank needs the NCCL reducer, not written yet";
  return "";
}
#ifdef MUE_HAVE_CUDA
// Refused at start-up by cannot_reduce_on; here so that the trainer compiles for every backend.
inline std::unique_ptr<Reducer> backend_reducer(Communicator& comm, CudaBackend&) {
  throw CollectiveError(cannot_reduce_on("cuda") + " (" + std::to_string(comm.size()) + " ranks)");
}
#endif

// The step's hook (experiments/device_step.h): the ranks' mean gradient (the model's whole gradient arena, one
// all-reduce) and mean loss (what the divergence check and the log read). Each rank's loss is the mean over
// its equal share of the batch, so the mean over ranks is the whole batch's mean and its gradient.
template <class Model, class Optimizer>
void mean_over_ranks(Reducer& r, Model& model, Optimizer& opt) {
  r.mean(model.grad_arena(), model.n_params());
  r.mean(opt.loss_out(), 1);
}

}  // namespace mue::dist
