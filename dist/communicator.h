// Data parallelism: the ranks of one training job and what they exchange. One process per device; a launcher
// (mpirun, srun, MPICH's hydra) says how many there are through the environment. A process started without one
// is a world of one rank that needs no MPI at all (today's path).
//
// Layer: dist/ sits above nn/ and optim/ and below experiments/; this header needs nothing but the standard
// library and core/, so a backend-specific reducer (NCCL, dist/nccl_reducer.h) can implement the same interface.
#pragma once
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace mue::dist {

// Rank and world size as the launcher's environment gives them; size 1 without a launcher.
struct Launch {
  int rank = 0, size = 1;
  std::string source;  // the variables they came from ("" without a launcher)
};
// OMPI_COMM_WORLD_RANK/SIZE (Open MPI's mpirun), PMI_RANK/PMI_SIZE (MPICH's hydra), SLURM_PROCID with
// SLURM_STEP_NUM_TASKS (srun; a batch script's own SLURM_NTASKS is not a job step and does not count). A value
// that is not a rank of its size is an error naming the variables.
Launch launch_from_env();
// The variables launch_from_env reads: `mue sweep` clears them in its children, which are single processes.
const std::vector<const char*>& launcher_env_vars();
// This process's rank among the ranks on its node: OMPI_COMM_WORLD_LOCAL_RANK (Open MPI), SLURM_LOCALID (srun),
// MPI_LOCALRANKID (MPICH's hydra) or MPI_LOCAL_RANK; -1 where none is set. A value that is not a rank is an error.
int local_rank_from_env();
// The GPU of a rank that sees `devices` GPUs: its local rank (without one, its rank) modulo `devices`, so that the
// ranks of one node take different GPUs and a rank shown one GPU alone (Slurm's --gpus-per-task=1) takes that.
int device_of_rank(int rank, int local_rank, int devices);

// Collectives over the ranks, in place, on memory where a backend computes (host for the CPU backend, the GPU for
// NCCL). Every rank gets bitwise the same result: the weights stay identical without a broadcast.
class Reducer {
 public:
  virtual ~Reducer() = default;
  virtual void mean(float* data, size_t n) = 0;  // element-wise mean over the ranks
  virtual void mean(double* data, size_t n) = 0;
  virtual void sum(double* data, size_t n) = 0;  // element-wise sum over the ranks
  // ZeRO-1's collectives over n elements split in shares (share_of(n, rank, size)): reduce_scatter_mean leaves
  // the ranks' mean in this rank's share of data (the rest keeps this rank's values); allgather_shares gives every
  // rank every rank's share of data (float: the CPU's weights, bf16: the weights CUDA's forward reads).
  virtual void reduce_scatter_mean(float* data, size_t n) = 0;
  virtual void allgather_shares(float* data, size_t n) = 0;
  virtual void allgather_shares(bf16* data, size_t n) = 0;
  // The gradient's mean in buckets overlapped with the backward (train.bucket_mb): start_mean begins the mean of
  // data after what the backend has queued so far and may return before it is done; wait_started makes what is
  // queued next (the optimizer) come after every mean started since the last wait. Element for element the
  // same reduction as mean(). By default mean() at once.
  virtual void start_mean(float* data, size_t n) { mean(data, n); }
  virtual void wait_started() {}
};

// Rank `rank`'s contiguous share of n elements split over `size` ranks: [begin, end), as even as possible (the
// first n % size ranks hold one element more). ZeRO-1 splits the flat parameter arena so.
struct Share {
  size_t begin = 0, end = 0;
  size_t size() const { return end - begin; }
};
Share share_of(size_t n, int rank, int size);

// The ranks' host-side collectives (start-up checks, losses, stop signals); as a Reducer it works on host memory
// (the CPU backend's).
class Communicator : public Reducer {
 public:
  int rank() const { return rank_; }
  int size() const { return size_; }
  Share share(size_t n) const { return share_of(n, rank_, size_); }
  virtual std::string name() const = 0;  // "single" | "mpi"
  // Every rank's share of n floats (`mine`, share(n).size() values) into `all` (n values) on rank 0 alone (null
  // elsewhere): a ZeRO-1 checkpoint's moments.
  virtual void gather_shares(const float* mine, float* all, size_t n) = 0;
  virtual std::vector<uint64_t> allgather(uint64_t v) = 0;
  virtual int max(int v) = 0;
  // Rank 0's `bytes` bytes at `data` replace every other rank's (e.g. the NCCL communicator's unique id).
  virtual void broadcast_bytes(void* data, size_t bytes) = 0;
  template <class T>
  T broadcast(T v) {  // rank 0's value of a trivially copyable v
    static_assert(std::is_trivially_copyable_v<T>);
    broadcast_bytes(&v, sizeof v);
    return v;
  }
  // Ends every rank of the job now (a rank failing mid-run, while the others wait in a collective).
  [[noreturn]] virtual void abort(int code) = 0;

 protected:
  int rank_ = 0, size_ = 1;
};

// The process's world: started on first use from launch_from_env() (MPI_Init where size > 1), finalized at exit.
// Where size > 1 and mue was built without MPI, an error (CollectiveError).
Communicator& world();
// Whether world() has started a communicator of more than one rank (an error must then end the whole job).
bool world_is_distributed();

// An error that every rank raises at the same point with the same message (a check on agreed data): rank 0
// alone prints it.
struct CollectiveError : Error {
  using Error::Error;
};
// Another rank failed a start-up check and printed why; this rank exits quietly.
struct PeerFailed : std::exception {
  const char* what() const noexcept override { return "another rank failed (its error is printed)"; }
};

// Start-up checks done by every rank (some, such as the run file's, by rank 0 alone) end in agreement: where any
// rank failed, the lowest failing rank rethrows its error and every other rank throws PeerFailed, so the job
// stops in one line and no rank waits in a collective for one that has gone. `error`: this rank's, or null.
void agree(Communicator& comm, const std::exception_ptr& error);

// How the program ends after an error `e` on this rank. printed_here: whether this rank prints it (a
// CollectiveError on rank 0 alone, PeerFailed nowhere, anything else everywhere). end_job_after: where this rank
// failed alone while the job runs (the others wait for it in a collective), ends every rank of the job.
bool printed_here(const std::exception& e);
void end_job_after(const std::exception& e);

// Checks that every rank resolved the same config (a hash of its text): a CollectiveError otherwise.
void check_same_config(Communicator& comm, const std::string& resolved_config);

// A rank's contiguous share of the rows of a global batch: rows [first, first + count).
struct Shard {
  int rank = 0, size = 1;
  int count(int global) const { return global / size; }
  int first(int global) const { return rank * count(global); }
};
// The shard of `comm` for a global batch, which must divide by the world size (a CollectiveError otherwise).
Shard shard_batch(const Communicator& comm, int global_batch, const char* what);

uint64_t fnv1a(const void* data, size_t bytes, uint64_t h = 1469598103934665603ull);

}  // namespace mue::dist
