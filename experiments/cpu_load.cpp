#include "experiments/cpu_load.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

namespace mue {
namespace {
// /proc/stat's first line, "cpu user nice system idle iowait irq softirq steal ...": total and idle ticks.
bool cpu_ticks(double& total, double& idle, int& cores) {
  std::ifstream f("/proc/stat");
  std::string line, name;
  if (!std::getline(f, line)) return false;
  std::istringstream in(line);
  in >> name;
  std::vector<double> t;
  for (double v; in >> v;) t.push_back(v);
  if (name != "cpu" || t.size() < 5) return false;
  total = 0;
  for (size_t i = 0; i < t.size() && i < 8; ++i) total += t[i];  // guest time is already in user
  idle = t[3] + t[4];
  cores = 0;
  while (std::getline(f, line) && line.rfind("cpu", 0) == 0) ++cores;
  return cores > 0;
}
}  // namespace

double busy_cores(std::chrono::milliseconds window) {
  double t0, i0, t1, i1;
  int n0, n1;
  if (!cpu_ticks(t0, i0, n0)) return -1;
  std::this_thread::sleep_for(window);
  if (!cpu_ticks(t1, i1, n1) || t1 <= t0) return -1;
  return n1 * (1.0 - (i1 - i0) / (t1 - t0));
}

std::string crowded_cpu_note(int threads, int cores, double busy) {
  if (busy < 0 || threads <= 1) return "";
  const int free_cores = std::max(1, int(std::floor(cores - busy + 0.5)));
  if (threads <= free_cores) return "";
  std::ostringstream s;
  s.precision(2);
  s << "note: other processes keep about " << busy << " of " << cores << " cores busy, and " << threads
    << " OpenMP threads that share a core wait for each other at every step (a small model ran 26x slower with every core "
       "busy): "
       "OMP_NUM_THREADS="
    << free_cores << " may be much faster (mue keeps the thread count it is given, so that a run repeats bit for bit)";
  return s.str();
}

}  // namespace mue
