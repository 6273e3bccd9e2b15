#include "dist/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <vector>

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
  void sum(double* data, size_t n) override { sum_of(data, n, MPI_DOUBLE); }
  // One MPI_Reduce_scatter: each element is summed once, on the rank whose share holds it. For two ranks the sum
  // is the all-reduce's (a + b = b + a), so ZeRO-1's mean gradient is bitwise zero=0's.
  void reduce_scatter_mean(float* data, size_t n) override {
    const Layout l = layout(n);
    const Share mine = share(n);
    std::vector<float> out(mine.size());
    check(MPI_Reduce_scatter(data, out.data(), l.counts.data(), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
          "MPI_Reduce_scatter");
    const float g = float(size_);
    for (size_t i = 0; i < out.size(); ++i) data[mine.begin + i] = out[i] / g;  // as mean_of divides
  }
  void allgather_shares(float* data, size_t n) override { allgather_shares_of(data, n, MPI_FLOAT); }
  void allgather_shares(bf16* data, size_t n) override { allgather_shares_of(data, n, MPI_UINT16_T); }
  // MPI_Iallreduce of the same chunks as mean(), so each element's sum is the same; the division by G follows
  // in wait_started. MPI moves a non-blocking collective on only inside MPI calls: each start also tests the
  // ones before it.
  void start_mean(float* data, size_t n) override {
    for (size_t at = 0; at < n; at += kMaxChunk) {
      const int count = int(std::min(kMaxChunk, n - at));
      started_.push_back({data + at, size_t(count), MPI_REQUEST_NULL});
      check(MPI_Iallreduce(MPI_IN_PLACE, data + at, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                           &started_.back().request),
            "MPI_Iallreduce");
    }
    for (Started& s : started_) {
      int done = 0;
      check(MPI_Test(&s.request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    }
  }
  void wait_started() override {
    const float g = float(size_);
    for (Started& s : started_) {
      check(MPI_Wait(&s.request, MPI_STATUS_IGNORE), "MPI_Wait");
      for (size_t i = 0; i < s.n; ++i) s.data[i] /= g;  // as mean_of divides
    }
    started_.clear();
  }
  void gather_shares(const float* mine, float* all, size_t n) override {
    const Layout l = layout(n);
    check(MPI_Gatherv(mine, l.counts[size_t(rank_)], MPI_FLOAT, all, l.counts.data(), l.displs.data(), MPI_FLOAT, 0,
                      MPI_COMM_WORLD),
          "MPI_Gatherv");
  }
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
  void sum_of(T* data, size_t n, MPI_Datatype type) {
    for (size_t at = 0; at < n; at += kMaxChunk) {
      const int count = int(std::min(kMaxChunk, n - at));
      check(MPI_Allreduce(MPI_IN_PLACE, data + at, count, type, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce(sum)");
    }
  }
  template <class T>
  void mean_of(T* data, size_t n, MPI_Datatype type) {
    sum_of(data, n, type);
    const T g = T(size_);
    for (size_t i = 0; i < n; ++i) data[i] /= g;
  }
  template <class T>
  void allgather_shares_of(T* data, size_t n, MPI_Datatype type) {
    const Layout l = layout(n);
    check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, l.counts.data(), l.displs.data(), type,
                         MPI_COMM_WORLD),
          "MPI_Allgatherv");
  }
  struct Started {  // a start_mean's chunk and its request
    float* data;
    size_t n;
    MPI_Request request;
  };
  std::vector<Started> started_;
  // The shares of n elements as MPI's int counts and offsets: the v-collectives take no chunks, so the whole
  // vector must be indexable by int (2^31 floats, 8 GiB: far beyond what the CPU backend trains).
  struct Layout {
    std::vector<int> counts, displs;
  };
  Layout layout(size_t n) const {
    MUE_CHECK(n <= size_t(INT_MAX), "MPI: ZeRO-1 over ", n, " elements: more than MPI's int offsets reach");
    Layout l;
    for (int r = 0; r < size_; ++r) {
      const Share s = share_of(n, r, size_);
      l.counts.push_back(int(s.size())), l.displs.push_back(int(s.begin));
    }
    return l;
  }
};

}  // namespace

std::unique_ptr<Communicator> start_mpi(const Launch& launch) { return std::make_unique<MpiCommunicator>(launch); }

}  // namespace mue::dist
