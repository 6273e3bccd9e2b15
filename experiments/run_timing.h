// Where a training process's wall time goes: its phases, timed with a steady clock from main's entry, written to
// the run file's /timing group, printed as one line at the end of a run and by `mue show` (a run file: its own;
// a sweep index: the mean over its points). What a sweep point's fixed cost is made of, in every run.
#pragma once
#include <array>
#include <chrono>
#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mue {

// The phases in the order they first happen. Every moment from main's entry to the end of `close` is charged to
// exactly one of them, so they add up to the total (a phase may be charged more than once: `checks` before and
// after the data is opened, `model` before and after the backend is made).
enum class Phase {
  config,      // main's entry: arguments, config files, overrides (0 in a train_run called without main)
  checks,      // the run file's and the output folder's checks, the resume state, the memory estimate
  data,        // the token file mapped (or the image set loaded) and checked
  context,     // the device found (CUDA driver), its context, stream, cuBLAS handle and workspace made
  model,       // the parameter table, parameters, optimizer state, initial weights (or the checkpoint loaded)
  file,        // the run file created: attributes, parameter table, a resumed run's earlier rows
  first_step,  // the first training step, op by op (on CUDA: the kernels' modules loaded, scratch sized)
  capture,     // the step recorded and instantiated as a CUDA graph (host time; the first replay is in steps)
  steps,       // every later step, with the log rows
  eval,        // the evaluations
  checkpoint,  // the checkpoints written (with the flush before each)
  close,       // the final attributes and flush
};
inline constexpr int kPhaseCount = 12;
const char* phase_name(Phase p);

struct RunTiming {
  std::array<double, kPhaseCount> seconds{};  // by Phase
  // How many times a phase ran, for those that repeat: steps (those of the `steps` phase: the first is not),
  // eval, checkpoint, capture; the others' stay 0. Means over runs may be fractions.
  std::array<double, kPhaseCount> counts{};
  double total = 0;          // main's entry (without main: train_run's) to the end of close: the phases' sum
  double before_main = NAN;  // the kernel's start of the process to main's entry, to 10 ms (NaN: unknown); not in total
  double& operator[](Phase p) { return seconds[size_t(p)]; }
  double operator[](Phase p) const { return seconds[size_t(p)]; }
  double count(Phase p) const { return counts[size_t(p)]; }
  double setup() const;  // config through file: everything before the first step

  // The run file's /timing attributes (seconds; <phase>_count for the counted phases), and back: nullopt for a
  // file without them.
  std::vector<std::pair<std::string, double>> attrs() const;
  static std::optional<RunTiming> read(const std::string& run_file);
  // "time: setup 0.41 s (config …, file 0.02), first step 0.30, capture 0.05, steps 5.20 (1999), eval 0.80 (2),
  // checkpoint 0.00 (0), close 0.01, total 6.90 s (+0.05 before main)"
  std::string line() const;
};

// The mean of every number over `runs` (of each, over the runs where it is known: before_main may be NaN).
RunTiming mean_timing(const std::vector<RunTiming>& runs);

// main calls it first: its entry starts the process's timeline (taken by the first PhaseClock).
void mark_process_start();

// A run's stopwatch: end(p) charges the time since the previous boundary to p. No phase waits for the device:
// the caller puts the boundaries where the device is idle (after a read of the step's loss, an evaluation).
class PhaseClock {
 public:
  PhaseClock();  // starts at mark_process_start()'s mark if no clock took it yet, else now
  void end(Phase p);
  void count(Phase p);  // one more step, evaluation, checkpoint or capture
  // Re-charges `s` seconds measured inside `from` (a capture inside a step) to `to`.
  void move(Phase from, Phase to, double s);
  // The phases so far, with the total up to the last boundary.
  RunTiming timing() const;

 private:
  std::chrono::steady_clock::time_point start_, last_;
  RunTiming t_;
};

}  // namespace mue
