// The CUDA backend's reducer: the ranks' mean of device memory through NCCL (dist/nccl_reducer.cpp, built where
// CMake finds NCCL: MUE_HAVE_NCCL). One process per GPU; the NCCL communicator is bootstrapped through the host
// Communicator (rank 0's ncclUniqueId, broadcast), so it runs wherever that runs (mpirun, srun, one process).
#pragma once
#ifdef MUE_HAVE_NCCL
#include <functional>
#include <memory>
#include <string>

#include "core/cuda_context.h"
#include "dist/communicator.h"

namespace mue::dist {

// mean() is ncclAllReduce(ncclAvg) in place on ctx's stream, queued like a kernel (the host does not wait).
// NCCL reduces every element once and sends that result to every rank, so all ranks get bitwise the same mean.
// ncclAvg scales each rank's value by 1/G before the sum: for G a power of two that is exactly the sum / G.
// ZeRO-1's reduce_scatter_mean and allgather_shares run on ctx's stream too; start_mean (gradient buckets) runs
// on a communication stream of the reducer's own, after an event on ctx's stream, so that the backward goes on;
// wait_started makes ctx's stream wait for it (Reducer, dist/communicator.h).
//
// A rank that dies or hangs must not leave the others waiting forever. The communicator is non-blocking: every
// NCCL call on the host is polled with ncclCommGetAsyncError for at most timeout_s (init and finalize, which wait
// for every rank's set-up: at least 120 s), then a one-line mue::Error. On the device, a collective whose peer never arrives spins
// forever, so a watchdog thread polls every collective until it has finished (a CUDA event after it) and the
// communicator's async error: an error, or a collective unfinished timeout_s after it was queued, aborts the
// communicator (ncclCommAbort) and calls on_failure(one line); by default that prints "mue: error: ..." and
// ends the process with exit code 1, which ends an mpirun job (srun: each rank's own watchdog ends it).
// The timeout counts from the enqueue, so it must exceed the time the device may be behind the host plus the
// longest a rank may wait for the others (rank 0 writing a checkpoint): minutes, not seconds.
std::unique_ptr<Reducer> start_nccl(Communicator& comm, cuda::Context& ctx, double timeout_s,
                                    std::function<void(const std::string&)> on_failure = {});

// The watchdog's timeout in seconds: MUE_NCCL_TIMEOUT where set (a positive number, else an error), else 600.
double nccl_timeout_s();

}  // namespace mue::dist
#endif  // MUE_HAVE_NCCL
