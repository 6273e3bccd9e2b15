// Central finite differences in double precision, for checking hand-written backward passes.
#pragma once
#include <cmath>
#include <algorithm>
#include <functional>
#include <limits>
#include <vector>

#include "core/rng.h"

namespace mue::test {

inline std::vector<double> randn(size_t n, uint64_t seed, double scale = 1.0) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * rng_normal(seed, 99, i);
  return v;
}

// d loss / d x[i] by central differences (x is restored).
inline std::vector<double> numeric_grad(std::vector<double>& x, const std::function<double()>& loss, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

// ||a - b|| / max(||b||, tiny)
inline double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// zero_grad only marks the gradients stale (ModelParam::grad_stale): a step's first write of each gradient must
// replace whatever the arena held. `step` runs zero_grad, a forward and backward on a CPU (double) model; the
// gradients it gives over a NaN-filled arena must be those of a clean run bit for bit, a stale gradient must
// read as zero, and a second backward without zero_grad must add (twice the gradients).
template <class Model, class Step>
void check_stale_grads_replaced(Model& m, Step step) {
  step();
  std::vector<std::vector<double>> ref;
  for (auto& p : m.params()) ref.push_back(m.host_grads(p));
  for (auto& p : m.params()) std::fill_n(p.grad, p.row.tensor.size(), std::numeric_limits<double>::quiet_NaN());
  m.zero_grad();
  for (auto& p : m.params()) {
    const std::vector<double> g = m.host_grads(p);
    REQUIRE(std::all_of(g.begin(), g.end(), [](double v) { return v == 0; }));
  }
  step();
  for (size_t i = 0; i < ref.size(); ++i) {
    INFO("tensor " << m.params()[i].row.tensor.name);
    const std::vector<double> g = m.host_grads(m.params()[i]);
    REQUIRE(g == ref[i]);
  }
  m.backward();
  for (size_t i = 0; i < ref.size(); ++i) {
    INFO("tensor " << m.params()[i].row.tensor.name << ", second backward");
    std::vector<double> twice = ref[i];
    for (double& v : twice) v *= 2;
    CHECK(rel_error(m.host_grads(m.params()[i]), twice) < 1e-12);
  }
}

}  // namespace mue::test
