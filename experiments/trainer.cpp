#include "experiments/trainer.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "core/h5log.h"
#include "data/tokens.h"
#include "moe/moe_layer.h"

namespace mue {

namespace {
std::atomic<int> g_stop_signal{0};
void on_signal(int sig) { g_stop_signal = sig; }

std::string fmt_duration(double s) {
  char b[32];
  if (s < 60) std::snprintf(b, sizeof b, "%.0fs", s);
  else if (s < 3600) std::snprintf(b, sizeof b, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(b, sizeof b, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return b;
}

std::vector<ParamTableRow> table_rows(const ParamTable& t) {
  std::vector<ParamTableRow> rows;
  for (const auto& r : t.rows)
    rows.push_back({r.tensor.name, r.tensor.shape(), r.init, r.init_std, r.multiplier, r.lr, r.wd, r.eps});
  return rows;
}

template <class Backend>
double evaluate(LM<Backend>& model, const TokenFile& data, int batches) {
  const int B = model.batch(), T = model.config().seq_len;
  const int64_t avail = data.val_batches(B, T);
  MUE_CHECK(avail > 0, "validation split too small for one batch of ", B, "x", T + 1, " tokens");
  const int64_t n = std::min<int64_t>(batches, avail);
  std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    data.val_batch(i, B, T, x.data(), y.data());
    sum += model.forward(x.data(), y.data());
  }
  return sum / double(n);
}

template <class Backend>
RunResult train_with(const RunConfig& c, Backend& be, const TokenFile& data, const std::string& path, bool verbose) {
  RunResult res;
  res.path = path;
  res.device = be.device_name();
  const ParamTable table = make_param_table(c.rule, c.model, c.reference, c.hp);
  LM<Backend> model(c.model, table, be, c.train.batch, make_ffn<Backend>);
  model.init_weights(c.train.seed);
  if (verbose) {
    std::printf("%s", format_table(table).c_str());
    std::printf("model: %zu parameters, activations %.1f MiB, device %s\n", model.n_params(),
                model.activation_bytes() / 1048576.0, res.device.c_str());
  }

  // Everything is validated and built: only now is the output file created.
  RunLog log = RunLog::create(path);
  log.set_attr("config", c.raw.dump(2));
  log.set_attr("rule", c.rule);
  log.set_attr("status", std::string("running"));
  log.set_attr("git_commit", std::string(MUE_GIT_COMMIT));
  log.set_attr("device", res.device);
  log.set_attr("started", utc_now_iso());
  log.set_attr("finished", std::string(""));
  log.set_attr("data_sources", data.sources());
  log.write_param_table(table_rows(table));
  log.flush();

  g_stop_signal = 0;
  auto old_int = std::signal(SIGINT, on_signal), old_term = std::signal(SIGTERM, on_signal);

  const int B = c.train.batch, T = c.model.seq_len;
  const double tokens_per_step = double(B) * T;
  std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
  std::string status = "completed";
  auto t0 = std::chrono::steady_clock::now();
  double window_start = 0, loss = 0, gnorm = 0;
  int window_steps = 0;
  res.best_val_loss = INFINITY;
  for (int step = 0; step < c.train.steps; ++step) {
    data.sample_batch(c.train.data_seed, uint64_t(step), B, T, x.data(), y.data());
    model.zero_grad();
    loss = model.forward(x.data(), y.data());
    if (step == 0) res.first_loss = loss;
    model.backward();
    const double lr_factor = c.schedule.factor(step);
    StepStats st = adamw_update(model, c.adamw, step + 1, lr_factor);
    gnorm = st.grad_norm;
    ++window_steps;
    res.steps_done = step + 1;
    const bool diverged = !std::isfinite(loss) || !std::isfinite(gnorm) ||
                          (c.train.diverge_factor > 0 && step >= c.schedule.warmup &&
                           loss > c.train.diverge_factor * res.first_loss);
    const bool last = step + 1 == c.train.steps || diverged || g_stop_signal;
    if ((step + 1) % c.train.log_every == 0 || last) {
      be.synchronize();
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double tps = window_steps * tokens_per_step / std::max(1e-9, wall - window_start);
      window_start = wall, window_steps = 0;
      res.tok_per_s = tps;
      log.append("train", {{"step", step + 1}, {"tokens", (step + 1) * tokens_per_step}, {"loss", loss},
                           {"aux_loss", model.aux_loss()}, {"lr", c.hp.lr * lr_factor}, {"grad_norm", gnorm},
                           {"tok_per_s", tps}, {"wall_s", wall}});
      for (int l = 0; l < c.model.n_layers; ++l)
        if (const BranchStats* rs = model.ffn_stats(l)) {
          log.append("router", {{"step", step + 1}, {"layer", l}, {"entropy", rs->entropy},
                                {"balance_loss", rs->balance_loss}, {"z_loss", rs->z_loss}});
          log.append_row("router/load", rs->load);
        }
      if (verbose) {
        const double eta = wall / (step + 1) * (c.train.steps - step - 1);
        std::printf("step %5d/%d | loss %.4f | lr x%.3f | grad norm %.3f | %.0f tok/s | ETA %s\n", step + 1,
                    c.train.steps, loss, lr_factor, gnorm, tps, fmt_duration(eta).c_str());
        std::fflush(stdout);
      }
    }
    if (diverged) {
      status = "diverged";
      if (verbose) std::printf("diverged at step %d (loss %g)\n", step + 1, loss);
      break;
    }
    if ((step + 1) % c.train.eval_every == 0 || step + 1 == c.train.steps) {
      const double vl = evaluate(model, data, c.train.eval_batches);
      res.final_val_loss = vl;
      res.best_val_loss = std::min(res.best_val_loss, vl);
      log.append("val", {{"step", step + 1}, {"loss", vl}});
      if (verbose) std::printf("step %5d | val loss %.4f\n", step + 1, vl), std::fflush(stdout);
    }
    log.flush();
    if (g_stop_signal) {
      status = "failed";
      log.set_attr("failure", std::string("stopped by signal ") + std::to_string(int(g_stop_signal)));
      if (verbose) std::printf("stopped by signal %d\n", int(g_stop_signal));
      break;
    }
  }
  std::signal(SIGINT, old_int);
  std::signal(SIGTERM, old_term);
  res.final_train_loss = loss;
  res.status = status;
  log.set_attr("status", status);
  log.set_attr("finished", utc_now_iso());
  log.close();
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
#else
  const bool gpu = false;
#endif
  if (requested == "cpu") return "cpu";
  if (requested == "cuda") {
    MUE_CHECK(gpu, "train.device=cuda but no usable CUDA GPU (or mue was built without CUDA)");
    return "cuda";
  }
  return gpu ? "cuda" : "cpu";
}

RunResult train_run(const RunConfig& c, bool verbose) {
  // All checks before any file is touched.
  const std::string path = (std::filesystem::path(c.out_dir) / (c.name + ".h5")).string();
  if (std::filesystem::exists(path)) {
    MUE_CHECK(is_hdf5(path), "'", path, "' exists and is not an HDF5 run file; not overwriting it");
    auto status = read_string_attr(path, "status");
    MUE_CHECK(!(status && *status == "completed") || c.overwrite, "'", path,
              "' holds a completed run; choose another name or pass out.overwrite=true");
  }
  TokenFile data = TokenFile::open(c.data_tokens);
  MUE_CHECK(int64_t(data.vocab_size()) <= c.model.vocab, "token file '", c.data_tokens, "' has vocabulary ",
            data.vocab_size(), " > model.vocab ", c.model.vocab);
  MUE_CHECK(int64_t(data.n_train()) > c.model.seq_len + 1, "token file '", c.data_tokens,
            "' has too few training tokens for seq_len ", c.model.seq_len);
  std::error_code ec;
  std::filesystem::create_directories(c.out_dir, ec);
  MUE_CHECK(!ec && std::filesystem::is_directory(c.out_dir), "cannot create output folder '", c.out_dir, "'");

  const std::string device = resolve_device(c.train.device);
#ifdef MUE_HAVE_CUDA
  if (device == "cuda") {
    CudaBackend be;
    return train_with(c, be, data, path, verbose);
  }
#endif
  CpuBackend<float> be;
  return train_with(c, be, data, path, verbose);
}

}  // namespace mue
