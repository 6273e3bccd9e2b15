#include "dist/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace mue::dist {

namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("MPI: ", what, " failed: ", std::string(msg, size_t(len)));
}

// MPI counts are int: larger buffers go in chunks (the same chunks on every rank).
constexpr size_t kMaxChunk = size_t(1) << 30;

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(const Launch& l) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;  // OpenMP threads compute; only the main thread calls MPI
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    }
    // Errors come back as codes (a one-line mue::Error) instead of MPI's default of aborting the job silently.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MUE_CHECK(rank_ == l.rank && size_ == l.size, "the launcher says rank ", l.rank, " of ", l.size, " (", l.source,
              ") but MPI says rank ", rank_, " of ", size_, ": launch mue with the mpirun of the MPI it was built with");
  }
  ~MpiCommunicator() override {
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
  }
  std::string name() const override { return "mpi"; }
  void mean(float* data, size_t n) override { mean_of(data, n, MPI_FLOAT); }
  void mean(double* data, size_t n) override { mean_of(data, n, MPI_DOUBLE); }
  std::vector<uint64_t> allgather(uint64_t v) override {
    std::vector<uint64_t> all(size_t(size_), 0);
    check(MPI_Allgather(&v, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD), "MPI_Allgather");
    return all;
  }
  int max(int v) override {
    int out = 0;
    check(MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce(max)");
    return out;
  }
  void broadcast_bytes(void* data, size_t bytes) override {
    for (size_t at = 0; at < bytes; at += kMaxChunk)
      check(MPI_Bcast(static_cast<char*>(data) + at, int(std::min(kMaxChunk, bytes - at)), MPI_BYTE, 0, MPI_COMM_WORLD),
            "MPI_Bcast");
  }
  [[noreturn]] void abort(int code) override {
    std::fflush(stdout), std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; should it, the process still ends
  }

 private:
  template <class T>
  void mean_of(T* data, size_t n, MPI_Datatype type) {
    for (size_t at = 0; at < n; at += kMaxChunk) {
      const int count = int(std::min(kMaxChunk, n - at));
      check(MPI_Allreduce(MPI_IN_PLACE, data + at, count, type, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce(sum)");
    }
    const T g = T(size_);
    for (size_t i = 0; i < n; ++i) data[i] /= g;
  }
};

}  // namespace

std::unique_ptr<Communicator> start_mpi(const Launch& launch) { return std::make_unique<MpiCommunicator>(launch); }

}  // namespace mue::dist
