#include "dist/communicator.h"

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "dist/mpi_communicator.h"

namespace mue::dist {

namespace {

// The world of one process: every collective is the identity.
class SingleProcess final : public Communicator {
 public:
  std::string name() const override { return "single"; }
  void mean(float*, size_t) override {}
  void mean(double*, size_t) override {}
  void sum(double*, size_t) override {}
  void reduce_scatter_mean(float*, size_t) override {}  // the one share is everything
  void allgather_shares(float*, size_t) override {}
  void allgather_shares(bf16*, size_t) override {}
  void gather_shares(const float* mine, float* all, size_t n) override { std::copy(mine, mine + n, all); }
  std::vector<uint64_t> allgather(uint64_t v) override { return {v}; }
  int max(int v) override { return v; }
  void broadcast_bytes(void*, size_t) override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

bool parse_int(const char* s, int& out) {
  if (!s || !*s) return false;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (*end || v < 0 || v > (1 << 30)) return false;
  out = int(v);
  return true;
}

std::unique_ptr<Communicator>& world_slot() {
  static std::unique_ptr<Communicator> w;
  return w;
}

}  // namespace

const std::vector<const char*>& launcher_env_vars() {
  static const std::vector<const char*> v = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE",
                                             "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"};
  return v;
}

Launch launch_from_env() {
  const auto& v = launcher_env_vars();
  for (size_t i = 0; i < v.size(); i += 2) {
    const char* r = std::getenv(v[i]);
    const char* n = std::getenv(v[i + 1]);
    if (!r || !n) continue;
    Launch l;
    MUE_CHECK(parse_int(r, l.rank) && parse_int(n, l.size) && l.size >= 1 && l.rank < l.size, v[i], "=", r, " / ",
              v[i + 1], "=", n, " is not a rank of a world size");
    l.source = std::string(v[i]) + "/" + v[i + 1];
    return l;
  }
  return {};
}

int local_rank_from_env() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "MPI_LOCAL_RANK"}) {
    const char* s = std::getenv(v);
    if (!s) continue;
    int r = 0;
    MUE_CHECK(parse_int(s, r), v, "=", s, " is not a local rank");
    return r;
  }
  return -1;
}

int device_of_rank(int rank, int local_rank, int devices) {
  MUE_CHECK(devices > 0, "rank ", rank, " sees no CUDA device");
  return (local_rank >= 0 ? local_rank : rank) % devices;
}

Communicator& world() {
  auto& w = world_slot();
  if (w) return *w;
  const Launch l = launch_from_env();
  if (l.size == 1) {
    w = std::make_unique<SingleProcess>();
  } else {
#ifdef MUE_HAVE_MPI
    w = start_mpi(l);
#else
    throw CollectiveError("launched as rank " + std::to_string(l.rank) + " of " + std::to_string(l.size) + " (" +
                          l.source + ") but mue was built without MPI: install libopenmpi-dev (scripts/setup.sh) and "
                          "rebuild, or run one process");
#endif
  }
  return *w;
}

bool world_is_distributed() { return world_slot() && world_slot()->size() > 1; }

void agree(Communicator& comm, const std::exception_ptr& error) {
  if (comm.size() == 1) {
    if (error) std::rethrow_exception(error);
    return;
  }
  const std::vector<uint64_t> failed = comm.allgather(error ? 1 : 0);
  for (int r = 0; r < comm.size(); ++r)
    if (failed[size_t(r)]) {
      if (r == comm.rank()) std::rethrow_exception(error);
      throw PeerFailed();
    }
}

bool printed_here(const std::exception& e) {
  if (dynamic_cast<const PeerFailed*>(&e)) return false;
  if (!dynamic_cast<const CollectiveError*>(&e)) return true;
  if (world_slot()) return world_slot()->rank() == 0;
  try {
    return launch_from_env().rank == 0;
  } catch (const Error&) {
    return true;
  }
}

void end_job_after(const std::exception& e) {
  if (world_is_distributed() && !dynamic_cast<const PeerFailed*>(&e) && !dynamic_cast<const CollectiveError*>(&e))
    world_slot()->abort(1);
}

void check_same_config(Communicator& comm, const std::string& resolved_config) {
  if (comm.size() == 1) return;
  const std::vector<uint64_t> h = comm.allgather(fnv1a(resolved_config.data(), resolved_config.size()));
  for (int r = 1; r < comm.size(); ++r)
    if (h[size_t(r)] != h[0])
      throw CollectiveError("the ranks resolved different configs (rank " + std::to_string(r) +
                            "'s differs from rank 0's): give every rank the same config file and overrides");
}

Share share_of(size_t n, int rank, int size) {
  const size_t r = size_t(rank), g = size_t(size), base = n / g, extra = n % g;
  const size_t begin = r * base + std::min(r, extra);
  return {begin, begin + base + (r < extra ? 1 : 0)};
}

Shard shard_batch(const Communicator& comm, int global_batch, const char* what) {
  if (global_batch % comm.size() != 0)
    throw CollectiveError(std::string(what) + "=" + std::to_string(global_batch) + " does not divide by the " +
                          std::to_string(comm.size()) + " ranks (it is the global batch; each rank takes an equal "
                          "share)");
  return {comm.rank(), comm.size()};
}

uint64_t fnv1a(const void* data, size_t bytes, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

}  // namespace mue::dist
