#include "experiments/run_timing.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/h5log.h"

namespace mue {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kPhaseNames[kPhaseCount] = {"config", "checks",  "data",  "context", "model", "file",
                                                  "first_step", "capture", "steps", "eval", "checkpoint", "close"};
constexpr Phase kSetupPhases[] = {Phase::config, Phase::checks, Phase::data, Phase::context, Phase::model, Phase::file};

constexpr Phase kCountedPhases[] = {Phase::steps, Phase::eval, Phase::checkpoint, Phase::capture};

// f(attribute name, number) for every number of a RunTiming, as the run file's /timing holds it.
template <class Timing, class F>
void for_each_number(Timing& t, F f) {
  for (size_t i = 0; i < size_t(kPhaseCount); ++i) f(std::string(kPhaseNames[i]), t.seconds[i]);
  f(std::string("total"), t.total);
  f(std::string("before_main"), t.before_main);
  for (Phase p : kCountedPhases) f(std::string(kPhaseNames[size_t(p)]) + "_count", t.counts[size_t(p)]);
}

// Seconds from the kernel's start of this process (its fork) to now: /proc/self/stat's starttime (field 22, clock
// ticks since boot) against CLOCK_BOOTTIME. NaN where either is missing. The loader's work (the CUDA and cuBLAS
// libraries mapped and relocated) and static initialisers happen before main, out of the steady clock's reach.
double seconds_since_process_start() {
  std::ifstream stat("/proc/self/stat");
  std::string line;
  if (!std::getline(stat, line)) return NAN;
  const size_t comm_end = line.rfind(')');  // the command name (field 2) may hold spaces
  if (comm_end == std::string::npos) return NAN;
  std::istringstream fields(line.substr(comm_end + 1));
  std::string skipped;
  for (int field = 3; field < 22; ++field) fields >> skipped;
  unsigned long long start_ticks = 0;
  timespec now{};
  const long ticks_per_s = ::sysconf(_SC_CLK_TCK);
  if (!(fields >> start_ticks) || ticks_per_s <= 0 || ::clock_gettime(CLOCK_BOOTTIME, &now) != 0) return NAN;
  return double(now.tv_sec) + 1e-9 * double(now.tv_nsec) - double(start_ticks) / double(ticks_per_s);
}

struct ProcessStart {
  Clock::time_point at;
  double before_main;
};
std::optional<ProcessStart> g_process_start;

}  // namespace

const char* phase_name(Phase p) { return kPhaseNames[size_t(p)]; }

double RunTiming::setup() const {
  double s = 0;
  for (Phase p : kSetupPhases) s += (*this)[p];
  return s;
}

std::vector<std::pair<std::string, double>> RunTiming::attrs() const {
  std::vector<std::pair<std::string, double>> a;
  for_each_number(*this, [&](const std::string& name, double v) { a.push_back({name, v}); });
  return a;
}

std::optional<RunTiming> RunTiming::read(const std::string& run_file) {
  std::vector<std::string> paths;
  for (const auto& [name, value] : RunTiming().attrs()) paths.push_back("timing/" + name);
  const std::vector<std::optional<double>> values = read_double_attrs(run_file, paths);
  if (std::all_of(values.begin(), values.end(), [](auto& v) { return !v; })) return std::nullopt;
  RunTiming t;
  size_t i = 0;
  for_each_number(t, [&](const std::string&, double& v) { v = values[i++].value_or(NAN); });
  return t;
}

std::string RunTiming::line() const {
  auto f = [](double s) {
    char b[32];
    std::snprintf(b, sizeof b, "%.2f", s);
    return std::string(b);
  };
  auto n = [](double count) {  // a count, or a mean count over runs
    char b[32];
    std::snprintf(b, sizeof b, count == std::floor(count) ? "%.0f" : "%.1f", count);
    return std::string(b);
  };
  std::string s = "time: setup " + f(setup()) + " s (";
  for (Phase p : kSetupPhases) s += std::string(p == Phase::config ? "" : ", ") + phase_name(p) + " " + f((*this)[p]);
  s += "), first step " + f((*this)[Phase::first_step]) + ", capture " + f((*this)[Phase::capture]) + ", steps " +
       f((*this)[Phase::steps]) + " (" + n(count(Phase::steps)) + "), eval " + f((*this)[Phase::eval]) + " (" +
       n(count(Phase::eval)) + "), checkpoint " + f((*this)[Phase::checkpoint]) + " (" + n(count(Phase::checkpoint)) +
       "), close " + f((*this)[Phase::close]) + ", total " + f(total) + " s";
  if (std::isfinite(before_main)) s += " (+" + f(before_main) + " before main)";
  return s;
}

RunTiming mean_timing(const std::vector<RunTiming>& runs) {
  RunTiming mean;
  std::vector<double*> out;
  for_each_number(mean, [&](const std::string&, double& v) { out.push_back(&v); });
  std::vector<double> sum(out.size(), 0), known(out.size(), 0);
  for (const RunTiming& r : runs) {
    size_t i = 0;
    for_each_number(r, [&](const std::string&, double v) {
      if (std::isfinite(v)) sum[i] += v, ++known[i];
      ++i;
    });
  }
  for (size_t i = 0; i < out.size(); ++i) *out[i] = known[i] > 0 ? sum[i] / known[i] : NAN;
  return mean;
}

void mark_process_start() { g_process_start = ProcessStart{Clock::now(), seconds_since_process_start()}; }

PhaseClock::PhaseClock() : start_(Clock::now()) {
  if (g_process_start) {
    start_ = g_process_start->at;
    t_.before_main = g_process_start->before_main;
    g_process_start.reset();  // a second run of this process (tests) starts at its own entry
  }
  last_ = start_;
}

void PhaseClock::end(Phase p) {
  const Clock::time_point now = Clock::now();
  t_[p] += std::chrono::duration<double>(now - last_).count();
  last_ = now;
}

void PhaseClock::count(Phase p) { ++t_.counts[size_t(p)]; }

// Clamped rather than checked: a wrong split must not fail a finished run (the sum would then exceed the total).
void PhaseClock::move(Phase from, Phase to, double s) {
  t_[from] -= std::min(s, t_[from]);
  t_[to] += s;
}

RunTiming PhaseClock::timing() const {
  RunTiming t = t_;
  t.total = std::chrono::duration<double>(last_ - start_).count();
  return t;
}

}  // namespace mue
