// Data parallel (dist/): the launcher environment, the start-up agreement, each rank's share of the very batch
// one process draws, and (tag [mpi], hidden from the main run: ctest's data_parallel entry runs it where an
// mpirun is found) real two-process jobs against one process with the same global batch.
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/h5.h"
#include "core/h5log.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "experiments/checkpoint.h"
#include "experiments/flow.h"
#include "moe/moe_layer.h"
#include "nn/dit.h"
#include "nn/lm.h"
#include "optim/rules.h"
#include "tests/catch.h"
#include "tests/fixtures.h"

using namespace mue;
using mue::test::TempDir;
namespace fs = std::filesystem;

namespace {

// A rank of a pretend world whose allgather answers with `gathered` (what the other ranks would contribute).
// Its start_mean keeps what it was given: where in `arena`, and the values at that moment.
struct FakeComm final : dist::Communicator {
  std::vector<uint64_t> gathered;
  const float* arena = nullptr;
  std::vector<std::pair<dist::Share, std::vector<float>>> started;
  int waits = 0;
  FakeComm(int rank, int size, std::vector<uint64_t> g) : gathered(std::move(g)) { rank_ = rank, size_ = size; }
  void start_mean(float* data, size_t n) override {
    const size_t at = size_t(data - arena);
    started.push_back({{at, at + n}, std::vector<float>(data, data + n)});
  }
  void wait_started() override { ++waits; }
  std::string name() const override { return "fake"; }
  void mean(float*, size_t) override {}
  void mean(double*, size_t) override {}
  void sum(double*, size_t) override {}
  void reduce_scatter_mean(float*, size_t) override {}
  void allgather_shares(float*, size_t) override {}
  void allgather_shares(bf16*, size_t) override {}
  void gather_shares(const float*, float*, size_t) override {}
  std::vector<uint64_t> allgather(uint64_t v) override {
    std::vector<uint64_t> all = gathered;
    all[size_t(rank_)] = v;
    return all;
  }
  int max(int v) override { return v; }
  void broadcast_bytes(void*, size_t) override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

struct EnvVar {  // sets a variable for the scope, then clears it
  const char* name;
  EnvVar(const char* n, const char* v) : name(n) { ::setenv(n, v, 1); }
  ~EnvVar() { ::unsetenv(name); }
};

}  // namespace

TEST_CASE("data parallel: rank and world size from the launcher's environment", "[dist]") {
  for (const char* v : dist::launcher_env_vars()) REQUIRE(std::getenv(v) == nullptr);  // the test runs unlaunched
  CHECK(dist::launch_from_env().size == 1);
  {
    EnvVar r("OMPI_COMM_WORLD_RANK", "1"), n("OMPI_COMM_WORLD_SIZE", "4");
    const dist::Launch l = dist::launch_from_env();
    CHECK((l.rank == 1 && l.size == 4 && l.source == "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE"));
  }
  {
    EnvVar r("SLURM_PROCID", "0"), n("SLURM_NTASKS", "8");  // a batch script's own: not a job step
    CHECK(dist::launch_from_env().size == 1);
    EnvVar s("SLURM_STEP_NUM_TASKS", "2");  // srun
    CHECK((dist::launch_from_env().rank == 0 && dist::launch_from_env().size == 2));
  }
  {
    EnvVar r("PMI_RANK", "3"), n("PMI_SIZE", "2");
    CHECK_THAT(test::error_of([] { dist::launch_from_env(); }), HasText("PMI_RANK=3 / PMI_SIZE=2 is not a rank"));
  }
}

TEST_CASE("data parallel: a rank's GPU from its local rank; the CUDA reducer's availability and timeout", "[dist]") {
  bool launched = false;  // inside a launcher's job (an sbatch script, say) the test leaves its variables alone
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "MPI_LOCAL_RANK"})
    launched = launched || std::getenv(v);
  if (!launched) {
    CHECK(dist::local_rank_from_env() == -1);
    {
      EnvVar l("SLURM_LOCALID", "3");
      CHECK(dist::local_rank_from_env() == 3);
      EnvVar o("OMPI_COMM_WORLD_LOCAL_RANK", "1");  // Open MPI's comes first
      CHECK(dist::local_rank_from_env() == 1);
    }
    EnvVar l("MPI_LOCALRANKID", "x");
    CHECK_THAT(test::error_of([] { dist::local_rank_from_env(); }), HasText("MPI_LOCALRANKID=x is not a local rank"));
  }
  CHECK(dist::device_of_rank(5, 2, 4) == 2);   // the local rank picks among the node's GPUs
  CHECK(dist::device_of_rank(5, 1, 1) == 0);   // a rank shown one GPU (Slurm's --gpus-per-task=1) takes it
  CHECK(dist::device_of_rank(5, -1, 4) == 1);  // no local rank: the rank
  CHECK_THAT(test::error_of([] { dist::device_of_rank(0, 0, 0); }), HasText("sees no CUDA device"));
  CHECK(dist::cannot_reduce_on("cpu").empty());
#ifdef MUE_HAVE_NCCL
  CHECK(dist::cannot_reduce_on("cuda").empty());
  CHECK(dist::nccl_timeout_s() == 600);
  {
    EnvVar t("MUE_NCCL_TIMEOUT", "2.5");
    CHECK(dist::nccl_timeout_s() == 2.5);
  }
  for (const char* bad : {"0", "-1", "10s", "", "inf"}) {
    EnvVar t("MUE_NCCL_TIMEOUT", bad);
    INFO(bad);
    CHECK_THAT(dist::cannot_reduce_on("cuda"), HasText("is not a positive number of seconds"));
  }
#else
  CHECK_THAT(dist::cannot_reduce_on("cuda"), HasText("needs NCCL, and mue was built without it"));
#endif
}

TEST_CASE("data parallel: shards, config hashes and the start-up agreement", "[dist]") {
  const dist::Shard s{1, 4};
  CHECK((s.count(32) == 8 && s.first(32) == 8));
  // ZeRO-1's shares of a flat arena: back to back, the first n % G ranks one element longer.
  const std::vector<std::pair<size_t, size_t>> tenth = {{0, 4}, {4, 7}, {7, 10}};
  for (int r = 0; r < 3; ++r)
    CHECK((dist::share_of(10, r, 3).begin == tenth[size_t(r)].first && dist::share_of(10, r, 3).end == tenth[size_t(r)].second));
  CHECK((dist::share_of(2, 2, 3).begin == 2 && dist::share_of(2, 2, 3).size() == 0));
  CHECK((dist::share_of(7, 0, 1).begin == 0 && dist::share_of(7, 0, 1).end == 7));
  FakeComm r0(0, 2, {0, 0});
  CHECK(dist::shard_batch(r0, 6, "train.batch").first(6) == 0);
  try {
    dist::shard_batch(r0, 7, "train.batch");
    FAIL("no error");
  } catch (const dist::CollectiveError& e) {
    CHECK_THAT(std::string(e.what()), HasText("train.batch=7 does not divide by the 2 ranks"));
  }
  const std::string cfg = R"({"name": "x"})";
  const uint64_t h = dist::fnv1a(cfg.data(), cfg.size());
  FakeComm same(0, 2, {0, h}), other(0, 2, {0, h + 1});
  CHECK_NOTHROW(dist::check_same_config(same, cfg));
  CHECK_THROWS_AS(dist::check_same_config(other, cfg), dist::CollectiveError);
  // Rank 1 failed a check: rank 0 stops quietly, rank 1 raises its own error; nobody failed: all go on.
  FakeComm peer_failed(0, 2, {0, 1}), self(1, 2, {0, 0});
  CHECK_THROWS_AS(dist::agree(peer_failed, nullptr), dist::PeerFailed);
  const auto err = std::make_exception_ptr(Error("bad data file"));
  CHECK_THROWS_WITH(dist::agree(self, err), "bad data file");
  FakeComm all_ok(1, 2, {0, 0});
  CHECK_NOTHROW(dist::agree(all_ok, nullptr));
}

TEST_CASE("data parallel: a rank's share is the very rows of the one-process batch", "[dist][data]") {
  TempDir d("dp_rows");
  const TokenFile tf = TokenFile::open(test::make_toy_tokens(d));
  const int B = 6, T = 8, G = 3, b = B / G;
  std::vector<int32_t> in(B * T), tg(B * T), part_in(b * T), part_tg(b * T);
  tf.sample_batch(5, 11, B, T, in.data(), tg.data());
  for (int r = 0; r < G; ++r) {
    tf.sample_batch(5, 11, b, T, part_in.data(), part_tg.data(), r * b);
    CHECK(std::equal(part_in.begin(), part_in.end(), in.begin() + r * b * T));
    CHECK(std::equal(part_tg.begin(), part_tg.end(), tg.begin() + r * b * T));
  }
  tf.val_batch(2, B, T, in.data(), tg.data());
  for (int r = 0; r < G; ++r) {
    tf.val_windows(2 * B + r * b, b, T, part_in.data(), part_tg.data());
    CHECK(std::equal(part_in.begin(), part_in.end(), in.begin() + r * b * T));
  }
  CHECK_THAT(test::error_of([&] { tf.val_windows(tf.val_batches(1, T) - 1, 2, T, in.data(), tg.data()); }),
             HasText("out of range"));
  // The flow batch's noise, t and label dropout are drawn per row of the whole batch.
  const int npix = 5;
  std::vector<float> x0(size_t(B) * npix);
  std::vector<int32_t> y(B);
  for (size_t i = 0; i < x0.size(); ++i) x0[i] = float(i % 7) / 7;
  for (int i = 0; i < B; ++i) y[size_t(i)] = i % 3;
  const FlowBatch whole = make_flow_batch(x0, y, B, npix, 9, 4, 0.5, 3);
  for (int r = 0; r < G; ++r) {
    const std::vector<float> px(x0.begin() + r * b * npix, x0.begin() + (r + 1) * b * npix);
    const std::vector<int32_t> py(y.begin() + r * b, y.begin() + (r + 1) * b);
    const FlowBatch part = make_flow_batch(px, py, b, npix, 9, 4, 0.5, 3, nullptr, r * b);
    CHECK(std::equal(part.xt.begin(), part.xt.end(), whole.xt.begin() + r * b * npix));
    CHECK(std::equal(part.t.begin(), part.t.end(), whole.t.begin() + r * b));
    CHECK(std::equal(part.labels.begin(), part.labels.end(), whole.labels.begin() + r * b));
  }
}

namespace {
// One training step of `m` whose backward starts `bytes`-sized gradient buckets on `comm`: every bucket must
// start once, from the arena's end down, with the values its gradients end the backward with (bit for bit:
// nothing the backward does later writes them). The arena starts as NaN, so a bucket started before one of its
// gradients was written (or, for an expert without rows, zeroed) would show it.
template <class Model, class Backward>
void check_buckets(Model& m, double bytes, Backward forward_backward) {
  INFO("bucket bytes " << bytes);
  FakeComm comm(0, 2, {0, 0});
  comm.arena = m.grad_arena();
  const size_t n = m.n_params();
  dist::BucketedMean buckets{comm, m.grad_arena(), dist::gradient_buckets(m, bytes)};
  m.set_on_grads_final([&](size_t first) { buckets.on_final(first); });
  std::fill(m.grad_arena(), m.grad_arena() + n, NAN);
  m.zero_grad();
  forward_backward();
  double loss = 0;
  buckets.finish(&loss);
  m.set_on_grads_final({});
  CHECK(comm.waits == 1);
  REQUIRE(comm.started.size() == buckets.buckets.size());
  size_t end = n;
  for (size_t k = 0; k < comm.started.size(); ++k) {
    const auto& [range, seen] = comm.started[k];
    INFO("bucket " << k << ": [" << range.begin << ", " << range.end << ")");
    CHECK(range.end == end);  // back to back from the arena's end
    CHECK((k + 1 == comm.started.size() || double(range.size()) * sizeof(float) >= bytes));
    CHECK(std::memcmp(seen.data(), m.grad_arena() + range.begin, seen.size() * sizeof(float)) == 0);
    end = range.begin;
  }
  CHECK(end == 0);
  if (bytes <= 1) CHECK(comm.started.size() == m.params().size());  // a tensor a bucket
}
}  // namespace

// Buckets (train.bucket_mb): the backward reports after each layer that the gradients of that layer and all after
// it are final, so their mean can start while it makes the rest. LM and DiT, dense and MoE (with experts that
// get no rows), buckets of a tensor each and one of everything.
TEST_CASE("data parallel: gradient buckets start once the backward has made their gradients", "[dist]") {
  using Be = CpuBackend<float>;
  for (const bool moe : {false, true}) {
    INFO("moe " << moe);
    ModelConfig c;
    c.vocab = 11, c.vocab_pad = 12, c.d_model = 8, c.n_layers = 3, c.n_heads = 2, c.ffn_hidden = 12, c.seq_len = 4;
    if (moe) c.ffn.type = "moe", c.ffn.experts = 16, c.ffn.active = 1, c.ffn.expert_hidden = 4;
    Be be;
    LM<Be> lm(c, make_param_table("mup", c, c, Hyper{}), be, 2, make_ffn<Be>);
    lm.init_weights(3);
    std::vector<int32_t> x(8), y(8);
    for (size_t i = 0; i < x.size(); ++i) x[i] = int32_t(rng_index(1, 1, i, 11)), y[i] = int32_t(rng_index(1, 2, i, 11));
    for (double bytes : {1.0, 1e9})
      check_buckets(lm, bytes, [&] {
        lm.forward(x.data(), y.data(), true);
        lm.backward();
      });
    ModelConfig d = c;
    d.task = "flow", d.image.channels = 1, d.image.size = 4, d.image.patch = 2, d.image.classes = 3;
    d.image.time_freq = 6;
    DiT<Be> dit(d, make_param_table("mup", d, d, Hyper{}), be, 2, make_ffn<Be>);
    dit.init_weights(4);
    std::vector<double> xt(32), v(32), t = {0.3, 0.8};
    for (size_t i = 0; i < xt.size(); ++i) xt[i] = rng_normal(2, 1, i), v[i] = rng_normal(2, 2, i);
    const std::vector<int32_t> labels = {1, 3};
    for (double bytes : {1.0, 1e9})
      check_buckets(dit, bytes, [&] {
        dit.forward(xt.data(), v.data(), t.data(), labels.data());
        dit.backward();
      });
  }
}

#ifdef MUE_MPIEXEC
namespace {

struct Ran {
  int code;
  std::string out;
};

// `mue train ARGS` as one shell word each.
std::string train_cmd(const std::vector<std::string>& args) {
  std::string cmd = std::string(MUE_BINARY) + " train";
  for (auto& a : args) cmd += " '" + a + "'";
  return cmd;
}

// Runs a command line (one OpenMP thread per process); its exit code and output.
Ran run(const std::string& cmd, const TempDir& d) {
  const std::string log = d / "out.txt";
  // Open MPI as root (CI containers) and without its cross-memory-attach copy, which containers often forbid.
  const std::string env = "OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                          "OMPI_MCA_btl_vader_single_copy_mechanism=none ";
  const int st = std::system((env + cmd + " > " + log + " 2>&1").c_str());
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  fs::remove(log);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, ss.str()};
}

// mpirun -np N, oversubscribed where it is Open MPI (the CI machine may have fewer cores than ranks).
std::string mpirun(int n) {
  static const bool open_mpi = [] {
    FILE* p = ::popen((std::string(MUE_MPIEXEC) + " --version 2>&1").c_str(), "r");
    std::string s;
    char buf[256];
    while (p && std::fgets(buf, sizeof buf, p)) s += buf;
    if (p) ::pclose(p);
    return s.find("Open MPI") != std::string::npos;
  }();
  return std::string(MUE_MPIEXEC) + (open_mpi ? " --oversubscribe" : "") + " -np " + std::to_string(n);
}

std::vector<std::string> tiny_run(const TempDir& d, const std::string& tok, const std::string& name) {
  return {"model.vocab=97", "model.vocab_pad=128", "model.d_model=32", "model.n_heads=2", "model.seq_len=16",
          "ffn.hidden=64", "train.batch=4", "train.steps=20", "train.log_every=2", "train.eval_every=10",
          "train.eval_batches=3", "train.device=cpu", "data.tokens=" + tok, "out.dir=" + d.path.string(),
          "name=" + name};
}

int lines_with(const std::string& text, const std::string& what) {
  std::istringstream is(text);
  int n = 0;
  for (std::string l; std::getline(is, l);) n += l.find(what) != std::string::npos;
  return n;
}

}  // namespace

// The two-rank run (its gradient mean in buckets of 1 KiB, started during the backward; bit for bit the one
// all-reduce after it of train.bucket_mb=0, since each element is the sum of the same two values) sees the same
// windows in the same order, and its mean gradient and loss are the
// one-process ones up to the order of the sums: each rank sums its two windows, the all-reduce adds the two
// means (one process sums all four). Float sums in another order differ by a few ulp (~1e-7 relative) per step;
// over 20 steps the runs stay within 1e-6 here (measured: 2e-8 on the losses, 6e-7 on the grad norm), so a
// bound of 1e-5 relative is reduction order with margin, and any wrong share, scale or missing all-reduce
// (a different batch, a loss off by 2x, ranks drifting apart) is far outside it. Later in training the
// difference grows (Adam amplifies it; after 50 steps of this tiny model at LR 0.01 about 1e-4), which is why
// the comparison is short. The MoE run sets ffn.balance_coef=0: the balance loss is a product of two means
// over a rank's tokens (its expert fractions and mean probabilities), not a mean over tokens, so with it on a
// G-rank run differs from one process by more than reduction order (as in DDP); the z-loss is a mean and stays.
TEST_CASE("data parallel: mpirun -np 2 trains as one process with the same global batch", "[.][mpi]") {
  TempDir d("dp_mpi");
  const std::string tok = test::make_toy_tokens(d);
  for (const std::string ffn : {"dense", "moe"}) {
    INFO(ffn);
    std::vector<std::string> extra;
    if (ffn == "moe")
      extra = {"ffn.type=moe", "ffn.experts=8", "ffn.active=2", "ffn.expert_hidden=16", "ffn.balance_coef=0",
               "ffn.z_coef=0.001"};
    auto one = tiny_run(d, tok, ffn + "-one"), two = tiny_run(d, tok, ffn + "-two");
    one.insert(one.end(), extra.begin(), extra.end()), two.insert(two.end(), extra.begin(), extra.end());
    two.push_back("train.bucket_mb=0.001");  // buckets of 1 KiB: many, started during the backward
    const Ran r1 = run(train_cmd(one), d);
    REQUIRE(r1.code == 0);
    const Ran r2 = run(mpirun(2) + " " + train_cmd(two), d);
    INFO(r2.out);
    REQUIRE(r2.code == 0);
    CHECK(lines_with(r2.out, "completed after 20 steps") == 1);  // rank 0 alone reports
    const std::string f1 = d / (ffn + "-one.h5"), f2 = d / (ffn + "-two.h5");
    if (ffn == "dense") {  // the buckets' means are the one all-reduce's, element for element: bit for bit
      auto flat = tiny_run(d, tok, "dense-flat");
      flat.push_back("train.bucket_mb=0");
      REQUIRE(run(mpirun(2) + " " + train_cmd(flat), d).code == 0);
      for (const char* col : {"train/loss", "train/grad_norm", "val/loss"})
        CHECK(read_doubles(d / "dense-flat.h5", col) == read_doubles(f2, col));
    }
    CHECK(read_double_attr(f2, "world_size") == 2.0);
    CHECK(read_double_attr(f1, "world_size") == 1.0);
    for (const char* col : {"train/loss", "train/grad_norm", "train/aux_loss", "val/loss"}) {
      INFO(col);
      const auto a = read_doubles(f1, col), b = read_doubles(f2, col);
      REQUIRE(a.size() == b.size());
      REQUIRE(a.size() >= 2);
      for (size_t i = 0; i < a.size(); ++i) {
        INFO("row " << i << ": " << a[i] << " vs " << b[i]);
        CHECK(std::abs(a[i] - b[i]) <= 1e-5 * std::abs(a[i]) + (std::string(col) == "train/aux_loss" ? 1e-12 : 0));
      }
    }
  }
  // Rank 0 alone wrote: the token file and the five run files, nothing else.
  int files = 0;
  for (auto& e : fs::directory_iterator(d.path)) files += e.is_regular_file();
  CHECK(files == 6);
}

// ZeRO-1 (train.zero=1): each rank keeps and updates its share of the Adam moments. On two ranks the mean
// gradient is bitwise zero=0's (the reduce-scatter and the all-reduce both add the two ranks' values, and a + b =
// b + a); the one difference is the global grad norm, a sum of the two shares' sums of squares instead of one sum
// over the arena: double rounding (~1e-16 relative) in the norm, which moves the clip scale, and through it an
// update, by at most an ulp. Hence a bound of 1e-12 relative against zero=0 (without the norm's sum over the
// ranks the runs differ by 1e-7 to 1e-4), and zero=0's 1e-5 (reduction order) against one process. On one rank
// zero=1 is zero=0 bit for bit.
TEST_CASE("data parallel: ZeRO-1 on two ranks trains as zero=0, with half the optimizer state per rank",
          "[.][mpi]") {
  TempDir d("dp_zero");
  const std::string tok = test::make_toy_tokens(d);
  auto with = [&](const std::string& name, const std::string& zero) {
    auto a = tiny_run(d, tok, name);
    a.push_back("train.zero=" + zero);
    return a;
  };
  REQUIRE(run(train_cmd(with("one", "0")), d).code == 0);
  const Ran one_zero = run(train_cmd(with("one-zero", "1")), d);
  REQUIRE(one_zero.code == 0);
  REQUIRE(run(mpirun(2) + " " + train_cmd(with("two", "0")), d).code == 0);
  // Rank 0's checkpoint clock (out.checkpoint_minutes, here due at every step) decides for both ranks, which
  // must then both take part in each checkpoint: any disagreement would leave one waiting in a collective.
  auto zero_by_time = with("two-zero", "1");
  zero_by_time.push_back("out.checkpoint_minutes=1e-6");
  const Ran two_zero = run(mpirun(2) + " " + train_cmd(zero_by_time), d);
  INFO(two_zero.out);
  REQUIRE(two_zero.code == 0);
  CHECK(checkpoint_step(d / "two-zero.ckpt") == 19);  // by time at every step but the last
  CHECK(lines_with(two_zero.out, "zero=1: each of 2 ranks keeps the Adam moments of its share") == 1);
  const std::string one = d / "one.h5", two = d / "two.h5", z1 = d / "one-zero.h5", z2 = d / "two-zero.h5";
  CHECK(read_double_attr(z2, "zero") == 1.0);
  CHECK(read_double_attr(two, "zero") == 0.0);
  // The largest share of the moments: half the arena (rounded up), two fp32 moments per element.
  const double whole = *read_double_attr(two, "optimizer_state_bytes");
  CHECK(*read_double_attr(one, "optimizer_state_bytes") == whole);
  CHECK(*read_double_attr(z1, "optimizer_state_bytes") == whole);
  const double n = whole / 8;
  CHECK(*read_double_attr(z2, "optimizer_state_bytes") == 8 * std::ceil(n / 2));
  for (const char* col : {"train/loss", "train/grad_norm", "val/loss"}) {
    INFO(col);
    CHECK(read_doubles(z1, col) == read_doubles(one, col));
    const auto a = read_doubles(two, col), b = read_doubles(z2, col), c = read_doubles(one, col);
    REQUIRE(a.size() == b.size());
    REQUIRE(a.size() >= 2);
    for (size_t i = 0; i < a.size(); ++i) {
      INFO("row " << i << ": zero=0 " << a[i] << ", zero=1 " << b[i] << ", one process " << c[i]);
      CHECK(std::abs(a[i] - b[i]) <= 1e-12 * std::abs(a[i]));
      CHECK(std::abs(c[i] - b[i]) <= 1e-5 * std::abs(c[i]));
    }
  }
}

// Rank 0's checkpoint is the whole state: a two-rank run resumed from it (on two ranks) ends with the very
// losses of the run that never stopped. The stopped run is faked from a finished one (its status set back to
// running, as a killed run leaves it; its checkpoint is the one at step 10).
// With ZeRO-1 (train.zero=1) the moments are spread over the ranks: every rank sends its share to rank 0, which
// writes the one file, and each rank reloads its share from it. Such a checkpoint resumes on the same number of
// ranks with zero=1 alone; anything else is refused in one line.
TEST_CASE("data parallel: a two-rank run resumes from rank 0's checkpoint on two ranks", "[.][mpi]") {
  for (const std::string zero : {"0", "1"}) {
    INFO("train.zero=" << zero);
    TempDir d("dp_mpi_resume");
    const std::string tok = test::make_toy_tokens(d);
    auto args = tiny_run(d, tok, "dp");
    args.insert(args.end(), {"out.checkpoint_every=10", "train.zero=" + zero});
    REQUIRE(run(mpirun(2) + " " + train_cmd(args), d).code == 0);
    const std::string f = d / "dp.h5";
    const auto loss = read_doubles(f, "train/loss"), val = read_doubles(f, "val/loss");
    REQUIRE(fs::exists(d / "dp.ckpt"));
    auto set_running = [&] {  // as a killed run leaves it
      const h5::Node file(h5::Id(H5Fopen(f.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose), f);
      file.set_attr("status", std::string("running"));
    };
    set_running();
    const Ran again = run(mpirun(2) + " " + train_cmd(args), d);
    INFO(again.out);
    REQUIRE(again.code == 0);
    CHECK(lines_with(again.out, "resuming") == 1);
    CHECK(read_double_attr(f, "resumed_at_step") == 10.0);
    CHECK(read_doubles(f, "train/loss") == loss);
    CHECK(read_doubles(f, "val/loss") == val);
    if (zero == "0") continue;
    set_running();
    const Ran one_rank = run(train_cmd(args), d);
    INFO(one_rank.out);
    CHECK(one_rank.code == 1);
    CHECK(lines_with(one_rank.out, "mue: error:") == 1);
    CHECK(lines_with(one_rank.out, "holds a train.zero=1 run on 2 ranks; resume it on as many (this job has 1)") == 1);
    args.back() = "train.zero=0";
    const Ran unsharded = run(mpirun(2) + " " + train_cmd(args), d);
    INFO(unsharded.out);
    CHECK(unsharded.code == 1);
    CHECK(lines_with(unsharded.out, "mue: error:") == 1);
    CHECK(lines_with(unsharded.out, "belongs to a run of another config (train.zero differs)") == 1);
    CHECK(read_doubles(f, "train/loss") == loss);  // nothing touched
  }
}

TEST_CASE("data parallel: a batch the ranks cannot share, or ranks with different configs, stop in one line",
          "[.][mpi]") {
  TempDir d("dp_mpi_bad");
  const std::string tok = test::make_toy_tokens(d);
  auto args = tiny_run(d, tok, "odd");
  args.push_back("train.batch=3");
  const Ran odd = run(mpirun(2) + " " + train_cmd(args), d);
  INFO(odd.out);
  CHECK(odd.code == 1);
  CHECK(lines_with(odd.out, "mue: error:") == 1);
  CHECK(lines_with(odd.out, "train.batch=3 does not divide by the 2 ranks") == 1);
  CHECK(!fs::exists(d / "odd.h5"));

  // MPMD: rank 0 and rank 1 given different seeds.
  auto seed1 = tiny_run(d, tok, "split"), seed2 = seed1;
  seed1.push_back("train.seed=1"), seed2.push_back("train.seed=2");
  const Ran split = run(mpirun(1) + " " + train_cmd(seed1) + " : -np 1 " + train_cmd(seed2), d);
  INFO(split.out);
  CHECK(split.code == 1);
  CHECK(lines_with(split.out, "mue: error:") == 1);
  CHECK(lines_with(split.out, "the ranks resolved different configs (rank 1's differs from rank 0's)") == 1);
  CHECK(!fs::exists(d / "split.h5"));
}
#endif
