#include "dist/nccl_reducer.h"

#include <cuda_bf16.h>  // before nccl.h: older NCCL headers declare ncclBfloat16 only where it is
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <utility>

// CMake enables the reducer only from this version on; the check keeps a hand-made build honest.
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "the NCCL reducer needs NCCL >= 2.14 (non-blocking communicators)"
#endif

namespace mue::dist {

namespace {

using Clock = std::chrono::steady_clock;

// NCCL's error on one line: the code's text and NCCL's last message, where it has one.
std::string nccl_error(ncclComm_t comm, ncclResult_t r) {
  std::string s = ncclGetErrorString(r);
  const char* last = ncclGetLastError(comm);
  if (last && *last) s += std::string(" (") + last + ")";
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

void check_cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  fail("CUDA error in ", what, ": ", cudaGetErrorString(e));
}

// What the watchdog does by default: the one line, then the process ends (it cannot throw into the main thread,
// which may be stuck waiting for the device).
void exit_with(const std::string& line) {
  std::fflush(stdout);
  std::fprintf(stderr, "mue: error: %s\n", line.c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

class NcclReducer final : public Reducer {
 public:
  NcclReducer(Communicator& host, cuda::Context& ctx, double timeout_s, std::function<void(const std::string&)> on_failure)
      : rank_(host.rank()), size_(host.size()), device_(ctx.device()), stream_(ctx.stream), timeout_s_(timeout_s),
        timeout_(to_duration(timeout_s)),
        on_failure_(on_failure ? std::move(on_failure) : std::function<void(const std::string&)>(exit_with)) {
    MUE_CHECK(timeout_s > 0, "NCCL: the timeout must be positive, not ", timeout_s, " s");
    // Rank 0's id for every rank; should rank 0 fail to make one, every rank stops here instead of waiting.
    ncclUniqueId id{};
    std::exception_ptr error;
    if (rank_ == 0)
      if (const ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess)
        error = std::make_exception_ptr(Error("NCCL: ncclGetUniqueId failed: " + nccl_error(nullptr, r)));
    agree(host, error);
    host.broadcast_bytes(&id, sizeof id);
    try {
      check_cuda(cudaSetDevice(device_), "cudaSetDevice");
      check_cuda(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate");
      check_cuda(cudaEventCreateWithFlags(&handoff_, cudaEventDisableTiming), "cudaEventCreate");
      check_cuda(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;  // every call returns at once; settle() polls it, bounded by the timeout
      std::lock_guard lock(mu_);
      settle(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config), "ncclCommInitRankConfig", setup_s());
    } catch (...) {
      abort_locked();
      destroy_cuda();
      throw;
    }
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclReducer() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    watchdog_.join();
    std::lock_guard lock(mu_);
    // A clean end finalizes: that waits until every rank's all-reduces are done (bounded by the timeout). While an
    // error unwinds, the other ranks may be gone: abort, which never waits for them.
    if (comm_ && std::uncaught_exceptions() == 0) {
      try {
        settle(ncclCommFinalize(comm_), "ncclCommFinalize", setup_s());
        (void)ncclCommDestroy(comm_);
        comm_ = nullptr;
      } catch (const Error& e) {  // settle aborted the communicator
        std::fprintf(stderr, "mue: warning: %s\n", e.what());
      }
    }
    abort_locked();
    destroy_cuda();
  }

  void mean(float* data, size_t n) override { all_reduce(data, n, ncclFloat32, ncclAvg, stream_); }
  void mean(double* data, size_t n) override { all_reduce(data, n, ncclFloat64, ncclAvg, stream_); }
  void sum(double* data, size_t n) override { all_reduce(data, n, ncclFloat64, ncclSum, stream_); }

  // ZeRO-1, in place on the training stream, over the shares of share_of. Where the shares are all one size (n a
  // multiple of G) they lie in rank order at rank * n / G: NCCL's own reduce-scatter and all-gather. Otherwise
  // NCCL's documented form of the v-collectives: one rooted call per share (ncclReduce to its rank, ncclBroadcast
  // from it), grouped.
  void reduce_scatter_mean(float* data, size_t n) override {
    over_shares("ncclReduceScatter", n, [&](size_t each) {
      return ncclReduceScatter(data, data + size_t(rank_) * each, each, ncclFloat32, ncclAvg, comm_, stream_);
    }, [&](Share s, int r) {
      return ncclReduce(data + s.begin, data + s.begin, s.size(), ncclFloat32, ncclAvg, r, comm_, stream_);
    });
  }
  void allgather_shares(float* data, size_t n) override { allgather_of(data, n, ncclFloat32); }
  void allgather_shares(bf16* data, size_t n) override { allgather_of(data, n, ncclBfloat16); }

  // A bucket's mean on the communication stream, once the training stream has made its gradients: the backward
  // goes on meanwhile. wait_started: the training stream waits for all of them (the stream runs them in order).
  void start_mean(float* data, size_t n) override {
    if (n == 0) return;
    hand_over(stream_, comm_stream_);
    all_reduce(data, n, ncclFloat32, ncclAvg, comm_stream_);
    started_ = true;
  }
  void wait_started() override {
    if (std::exchange(started_, false)) hand_over(comm_stream_, stream_);
  }

 private:
  void all_reduce(void* data, size_t n, ncclDataType_t type, ncclRedOp_t op, cudaStream_t on) {
    if (n == 0) return;
    enqueue("ncclAllReduce", on, [&] { return ncclAllReduce(data, data, n, type, op, comm_, on); });
  }
  template <class T>
  void allgather_of(T* data, size_t n, ncclDataType_t type) {
    over_shares("ncclAllGather", n, [&](size_t each) {
      return ncclAllGather(data + size_t(rank_) * each, data, each, type, comm_, stream_);
    }, [&](Share s, int r) { return ncclBroadcast(data + s.begin, data + s.begin, s.size(), type, r, comm_, stream_); });
  }
  // even(n / G) where the shares are one size, else per_share(share, its rank) for every rank in one NCCL group.
  template <class Even, class PerShare>
  void over_shares(const char* what, size_t n, Even even, PerShare per_share) {
    if (n == 0) return;
    enqueue(what, stream_, [&] {
      if (n % size_t(size_) == 0) return even(n / size_t(size_));
      ncclResult_t r = ncclGroupStart();
      for (int k = 0; k < size_ && (r == ncclSuccess || r == ncclInProgress); ++k) r = per_share(share_of(n, k, size_), k);
      const ncclResult_t end = ncclGroupEnd();  // closes the group whatever happened in it
      return r == ncclSuccess || r == ncclInProgress ? end : r;
    });
  }
  // Queues call() (NCCL calls on stream `on`) under the lock; the watchdog then follows it to its end.
  template <class Call>
  void enqueue(const char* what, cudaStream_t on, Call call) {
    std::lock_guard lock(mu_);
    MUE_CHECK(comm_, "NCCL: rank ", rank_, "'s communicator was aborted after an earlier error");
    // A graph replay would skip the watchdog's bookkeeping below (DeviceStep runs a step with a reducer op by op).
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    check_cuda(cudaStreamIsCapturing(stream_, &capturing), "cudaStreamIsCapturing");
    MUE_CHECK(capturing == cudaStreamCaptureStatusNone, "NCCL: the reducer cannot run inside a CUDA graph capture");
    settle(call(), what, timeout_s_);
    check_cuda(cudaEventRecord(done_, on), "cudaEventRecord");
    queued_ = Clock::now(), pending_ = true;
  }
  // What is queued on `to` from now on runs after what is queued on `from` so far.
  void hand_over(cudaStream_t from, cudaStream_t to) {
    check_cuda(cudaEventRecord(handoff_, from), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(to, handoff_, 0), "cudaStreamWaitEvent");
  }
  void destroy_cuda() {
    if (done_) (void)cudaEventDestroy(done_);
    if (handoff_) (void)cudaEventDestroy(handoff_);
    if (comm_stream_) (void)cudaStreamDestroy(comm_stream_);
  }

  // Waits (mu_ held) until the call that returned r has finished on the host, for at most limit_s seconds: a
  // non-blocking communicator's calls may return ncclInProgress. An error or the limit aborts the communicator
  // and throws.
  void settle(ncclResult_t r, const char* what, double limit_s) {
    const Clock::time_point deadline = Clock::now() + to_duration(limit_s);
    while (r == ncclInProgress && Clock::now() < deadline) {
      std::this_thread::yield();
      if (const ncclResult_t q = ncclCommGetAsyncError(comm_, &r); q != ncclSuccess) r = q;
    }
    if (r == ncclSuccess) return;
    const std::string why = r == ncclInProgress ? "has not finished after " + seconds(limit_s) + hint() : nccl_error(comm_, r);
    abort_locked();
    fail("NCCL (rank ", rank_, " of ", size_, "): ", what, " ", r == ncclInProgress ? "" : "failed: ", why);
  }

  // The watchdog (its own thread): the communicator's async error and the last collective's completion.
  void watch() {
    (void)cudaSetDevice(device_);
    const Clock::duration every = std::clamp<Clock::duration>(timeout_ / 10, std::chrono::milliseconds(10),
                                                              std::chrono::seconds(1));
    std::unique_lock lock(mu_);
    while (!stop_ && comm_) {
      wake_.wait_for(lock, every);
      if (stop_ || !comm_) return;
      std::string why;
      ncclResult_t state = ncclSuccess;
      if (const ncclResult_t q = ncclCommGetAsyncError(comm_, &state); q != ncclSuccess) state = q;
      if (state != ncclSuccess && state != ncclInProgress) {
        why = "the communicator failed: " + nccl_error(comm_, state);
      } else if (pending_) {
        const cudaError_t e = cudaEventQuery(done_);
        if (e == cudaSuccess) pending_ = false;
        else if (e == cudaErrorNotReady && Clock::now() - queued_ > timeout_)
          why = "a collective has not finished " + seconds(timeout_s_) + " after it was queued" + hint();
        // Any other error is the device's (a kernel that faulted): the main thread reports it at its next sync.
      }
      if (why.empty()) continue;
      abort_locked();
      lock.unlock();
      on_failure_("NCCL (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + "): " + why);
      return;
    }
  }

  void abort_locked() {
    if (comm_) (void)ncclCommAbort(comm_);
    comm_ = nullptr, pending_ = false;
  }
  // Starting and finalizing the communicator wait for every rank's (a big job's ranks set up their connections
  // for a while), so they get at least two minutes, whatever the all-reduces' timeout.
  double setup_s() const { return std::max(timeout_s_, 120.0); }
  static Clock::duration to_duration(double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }
  static std::string seconds(double v) {
    char s[32];
    std::snprintf(s, sizeof s, "%g s", v);
    return s;
  }
  static const char* hint() { return ": a rank died or hangs (MUE_NCCL_TIMEOUT sets the limit, in seconds)"; }

  const int rank_, size_, device_;
  cudaStream_t stream_;                  // the training stream
  cudaStream_t comm_stream_ = nullptr;   // the buckets' means (start_mean), beside the backward
  cudaEvent_t handoff_ = nullptr;        // orders the two streams (hand_over)
  bool started_ = false;                 // a start_mean since the last wait_started
  const double timeout_s_;
  const Clock::duration timeout_;
  const std::function<void(const std::string&)> on_failure_;
  std::mutex mu_;  // every NCCL call and the watchdog's state: NCCL allows no concurrent calls on a communicator
  std::condition_variable wake_;
  ncclComm_t comm_ = nullptr;  // null once aborted
  cudaEvent_t done_ = nullptr;  // recorded after the last collective, on its stream
  Clock::time_point queued_;
  bool pending_ = false, stop_ = false;
  std::thread watchdog_;
};

}  // namespace

std::unique_ptr<Reducer> start_nccl(Communicator& comm, cuda::Context& ctx, double timeout_s,
                                    std::function<void(const std::string&)> on_failure) {
  return std::make_unique<NcclReducer>(comm, ctx, timeout_s, std::move(on_failure));
}

double nccl_timeout_s() {
  const char* s = std::getenv("MUE_NCCL_TIMEOUT");
  if (!s) return 600;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  MUE_CHECK(end != s && !*end && std::isfinite(v) && v > 0, "MUE_NCCL_TIMEOUT=", s,
            " is not a positive number of seconds");
  return v;
}

}  // namespace mue::dist
