// Fixed sin-cos features of the DiT, computed on the host: the 2-D position embedding and the timestep features.
#pragma once
#include <cmath>
#include <cstddef>
#include <vector>

namespace mue::cpu {

// fixed 2-D sin-cos position embedding [G*G, D]: first half of D encodes the row, second the column
inline std::vector<double> sincos_2d(int G, int D) {
  std::vector<double> e(size_t(G) * G * D);
  const int q = D / 4;  // frequencies per axis and function
  for (int gy = 0; gy < G; ++gy)
    for (int gx = 0; gx < G; ++gx)
      for (int i = 0; i < q; ++i) {
        const double w = std::pow(10000.0, -double(i) / q);
        double* r = e.data() + (size_t(gy) * G + gx) * D;
        r[i] = std::sin(gy * w), r[q + i] = std::cos(gy * w);
        r[2 * q + i] = std::sin(gx * w), r[3 * q + i] = std::cos(gx * w);
      }
  return e;
}

// sinusoidal timestep features [B, F] of t in [0, 1] (scaled by 1000 like DDPM-style embeddings)
inline void timestep_features(const double* t, double* out, int B, int F) {
  const int h = F / 2;
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < h; ++i) {
      const double ang = 1000.0 * t[b] * std::exp(-std::log(10000.0) * i / h);
      out[size_t(b) * F + i] = std::cos(ang), out[size_t(b) * F + h + i] = std::sin(ang);
    }
}

}  // namespace mue::cpu
