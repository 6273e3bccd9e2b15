// Checkpoints: master weights, Adam moments (the optimizer's, optim/adamw.h; with ZeRO-1 every rank's share,
// gathered by rank 0, so the file is the same whatever the ranks) and the step, one binary file next to the run's HDF5 log
// (runs/NAME.ckpt). The batch order and the noise are counter-based functions of (seed, step), so (config, step)
// is the whole RNG state. Format: "MUECKPT1", u64 step, u64 n_tensors, then per tensor: u32 name length, name,
// u64 count, count f32 values, count f32 m, count f32 v. Written to NAME.ckpt.tmp and renamed.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/output_file.h"

namespace mue {

inline std::string checkpoint_path(const std::string& run_h5) {
  std::string p = run_h5;
  if (p.size() > 3 && p.compare(p.size() - 3, 3, ".h5") == 0) p.resize(p.size() - 3);
  return p + ".ckpt";
}

// Whether `path` is a checkpoint (a file this program wrote, which it may replace).
inline bool is_checkpoint(const std::string& path) { return file_starts_with(path, "MUECKPT1"); }

// The step a checkpoint was written at (its header); errors for anything that is not a whole header.
inline uint64_t checkpoint_step(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  MUE_CHECK(f, "cannot open checkpoint '", path, "'");
  char head[16];
  const bool whole = std::fread(head, 1, 16, f) == 16;
  std::fclose(f);
  MUE_CHECK(whole && std::memcmp(head, "MUECKPT1", 8) == 0, "'", path, "' is not a whole mue checkpoint");
  uint64_t step = 0;
  std::memcpy(&step, head + 8, 8);
  return step;
}

// Writes the checkpoint of `model` at `step`; moments(i, first, m, v) fills m and v (host arrays of tensor i's
// size) with tensor i's Adam moments, tensor i being elements [first, first + size) of the packed arenas.
template <class Model, class Moments>
void save_checkpoint_with(Model& model, const std::string& path, uint64_t step, Moments moments) {
  auto& be = model.backend();
  using Mt = typename std::remove_reference_t<decltype(be)>::master_t;
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  MUE_CHECK(f, "cannot write checkpoint '", tmp, "'");
  auto put = [&](const void* p, size_t n) {
    if (std::fwrite(p, 1, n, f) != n) {
      std::fclose(f), std::remove(tmp.c_str());
      fail("short write to checkpoint '", tmp, "'");
    }
  };
  const uint64_t n = model.params().size();
  put("MUECKPT1", 8), put(&step, 8), put(&n, 8);
  size_t first = 0;
  for (size_t i = 0; i < model.params().size(); ++i) {
    const auto& p = model.params()[i];
    const uint32_t len = uint32_t(p.row.tensor.name.size());
    const uint64_t cnt = p.row.tensor.size();
    put(&len, 4), put(p.row.tensor.name.data(), len), put(&cnt, 8);
    std::vector<Mt> value(cnt), m(cnt), v(cnt);
    be.download(value.data(), p.value, cnt * sizeof(Mt));
    moments(i, first, m.data(), v.data());
    first += cnt;
    std::vector<float> out(cnt);
    for (const std::vector<Mt>* h : {&value, &m, &v}) {
      for (size_t k = 0; k < cnt; ++k) out[k] = float((*h)[k]);
      put(out.data(), cnt * 4);
    }
  }
  const bool closed = std::fclose(f) == 0, renamed = closed && std::rename(tmp.c_str(), path.c_str()) == 0;
  if (!renamed) std::remove(tmp.c_str());
  MUE_CHECK(closed, "cannot close checkpoint '", tmp, "'");
  MUE_CHECK(renamed, "cannot rename '", tmp, "' to '", path, "'");
}

// The checkpoint of a model and an optimizer that owns all of its moments.
template <class Model, class Optimizer>
void save_checkpoint(Model& model, Optimizer& opt, const std::string& path, uint64_t step) {
  auto& be = model.backend();
  save_checkpoint_with(model, path, step, [&](size_t i, size_t, auto* m, auto* v) {
    const size_t bytes = model.params()[i].row.tensor.size() * sizeof(*m);
    be.download(m, opt.m(i), bytes), be.download(v, opt.v(i), bytes);
  });
}

namespace detail {
// Loads the weights into a model of the same shape and hands each tensor's moments to moments(i, m, v) (host
// arrays of its size); returns the step. Names and sizes must match.
template <class Model, class Moments>
uint64_t load_checkpoint(Model& model, const std::string& path, Moments moments) {
  auto& be = model.backend();
  using Mt = typename std::remove_reference_t<decltype(be)>::master_t;
  FILE* f = std::fopen(path.c_str(), "rb");
  MUE_CHECK(f, "cannot open checkpoint '", path, "'");
  auto get = [&](void* p, size_t n) {
    if (std::fread(p, 1, n, f) != n) {
      std::fclose(f);
      fail("checkpoint '", path, "' is truncated");
    }
  };
  char magic[8];
  uint64_t step = 0, n = 0;
  get(magic, 8);
  if (std::memcmp(magic, "MUECKPT1", 8) != 0) std::fclose(f), fail("'", path, "' is not a mue checkpoint");
  get(&step, 8), get(&n, 8);
  if (n != model.params().size())
    std::fclose(f), fail("checkpoint '", path, "' has ", n, " tensors, the model has ", model.params().size());
  for (size_t i = 0; i < model.params().size(); ++i) {
    auto& p = model.params()[i];
    uint32_t len = 0;
    uint64_t cnt = 0;
    get(&len, 4);
    std::string name(len, '\0');
    get(name.data(), len), get(&cnt, 8);
    if (name != p.row.tensor.name || cnt != p.row.tensor.size())
      std::fclose(f), fail("checkpoint '", path, "' holds '", name, "' of ", cnt, " values where the model has '",
                           p.row.tensor.name, "' of ", p.row.tensor.size());
    std::vector<float> in(cnt);
    std::vector<Mt> h[3];
    for (auto& dst : h) {
      get(in.data(), cnt * 4);
      dst.assign(in.begin(), in.end());
    }
    be.upload(p.value, h[0].data(), cnt * sizeof(Mt));
    moments(i, h[1], h[2]);
  }
  std::fclose(f);
  model.refresh_weights();
  return step;
}
}  // namespace detail

// Loads weights and moments into a model of the same shape and its optimizer (the moments it owns: a ZeRO-1
// rank takes its share of the whole file); returns the step.
template <class Model, class Optimizer>
uint64_t load_checkpoint(Model& model, Optimizer& opt, const std::string& path) {
  return detail::load_checkpoint(model, path,
                                 [&](size_t i, const auto& m, const auto& v) { opt.load_moments(i, m.data(), v.data()); });
}
// The weights alone (sampling needs no optimizer); the moments are read past.
template <class Model>
uint64_t load_checkpoint(Model& model, const std::string& path) {
  return detail::load_checkpoint(model, path, [](size_t, const auto&, const auto&) {});
}

}  // namespace mue
