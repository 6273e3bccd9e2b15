#include "experiments/trainer.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <map>
#include <optional>

#include "core/h5log.h"
#include "core/version.h"
#include "data/images.h"
#include "data/tokens.h"
#include "dist/data_parallel.h"
#include "experiments/checkpoint.h"
#include "experiments/coord_check.h"
#include "experiments/cpu_load.h"
#include "experiments/device_step.h"
#include "experiments/flow.h"
#include "experiments/run_timing.h"
#include "moe/moe_layer.h"

namespace mue {

namespace {
std::atomic<int> g_stop_signal{0};
void on_signal(int sig) { g_stop_signal = sig; }
// SIGINT and SIGTERM set g_stop_signal while it lives (the training loop stops cleanly at the next step); the
// previous handlers come back when it ends, an error on the way included.
struct CatchStopSignals {
  CatchStopSignals() {
    g_stop_signal = 0;  // before the handlers: a signal from now on is kept
    old_int = std::signal(SIGINT, on_signal);
    old_term = std::signal(SIGTERM, on_signal);
  }
  ~CatchStopSignals() { std::signal(SIGINT, old_int), std::signal(SIGTERM, old_term); }
  CatchStopSignals(const CatchStopSignals&) = delete;
  CatchStopSignals& operator=(const CatchStopSignals&) = delete;
  void (*old_int)(int) = nullptr;
  void (*old_term)(int) = nullptr;
};

std::string fmt_duration(double s) {
  char b[32];
  if (s < 60) std::snprintf(b, sizeof b, "%.0fs", s);
  else if (s < 3600) std::snprintf(b, sizeof b, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(b, sizeof b, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return b;
}

// What a resumed run takes over from the run file of the killed one: the rows up to the checkpoint's step and
// the attributes that are not re-derived.
struct ResumeState {
  int step = 0;  // the checkpoint's: steps already done
  double first_loss = NAN, wall_s = 0;
  std::string started;
  std::vector<std::pair<std::string, std::map<std::string, std::vector<double>>>> groups;  // train, val, router
  std::vector<std::vector<double>> router_load;  // rows of router/load, one per router row kept
};

// The resume point of `path`, whose checkpoint exists and whose run was killed or failed. A run of another
// config is refused (its checkpoint is never loaded).
ResumeState read_resume_state(const RunConfig& c, const std::string& path, const std::string& ckpt, int world_size) {
  json stored;
  try {
    stored = json::parse(read_string_attr(path, "config").value_or("{}"));
  } catch (const std::exception&) {
    fail("'", path, "' holds no readable config; pass out.resume=false to start over");
  }
  // Everything but the output options must be the same run.
  const std::vector<std::string> keys = config_differences(c.raw, stored);
  if (!keys.empty()) {
    std::string list;
    for (const auto& k : keys) list += (list.empty() ? "" : ", ") + k;
    fail("'", ckpt, "' belongs to a run of another config (", list, keys.size() > 1 ? " differ" : " differs",
         "); not loading it: pass out.resume=false to start over, or choose another name");
  }
  // A ZeRO-1 run continues bit for bit only with the ranks it was split over (the file holds every moment, but
  // the shares, and so the order of the sums, follow the world size).
  const double stored_ranks = read_double_attr(path, "world_size").value_or(1);
  MUE_CHECK(c.train.zero == 0 || stored_ranks == world_size, "'", ckpt, "' holds a train.zero=1 run on ",
            stored_ranks, " ranks; resume it on as many (this job has ", world_size, "), or pass out.resume=false to "
            "start over");
  ResumeState r;
  r.step = int(checkpoint_step(ckpt));
  MUE_CHECK(r.step > 0 && r.step <= c.train.steps, "checkpoint '", ckpt, "' is at step ", r.step, ", outside 1..",
            c.train.steps, "; pass out.resume=false to start over");
  r.first_loss = read_double_attr(path, "first_loss").value_or(NAN);
  r.started = read_string_attr(path, "started").value_or("");
  for (const char* g : {"train", "val", "router"}) {
    auto cols = read_columns(path, g);  // empty for a group the run has none of (no router in a dense run)
    if (cols.empty() || !cols.count("step")) continue;
    const std::vector<double> steps = cols["step"];
    for (auto& [k, v] : cols) {
      std::vector<double> kept;
      for (size_t i = 0; i < v.size() && i < steps.size(); ++i)
        if (steps[i] <= r.step) kept.push_back(v[i]);
      v = kept;
    }
    if (std::string(g) == "router") {
      const auto shape = dataset_shape(path, "router/load");
      const auto load = read_doubles(path, "router/load");
      for (size_t i = 0; i < steps.size() && i < shape[0]; ++i)
        if (steps[i] <= r.step)
          r.router_load.emplace_back(load.begin() + long(i * shape[1]), load.begin() + long((i + 1) * shape[1]));
    }
    if (std::string(g) == "train" && cols.count("wall_s") && !cols["wall_s"].empty()) r.wall_s = cols["wall_s"].back();
    r.groups.push_back({g, std::move(cols)});
  }
  return r;
}

std::vector<ParamTableRow> table_rows(const ParamTable& t) {
  std::vector<ParamTableRow> rows;
  for (const auto& r : t.rows)
    rows.push_back({r.tensor.name, r.tensor.shape(), r.init, r.init_std, r.multiplier, r.lr, r.wd, r.eps,
                    t.forward_alpha(r)});
  return rows;
}

// What the loop needs from a task: the model, one training forward, the evaluation, a data description.
// Data parallel (dist/): each rank's model holds its share of the global batch (c.train.batch), rows
// shard.first(B) .. of the very batch one process would draw; the ranks average gradients and losses.
// With ZeRO-1 (zero) each rank's optimizer owns its share of the parameter arena (on one rank: all of it).
template <class Backend>
struct DataParallel {
  dist::Communicator& comm;
  dist::Shard shard;
  bool zero;
  double bucket_bytes;  // train.bucket_mb in bytes (0: one all-reduce after the backward)
  std::shared_ptr<dist::Reducer> reducer;  // where the backend computes; null on one rank
  std::optional<dist::BucketedMean> buckets;
  DataParallel(dist::Communicator& c, dist::Shard s, const TrainConfig& t, Backend& be)
      : comm(c), shard(s), zero(t.zero == 1), bucket_bytes(t.bucket_mb * 1048576.0),
        reducer(c.size() > 1 ? dist::backend_reducer(c, be) : nullptr) {}
  // The elements of the parameter arena (of n) this rank's optimizer owns.
  OwnedRange owned(size_t n) const {
    const dist::Share s = zero ? comm.share(n) : dist::Share{0, n};
    return {s.begin, s.end};
  }
  // The step's hooks: the ranks' mean gradient and loss before the optimizer reads them (one rank: none), in
  // buckets started during the backward where bucket_bytes > 0; with ZeRO-1 instead the reduce-scatter after the
  // backward, the global grad norm and the gathering of the updated shares.
  template <class Model>
  void attach(DeviceStep<Model>& stepper, Model& model, AdamW<Backend>& opt) {
    if (!reducer) return;
    if (zero)
      return stepper.set_hooks({[this, &model, &opt] { dist::mean_share_over_ranks(*reducer, model, opt); },
                                [this, &opt] { dist::sum_norm_over_ranks(*reducer, opt); },
                                [this, &model] { dist::gather_weights(*reducer, model); }});
    if (bucket_bytes <= 0)
      return stepper.set_after_backward([this, &model, &opt] { dist::mean_over_ranks(*reducer, model, opt); });
    buckets.emplace(dist::BucketedMean{*reducer, model.grad_arena(), dist::gradient_buckets(model, bucket_bytes)});
    model.set_on_grads_final([this](size_t first) { buckets->on_final(first); });
    stepper.set_after_backward([this, &opt] { buckets->finish(opt.loss_out()); });
  }
};

// Writes the checkpoint (rank 0). Where the ranks' optimizers own shares (ZeRO-1), every rank calls it at the
// same step and rank 0 first gathers their moments into the one file.
template <class Backend, class Model>
void write_checkpoint(DataParallel<Backend>& dp, Model& model, AdamW<Backend>& opt, const std::string& path,
                      uint64_t step) {
  const bool lead = dp.comm.rank() == 0;
  if (opt.owns_all()) {
    if (lead) save_checkpoint(model, opt, path, step);
    return;
  }
  // On CUDA the step gathers the bf16 weights alone: the fp32 values rank 0 writes are whole only after this.
  if constexpr (Backend::on_device) dist::gather_values(*dp.reducer, model);
  const size_t n = model.n_params();
  auto on_lead = [&](const float* mine) {  // every rank's share of a moment, through the host, to rank 0
    std::vector<float> host(opt.owned().size()), all(lead ? n : 0);
    model.backend().download(host.data(), mine, host.size() * sizeof(float));
    dp.comm.gather_shares(host.data(), all.data(), n);
    return all;
  };
  const std::vector<float> m = on_lead(opt.m_owned()), v = on_lead(opt.v_owned());
  if (lead)
    save_checkpoint_with(model, path, step, [&](size_t i, size_t first, float* mi, float* vi) {
      const size_t cnt = model.params()[i].row.tensor.size();
      std::copy(m.begin() + long(first), m.begin() + long(first + cnt), mi);
      std::copy(v.begin() + long(first), v.begin() + long(first + cnt), vi);
    });
}

template <class Backend>
struct LmTask {
  using Model = LM<Backend>;
  const RunConfig& c;
  const TokenFile& data;
  DataParallel<Backend>& dp;
  const int rows, first;  // this rank's rows of the global batch
  Model model;
  AdamW<Backend> opt;
  std::vector<int32_t> x, y;
  LmTask(const RunConfig& c_, Backend& be, const ParamTable& t, const TokenFile& d, DataParallel<Backend>& dp_)
      : c(c_), data(d), dp(dp_), rows(dp_.shard.count(c_.train.batch)), first(dp_.shard.first(c_.train.batch)),
        model(c_.model, t, be, rows, make_ffn<Backend>), opt(model, c_.adamw, dp_.owned(model.n_params())),
        x(size_t(rows) * c_.model.seq_len), y(x.size()) {}
  double items_per_step() const { return double(c.train.batch) * c.model.seq_len; }  // tokens, all ranks
  // The whole step on the device scalars (experiments/device_step.h); the mean loss stays on the device.
  std::optional<DeviceStep<Model>> stepper;
  void train_step_device(const StepIn& in) {
    if (!stepper) stepper.emplace(model, opt, c.train.cuda_graph), dp.attach(*stepper, model, opt);
    data.sample_batch(c.train.data_seed, uint64_t(in.step), rows, c.model.seq_len, x.data(), y.data(), first);
    stepper->run(in, [&] { model.upload_batch(x.data(), y.data()); });
  }
  // (mean validation loss, extra columns): each rank its rows of every validation batch, then the ranks' mean.
  std::pair<double, std::vector<std::pair<std::string, double>>> evaluate() {
    const int B = c.train.batch, T = c.model.seq_len;
    const int64_t avail = data.val_batches(B, T);
    MUE_CHECK(avail > 0, "validation split too small for one batch of ", B, "x", T + 1, " tokens");
    const int64_t n = std::min<int64_t>(c.train.eval_batches, avail);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      data.val_windows(i * B + first, rows, T, x.data(), y.data());
      sum += model.forward(x.data(), y.data());
    }
    double mean = sum / double(n);
    dp.comm.mean(&mean, 1);
    return {mean, {}};
  }
  std::string sources() const { return data.sources(); }
};

template <class Backend>
struct FlowTask {
  using Model = DiT<Backend>;
  const RunConfig& c;
  const ImageSet& data;
  DataParallel<Backend>& dp;
  const int rows, first;  // this rank's rows of the global batch
  Model model;
  AdamW<Backend> opt;
  std::vector<float> x;
  std::vector<int32_t> y;
  FlowTask(const RunConfig& c_, Backend& be, const ParamTable& t, const ImageSet& d, DataParallel<Backend>& dp_)
      : c(c_), data(d), dp(dp_), rows(dp_.shard.count(c_.train.batch)), first(dp_.shard.first(c_.train.batch)),
        model(c_.model, t, be, rows, make_ffn<Backend>), opt(model, c_.adamw, dp_.owned(model.n_params())),
        x(size_t(rows) * npix()), y(rows) {}
  int npix() const { return c.model.image.channels * c.model.image.size * c.model.image.size; }
  double items_per_step() const { return double(c.train.batch); }  // images, all ranks
  // The whole step on the device scalars (experiments/device_step.h); the mean squared error stays there.
  std::optional<DeviceStep<Model>> stepper;
  void train_step_device(const StepIn& in) {
    if (!stepper) stepper.emplace(model, opt, c.train.cuda_graph), dp.attach(*stepper, model, opt);
    data.sample_batch(c.train.data_seed, uint64_t(in.step), rows, x.data(), y.data(), first);
    const FlowBatch fb = make_flow_batch(x, y, rows, npix(), c.train.data_seed, uint64_t(in.step),
                                         c.model.image.label_dropout, c.model.image.classes, nullptr, first);
    stepper->run(in, [&] { model.upload_batch(fb.xt.data(), fb.v.data(), fb.t.data(), fb.labels.data()); });
  }
  std::pair<double, std::vector<std::pair<std::string, double>>> evaluate() {
    std::vector<double> l = flow_eval(model, data, c.eval_t, c.train.eval_batches, c.train.batch, first);
    dp.comm.mean(l.data(), l.size());
    std::vector<std::pair<std::string, double>> cols;
    double mean = 0;
    for (size_t k = 0; k < l.size(); ++k) {
      char name[32];
      std::snprintf(name, sizeof name, "loss_t%g", c.eval_t[k]);
      cols.push_back({name, l[k]});
      mean += l[k] / double(l.size());
    }
    return {mean, cols};
  }
  std::string sources() const { return data.path() + " (" + data.kind() + ")"; }
};

// The run file, written by rank 0 alone: the other ranks of a data-parallel run hold the same numbers.
struct LeadLog {
  std::optional<RunLog> f;
  void set_attr(const std::string& k, const std::string& v) { if (f) f->set_attr(k, v); }
  void set_attr(const std::string& k, double v) { if (f) f->set_attr(k, v); }
  void set_group_attrs(const std::string& g, const std::vector<std::pair<std::string, double>>& v) {
    if (f) f->set_group_attrs(g, v);
  }
  void write_param_table(const std::vector<ParamTableRow>& rows,
                         const std::vector<std::pair<std::string, double>>& scalars) {
    if (f) f->write_param_table(rows, scalars);
  }
  void append(const std::string& g, const std::vector<std::pair<std::string, double>>& row) { if (f) f->append(g, row); }
  void append_row(const std::string& d, const std::vector<double>& v) { if (f) f->append_row(d, v); }
  void flush() { if (f) f->flush(); }
  void close() { if (f) f->close(); }
};

// The ranks' mean of what the log shows of the MoE routers (each rank's is over its own tokens); one rank: as is.
template <class Model>
std::pair<double, std::vector<BranchStats>> router_stats_over_ranks(Model& model, int n_layers, dist::Communicator& comm) {
  std::vector<BranchStats> stats;
  std::vector<double> packed{model.aux_loss()};
  for (int l = 0; l < n_layers; ++l)
    if (const BranchStats* rs = model.ffn_stats(l)) {
      stats.push_back(*rs);
      packed.insert(packed.end(), {rs->entropy, rs->balance_loss, rs->z_loss});
      packed.insert(packed.end(), rs->load.begin(), rs->load.end());
    }
  if (comm.size() == 1) return {packed[0], stats};
  comm.mean(packed.data(), packed.size());
  size_t at = 1;
  for (BranchStats& s : stats) {
    s.entropy = packed[at], s.balance_loss = packed[at + 1], s.z_loss = packed[at + 2], at += 3;
    for (double& x : s.load) x = packed[at++];
  }
  return {packed[0], stats};
}

// The ranks must hold the same weights (their updates are the same mean gradient): a hash of each rank's,
// compared at every evaluation. A mismatch would mean the collectives gave the ranks different results. Hashed:
// what the forward reads (the CPU's values; on a GPU the bf16 weights, brought to the host: with ZeRO-1 on CUDA
// they, not the fp32 values, are whole on every rank).
template <class Backend, class Model>
void check_same_weights(Backend& be, Model& model, dist::Communicator& comm, int step) {
  if (comm.size() == 1) return;
  const auto* w = model.params().front().weight;
  std::vector<unsigned char> host(sizeof(*w) * model.n_params());
  be.download(host.data(), w, host.size());
  const auto h = comm.allgather(dist::fnv1a(host.data(), host.size()));
  for (int r = 1; r < comm.size(); ++r)
    if (h[size_t(r)] != h[0])
      throw dist::CollectiveError("after step " + std::to_string(step) + " rank " + std::to_string(r) +
                                  "'s weights differ from rank 0's (the ranks' gradient means disagree)");
}

template <class Backend, class Task>
RunResult train_with(const RunConfig& c, Backend& be, Task& task, const ParamTable& table, const std::string& path,
                     bool verbose, const ResumeState* resume, PhaseClock& clock) {
  RunResult res;
  res.path = path;
  res.device = be.device_name();
  auto& model = task.model;
  auto& opt = task.opt;
  dist::Communicator& comm = task.dp.comm;
  model.init_weights(c.train.seed);
  const std::string ckpt = checkpoint_path(path);
  const int first_step = resume ? resume->step : 0;
  if (resume) {
    MUE_CHECK(int(load_checkpoint(model, opt, ckpt)) == first_step, "checkpoint '", ckpt, "' changed while loading");
    if (verbose) std::printf("resuming %s from its checkpoint at step %d\n", path.c_str(), first_step);
  }
  if (verbose) {
    std::printf("%s", format_table(table).c_str());
    std::printf("model: %zu parameters, activations %.1f MiB, device %s\n", model.n_params(),
                model.activation_bytes() / 1048576.0, res.device.c_str());
  }
#ifdef _OPENMP
  if (verbose && !Backend::on_device && !std::getenv("OMP_NUM_THREADS") && omp_get_max_threads() > 1) {
    const std::string note = crowded_cpu_note(omp_get_max_threads(), omp_get_num_procs(),
                                              busy_cores(std::chrono::milliseconds(100)));
    if (!note.empty()) std::printf("%s\n", note.c_str());
  }
#endif
  // The optimizer state each rank holds (the largest share's): with ZeRO-1 about 1/G of the whole.
  const std::vector<uint64_t> state_bytes = comm.allgather(uint64_t(opt.state_bytes()));
  const double max_state_bytes = double(*std::max_element(state_bytes.begin(), state_bytes.end()));
  if (verbose && c.train.zero)
    std::printf("zero=1: each of %d ranks keeps the Adam moments of its share of the parameters: %.2f MiB per rank "
                "(zero=0: %.2f MiB)\n", comm.size(), max_state_bytes / 1048576.0,
                2.0 * double(model.n_params()) * sizeof(*opt.m_owned()) / 1048576.0);
  be.synchronize();  // the initial weights (or the checkpoint's) are on the device
  clock.end(Phase::model);

  // Everything is validated and built: only now is the output file created. The stop signals are caught from
  // here on, so that a SIGTERM (a scheduler, a killed sweep's PR_SET_PDEATHSIG) arriving while the file is being
  // set up still ends in a readable file marked failed, not in a half-written one.
  const CatchStopSignals catching;
  LeadLog log;
  if (comm.rank() == 0) log.f = RunLog::create(path);
  log.set_attr("config", c.raw.dump(2));
  log.set_attr("rule", c.rule);
  log.set_attr("status", std::string("running"));
  log.set_attr("git_commit", std::string(git_commit()));
  log.set_attr("device", res.device);
  log.set_attr("started", resume && !resume->started.empty() ? resume->started : utc_now_iso());
  log.set_attr("finished", std::string(""));
  log.set_attr("data_sources", task.sources());
#ifdef _OPENMP
  log.set_attr("cpu_threads", double(omp_get_max_threads()));  // what the CPU ops (and host-side work) may use, a rank
#else
  log.set_attr("cpu_threads", 1.0);
#endif
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");  // how idle CPU threads waited ("": the default)
  log.set_attr("omp_wait_policy", std::string(wait_policy ? wait_policy : ""));
  // The kernel variants it ran under ("": the defaults, which the commit fixes): some change the GPU's bits.
  const char* variants = std::getenv("MUE_KERNEL_VARIANTS");
  log.set_attr("kernel_variants", std::string(variants ? variants : ""));
  log.set_attr("world_size", double(comm.size()));  // data-parallel ranks (processes) that trained it
  log.set_attr("zero", double(c.train.zero));
  log.set_attr("optimizer_state_bytes", max_state_bytes);  // Adam moments per rank (the largest share with ZeRO-1)
  log.write_param_table(table_rows(table), {{"attn_scale", table.attn_scale},
                                            {"branch_multiplier", table.branch_multiplier},
                                            {"route_scale", table.route_scale}});
  res.best_val_loss = INFINITY;
  if (resume) {  // the killed run's rows up to the checkpoint, then on as if it had never stopped
    log.set_attr("resumed_at_step", double(first_step));
    for (auto& [g, cols] : resume->groups) {
      const size_t n = cols.at("step").size();
      for (size_t i = 0; i < n; ++i) {
        std::vector<std::pair<std::string, double>> row;
        for (auto& [k, v] : cols) row.push_back({k, v[i]});
        log.append(g, row);
        if (g == "val") res.final_val_loss = cols.at("loss")[i], res.best_val_loss = std::min(res.best_val_loss, res.final_val_loss);
      }
    }
    for (auto& r : resume->router_load) log.append_row("router/load", r);
    res.first_loss = resume->first_loss;
    if (std::isfinite(res.first_loss)) log.set_attr("first_loss", res.first_loss);
  }
  log.flush();
  clock.end(Phase::file);

  const double tokens_per_step = task.items_per_step();  // tokens (lm) or images (flow)
  const char* unit = c.task == "flow" ? "img/s" : "tok/s";
  std::string status = "completed";
  // Wall time continues from the killed run's last row; checkpoints by steps and by minutes.
  const double wall0 = resume ? resume->wall_s : 0;
  auto t0 = std::chrono::steady_clock::now() - std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                   std::chrono::duration<double>(wall0));
  auto last_ckpt = std::chrono::steady_clock::now();
  double window_start = wall0, loss = 0, gnorm = 0;
  int window_steps = 0;
  // A step never waits for the device: the loss, the grad norm and the divergence check stay on the device
  // (optim/step_scalars.h) and are read every kCheckEvery steps, at log and evaluation steps and at the last step
  // (on the CPU at every step); a diverged step is found at the next read (the run stops there and reports the
  // step that diverged).
  constexpr int kCheckEvery = 16;
  // ZeRO-1 on several ranks: the moments are spread over the ranks, so every rank takes part in a checkpoint.
  const bool every_rank_saves = !opt.owns_all();
  opt.reset_step_out();
  for (int step = first_step; step < c.train.steps; ++step) {
    const double lr_factor = c.schedule.factor(step);
    bool diverged = false;
    int bad_step = step;  // the first diverged step, and its loss
    double bad_loss = 0;
    StepIn in = adamw_step_in(c.adamw, step, lr_factor);
    if (c.train.diverge_factor > 0 && step >= c.schedule.warmup && step > 0)
      in.loss_bound = c.train.diverge_factor * res.first_loss;
    task.train_step_device(in);
    // Read once: every decision of this step sees the same value, on every rank (a signal may reach the ranks
    // at different steps; they stop together at the first step where any has it). Rank 0's checkpoint clock
    // rides along in bit 0 of the same max, so that the ranks agree on it in one collective (it decides only
    // where no rank stops: a stop writes a checkpoint anyway).
    const double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_ckpt).count();
    const bool clock_due = comm.rank() == 0 && c.checkpoint_minutes > 0 && since >= 60 * c.checkpoint_minutes;
    const int stop_and_clock = 2 * g_stop_signal + clock_due;
    const int agreed = comm.size() > 1 ? comm.max(stop_and_clock) : stop_and_clock;
    const int stop = agreed / 2;
    const bool by_time = agreed % 2;
    if (verbose && step == 1 && task.stepper->capture_failed())
      std::printf("note: the step could not be captured as a CUDA graph; running it op by op\n");
    // Read also before an evaluation (so a diverged run is not evaluated or checkpointed), at this process's
    // first step (so that its time is its own) and, where reading costs nothing (the CPU), at every step.
    const bool log_step = (step + 1) % c.train.log_every == 0 || step + 1 == c.train.steps;
    const bool eval_step = (step + 1) % c.train.eval_every == 0;
    const bool ckpt_step = c.checkpoint_every > 0 && (step + 1) % c.checkpoint_every == 0;
    bool read = false;  // whether this step's loss and divergence are known (a checkpoint needs them)
    if (step == first_step || log_step || eval_step || ckpt_step || (step + 1) % kCheckEvery == 0 || stop ||
        !Backend::on_device) {
      const StepOut o = opt.read_step_out();
      loss = o.loss, gnorm = std::sqrt(o.norm_sq);
      if (step == 0) res.first_loss = loss, log.set_attr("first_loss", loss);  // the divergence reference
      if (o.first_bad >= 0) diverged = true, bad_step = o.first_bad, bad_loss = o.bad_loss;
      read = true;
    }
    if (step == first_step) clock.end(Phase::first_step);  // the read above waited for it
    else clock.count(Phase::steps);
    ++window_steps;
    res.steps_done = step + 1;
    const bool last = step + 1 == c.train.steps || diverged || stop;
    if ((step + 1) % c.train.log_every == 0 || last) {
      be.synchronize();
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double tps = window_steps * tokens_per_step / std::max(1e-9, wall - window_start);
      window_start = wall, window_steps = 0;
      res.tok_per_s = tps;
      const auto [aux_loss, router] = router_stats_over_ranks(model, c.model.n_layers, comm);
      log.append("train", {{"step", step + 1}, {"tokens", (step + 1) * tokens_per_step}, {"loss", loss},
                           {"aux_loss", aux_loss}, {"lr", c.hp.lr * lr_factor}, {"grad_norm", gnorm},
                           {"tok_per_s", tps}, {"wall_s", wall}});
      for (int l = 0, k = 0; l < c.model.n_layers; ++l)
        if (model.ffn_stats(l)) {
          const BranchStats* rs = &router[size_t(k++)];
          const auto [min_load, max_load] = std::minmax_element(rs->load.begin(), rs->load.end());
          log.append("router", {{"step", step + 1}, {"layer", l}, {"entropy", rs->entropy},
                                {"balance_loss", rs->balance_loss}, {"z_loss", rs->z_loss},
                                {"max_load", *max_load}, {"min_load", *min_load}});
          log.append_row("router/load", rs->load);
        }
      if (verbose) {
        const double eta = wall / (step + 1) * (c.train.steps - step - 1);
        std::printf("step %5d/%d | loss %.4f | lr x%.3f | grad norm %.3f | %.0f %s | ETA %s\n", step + 1,
                    c.train.steps, loss, lr_factor, gnorm, tps, unit, fmt_duration(eta).c_str());
        std::fflush(stdout);
      }
    }
    if (diverged) {
      status = "diverged";
      res.steps_done = bad_step + 1, loss = bad_loss;  // the run is over at the step that diverged
      log.set_attr("diverged_at_step", double(bad_step + 1));
      if (verbose) std::printf("diverged at step %d (loss %g)\n", bad_step + 1, bad_loss);
      break;
    }
    if ((step + 1) % c.train.eval_every == 0 || step + 1 == c.train.steps) {
      clock.end(Phase::steps);  // the device is idle: this step's loss was read
      check_same_weights(be, model, comm, step + 1);
      auto [vl, cols] = task.evaluate();
      res.final_val_loss = vl;
      res.best_val_loss = std::min(res.best_val_loss, vl);
      cols.insert(cols.begin(), {{"step", step + 1}, {"loss", vl}});
      log.append("val", cols);
      clock.end(Phase::eval), clock.count(Phase::eval);
      if (c.checkpoint && (comm.rank() == 0 || every_rank_saves)) {
        log.flush();  // the rows a resume from this checkpoint keeps are on disk first
        write_checkpoint(task.dp, model, opt, ckpt, uint64_t(step + 1));
        last_ckpt = std::chrono::steady_clock::now();
        clock.end(Phase::checkpoint), clock.count(Phase::checkpoint);
      }
      if (verbose) std::printf("step %5d | val loss %.4f\n", step + 1, vl), std::fflush(stdout);
    }
    // A clean stop (SIGTERM from a scheduler, Ctrl-C) writes one too, so that a resume loses nothing.
    const bool stopping = stop && c.writes_checkpoints();
    if ((comm.rank() == 0 || every_rank_saves) && step + 1 < c.train.steps && read && !(c.checkpoint && eval_step) &&
        (ckpt_step || stopping || by_time)) {
      clock.end(Phase::steps);  // the device is idle: this step's loss was read
      log.flush();  // the rows up to here are on disk before the checkpoint that a resume keeps them for
      write_checkpoint(task.dp, model, opt, ckpt, uint64_t(step + 1));
      last_ckpt = std::chrono::steady_clock::now();
      clock.end(Phase::checkpoint), clock.count(Phase::checkpoint);
    }
    log.flush();
    if (stop) {
      status = "failed";
      log.set_attr("failure", std::string("stopped by signal ") + std::to_string(stop));
      if (verbose) std::printf("stopped by signal %d\n", stop);
      break;
    }
  }
  clock.end(Phase::steps);  // the last step synchronised for its log row
  if (task.stepper) {
    clock.move(Phase::steps, Phase::capture, task.stepper->capture_seconds());
    for (int i = 0; i < task.stepper->captures(); ++i) clock.count(Phase::capture);
  }
  res.final_train_loss = loss;
  res.status = status;
  log.set_attr("status", status);
  log.set_attr("finished", utc_now_iso());
  log.flush();  // what is left for the close below is /timing alone
  clock.end(Phase::close);
  const RunTiming timing = clock.timing();
  log.set_group_attrs("timing", timing.attrs());
  log.close();
  if (verbose) std::printf("%s\n", timing.line().c_str()), std::fflush(stdout);
  return res;
}
}  // namespace

std::string utc_now_iso() {
  std::time_t t = std::time(nullptr);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return b;
}

std::string resolve_device(const std::string& requested) {
#ifdef MUE_HAVE_CUDA
  const bool gpu = cuda::gpu_available();
  const std::string why = gpu ? "" : cuda::gpu_unusable_reason();
#else
  const bool gpu = false;
  const std::string why = "mue was built without CUDA";
#endif
  if (requested == "cpu") return "cpu";
  if (requested == "cuda") {
    MUE_CHECK(gpu, "train.device=cuda but no usable CUDA GPU: ", why);
    return "cuda";
  }
  // A GPU this build cannot use is worth a word (none at all is the usual CPU machine).
  static bool told = false;
  if (!gpu && !told && why.rfind("no CUDA device", 0) != 0 && why.find("without CUDA") == std::string::npos) {
    std::fprintf(stderr, "note: train.device=auto runs on the CPU: %s\n", why.c_str());
    told = true;
  }
  return gpu ? "cuda" : "cpu";
}

namespace {

// What a run starts from once every check has passed: the resume point (rank 0's), the data, the device.
struct RunInputs {
  std::optional<ResumeState> resume;
  std::optional<TokenFile> tokens;
  std::optional<ImageSet> images;
  std::string device;
};

// All checks before any file is touched: the run file's and the output folder's by the lead rank (rank 0, which
// writes them) alone, the data, device and memory by every rank.
RunInputs check_run(const RunConfig& c, const std::string& path, bool lead, int world_size, PhaseClock& clock) {
  RunInputs in;
  std::optional<std::string> status;
  if (lead)
    MUE_CHECK(!file_in_use(path), "'", path, "' is in use by another process (a run still writing it); not touching it");
  if (lead && std::filesystem::exists(path)) {
    MUE_CHECK(!std::filesystem::is_directory(path), "'", path, "' is a directory where the run file goes; not touching it");
    // A process killed while creating its file leaves it empty or truncated; it holds no completed run.
    std::string unreadable;
    if (std::filesystem::file_size(path) == 0) {
      unreadable = "empty file";
    } else {
      MUE_CHECK(is_hdf5(path), "'", path, "' exists and is not an HDF5 run file; not overwriting it");
      try {
        status = read_string_attr(path, "status");
      } catch (const Error& e) {
        unreadable = e.what();
      }
    }
    MUE_CHECK(unreadable.empty() || c.overwrite, "'", path, "' cannot be read (a run killed while writing it?): ",
              "pass out.overwrite=true to replace it (", unreadable, ")");
    MUE_CHECK(!unreadable.empty() || status, "'", path, "' is an HDF5 file but not a mue run file; not overwriting it");
    MUE_CHECK(!is_coord_file(path), "'", path, "' is a coordinate-check file, not a run; not overwriting it");
    // A killed (running) or failed run is started again; a finished one is a result.
    MUE_CHECK(!status || *status == "running" || *status == "failed" || c.overwrite, "'", path, "' holds a ", *status,
              " run; choose another name or pass out.overwrite=true");
  }
  if (lead && c.writes_checkpoints()) check_replaceable(checkpoint_path(path), "a mue checkpoint", is_checkpoint);
  // A killed or failed run whose checkpoint is there continues from it (same config, else a one-line refusal).
  if (lead && c.resume && status && (*status == "running" || *status == "failed") &&
      is_checkpoint(checkpoint_path(path)))
    in.resume = read_resume_state(c, path, checkpoint_path(path), world_size);
  clock.end(Phase::checks);
  if (c.task == "lm") {
    in.tokens = TokenFile::open(c.data_tokens);
    const auto& tokens = in.tokens;
    MUE_CHECK(int64_t(tokens->vocab_size()) <= c.model.vocab, "token file '", c.data_tokens, "' has vocabulary ",
              tokens->vocab_size(), " > model.vocab ", c.model.vocab);
    MUE_CHECK(int64_t(tokens->n_train()) > c.model.seq_len + 1, "token file '", c.data_tokens,
              "' has too few training tokens for seq_len ", c.model.seq_len);
    MUE_CHECK(int64_t(tokens->n_val()) >= int64_t(c.train.batch) * c.model.seq_len + 1, "token file '",
              c.data_tokens, "' has ", tokens->n_val(), " validation tokens, fewer than one evaluation batch of ",
              c.train.batch, " x ", c.model.seq_len, " (+1)");
  } else {
    in.images = ImageSet::open(c.data_images);
    const auto& images = in.images;
    const ImageConfig& im = c.model.image;
    MUE_CHECK(images->channels() == im.channels && images->size() == im.size && images->classes() == im.classes,
              "image file '", c.data_images, "' holds ", images->channels(), "x", images->size(), "x", images->size(),
              " images of ", images->classes(), " classes; the config says ", im.channels, "x", im.size, "x", im.size,
              " and ", im.classes);
    MUE_CHECK(images->n_val() > 0, "image file '", c.data_images, "' has no validation images");
  }
  clock.end(Phase::data);
  if (lead) {
    std::error_code ec;
    std::filesystem::create_directories(c.out_dir, ec);
    MUE_CHECK(!ec && std::filesystem::is_directory(c.out_dir), "cannot create output folder '", c.out_dir, "'");
  }

  clock.end(Phase::checks);
  in.device = resolve_device(c.train.device);  // on CUDA: the driver initialised, the device's properties read
  clock.end(Phase::context);
  if (world_size > 1) {
    const std::string why = dist::cannot_reduce_on(in.device);
    MUE_CHECK(why.empty(), why);
  }
  check_memory_fits(c, in.device);  // before anything the size of the model is built
  return in;
}

}  // namespace

RunResult train_run(const RunConfig& c, bool verbose) {
  PhaseClock clock;
  clock.end(Phase::config);  // main's entry to here: the arguments and the config
  // A data-parallel run (launched by mpirun or srun) first agrees on the config and the batch split; one
  // process is a world of one rank and does no collective at all.
  dist::Communicator& comm = dist::world();
  dist::check_same_config(comm, c.raw.dump());
  const dist::Shard shard = dist::shard_batch(comm, c.train.batch, "train.batch");
  const bool lead = comm.rank() == 0;  // writes the run file and the checkpoints, prints
  verbose = verbose && lead;
  // Every rank checks (check_run), then all agree: any failure stops every rank before a file is written.
  const std::string path = (std::filesystem::path(c.out_dir) / (c.name + ".h5")).string();
  RunInputs in;
  std::exception_ptr check_error;
  try {
    in = check_run(c, path, lead, comm.size(), clock);
  } catch (...) {
    check_error = std::current_exception();
  }
  dist::agree(comm, check_error);
  std::optional<ResumeState>& resume = in.resume;
  const std::string& device = in.device;
  // Every rank resumes from rank 0's decision (the checkpoint file, read by each rank: out.dir must be shared).
  if (comm.size() > 1) {
    const int step = comm.broadcast(resume ? resume->step : 0);
    const double first_loss = comm.broadcast(resume ? resume->first_loss : 0.0);
    if (!lead && step > 0) resume.emplace(), resume->step = step, resume->first_loss = first_loss;
  }
  if (verbose) std::printf("memory estimate: %s\n", format_memory(estimate_memory(c)).c_str());
  clock.end(Phase::checks);
  const ParamTable table = make_param_table(c.rule, c.model, c.reference, c.hp);
  clock.end(Phase::model);
  auto run = [&](auto& be) {  // `be` is made just before: its context, stream and handles
    using Backend = std::remove_reference_t<decltype(be)>;
    be.synchronize();
    clock.end(Phase::context);
    DataParallel<Backend> dp(comm, shard, c.train, be);
    if (c.task == "flow") {
      FlowTask<Backend> task(c, be, table, *in.images, dp);
      return train_with(c, be, task, table, path, verbose, resume ? &*resume : nullptr, clock);
    }
    LmTask<Backend> task(c, be, table, *in.tokens, dp);
    return train_with(c, be, task, table, path, verbose, resume ? &*resume : nullptr, clock);
  };
#ifdef MUE_HAVE_CUDA
  if (device == "cuda") {
    CudaBackend be(dist::cuda_device_of(comm));  // a data-parallel rank's own GPU
    if (verbose && comm.size() > 1)
      std::printf("data parallel over %d GPUs through NCCL; the steps run op by op (no CUDA graph)\n", comm.size());
    return run(be);
  }
#endif
  CpuBackend<float> be;
  return run(be);
}

}  // namespace mue
