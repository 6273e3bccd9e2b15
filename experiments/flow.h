// Rectified flow on images: training batches, the held-out loss at fixed t, and the Euler sampler.
//   x_t = (1 - t) x_0 + t eps,  v = eps - x_0,  loss = mean ||v_hat - v||^2,  t ~ logit-normal(0, 1)
// Every random number is a counter-based function of (seed, step, index): runs and evaluations repeat exactly.
#pragma once
#include <cmath>
#include <vector>

#include "core/rng.h"
#include "data/images.h"
#include "nn/dit.h"

namespace mue {

struct FlowBatch {
  std::vector<double> xt, v, t;
  std::vector<int32_t> labels;
};

// Builds x_t and v from clean images x0 [B, npix] in [-1, 1]; noise and t drawn from (seed, step).
// label_dropout replaces a label by the null class (index `classes`) with that probability. The B rows are rows
// first .. first+B-1 of the step's batch (first > 0: a data-parallel rank's share), whose numbers they draw.
inline FlowBatch make_flow_batch(const std::vector<float>& x0, const std::vector<int32_t>& labels, int B, int npix,
                                 uint64_t seed, uint64_t step, double label_dropout, int classes,
                                 const double* fixed_t = nullptr, int first = 0) {
  FlowBatch fb;
  fb.xt.resize(size_t(B) * npix), fb.v.resize(fb.xt.size()), fb.t.resize(B), fb.labels = labels;
  for (int b = 0; b < B; ++b) {
    const uint64_t row = uint64_t(first) + uint64_t(b);
    const double n = rng_normal(seed ^ 0x7157ull, step, row);
    const double t = fixed_t ? *fixed_t : 1.0 / (1.0 + std::exp(-n));  // logit-normal(0, 1)
    fb.t[b] = t;
    for (int i = 0; i < npix; ++i) {
      const size_t k = size_t(b) * npix + i;
      const double eps = rng_normal(seed ^ 0xe95ull, step, row * uint64_t(npix) + uint64_t(i));
      fb.xt[k] = (1 - t) * x0[k] + t * eps;
      fb.v[k] = eps - x0[k];
    }
    if (label_dropout > 0 && rng_uniform(seed ^ 0x1ab1ull, step, row) < label_dropout) fb.labels[b] = classes;
  }
  return fb;
}

// Held-out loss at each fixed t, with fixed noise, averaged over `batches` validation batches of global_batch
// images (0: the model's batch); the model takes rows first .. first+model.batch()-1 of each (a data-parallel
// rank's share: the mean of the ranks' results is the whole batches' loss).
template <class Model>
std::vector<double> flow_eval(Model& model, const ImageSet& data, const std::vector<double>& ts, int batches,
                              int global_batch = 0, int first = 0) {
  const int B = model.batch(), npix = data.channels() * data.size() * data.size();
  const int GB = global_batch > 0 ? global_batch : B;
  std::vector<float> x(size_t(B) * npix);
  std::vector<int32_t> y(B);
  std::vector<double> loss(ts.size(), 0.0);
  const int64_t n = std::min<int64_t>(batches, data.val_batches(GB));
  for (int64_t i = 0; i < n; ++i) {
    data.val_images(i * GB + first, B, x.data(), y.data());
    for (size_t k = 0; k < ts.size(); ++k) {
      FlowBatch fb = make_flow_batch(x, y, B, npix, 424242, uint64_t(i) * 64 + k, 0.0, 0, &ts[k], first);
      loss[k] += model.forward(fb.xt.data(), fb.v.data(), fb.t.data(), fb.labels.data()) / double(n);
    }
  }
  return loss;
}

// Euler ODE from t = 1 (noise) to t = 0: x <- x - dt * v_hat, with classifier-free guidance
// v = v_null + w (v_cond - v_null) when w != 1. The model's batch fixes how many images; labels [batch].
template <class Model>
std::vector<double> flow_sample(Model& model, const std::vector<int32_t>& labels, int steps, double guidance,
                                uint64_t seed) {
  const ModelConfig& c = model.config();
  const int B = model.batch(), npix = c.image.channels * c.image.size * c.image.size;
  MUE_CHECK(int(labels.size()) == B, "sampler needs one label per image");
  std::vector<double> x(size_t(B) * npix), t(B);
  for (size_t k = 0; k < x.size(); ++k) x[k] = rng_normal(seed, 0x5a3b1e, k);
  std::vector<int32_t> null_labels(B, c.image.classes);
  const double dt = 1.0 / steps;
  for (int s = 0; s < steps; ++s) {
    std::fill(t.begin(), t.end(), 1.0 - s * dt);
    model.forward(x.data(), nullptr, t.data(), labels.data());
    std::vector<double> v = model.prediction();
    if (guidance != 1.0) {
      model.forward(x.data(), nullptr, t.data(), null_labels.data());
      std::vector<double> vu = model.prediction();
      for (size_t k = 0; k < v.size(); ++k) v[k] = vu[k] + guidance * (v[k] - vu[k]);
    }
    for (size_t k = 0; k < x.size(); ++k) x[k] -= dt * v[k];
  }
  return x;
}

}  // namespace mue
