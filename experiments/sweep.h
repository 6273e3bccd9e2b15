// Sweeps: a JSON spec -> a grid of runs, each run in its own `mue train` process, resumable, with an HDF5 index.
//
// Spec (unknown keys are errors):
//   {"name": "act-experts-lm",                 sweep name (required; [A-Za-z0-9._-])
//    "comment": "...",                         optional free text (what the sweep is for; JSON has no comments)
//    "base": "configs/some.json",              optional run config; relative to the spec's folder, else cwd
//    "overrides": ["key=value", ...],          applied to every point (before the axes)
//    "axes": {"hp.lr": [0.001, 0.002], "rule": ["sp", "mup"], ...},   config keys -> JSON values; grid is the
//                                              cartesian product, first axis slowest, in the file's order
//                                              axis "seed": [1, 2] sets train.seed and train.data_seed both
//                                              (a replicate: new weights and a new batch order)
//    "parallel": 1,                            runs at a time on this machine (mue sweep --parallel overrides)
//    "out_dir": "runs/act-experts-lm",         out.dir of every point (default runs/NAME), relative to cwd
//    "expected_h100_minutes": 5}               optional: wall time of the whole grid on one H100 (number >= 0),
//                                              printed when the sweep starts
// Point i is named NAME-<iiii>-<k1>-<v1>_<k2>-<v2>... (k = last component of the key), sanitized to [A-Za-z0-9._-].
//
// Index file out_dir/NAME-index.h5 (rewritten atomically after every finished run):
//   attributes spec (the spec JSON), name, axes (JSON list of axis keys)
//   /runs/<point name>   external link -> <point name>.h5:/
//   /summary/<col>       one row per point: index (int64), name (string), one column per axis (float64 when all
//                        its values are numbers, else string), status (string: completed|diverged|failed|running|
//                        missing), final_train_loss, final_val_loss, best_val_loss, steps (float64, NaN if absent)
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace mue {

// The most runs a sweep starts at once, for a spec's `parallel` and for --parallel alike.
constexpr int kMaxParallel = 4096;

struct SweepSpec {
  std::string name, base, out_dir;  // base: resolved path ("" when none)
  std::vector<std::string> overrides;
  std::vector<std::pair<std::string, std::vector<nlohmann::ordered_json>>> axes;
  std::string comment;
  int parallel = 1;
  double expected_h100_minutes = -1;  // < 0: not given
  nlohmann::ordered_json raw;  // as given
};

struct SweepPoint {
  int index = 0;
  std::string name;
  std::vector<std::pair<std::string, nlohmann::ordered_json>> coords;
  std::vector<std::string> overrides;  // full list given to `mue train` (spec overrides, axes, name, out.dir)
};

// Before a sweep writes anything (a dry run too): its index path holds nothing or an index of this grid (the
// same base, overrides and axes), and each existing run file of the points `mine` is a run of that point's config
// (`configs`, validate_points' result) or one a point may start again (empty, or unreadable after a kill).
// Otherwise a one-line error: a sweep never overwrites what is not its own, nor reuses another config's run as
// this one's.
void check_existing_outputs(const SweepSpec& s, const std::vector<SweepPoint>& pts,
                            const std::vector<nlohmann::json>& configs, const std::vector<int>& mine);

// A point's work, for time estimates: its coordinates but hp.* and the seeds (seed, train.seed, train.data_seed),
// which leave a point's work alike, in key order, numbers compared as numbers (a results file writes 1 as 1.0).
std::string point_work_key(const std::vector<std::pair<std::string, nlohmann::ordered_json>>& coords);
// Points' process seconds (fork to reap; from a results file, the run's own total and its time before main,
// about 0.2 s less), each with its work key.
using PointSeconds = std::vector<std::pair<std::string, double>>;
// The completed points of a results file (experiments/figures/results_bundle.py's format) that carry their run's
// /timing: --estimates, so that --deadline has an estimate before a point of this sweep has finished. A file
// that cannot be read, or holds no "points", is a one-line error naming it.
PointSeconds read_point_seconds(const std::string& results_path);
// --deadline's estimate of how long point p's process will take: the mean over this sweep's completed points
// (`done`) of p's work; else over the earlier points (`earlier`, from --estimates) of p's work; else over all of
// `done`, else all of `earlier`; 0 when both are empty.
double expected_point_seconds(const PointSeconds& done, const PointSeconds& earlier, const SweepPoint& p);

// Parses and checks the spec's shape (not the config keys; see validate_points). spec_dir resolves "base".
SweepSpec parse_sweep_spec(const nlohmann::ordered_json& j, const std::string& spec_dir);
SweepSpec load_sweep_spec(const std::string& path);
std::vector<SweepPoint> expand_grid(const SweepSpec& s);
// resolve_config on every point, and (open_data) opens each point's token or image file once; the first bad
// one throws a one-line error naming the point. Returns each point's resolved config (RunConfig::raw), in order.
std::vector<nlohmann::json> validate_points(const SweepSpec& s, const std::vector<SweepPoint>& pts,
                                            bool open_data = true);

// Indices i in [0, n) with i % size == rank. run_sweep takes rank and size from dist::launch_from_env(), the
// launcher's environment as `mue train` reads it, so a sweep and a training job agree on what a launch is.
std::vector<int> rank_indices(int n, int rank, int size);

struct PointResult {
  std::string status = "missing";  // from the run file's status attribute
  double final_train_loss = NAN, final_val_loss = NAN, best_val_loss = NAN, steps = NAN;
};
PointResult read_point_result(const std::string& run_file);

void write_sweep_index(const SweepSpec& s, const std::vector<SweepPoint>& pts);
std::string sweep_index_path(const SweepSpec& s);

// A pool of run slots shared by sweeps (--slots DIR): the sweeps of one campaign overlap (the next starts once
// the one before has started its last point), and without a shared limit both run their full `parallel` at once,
// slowing every point and making --deadline's estimates too optimistic. DIR holds lock files slot-0 .. slot-<n-1>;
// a slot is held by an flock on its file, so a killed sweep's slots free themselves. The fds are close-on-exec:
// the `mue train` children never hold a slot. Sweeps of different counts share slots 0 .. their count - 1.
class RunSlots {
 public:
  // DIR is created if missing; an existing path that is not a folder is a one-line error naming it.
  RunSlots(const std::string& dir, int count);
  ~RunSlots();
  RunSlots(const RunSlots&) = delete;
  RunSlots& operator=(const RunSlots&) = delete;
  int acquire();  // the first free slot, now held; -1 when every slot is held (by this pool or another)
  void release(int k);
  const std::string& dir() const { return dir_; }

 private:
  std::string path(int k) const;  // DIR/slot-k
  std::string dir_;
  std::vector<int> fd_;     // one open fd per slot file, kept for the pool's life
  std::vector<bool> held_;  // locked through fd_[k]
};

struct SweepOptions {
  int parallel = 0;  // 0: the spec's
  bool dry_run = false;
  std::vector<int> only;  // point indices to consider (empty: all); the others are neither run nor counted
  // > 0: start no point expected to end later than this many seconds after the sweep began (expected:
  // expected_point_seconds over this sweep's finished points and `estimates`' points; the first later point
  // expected to end in time may start before one that is not); running points are never stopped by it.
  double deadline_s = 0;
  std::string estimates;  // a results file whose points' timings give --deadline its first estimates ("": none)
  // a RunSlots folder ("": none): a point starts only once it holds one of its `parallel` slots, so sweeps sharing
  // it run at most that many points together; waiting for a slot ends at --deadline, else lasts until one frees.
  // With several devices, slot k runs on device k % ndevices.
  std::string slots;
  std::string exe = "/proc/self/exe";
};
struct SweepTotals {
  int run = 0, skipped = 0, completed = 0, diverged = 0, failed = 0;
  int busy = 0;  // points whose run file another process holds (left alone)
  int not_started = 0;  // points left for a later run by --deadline
  bool interrupted = false;
};
// Runs this rank's points (of `only`, when given) that are not yet completed/diverged, `parallel` child processes
// at a time.
SweepTotals run_sweep(const SweepSpec& s, const SweepOptions& o);

}  // namespace mue
