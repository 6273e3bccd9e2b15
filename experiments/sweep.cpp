#include "experiments/sweep.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <set>
#include <sstream>

#include "core/config.h"
#include "core/error.h"
#include "core/h5.h"
#include "core/h5log.h"
#include "data/images.h"
#include "data/tokens.h"
#include "dist/communicator.h"
#include "experiments/coord_check.h"
#include "experiments/run_config.h"
#include "experiments/run_timing.h"

namespace mue {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

std::string sanitize(const std::string& s) {
  std::string o;
  for (char c : s) o += (std::isalnum((unsigned char)c) || c == '.' || c == '_' || c == '-') ? c : '_';
  return o;
}

std::string value_text(const ojson& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

std::string fmt_time(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char b[32];
  long t = long(s + 0.5);
  if (t >= 3600) std::snprintf(b, sizeof b, "%ldh%02ldm", t / 3600, t / 60 % 60);
  else if (t >= 60) std::snprintf(b, sizeof b, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(b, sizeof b, "%.1fs", s);
  return b;
}

volatile sig_atomic_t g_sweep_signal = 0;
void on_sweep_signal(int s) { g_sweep_signal = s; }

}  // namespace

SweepSpec parse_sweep_spec(const ojson& j, const std::string& spec_dir) {
  MUE_CHECK(j.is_object(), "sweep spec must be a JSON object");
  static const std::set<std::string> known = {"name",    "comment", "base",    "overrides",
                                              "axes",    "parallel", "out_dir", "expected_h100_minutes"};
  for (auto& [k, v] : j.items())
    MUE_CHECK(known.count(k), "unknown sweep spec key '", k,
              "' (known: name, comment, base, overrides, axes, parallel, out_dir, expected_h100_minutes)");
  SweepSpec s;
  s.raw = j;
  MUE_CHECK(j.contains("name") && j["name"].is_string() && !j["name"].get<std::string>().empty(),
            "sweep spec needs a non-empty string 'name'");
  s.name = j["name"].get<std::string>();
  MUE_CHECK(sanitize(s.name) == s.name, "sweep name '", s.name, "' may only use [A-Za-z0-9._-]");
  if (j.contains("comment")) {
    MUE_CHECK(j["comment"].is_string(), "sweep spec 'comment' must be a string");
    s.comment = j["comment"].get<std::string>();
  }
  if (j.contains("expected_h100_minutes")) {
    const ojson& m = j["expected_h100_minutes"];
    MUE_CHECK(m.is_number() && std::isfinite(m.get<double>()) && m.get<double>() >= 0,
              "sweep 'expected_h100_minutes' must be a non-negative number, got ", m.dump());
    s.expected_h100_minutes = m.get<double>();
  }
  if (j.contains("base")) {
    MUE_CHECK(j["base"].is_string(), "sweep spec 'base' must be a string path");
    std::string b = j["base"].get<std::string>();
    fs::path rel = fs::path(spec_dir.empty() ? "." : spec_dir) / b;
    if (fs::path(b).is_absolute() || !fs::exists(rel)) s.base = b;
    else s.base = rel.lexically_normal().string();
    MUE_CHECK(fs::exists(s.base), "sweep base config '", b, "' not found (relative to '", spec_dir, "' or cwd)");
  }
  if (j.contains("overrides")) {
    MUE_CHECK(j["overrides"].is_array(), "sweep spec 'overrides' must be a list of \"key=value\" strings");
    for (auto& o : j["overrides"]) {
      MUE_CHECK(o.is_string() && o.get<std::string>().find('=') != std::string::npos,
                "sweep override ", o.dump(), " is not a \"key=value\" string");
      s.overrides.push_back(o.get<std::string>());
    }
  }
  if (j.contains("axes")) {
    MUE_CHECK(j["axes"].is_object(), "sweep spec 'axes' must be an object {\"config.key\": [values...]}");
    for (auto& [k, v] : j["axes"].items()) {
      MUE_CHECK(k != "name" && k != "out.dir", "sweep axis '", k, "' is set by the sweep itself");
      MUE_CHECK(v.is_array() && !v.empty(), "sweep axis '", k, "' must be a non-empty list of values");
      if (k == "seed")
        for (auto& x : v)
          MUE_CHECK(x.is_number_integer() && x.get<long long>() >= 0 && x.get<long long>() <= INT32_MAX,
                    "sweep axis 'seed' takes integers >= 0 (each sets train.seed and train.data_seed), got ", x.dump());
      std::vector<ojson> vals(v.begin(), v.end());
      s.axes.push_back({k, vals});
    }
  }
  for (auto& [k, v] : s.axes)  // the seed axis sets both seeds: an axis of either would be overridden silently
    MUE_CHECK((k != "train.seed" && k != "train.data_seed") || !j.at("axes").contains("seed"),
              "sweep axes 'seed' and '", k, "' conflict: 'seed' sets train.seed and train.data_seed");
  if (j.contains("parallel")) {
    MUE_CHECK(j["parallel"].is_number_integer() && j["parallel"].get<int64_t>() >= 1 &&
                  j["parallel"].get<int64_t>() <= kMaxParallel,
              "sweep 'parallel' must be an integer in [1, ", kMaxParallel, "] (as --parallel)");
    s.parallel = j["parallel"].get<int>();
  }
  if (j.contains("out_dir")) {
    MUE_CHECK(j["out_dir"].is_string() && !j["out_dir"].get<std::string>().empty(), "sweep 'out_dir' must be a non-empty string");
    s.out_dir = j["out_dir"].get<std::string>();
  } else {
    s.out_dir = "runs/" + s.name;
  }
  return s;
}

SweepSpec load_sweep_spec(const std::string& path) {
  std::error_code ec;
  MUE_CHECK(!fs::is_directory(path, ec), "sweep spec '", path, "' is a directory, not a JSON file");
  std::ifstream in(path);
  MUE_CHECK(in.good(), "cannot open sweep spec '", path, "'");
  std::stringstream text;
  text << in.rdbuf();
  (void)parse_json_text(text.str(), "sweep spec '" + path + "'");  // malformed text or a repeated key: one line
  return parse_sweep_spec(ojson::parse(text.str()), fs::path(path).parent_path().string());  // keeps axis order
}

std::vector<SweepPoint> expand_grid(const SweepSpec& s) {
  size_t n = 1;
  for (auto& [k, v] : s.axes) n *= v.size();
  std::vector<SweepPoint> pts;
  for (size_t i = 0; i < n; ++i) {
    SweepPoint p;
    p.index = int(i);
    size_t rem = i, stride = n;
    std::string label;
    for (auto& [k, vals] : s.axes) {  // first axis slowest
      stride /= vals.size();
      const ojson& v = vals[rem / stride];
      rem %= stride;
      p.coords.push_back({k, v});
      std::string shortk = k.substr(k.rfind('.') == std::string::npos ? 0 : k.rfind('.') + 1);
      label += (label.empty() ? "" : "_") + shortk + "-" + value_text(v);
    }
    char idx[16];
    std::snprintf(idx, sizeof idx, "%04zu", i);
    p.name = sanitize(s.name + "-" + idx + (label.empty() ? "" : "-" + label));
    for (auto& o : s.overrides)  // the sweep names each point and its folder itself
      if (o.rfind("name=", 0) != 0 && o.rfind("out.dir=", 0) != 0) p.overrides.push_back(o);
    for (auto& [k, v] : p.coords) {
      if (k == "seed") {  // one replicate: new initial weights and a new batch order together
        p.overrides.push_back("train.seed=" + v.dump());
        p.overrides.push_back("train.data_seed=" + v.dump());
      } else {
        p.overrides.push_back(k + "=" + v.dump());
      }
    }
    p.overrides.push_back("name=" + p.name);
    p.overrides.push_back("out.dir=" + s.out_dir);
    pts.push_back(std::move(p));
  }
  return pts;
}

std::vector<json> validate_points(const SweepSpec& s, const std::vector<SweepPoint>& pts, bool open_data) {
  std::set<std::string> data_files;  // each opened (and so checked) once, before any point runs
  std::vector<json> configs;
  for (auto& p : pts) {
    try {
      const RunConfig c = resolve_config(s.base, p.overrides);
      configs.push_back(c.raw);
      const std::string& data = c.task == "lm" ? c.data_tokens : c.data_images;
      if (open_data && data_files.insert(data).second) {
        if (c.task == "lm") (void)TokenFile::open(data);
        else (void)ImageSet::open(data);
      }
    } catch (const std::exception& e) {
      fail("sweep point ", p.index, " (", p.name, "): ", e.what());
    }
  }
  return configs;
}

std::vector<int> rank_indices(int n, int rank, int size) {
  MUE_CHECK(size >= 1 && rank >= 0 && rank < size, "bad rank ", rank, " of ", size);
  std::vector<int> v;
  for (int i = 0; i < n; ++i)
    if (i % size == rank) v.push_back(i);
  return v;
}

PointResult read_point_result(const std::string& f) {
  PointResult r;
  if (!fs::exists(f)) return r;
  try {
    auto st = read_string_attr(f, "status");
    r.status = st ? *st : "failed";
  } catch (const std::exception&) {
    r.status = file_in_use(f) ? "running" : "unreadable";  // locked by a writer, or cut short by a kill
    return r;
  }
  auto last = [&](const std::string& ds, bool min) {
    try {
      auto v = read_doubles(f, ds);
      double out = NAN;
      for (double x : v)
        if (!std::isnan(x)) out = min ? (std::isnan(out) ? x : std::min(out, x)) : x;
      return out;
    } catch (const std::exception&) {
      return double(NAN);
    }
  };
  r.final_train_loss = last("/train/loss", false);
  r.final_val_loss = last("/val/loss", false);
  r.best_val_loss = last("/val/loss", true);
  r.steps = last("/train/step", false);
  return r;
}

std::string sweep_index_path(const SweepSpec& s) { return (fs::path(s.out_dir) / (s.name + "-index.h5")).string(); }

void write_sweep_index(const SweepSpec& s, const std::vector<SweepPoint>& pts) {
  fs::create_directories(s.out_dir);
  const std::string final_path = sweep_index_path(s);
  const std::string tmp = final_path + ".tmp" + std::to_string(::getpid());
  std::vector<PointResult> res;
  for (auto& p : pts) res.push_back(read_point_result((fs::path(s.out_dir) / (p.name + ".h5")).string()));
  {
    h5::Node f = h5::create_file(tmp);
    f.set_attr("spec", s.raw.dump());
    f.set_attr("name", s.name);
    ojson axes = ojson::array();
    for (auto& [k, v] : s.axes) axes.push_back(k);
    f.set_attr("axes", axes.dump());
    {
      const h5::Node runs = f.create_group("runs");
      for (auto& p : pts) runs.link_external(p.name, p.name + ".h5", "/");
    }
    h5::Node g = f.create_group("summary");
    std::vector<int64_t> idx;
    std::vector<std::string> names, status;
    std::vector<double> ftl, fvl, bvl, steps;
    for (size_t i = 0; i < pts.size(); ++i) {
      idx.push_back(pts[i].index), names.push_back(pts[i].name), status.push_back(res[i].status);
      ftl.push_back(res[i].final_train_loss), fvl.push_back(res[i].final_val_loss);
      bvl.push_back(res[i].best_val_loss), steps.push_back(res[i].steps);
    }
    g.write_column("index", idx);
    g.write_column("name", names);
    for (size_t a = 0; a < s.axes.size(); ++a) {
      const std::string& key = s.axes[a].first;
      MUE_CHECK(key != "index" && key != "name" && key != "status" && key.find('/') == std::string::npos,
                "sweep axis '", key, "' cannot be a summary column name");
      bool numeric = true;
      for (auto& v : s.axes[a].second) numeric &= v.is_number();
      if (numeric) {
        std::vector<double> col;
        for (auto& p : pts) col.push_back(p.coords[a].second.get<double>());
        g.write_column(key, col);
      } else {
        std::vector<std::string> col;
        for (auto& p : pts) col.push_back(value_text(p.coords[a].second));
        g.write_column(key, col);
      }
    }
    g.write_column("status", status);
    g.write_column("final_train_loss", ftl);
    g.write_column("final_val_loss", fvl);
    g.write_column("best_val_loss", bvl);
    g.write_column("steps", steps);
    (void)g.close();
    h5::check(f.close(), "cannot finish writing the sweep index", tmp);  // where the data reaches the disk
  }
  std::error_code ec;
  fs::rename(tmp, final_path, ec);
  MUE_CHECK(!ec, "cannot rename '", tmp, "' to '", final_path, "': ", ec.message());
}

void check_existing_outputs(const SweepSpec& s, const std::vector<SweepPoint>& pts, const std::vector<json>& configs,
                            const std::vector<int>& mine) {
  std::error_code ec;
  MUE_CHECK(!fs::exists(s.out_dir, ec) || fs::is_directory(s.out_dir, ec), "sweep out_dir '", s.out_dir,
            "' exists and is not a folder");
  const std::string index = sweep_index_path(s);
  if (fs::exists(index, ec)) {
    std::optional<ojson> old;
    try {
      if (is_hdf5(index))
        if (auto spec = read_string_attr(index, "spec")) old = ojson::parse(*spec);
    } catch (const std::exception&) {
    }
    MUE_CHECK(old && old->is_object(), "'", index, "' exists and is not a sweep index; not overwriting it: give the ",
              "sweep another name or out_dir");
    const std::string old_name = old->contains("name") && (*old)["name"].is_string() ? (*old)["name"].get<std::string>() : "";
    for (const char* k : {"base", "overrides", "axes"})  // what makes the grid (not the comment or parallel)
      MUE_CHECK((old->contains(k) ? (*old)[k] : ojson()) == (s.raw.contains(k) ? s.raw[k] : ojson()), "'", index,
                "' indexes another grid", old_name == s.name ? " of sweep '" + s.name + "'" : " (sweep '" + old_name +
                "', not '" + s.name + "')", " (its '", k, "' differ); not replacing it: give this ",
                "spec another name or out_dir (a grid extended by new values is a new sweep: its points are numbered "
                "anew), or remove that index and its runs");
  }
  for (int i : mine) {
    const SweepPoint& p = pts[size_t(i)];
    const std::string f = (fs::path(s.out_dir) / (p.name + ".h5")).string();
    // absent, being written, or empty (a process killed as it created it): nothing to check
    if (!fs::exists(f, ec) || file_in_use(f) || fs::file_size(f, ec) == 0) continue;
    MUE_CHECK(is_hdf5(f), "sweep point ", i, ": '", f, "' exists and is not a run file; not overwriting it");
    std::optional<std::string> status, config;
    try {
      status = read_string_attr(f, "status"), config = read_string_attr(f, "config");
    } catch (const std::exception&) {
      continue;  // cut short by a kill: the point starts again and replaces it
    }
    MUE_CHECK(!is_coord_file(f), "sweep point ", i, ": '", f, "' is a coordinate-check file, not a run; not "
              "overwriting it");
    MUE_CHECK(status, "sweep point ", i, ": '", f, "' is an HDF5 file but not a mue run file; not overwriting it");
    if (!config) continue;  // (a run file is created with its config: only a hand-made one lacks it)
    json stored;
    try {
      stored = json::parse(*config);
    } catch (const std::exception&) {
      fail("sweep point ", i, ": '", f, "' holds no readable config; not overwriting it");
    }
    const json& want = configs[size_t(i)];
    const std::vector<std::string> keys = config_differences(want, stored);
    if (keys.empty()) continue;
    std::string list;
    for (size_t k = 0; k < keys.size() && k < 4; ++k) {
      const size_t dot = keys[k].find('.');  // "train.steps" -> /train/steps, each part taken literally
      const json::json_pointer at = dot == std::string::npos
                                        ? json::json_pointer() / keys[k]
                                        : json::json_pointer() / keys[k].substr(0, dot) / keys[k].substr(dot + 1);
      auto text = [&](const json& j) { return j.contains(at) ? j[at].dump() : std::string("(absent)"); };
      list += (list.empty() ? "" : "; ") + keys[k] + " is " + text(stored) + " there, " + text(want) + " here";
    }
    if (keys.size() > 4) list += "; and " + std::to_string(keys.size() - 4) + " more";
    fail("sweep point ", i, ": '", f, "' holds a ", *status, " run of another config (", list, "); not reusing or ",
         "replacing it: give the sweep another name or out_dir, or move that run away");
  }
}

std::string point_work_key(const std::vector<std::pair<std::string, ojson>>& coords) {
  std::vector<std::string> parts;
  for (auto& [k, v] : coords) {
    if (k.rfind("hp.", 0) == 0 || k == "seed" || k == "train.seed" || k == "train.data_seed") continue;
    char num[32];
    if (v.is_number()) std::snprintf(num, sizeof num, "%.17g", v.get<double>());
    parts.push_back(k + "=" + (v.is_number() ? std::string(num) : value_text(v)));  // the index's text for the rest
  }
  std::sort(parts.begin(), parts.end());
  std::string key;
  for (auto& part : parts) key += part + ";";
  return key;
}

PointSeconds read_point_seconds(const std::string& results_path) {
  std::ifstream f(results_path);
  MUE_CHECK(fs::is_regular_file(results_path) && f.good(), "--estimates: cannot open results file '", results_path, "'");
  json j = json::parse(f, nullptr, false);
  MUE_CHECK(!j.is_discarded() && j.is_object() && j.contains("points") && j["points"].is_array(),
            "--estimates: '", results_path, "' is not a results file (JSON with a \"points\" list)");
  PointSeconds out;
  for (auto& p : j["points"]) {
    if (!p.is_object() || !p.contains("status") || p["status"] != "completed" || !p.contains("timing") ||
        !p["timing"].is_object() || !p["timing"].contains("total") || !p["timing"]["total"].is_number() ||
        !p.contains("coords") || !p["coords"].is_object())
      continue;
    std::vector<std::pair<std::string, ojson>> coords;
    for (auto& [k, v] : p["coords"].items()) coords.push_back({k, ojson(v)});
    const json& t = p["timing"];
    const double before_main = t.contains("before_main") && t["before_main"].is_number() ? t["before_main"].get<double>() : 0;
    out.push_back({point_work_key(coords), t["total"].get<double>() + before_main});
  }
  return out;
}

double expected_point_seconds(const PointSeconds& done, const PointSeconds& earlier, const SweepPoint& p) {
  const std::string mine = point_work_key(p.coords);
  auto mean = [&](const PointSeconds& v, bool same_work) {
    double sum = 0;
    int n = 0;
    for (auto& [key, t] : v)
      if (!same_work || key == mine) sum += t, ++n;
    return n ? sum / n : 0.0;
  };
  for (auto* v : {&done, &earlier})
    if (double t = mean(*v, true); t > 0) return t;
  for (auto* v : {&done, &earlier})
    if (double t = mean(*v, false); t > 0) return t;
  return 0;
}

RunSlots::RunSlots(const std::string& dir, int count) : dir_(dir), held_(size_t(std::max(count, 0)), false) {
  std::error_code ec;
  MUE_CHECK(!fs::exists(dir, ec) || fs::is_directory(dir, ec), "--slots: '", dir, "' exists and is not a folder");
  fs::create_directories(dir, ec);
  MUE_CHECK(!ec, "--slots: cannot create folder '", dir, "': ", ec.message());
  for (int k = 0; k < count; ++k) {
    const std::string f = path(k);
    const int fd = ::open(f.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
      const std::string why = std::strerror(errno);
      for (int x : fd_) ::close(x);
      fail("--slots: cannot open '", f, "': ", why);
    }
    fd_.push_back(fd);
  }
}

RunSlots::~RunSlots() {
  for (int fd : fd_) ::close(fd);  // releases the slots still held
}

// flock locks of separately opened files conflict even within one process, so two pools here exclude each other
// as two sweeps do; a slot this pool holds is skipped (a second flock through its own fd would succeed).
int RunSlots::acquire() {
  for (size_t k = 0; k < fd_.size(); ++k) {
    if (held_[k]) continue;
    if (::flock(fd_[k], LOCK_EX | LOCK_NB) == 0) {
      held_[k] = true;
      return int(k);
    }
    // held elsewhere (or interrupted: tried again on the next call); any other failure (a filesystem without
    // locks) would otherwise look like slots that never free
    MUE_CHECK(errno == EWOULDBLOCK || errno == EINTR, "--slots: cannot lock '", path(int(k)), "': ",
              std::strerror(errno));
  }
  return -1;
}

std::string RunSlots::path(int k) const { return (fs::path(dir_) / ("slot-" + std::to_string(k))).string(); }

void RunSlots::release(int k) {
  if (k < 0 || size_t(k) >= fd_.size() || !held_[size_t(k)]) return;
  ::flock(fd_[size_t(k)], LOCK_UN);
  held_[size_t(k)] = false;
}

SweepTotals run_sweep(const SweepSpec& s, const SweepOptions& o) {
  std::vector<SweepPoint> pts = expand_grid(s);
  const std::vector<json> configs = validate_points(s, pts, !o.dry_run);  // a dry run plans without the data
  const PointSeconds earlier = o.estimates.empty() ? PointSeconds{} : read_point_seconds(o.estimates);
  if (!o.estimates.empty()) {  // what the file gives: a file of another spec, or without timings, gives little
    std::set<std::string> here, covered;
    for (auto& p : pts) here.insert(point_work_key(p.coords));
    for (auto& [key, t] : earlier)
      if (here.count(key)) covered.insert(key);
    std::printf("sweep %s: --estimates %s: %zu timed points, of %zu of the %zu kinds of point here\n", s.name.c_str(),
                o.estimates.c_str(), earlier.size(), covered.size(), here.size());
  }
  const dist::Launch launch = dist::launch_from_env();  // mpirun / srun of `mue sweep`: points stride over ranks
  const int parallel = o.parallel > 0 ? o.parallel : s.parallel;
  // A bad --slots is refused before any point starts. Ranks of one launch would each open a pool of `parallel`
  // on the same folder and together run only `parallel` points: refused rather than silently slower.
  MUE_CHECK(o.slots.empty() || launch.size == 1, "--slots: a sweep launched as ", launch.size,
            " ranks (mpirun/srun) would share one pool of ", parallel, " slots; give each rank its own --parallel instead");
  std::unique_ptr<RunSlots> slots;
  if (!o.slots.empty() && !o.dry_run) slots = std::make_unique<RunSlots>(o.slots, parallel);
  bool said_waiting = false;
  auto run_file = [&](const SweepPoint& p) { return (fs::path(s.out_dir) / (p.name + ".h5")).string(); };
  auto coords_text = [](const SweepPoint& p) {
    std::string t;
    for (auto& [k, v] : p.coords) t += (t.empty() ? "" : " ") + k + "=" + value_text(v);
    return t;
  };

  SweepTotals tot;
  std::vector<int> todo;
  for (int i : o.only)
    MUE_CHECK(i >= 0 && i < int(pts.size()), "--only: sweep ", s.name, " has no point ", i, " (0 to ", pts.size() - 1, ")");
  std::vector<int> mine;  // this rank's points, of --only's
  for (int i : rank_indices(int(pts.size()), launch.rank, launch.size))
    if (o.only.empty() || std::find(o.only.begin(), o.only.end(), i) != o.only.end()) mine.push_back(i);
  check_existing_outputs(s, pts, configs, mine);
  for (int i : mine) {
    if (file_in_use(run_file(pts[i]))) {  // another sweep or train still writes it: leave it alone
      ++tot.busy;
      std::printf("%04d %-40s skip (in use by another process)\n", i, coords_text(pts[i]).c_str());
      continue;
    }
    PointResult r = read_point_result(run_file(pts[i]));
    if (r.status == "completed" || r.status == "diverged") {
      ++tot.skipped;
      if (o.dry_run) std::printf("%04d %-40s skip (%s)\n", i, coords_text(pts[i]).c_str(), r.status.c_str());
    } else {
      todo.push_back(i);
      if (o.dry_run)
        std::printf("%04d %-40s run  -> %s (%s)\n", i, coords_text(pts[i]).c_str(), run_file(pts[i]).c_str(),
                    r.status.c_str());
    }
  }
  std::printf("sweep %s: %zu points, rank %d/%d has %zu, %d done, %zu to run, %d at a time -> %s\n", s.name.c_str(),
              pts.size(), launch.rank, launch.size, todo.size() + tot.skipped + tot.busy, tot.skipped, todo.size(), parallel,
              sweep_index_path(s).c_str());
  if (tot.busy)
    std::printf("sweep %s: %d point(s) in use by another process left alone (rerun the sweep once they end)\n",
                s.name.c_str(), tot.busy);
  if (s.expected_h100_minutes >= 0)
    std::printf("sweep %s: the spec expects about %g min for all %zu points on one H100\n", s.name.c_str(),
                s.expected_h100_minutes, pts.size());
  std::fflush(stdout);
  if (o.dry_run) return tot;
  fs::create_directories(s.out_dir);
  write_sweep_index(s, pts);

  // Devices for round-robin assignment (only when CUDA_VISIBLE_DEVICES lists more than one).
  std::vector<std::string> devices;
  if (const char* cvd = std::getenv("CUDA_VISIBLE_DEVICES")) {
    std::string d = cvd;
    for (size_t p = 0, q; p < d.size(); p = q + 1) {
      q = d.find(',', p);
      if (q == std::string::npos) q = d.size();
      if (q > p) devices.push_back(d.substr(p, q - p));
    }
  }
  if (devices.size() < 2) devices.clear();

  struct Child {
    pid_t pid;
    int index;
    int device;
    int slot;  // -1: no --slots
    std::chrono::steady_clock::time_point start;
  };
  std::vector<Child> running;
  const long cores = std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN));
  const long threads_per_child = std::max(1L, cores / std::max(1, parallel));
  std::vector<int> device_load(devices.size(), 0);

  struct sigaction sa {}, old_int{}, old_term{};
  sa.sa_handler = on_sweep_signal;
  sigemptyset(&sa.sa_mask);
  g_sweep_signal = 0;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  bool forwarded = false;

  const auto t0 = std::chrono::steady_clock::now();
  size_t next = 0;
  int finished = 0;
  double busy_s = 0;
  // The points that finished with a /timing: their processes' wall time (fork to reap) and their runs' phases.
  std::vector<double> process_s;
  std::vector<RunTiming> timings;
  // --deadline: whether a point, started now, is expected to end in time (expected_point_seconds over the completed
  // points, else --estimates' earlier ones). Without either there is no estimate: points start while the deadline
  // has not passed. Where the next point would end too late, the first later one expected to end in time (a
  // shorter kind) moves up to start instead, the others keeping their order.
  PointSeconds completed_s;  // (point's work key, its process's seconds)
  bool stopped_starting = false;
  auto in_time = [&] {
    if (o.deadline_s <= 0) return true;
    const double now = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double shortest = std::numeric_limits<double>::infinity();
    for (size_t k = next; k < todo.size(); ++k) {
      const double expected = expected_point_seconds(completed_s, earlier, pts[size_t(todo[k])]);
      if (now + expected <= o.deadline_s) {
        std::rotate(todo.begin() + long(next), todo.begin() + long(k), todo.begin() + long(k) + 1);
        return true;
      }
      shortest = std::min(shortest, expected);
    }
    stopped_starting = true;
    std::printf("sweep %s: --deadline %.0f s: starting no more points at %.0f s (the shortest left takes about %.0f s); "
                "%zu left for a later run\n", s.name.c_str(), o.deadline_s, now, shortest, todo.size() - next);
    std::fflush(stdout);
    return false;
  };
  while ((next < todo.size() && !g_sweep_signal && !stopped_starting) || !running.empty()) {
    if (g_sweep_signal && !forwarded) {
      std::printf("sweep: signal %d, stopping %zu running child(ren)\n", int(g_sweep_signal), running.size());
      std::fflush(stdout);
      for (auto& c : running) ::kill(c.pid, g_sweep_signal);
      forwarded = true;
      tot.interrupted = true;
    }
    while (!g_sweep_signal && !stopped_starting && next < todo.size() && int(running.size()) < parallel && in_time()) {
      // Every slot held (by other sweeps): try again after the reaps below; in_time() above ends the wait.
      const int slot = slots ? slots->acquire() : -1;
      if (slots && slot < 0) {
        if (!said_waiting) {
          std::printf("sweep %s: waiting for a free run slot in %s (%zu running here)\n", s.name.c_str(),
                      slots->dir().c_str(), running.size());
          std::fflush(stdout);
          said_waiting = true;
        }
        break;
      }
      const SweepPoint& p = pts[todo[next++]];
      int dev = -1;
      if (!devices.empty() && slot >= 0) {
        dev = slot % int(devices.size());  // sweeps sharing the slots share the balance over the devices too
      } else if (!devices.empty()) {
        dev = 0;
        for (size_t d = 1; d < devices.size(); ++d)
          if (device_load[d] < device_load[dev]) dev = int(d);
      }
      std::vector<std::string> args = {"mue", "train"};
      if (!s.base.empty()) args.push_back(s.base);
      for (auto& ov : p.overrides)
        if (ov.rfind("out.overwrite=", 0) != 0) args.push_back(ov);
      args.push_back("out.overwrite=true");  // a killed or failed point starts again
      const std::string log = (fs::path(s.out_dir) / (p.name + ".log")).string();
      std::fflush(stdout);
      std::fflush(stderr);
      const pid_t parent = ::getpid();
      pid_t pid = ::fork();
      MUE_CHECK(pid >= 0, "fork failed: ", std::strerror(errno));
      if (pid == 0) {
        ::signal(SIGINT, SIG_DFL);
        ::signal(SIGTERM, SIG_DFL);
        // A sweep killed outright (SIGKILL, OOM) takes its children with it: they stop as `failed` on SIGTERM
        // instead of training on, orphaned, against files a restarted sweep would run again.
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (::getppid() != parent) ::_exit(1);  // the parent died before the line above
        int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
          ::dup2(fd, 1);
          ::dup2(fd, 2);
          ::close(fd);
        }
        if (dev >= 0) ::setenv("CUDA_VISIBLE_DEVICES", devices[dev].c_str(), 1);
        // Each point is one process, not a rank of the sweep's own launch (mpirun/srun of `mue sweep`).
        for (const char* v : dist::launcher_env_vars()) ::unsetenv(v);
        // CPU threads: the cores shared out among the children, and threads that sleep instead of spinning
        // while they wait (a spinning team on a busy core slows every process on it). The user's settings win.
        ::setenv("OMP_NUM_THREADS", std::to_string(threads_per_child).c_str(), 0);
        ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
        std::vector<char*> av;
        for (auto& a : args) av.push_back(const_cast<char*>(a.c_str()));
        av.push_back(nullptr);
        ::execv(o.exe.c_str(), av.data());
        std::fprintf(stderr, "exec %s failed: %s\n", o.exe.c_str(), std::strerror(errno));
        ::_exit(127);
      }
      if (dev >= 0) ++device_load[dev];
      running.push_back({pid, p.index, dev, slot, std::chrono::steady_clock::now()});
      ++tot.run;
      if (next == todo.size()) {  // a campaign may start its next sweep on the slots this one frees from now on
        std::printf("sweep %s: every point started, %zu running\n", s.name.c_str(), running.size());
        std::fflush(stdout);
      }
    }
    bool reaped = false;
    for (size_t k = 0; k < running.size(); ++k) {
      int st = 0;
      pid_t r = ::waitpid(running[k].pid, &st, WNOHANG);
      if (r == 0 || (r < 0 && errno == EINTR)) continue;
      Child c = running[k];
      running.erase(running.begin() + long(k));
      --k;
      reaped = true;
      if (c.device >= 0) --device_load[c.device];
      if (slots) slots->release(c.slot);
      const SweepPoint& p = pts[c.index];
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - c.start).count();
      busy_s += dt;
      ++finished;
      PointResult pr = read_point_result(run_file(p));
      std::string status = pr.status;
      if (status == "completed" || status == "diverged") {
        ++(status == "completed" ? tot.completed : tot.diverged);
        if (status == "completed") completed_s.push_back({point_work_key(p.coords), dt});  // a diverged run stops early
        try {
          if (auto t = RunTiming::read(run_file(p))) timings.push_back(*t), process_s.push_back(dt);
        } catch (const std::exception&) {  // unreadable now: the point's line below still tells
        }
      }
      else {
        ++tot.failed;
        char why[64];
        if (WIFEXITED(st)) std::snprintf(why, sizeof why, "exit %d", WEXITSTATUS(st));
        else std::snprintf(why, sizeof why, "signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
        status = "failed (" + std::string(why) + ", run " + status + ", see " + p.name + ".log)";
      }
      const size_t left = todo.size() - next + running.size();
      const double eta = busy_s / finished * double(left) / std::max(1, parallel);
      std::printf("[%d/%zu] %04d %s: %s, val loss %.4f, %s | sweep ETA %s\n", finished, todo.size(), p.index,
                  coords_text(p).c_str(), status.c_str(), pr.final_val_loss, fmt_time(dt).c_str(),
                  left ? fmt_time(eta).c_str() : "0s");
      std::fflush(stdout);
      try {
        write_sweep_index(s, pts);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "sweep: warning: %s\n", e.what());
      }
    }
    // A finished point waits here for its reap and the next point's start: 50 ms cost 25 ms a point on average
    // (56 tiny CPU points at --parallel 2: 10.0 s, at 5 ms 9.5 s); a waitpid(WNOHANG) every 5 ms costs nothing.
    if (!reaped) ::usleep(5 * 1000);
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (stopped_starting && !tot.interrupted) tot.not_started = int(todo.size() - next);
  write_sweep_index(s, pts);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("sweep %s: %d completed, %d diverged, %d failed, %d skipped%s in %s%s -> %s\n", s.name.c_str(),
              tot.completed, tot.diverged, tot.failed, tot.skipped,
              tot.not_started ? (", " + std::to_string(tot.not_started) + " not started (--deadline)").c_str() : "",
              fmt_time(wall).c_str(), tot.interrupted ? " (interrupted)" : "", sweep_index_path(s).c_str());
  if (!timings.empty()) {
    // The fixed cost of a point: all its process's time but the training steps and the evaluations.
    const RunTiming mean = mean_timing(timings);
    double process = 0;
    for (double x : process_s) process += x / double(process_s.size());
    const double before = std::isfinite(mean.before_main) ? mean.before_main : 0;
    std::printf("sweep %s: a point's process %.2f s on average (%zu points): fixed cost %.2f s (all but steps and "
                "evaluations); its run %.2f s, before main %.2f s, exit and reaping %.2f s\n",
                s.name.c_str(), process, timings.size(), process - mean[Phase::steps] - mean[Phase::eval],
                mean.total, before, process - mean.total - before);
    std::printf("sweep %s: mean %s\n", s.name.c_str(), mean.line().c_str());
  }
  return tot;
}

}  // namespace mue
