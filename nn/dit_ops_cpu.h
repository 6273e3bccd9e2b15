// CPU reference ops of the diffusion transformer (DiT-style, flow matching). Same conventions as nn/ops_cpu.h:
// templated on T, weight gradients accumulate, input gradients overwrite unless noted.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace mue::cpu {

// ---- patchify: images [B, C, S, S] -> tokens [B, (S/p)^2, C*p*p] (row-major patches, channel-major inside) ----
template <class T>
void patchify(const T* img, T* tok, int B, int C, int S, int p) {
  const int G = S / p, P = C * p * p;
  for (int b = 0; b < B; ++b)
    for (int gy = 0; gy < G; ++gy)
      for (int gx = 0; gx < G; ++gx)
        for (int c = 0; c < C; ++c)
          for (int y = 0; y < p; ++y)
            for (int x = 0; x < p; ++x)
              tok[((size_t(b) * G * G + gy * G + gx) * P) + (c * p + y) * p + x] =
                  img[((size_t(b) * C + c) * S + gy * p + y) * S + gx * p + x];
}
// The inverse permutation (also patchify's backward).
template <class T>
void unpatchify(const T* tok, T* img, int B, int C, int S, int p) {
  const int G = S / p, P = C * p * p;
  for (int b = 0; b < B; ++b)
    for (int gy = 0; gy < G; ++gy)
      for (int gx = 0; gx < G; ++gx)
        for (int c = 0; c < C; ++c)
          for (int y = 0; y < p; ++y)
            for (int x = 0; x < p; ++x)
              img[((size_t(b) * C + c) * S + gy * p + y) * S + gx * p + x] =
                  tok[((size_t(b) * G * G + gy * G + gx) * P) + (c * p + y) * p + x];
}

// ---- fixed 2-D sin-cos position embedding [G*G, D]: first half of D encodes the row, second the column ----
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

// ---- sinusoidal timestep features [B, F] of t in [0, 1] (scaled by 1000 like DDPM-style embeddings) ----
inline void timestep_features(const double* t, double* out, int B, int F) {
  const int h = F / 2;
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < h; ++i) {
      const double ang = 1000.0 * t[b] * std::exp(-std::log(10000.0) * i / h);
      out[size_t(b) * F + i] = std::cos(ang), out[size_t(b) * F + h + i] = std::sin(ang);
    }
}

// ---- SiLU: y = x * sigmoid(x) ----
template <class T>
void silu_forward(const T* x, T* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = x[i] / (T(1) + std::exp(-x[i]));
}
template <class T>
void silu_backward(const T* dy, const T* x, T* dx, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-x[i]));
    dx[i] = dy[i] * s * (T(1) + x[i] * (T(1) - s));
  }
}

// ---- adaLN modulation: y[b,t] = rmsnorm(x[b,t]) * (1 + scale[b]) + shift[b]   (no learned norm weight) ----
// mod [B, M*D] holds the per-sample chunks; shift and scale are chunks `ishift`, `iscale` of width D.
template <class T>
void modulate_forward(const T* x, const T* mod, T* y, T* rstd, int B, int Tn, int D, int M, int ishift, int iscale,
                      double eps) {
  for (int b = 0; b < B; ++b) {
    const T *sh = mod + size_t(b) * M * D + size_t(ishift) * D, *sc = mod + size_t(b) * M * D + size_t(iscale) * D;
    for (int t = 0; t < Tn; ++t) {
      const size_t row = size_t(b) * Tn + t;
      const T* xr = x + row * D;
      T ss = 0;
      for (int i = 0; i < D; ++i) ss += xr[i] * xr[i];
      const T r = T(1) / std::sqrt(ss / T(D) + T(eps));
      rstd[row] = r;
      for (int i = 0; i < D; ++i) y[row * D + i] = xr[i] * r * (T(1) + sc[i]) + sh[i];
    }
  }
}
// dx += (rmsnorm backward of dy*(1+scale)); dmod[shift] += sum_t dy; dmod[scale] += sum_t dy * xhat
template <class T>
void modulate_backward(const T* dy, const T* x, const T* mod, const T* rstd, T* dx, T* dmod, int B, int Tn, int D,
                       int M, int ishift, int iscale) {
  for (int b = 0; b < B; ++b) {
    const T* sc = mod + size_t(b) * M * D + size_t(iscale) * D;
    T *dsh = dmod + size_t(b) * M * D + size_t(ishift) * D, *dsc = dmod + size_t(b) * M * D + size_t(iscale) * D;
    for (int t = 0; t < Tn; ++t) {
      const size_t row = size_t(b) * Tn + t;
      const T *xr = x + row * D, *g = dy + row * D;
      const T r = rstd[row];
      T dot = 0;
      for (int i = 0; i < D; ++i) dot += g[i] * (T(1) + sc[i]) * xr[i] * r;
      dot /= T(D);
      for (int i = 0; i < D; ++i) {
        const T xhat = xr[i] * r;
        dsh[i] += g[i];
        dsc[i] += g[i] * xhat;
        dx[row * D + i] += r * (g[i] * (T(1) + sc[i]) - xhat * dot);
      }
    }
  }
}

// ---- gated residual: out[b,t] = x[b,t] + gate[b] * y[b,t]; gate = chunk `igate` of mod ----
template <class T>
void gated_residual_forward(T* out, const T* x, const T* y, const T* mod, int B, int Tn, int D, int M, int igate) {
  for (int b = 0; b < B; ++b) {
    const T* g = mod + size_t(b) * M * D + size_t(igate) * D;
    for (int t = 0; t < Tn; ++t)
      for (int i = 0; i < D; ++i) {
        const size_t k = (size_t(b) * Tn + t) * D + i;
        out[k] = x[k] + g[i] * y[k];
      }
  }
}
// dy = gate * dout (overwrite); dmod[gate] += sum_t dout * y. (dx is dout itself: the residual path.)
template <class T>
void gated_residual_backward(const T* dout, const T* y, const T* mod, T* dy, T* dmod, int B, int Tn, int D, int M,
                             int igate) {
  for (int b = 0; b < B; ++b) {
    const T* g = mod + size_t(b) * M * D + size_t(igate) * D;
    T* dg = dmod + size_t(b) * M * D + size_t(igate) * D;
    for (int t = 0; t < Tn; ++t)
      for (int i = 0; i < D; ++i) {
        const size_t k = (size_t(b) * Tn + t) * D + i;
        dy[k] = g[i] * dout[k];
        dg[i] += dout[k] * y[k];
      }
  }
}

// ---- per-sample broadcast add: out[b,t,:] = x[b,t,:] + v[t,:] (position embedding) ----
template <class T>
void add_rows(T* x, const T* v, int B, int Tn, int D) {
  for (int b = 0; b < B; ++b)
    for (size_t k = 0; k < size_t(Tn) * D; ++k) x[size_t(b) * Tn * D + k] += v[k];
}

// ---- flow-matching MSE: loss = mean (pred - target)^2 over n values; dpred = 2 (pred - target) / n ----
template <class T>
double mse_forward(const T* pred, const T* target, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(pred[i] - target[i]) * double(pred[i] - target[i]);
  return s / double(n);
}
template <class T>
void mse_backward(const T* pred, const T* target, T* dpred, size_t n) {
  for (size_t i = 0; i < n; ++i) dpred[i] = T(2.0 / double(n)) * (pred[i] - target[i]);
}

}  // namespace mue::cpu
