// Whether a CPU run's OpenMP threads would share cores with other processes. A thread that waits for a core at
// every parallel region's barrier slows the whole team: with both of 2 cores busy, a small model ran 26x slower on
// 2 threads than on 1 (bench/RESULTS.md). mue does not change the thread count it is given (a run that chose it from
// the load would not repeat bit for bit, nor resume so); it says so in one line.
#pragma once
#include <chrono>
#include <string>

namespace mue {

// Cores kept busy by all processes over `window` (the non-idle share of /proc/stat's CPU time, times the cores it
// counts), measured while this process sleeps; -1 where /proc/stat cannot be read.
double busy_cores(std::chrono::milliseconds window);

// The note for a run of `threads` threads on `cores` cores while others keep `busy` of them busy ("" when the free
// cores hold every thread, or busy < 0).
std::string crowded_cpu_note(int threads, int cores, double busy);

}  // namespace mue
