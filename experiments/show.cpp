#include "experiments/show.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/h5log.h"
#include "experiments/checkpoint.h"
#include "experiments/coord_check.h"
#include "experiments/run_timing.h"

namespace mue {
namespace {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

std::string num(double x, const char* f = "%.6g") {
  if (std::isnan(x)) return "-";
  char b[40];
  std::snprintf(b, sizeof b, f, x);
  return b;
}
ojson jnum(double x) { return std::isfinite(x) ? ojson(x) : ojson(nullptr); }

// A run's /timing (or a mean of them) as a JSON object, attribute names as keys.
ojson timing_json(const RunTiming& t) {
  ojson j = ojson::object();
  for (const auto& [name, value] : t.attrs()) j[name] = jnum(value);
  return j;
}

// (last finite value, its step) and (smallest finite value, its step) of a column.
struct LastBest {
  double last = NAN, last_step = NAN, best = NAN, best_step = NAN;
};
LastBest last_best(const std::map<std::string, std::vector<double>>& g, const std::string& col) {
  LastBest r;
  auto c = g.find(col), s = g.find("step");
  if (c == g.end() || s == g.end()) return r;
  for (size_t i = 0; i < c->second.size() && i < s->second.size(); ++i) {
    const double v = c->second[i];
    if (!std::isfinite(v)) continue;
    r.last = v, r.last_step = s->second[i];
    if (!(v >= r.best)) r.best = v, r.best_step = s->second[i];
  }
  return r;
}

std::string attr_or(const std::string& f, const char* a, const char* def = "-") {
  auto v = read_string_attr(f, a);
  return v && !v->empty() ? *v : def;
}

// A short description of a resolved run config: task, shape, budget, hyperparameters.
std::string describe_config(const ojson& c) {
  auto get = [&](const char* a, const char* b) -> ojson {
    return c.contains(a) && c[a].contains(b) ? c[a][b] : ojson(nullptr);
  };
  auto text = [](const ojson& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
  std::string s = text(c.value("task", ojson("lm"))) + " d" + text(get("model", "d_model")) + " L" +
                  text(get("model", "n_layers")) + " heads " + text(get("model", "n_heads"));
  if (c.value("task", ojson("lm")) == "lm") s += " T" + text(get("model", "seq_len"));
  const ojson type = get("ffn", "type");
  if (type == "moe") {
    const ojson shape = get("ffn", "shape");
    s += ", MoE " + (shape.is_string() ? shape.get<std::string>()
                                       : text(get("ffn", "experts")) + "e" + text(get("ffn", "active")) + "a") +
         " h" + text(get("ffn", "expert_hidden"));
    for (const char* k : {"granularity", "shared", "groups"})
      if (get("ffn", k).is_number() && get("ffn", k) != (std::string(k) == "shared" ? 0 : 1))
        s += std::string(" ") + k + " " + text(get("ffn", k));
  } else {
    s += ", dense FFN H" + text(get("ffn", "hidden"));
  }
  s += "; batch " + text(get("train", "batch")) + ", " + text(get("train", "steps")) + " steps, lr " +
       text(get("hp", "lr")) + ", wd " + text(get("hp", "wd")) + ", " + text(get("optim", "schedule")) +
       " (warmup " + text(get("optim", "warmup")) + "), seeds " + text(get("train", "seed")) + "/" +
       text(get("train", "data_seed"));
  return s;
}

// Rows of `cols` (in `order`, then any others) as a text table, the last `rows` rows (0: all).
void print_rows(std::FILE* out, const std::map<std::string, std::vector<double>>& cols,
                const std::vector<std::string>& order, int rows) {
  std::vector<std::string> names;
  for (auto& k : order)
    if (cols.count(k)) names.push_back(k);
  for (auto& [k, v] : cols)
    if (std::find(names.begin(), names.end(), k) == names.end()) names.push_back(k);
  if (names.empty()) return;
  const size_t n = cols.at(names[0]).size(), from = rows > 0 && size_t(rows) < n ? n - size_t(rows) : 0;
  for (auto& k : names) std::fprintf(out, " %12s", k.c_str());
  std::fprintf(out, "\n");
  for (size_t i = from; i < n; ++i) {
    for (auto& k : names) std::fprintf(out, " %12s", num(i < cols.at(k).size() ? cols.at(k)[i] : NAN).c_str());
    std::fprintf(out, "\n");
  }
}

ojson rows_json(const std::map<std::string, std::vector<double>>& cols, int rows) {
  ojson a = ojson::array();
  if (cols.empty()) return a;
  const size_t n = cols.begin()->second.size(), from = rows > 0 && size_t(rows) < n ? n - size_t(rows) : 0;
  for (size_t i = from; i < n; ++i) {
    ojson r;
    for (auto& [k, v] : cols) r[k] = jnum(i < v.size() ? v[i] : NAN);
    a.push_back(r);
  }
  return a;
}

// n rows of string and number columns as a list of objects.
ojson table_json(const std::map<std::string, std::vector<std::string>>& strings,
                 const std::map<std::string, std::vector<double>>& numbers, size_t n) {
  ojson rows = ojson::array();
  for (size_t i = 0; i < n; ++i) {
    ojson r;
    for (auto& [k, v] : strings) r[k] = i < v.size() ? v[i] : "";
    for (auto& [k, v] : numbers) r[k] = jnum(i < v.size() ? v[i] : NAN);
    rows.push_back(r);
  }
  return rows;
}

void show_run(const std::string& f, bool as_json, int rows, std::FILE* out) {
  ojson cfg;
  try {
    cfg = ojson::parse(attr_or(f, "config", "{}"));
  } catch (const std::exception&) {
    fail("'", f, "': its config attribute is not JSON (a damaged run file?)");
  }
  const auto train = read_columns(f, "train"), val = read_columns(f, "val");
  const LastBest tl = last_best(train, "loss"), vl = last_best(val, "loss");
  const double steps = cfg.contains("train") ? cfg["train"].value("steps", 0.0) : 0.0;
  const double wall = train.count("wall_s") && !train.at("wall_s").empty() ? train.at("wall_s").back() : NAN;
  const double tokens = train.count("tokens") && !train.at("tokens").empty() ? train.at("tokens").back() : NAN;
  std::vector<std::string> pt_cols = {"name", "shape", "init"};
  std::vector<std::string> pt_nums = {"init_std", "multiplier", "lr", "wd", "eps"};
  std::map<std::string, std::vector<std::string>> pt_s;
  std::map<std::string, std::vector<double>> pt_d;
  for (auto& c : list_datasets(f, "param_table")) {
    if (std::find(pt_cols.begin(), pt_cols.end(), c) != pt_cols.end()) pt_s[c] = read_strings(f, "param_table/" + c);
    else pt_d[c] = read_doubles(f, "param_table/" + c);
  }
  const size_t n_params = pt_s.count("name") ? pt_s["name"].size() : 0;
  const std::string status = attr_or(f, "status");
  const std::optional<RunTiming> timing = RunTiming::read(f);  // none while the run goes, or from older builds
  if (as_json) {
    ojson j;
    j["kind"] = "run", j["path"] = f;
    for (const char* a : {"status", "rule", "device", "git_commit", "started", "finished", "failure", "data_sources"})
      if (auto v = read_string_attr(f, a)) j[a] = *v;
    j["config"] = cfg;
    j["progress"] = {{"step", jnum(tl.last_step)}, {"steps", steps}, {"tokens", jnum(tokens)}, {"wall_s", jnum(wall)}};
    j["train_loss"] = {{"last", jnum(tl.last)}, {"last_step", jnum(tl.last_step)}, {"best", jnum(tl.best)},
                       {"best_step", jnum(tl.best_step)}};
    j["val_loss"] = {{"last", jnum(vl.last)}, {"last_step", jnum(vl.last_step)}, {"best", jnum(vl.best)},
                     {"best_step", jnum(vl.best_step)}};
    j["param_table"] = table_json(pt_s, pt_d, n_params);
    j["train_rows"] = rows_json(train, rows);
    j["val_rows"] = rows_json(val, 0);
    if (timing) j["timing"] = timing_json(*timing);
    std::fprintf(out, "%s\n", j.dump(1).c_str());
    return;
  }
  std::fprintf(out, "%s: run, status %s\n", f.c_str(), status.c_str());
  if (auto why = read_string_attr(f, "failure"); why && !why->empty()) std::fprintf(out, "  failure: %s\n", why->c_str());
  std::fprintf(out, "  rule %s; device %s; commit %s; started %s, finished %s\n", attr_or(f, "rule").c_str(),
               attr_or(f, "device").c_str(), attr_or(f, "git_commit").c_str(), attr_or(f, "started").c_str(),
               attr_or(f, "finished").c_str());
  std::fprintf(out, "  config: %s\n", describe_config(cfg).c_str());
  std::fprintf(out, "  progress: step %s of %s, %s tokens, %s s\n", num(tl.last_step, "%.0f").c_str(),
               num(steps, "%.0f").c_str(), num(tokens, "%.4g").c_str(), num(wall, "%.1f").c_str());
  std::fprintf(out, "  train loss: last %s (step %s), best %s (step %s)\n", num(tl.last, "%.4f").c_str(),
               num(tl.last_step, "%.0f").c_str(), num(tl.best, "%.4f").c_str(), num(tl.best_step, "%.0f").c_str());
  std::fprintf(out, "  val loss:   last %s (step %s), best %s (step %s)\n", num(vl.last, "%.4f").c_str(),
               num(vl.last_step, "%.0f").c_str(), num(vl.best, "%.4f").c_str(), num(vl.best_step, "%.0f").c_str());
  if (timing) std::fprintf(out, "  %s\n", timing->line().c_str());
  std::fprintf(out, "parameter table (%zu tensors):\n  %-34s %-14s %-8s", n_params, "name", "shape", "init");
  for (auto& k : pt_nums) std::fprintf(out, " %10s", k.c_str());
  std::fprintf(out, "\n");
  for (size_t i = 0; i < n_params; ++i) {
    auto s = [&](const char* k) { return pt_s.count(k) && i < pt_s[k].size() ? pt_s[k][i] : std::string("-"); };
    std::fprintf(out, "  %-34s %-14s %-8s", s("name").c_str(), s("shape").c_str(), s("init").c_str());
    for (auto& k : pt_nums)
      std::fprintf(out, " %10s", num(pt_d.count(k) && i < pt_d[k].size() ? pt_d[k][i] : NAN, "%.4g").c_str());
    std::fprintf(out, "\n");
  }
  const std::vector<std::string> order = {"step", "tokens", "loss", "lr", "grad_norm", "tok_per_s", "wall_s"};
  std::fprintf(out, "last %s training rows:\n", rows > 0 ? std::to_string(rows).c_str() : "all");
  print_rows(out, train, order, rows);
  if (!val.empty()) {
    std::fprintf(out, "validation rows:\n");
    print_rows(out, val, {"step", "loss"}, 0);
  }
}

void show_index(const std::string& f, bool as_json, int rows, std::FILE* out) {
  std::vector<std::string> axes;
  try {
    for (auto& a : ojson::parse(attr_or(f, "axes", "[]"))) axes.push_back(a.get<std::string>());
  } catch (const std::exception&) {
    fail("'", f, "': its axes attribute is not a JSON list of strings (a damaged sweep index?)");
  }
  // Columns: strings (name, status, string axes) and numbers.
  std::map<std::string, std::vector<std::string>> s;
  std::map<std::string, std::vector<double>> d;
  for (auto& c : list_datasets(f, "summary")) {
    try {
      d[c] = read_doubles(f, "summary/" + c);
    } catch (const Error&) {
      s[c] = read_strings(f, "summary/" + c);
    }
  }
  MUE_CHECK(s.count("status") && s.count("name"), "'", f, "': no /summary/status or /summary/name (a damaged sweep index?)");
  const size_t n = s["status"].size();
  auto cell = [&](const std::string& k, size_t i) -> std::string {
    if (s.count(k)) return i < s[k].size() ? s[k][i] : "";
    if (d.count(k)) return num(i < d[k].size() ? d[k][i] : NAN);
    return "-";
  };
  auto metric = [&](const char* k, size_t i) { return d.count(k) && i < d[k].size() ? d[k][i] : NAN; };
  // Best point per group: the group is every axis but the LR and WD grids.
  std::vector<std::string> group_axes;
  for (auto& a : axes)
    if (a != "hp.lr" && a != "hp.wd") group_axes.push_back(a);
  std::map<std::string, size_t> best;  // group label -> row
  std::vector<std::string> group_order;
  for (size_t i = 0; i < n; ++i) {
    std::string g;
    for (auto& a : group_axes) g += (g.empty() ? "" : " ") + a + "=" + cell(a, i);
    if (!best.count(g)) group_order.push_back(g), best[g] = SIZE_MAX;
    const double v = metric("final_val_loss", i);
    if (s["status"][i] == "completed" && std::isfinite(v) &&
        (best[g] == SIZE_MAX || v < metric("final_val_loss", best[g])))
      best[g] = i;
  }
  std::map<std::string, int> counts;
  for (auto& st : s["status"]) ++counts[st];
  const std::string name = attr_or(f, "name");
  // Where each finished point's time went, from its run file beside the index (its /runs link's target).
  std::vector<RunTiming> timings;
  for (size_t i = 0; i < n; ++i) {
    if ((s["status"][i] != "completed" && s["status"][i] != "diverged") || i >= s["name"].size()) continue;
    try {
      if (auto t = RunTiming::read((fs::path(f).parent_path() / (s["name"][i] + ".h5")).string())) timings.push_back(*t);
    } catch (const Error&) {  // a damaged run file: left out of the mean, as one without /timing
    }
  }
  if (as_json) {
    ojson j;
    j["kind"] = "sweep_index", j["path"] = f, j["name"] = name, j["axes"] = axes;
    try {
      j["spec"] = ojson::parse(attr_or(f, "spec", "{}"));
    } catch (const std::exception&) {
      j["spec"] = nullptr;
    }
    j["status_counts"] = counts;
    j["points"] = table_json(s, d, n);
    ojson b = ojson::array();
    for (auto& g : group_order)
      b.push_back({{"group", g}, {"best", best[g] == SIZE_MAX ? ojson(nullptr) : ojson(s["name"][best[g]])}});
    j["best_per_group"] = b;
    j["timing_points"] = timings.size();
    j["timing_mean"] = timings.empty() ? ojson(nullptr) : timing_json(mean_timing(timings));
    std::fprintf(out, "%s\n", j.dump(1).c_str());
    return;
  }
  std::string cs;
  for (auto& [k, v] : counts) cs += (cs.empty() ? "" : ", ") + std::to_string(v) + " " + k;
  std::fprintf(out, "%s: sweep index '%s', %zu points (%s)\n", f.c_str(), name.c_str(), n, cs.c_str());
  std::fprintf(out, "  %5s", "index");
  for (auto& a : axes) std::fprintf(out, " %14s", a.c_str());
  std::fprintf(out, " %10s %10s %10s %7s\n", "status", "final val", "best val", "steps");
  const size_t from = rows > 0 && size_t(rows) < n ? n - size_t(rows) : 0;
  if (from > 0) std::fprintf(out, "  (the first %zu rows left out: --rows 0 lists all)\n", from);
  for (size_t i = from; i < n; ++i) {
    std::fprintf(out, "  %5s", cell("index", i).c_str());
    for (auto& a : axes) std::fprintf(out, " %14s", cell(a, i).c_str());
    std::fprintf(out, " %10s %10s %10s %7s\n", s["status"][i].c_str(), num(metric("final_val_loss", i), "%.4f").c_str(),
                 num(metric("best_val_loss", i), "%.4f").c_str(), num(metric("steps", i), "%.0f").c_str());
  }
  if (!timings.empty())
    std::fprintf(out, "  mean of %zu finished points' %s\n", timings.size(), mean_timing(timings).line().c_str());
  std::fprintf(out, "best final val loss per group (%s):\n", group_axes.empty() ? "the whole sweep" : "axes but the LR/WD grid");
  for (auto& g : group_order) {
    const size_t i = best[g];
    std::string at;
    for (auto& a : axes)
      if (std::find(group_axes.begin(), group_axes.end(), a) == group_axes.end()) at += " " + a + "=" + cell(a, i);
    if (i == SIZE_MAX) std::fprintf(out, "  %-40s no completed point\n", g.empty() ? "(all)" : g.c_str());
    else
      std::fprintf(out, "  %-40s %.4f at%s\n", g.empty() ? "(all)" : g.c_str(), metric("final_val_loss", i),
                   at.empty() ? " (no grid axis)" : at.c_str());
  }
}

void show_coord(const std::string& f, bool as_json, std::FILE* out) {
  const auto pts = read_columns(f, "coord/points");
  std::vector<std::string> quantities;  // groups under /coord beside points, one row per point, step and layer
  for (const char* q : {"attn_out", "ffn_out", "block_out", "logits", "router_logits"}) {
    try {
      if (!list_datasets(f, std::string("coord/") + q).empty()) quantities.push_back(q);
    } catch (const Error&) {  // not recorded (router_logits: dense points only)
    }
  }
  const std::string labels = attr_or(f, "points", "[]");
  if (as_json) {
    ojson j = {{"kind", "coord_check"}, {"path", f}, {"rule", attr_or(f, "rule")}, {"points", ojson::parse(labels)},
               {"quantities", quantities}, {"point_rows", rows_json(pts, 0)}};
    std::fprintf(out, "%s\n", j.dump(1).c_str());
    return;
  }
  std::fprintf(out, "%s: coordinate check, rule %s, points %s\n", f.c_str(), attr_or(f, "rule").c_str(), labels.c_str());
  print_rows(out, pts, {"x", "d_model", "experts", "active"}, 0);
  std::fprintf(out, "quantities (per point, step and layer: rms, delta_rms):");
  for (auto& q : quantities) std::fprintf(out, " %s (%zu rows)", q.c_str(), read_doubles(f, "coord/" + q + "/rms").size());
  std::fprintf(out, "\nfigure: python3 experiments/figures/coord_check.py %s\n", f.c_str());
}

void show_checkpoint(const std::string& f, bool as_json, std::FILE* out) {
  std::FILE* in = std::fopen(f.c_str(), "rb");
  MUE_CHECK(in, "cannot open '", f, "'");
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{in};
  char magic[8];
  uint64_t step = 0, n = 0, total = 0;
  auto get = [&](void* p, size_t k) {
    MUE_CHECK(std::fread(p, 1, k, in) == k, "'", f, "' is a truncated checkpoint");
  };
  get(magic, 8), get(&step, 8), get(&n, 8);
  MUE_CHECK(n < (1u << 20), "'", f, "' is a damaged checkpoint (", n, " tensors)");
  std::vector<std::pair<std::string, uint64_t>> tensors;
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t len = 0;
    get(&len, 4);
    MUE_CHECK(len < 4096, "'", f, "' is a damaged checkpoint (a name of ", len, " bytes)");
    std::string name(len, '\0');
    uint64_t cnt = 0;
    get(name.data(), len), get(&cnt, 8);
    MUE_CHECK(cnt < (uint64_t(1) << 40) && std::fseek(in, long(cnt * 12), SEEK_CUR) == 0, "'", f,
              "' is a damaged checkpoint");
    tensors.push_back({name, cnt});
    total += cnt;
  }
  const std::string run = f.substr(0, f.size() - 5) + ".h5";
  const bool has_run = f.size() > 5 && f.compare(f.size() - 5, 5, ".ckpt") == 0 && fs::exists(run);
  if (as_json) {
    ojson t = ojson::array();
    for (auto& [k, c] : tensors) t.push_back({{"name", k}, {"count", c}});
    std::fprintf(out, "%s\n",
                 ojson({{"kind", "checkpoint"}, {"path", f}, {"step", step}, {"parameters", total}, {"tensors", t},
                        {"run_file", has_run ? ojson(run) : ojson(nullptr)}})
                     .dump(1)
                     .c_str());
    return;
  }
  std::fprintf(out, "%s: checkpoint at step %llu, %zu tensors, %llu parameters (fp32 weights and Adam moments)%s\n",
               f.c_str(), (unsigned long long)step, tensors.size(), (unsigned long long)total,
               has_run ? (", run file " + run).c_str() : "");
  for (auto& [k, c] : tensors) std::fprintf(out, "  %-40s %12llu\n", k.c_str(), (unsigned long long)c);
}

}  // namespace

void show_file(const std::string& path, bool as_json, int rows, std::FILE* out) {
  std::error_code ec;
  MUE_CHECK(fs::exists(path, ec), "'", path, "' does not exist");
  MUE_CHECK(!fs::is_directory(path, ec), "'", path, "' is a directory; give a run file, sweep index, checkpoint or coordinate-check file");
  if (is_checkpoint(path)) return show_checkpoint(path, as_json, out);
  MUE_CHECK(is_hdf5(path) || fs::path(path).extension() != ".json", "'", path, "' is JSON, not a run file, sweep ",
            "index, checkpoint or coordinate-check file (a sweep's results file NAME.json is read by the scripts in ",
            "experiments/figures/)");
  MUE_CHECK(is_hdf5(path), "'", path, "' is not a file mue wrote (neither HDF5 nor a checkpoint)");
  set_read_locking(false);  // a live run is being written: read what its last flush left
  if (read_string_attr(path, "spec") && !list_datasets(path, "summary").empty()) return show_index(path, as_json, rows, out);
  if (is_coord_file(path)) return show_coord(path, as_json, out);
  MUE_CHECK(read_string_attr(path, "status") && read_string_attr(path, "config"), "'", path,
            "' is an HDF5 file but not a mue run file, sweep index or coordinate-check file");
  show_run(path, as_json, rows, out);
}

}  // namespace mue
