// CPU reference ops: the truth the CUDA path is tested against, and the path that runs without a GPU.
// Templated on the scalar T so the tests run them in double. Plain loops where they are clearest, Eigen for
// the matrix products. Conventions (shared with nn/ops_cuda.h):
//   * rows N = B*T; a linear weight W is [Out, In] row-major and y = alpha * x W^T;
//   * weight gradients ACCUMULATE (+=); input gradients OVERWRITE, except rmsnorm_backward's dx, which
//     accumulates because it always lands on the residual stream.
#pragma once
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace mue::cpu {

template <class T>
using MatMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
template <class T>
using CMatMap = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
template <class T>
using RowMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using CRowMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// ---- embedding: out[n,:] = wte[tok[n],:] ----
template <class T>
void embedding_forward(const int32_t* tok, const T* wte, T* out, int N, int D) {
  for (int n = 0; n < N; ++n) std::copy(wte + size_t(tok[n]) * D, wte + size_t(tok[n] + 1) * D, out + size_t(n) * D);
}
template <class T>
void embedding_backward(const int32_t* tok, const T* dout, T* dwte, int N, int D) {
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < D; ++i) dwte[size_t(tok[n]) * D + i] += dout[size_t(n) * D + i];
}

// ---- RMSNorm: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) ----
template <class T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int N, int D, double eps) {
  for (int n = 0; n < N; ++n) {
    const T* xr = x + size_t(n) * D;
    T ss = 0;
    for (int i = 0; i < D; ++i) ss += xr[i] * xr[i];
    T r = T(1) / std::sqrt(ss / T(D) + T(eps));
    rstd[n] = r;
    for (int i = 0; i < D; ++i) y[size_t(n) * D + i] = xr[i] * r * w[i];
  }
}
// dx += rstd * (w*dy - xhat * mean(xhat * w*dy)),  dw += sum_n dy * xhat
template <class T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int N, int D) {
  for (int n = 0; n < N; ++n) {
    const T* xr = x + size_t(n) * D;
    const T* g = dy + size_t(n) * D;
    T r = rstd[n], dot = 0;
    for (int i = 0; i < D; ++i) dot += g[i] * w[i] * xr[i] * r;
    dot /= T(D);
    for (int i = 0; i < D; ++i) {
      T xhat = xr[i] * r;
      dw[i] += g[i] * xhat;
      dx[size_t(n) * D + i] += r * (g[i] * w[i] - xhat * dot);
    }
  }
}

// ---- QK-norm: each head's q and k (rows of hd inside qkv [N, 3, H, hd]) RMS-normalized in place with gains
// w [2, hd] (row 0 for every q head, row 1 for every k head); v untouched. The pre-norm q, k are saved in
// pre [N, 2, H, hd] and the statistics in rstd [N, 2H] (row r = n*2H + j: j < H is q head j, else k head j-H). ----
template <class T>
void qk_norm_forward(T* qkv, const T* w, T* pre, T* rstd, int N, int H, int hd, double eps) {
  const int D = H * hd;
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < 2 * H; ++j) {
      T* x = qkv + size_t(n) * 3 * D + size_t(j) * hd;
      T* p = pre + (size_t(n) * 2 * H + j) * hd;
      std::copy(x, x + hd, p);
      rmsnorm_forward(p, w + (j / H) * hd, x, rstd + size_t(n) * 2 * H + j, 1, hd, eps);
    }
}
// In place on the q, k parts of dqkv: d(normalized q, k) in, d(pre-norm q, k) out (overwritten); dw accumulates.
template <class T>
void qk_norm_backward(T* dqkv, const T* pre, const T* w, const T* rstd, T* dw, int N, int H, int hd) {
  const int D = H * hd;
  std::vector<T> dy(hd);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < 2 * H; ++j) {
      T* g = dqkv + size_t(n) * 3 * D + size_t(j) * hd;
      std::copy(g, g + hd, dy.begin());
      std::fill(g, g + hd, T(0));
      const size_t r = size_t(n) * 2 * H + j;
      rmsnorm_backward(dy.data(), pre + r * hd, w + (j / H) * hd, rstd + r, g, dw + (j / H) * hd, 1, hd);
    }
}

// ---- linear: y = alpha * x W^T ----
template <class T>
void matmul_forward(const T* x, const T* w, T* y, int N, int In, int Out, double alpha) {
  MatMap<T>(y, N, Out).noalias() = T(alpha) * (CMatMap<T>(x, N, In) * CMatMap<T>(w, Out, In).transpose());
}
// dx = alpha * dy W (skipped if dx == nullptr), dW += alpha * dy^T x
template <class T>
void matmul_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, int N, int In, int Out, double alpha,
                     bool accumulate = true) {
  CMatMap<T> DY(dy, N, Out);
  if (dx) MatMap<T>(dx, N, In).noalias() = T(alpha) * (DY * CMatMap<T>(w, Out, In));
  if (accumulate) MatMap<T>(dw, Out, In).noalias() += T(alpha) * (DY.transpose() * CMatMap<T>(x, N, In));
  else MatMap<T>(dw, Out, In).noalias() = T(alpha) * (DY.transpose() * CMatMap<T>(x, N, In));
}

// ---- residual: out = a + b ----
template <class T>
void residual_forward(T* out, const T* a, const T* b, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// ---- RoPE, in place on the q and k parts of qkv [B, T, 3, H, hd]: pair (2i, 2i+1) of position t turns by
// t * theta^(-2i/hd). sign = +1 forward, -1 backward (the transpose of a rotation is the inverse rotation). ----
template <class T>
void rope_apply(T* qkv, int B, int T_, int H, int hd, double theta, int sign) {
  const int D = H * hd;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T_; ++t)
      for (int i = 0; i < hd / 2; ++i) {
        double ang = t * std::pow(theta, -2.0 * i / hd);
        T c = T(std::cos(ang)), s = T(sign * std::sin(ang));
        for (int part = 0; part < 2; ++part)
          for (int h = 0; h < H; ++h) {
            T* p = qkv + (size_t(b) * T_ + t) * 3 * D + size_t(part) * D + size_t(h) * hd + 2 * i;
            T a = p[0], bb = p[1];
            p[0] = a * c - bb * s;
            p[1] = a * s + bb * c;
          }
      }
}
template <class T>
void rope_forward(T* qkv, int B, int T_, int H, int hd, double theta) { rope_apply(qkv, B, T_, H, hd, theta, +1); }
template <class T>
void rope_backward(T* dqkv, int B, int T_, int H, int hd, double theta) { rope_apply(dqkv, B, T_, H, hd, theta, -1); }

// ---- attention on qkv [B, T, 3, H, hd]: out[b,t,h,:] = sum_s P[b,h,t,s] v[b,s,h,:],
// P = softmax_s(scale * q.k) over s <= t when causal; probs [B, H, T, T] saved (masked entries 0). ----
template <class T>
void attention_forward(const T* qkv, T* out, T* probs, int B, int T_, int H, int hd, double scale, bool causal) {
  const int D = H * hd;
  auto q = [&](int b, int t, int h) { return qkv + (size_t(b) * T_ + t) * 3 * D + size_t(h) * hd; };
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < T_; ++t) {
        T* P = probs + ((size_t(b) * H + h) * T_ + t) * T_;
        int smax = causal ? t : T_ - 1;
        T mx = -INFINITY;
        for (int s = 0; s <= smax; ++s) {
          const T *qp = q(b, t, h), *kp = q(b, s, h) + D;
          T dot = 0;
          for (int i = 0; i < hd; ++i) dot += qp[i] * kp[i];
          P[s] = dot * T(scale);
          mx = std::max(mx, P[s]);
        }
        T sum = 0;
        for (int s = 0; s <= smax; ++s) sum += (P[s] = std::exp(P[s] - mx));
        for (int s = 0; s <= smax; ++s) P[s] /= sum;
        for (int s = smax + 1; s < T_; ++s) P[s] = 0;
        T* o = out + (size_t(b) * T_ + t) * D + size_t(h) * hd;
        std::fill(o, o + hd, T(0));
        for (int s = 0; s <= smax; ++s) {
          const T* vp = q(b, s, h) + 2 * D;
          for (int i = 0; i < hd; ++i) o[i] += P[s] * vp[i];
        }
      }
}
// dP = dout.v ; dS = P * (dP - sum_s P dP) ; dq = scale * dS k ; dk = scale * dS^T q ; dv = P^T dout
template <class T>
void attention_backward(const T* dout, const T* qkv, const T* probs, T* dqkv, int B, int T_, int H, int hd,
                        double scale, bool causal) {
  const int D = H * hd;
  std::fill(dqkv, dqkv + size_t(B) * T_ * 3 * D, T(0));
  auto at = [&](const T* base, int b, int t, int part, int h) {
    return base + (size_t(b) * T_ + t) * 3 * D + size_t(part) * D + size_t(h) * hd;
  };
  auto atw = [&](T* base, int b, int t, int part, int h) {
    return base + (size_t(b) * T_ + t) * 3 * D + size_t(part) * D + size_t(h) * hd;
  };
  // (b, h) slices of dqkv are disjoint, so they run in parallel.
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      std::vector<T> dP(T_);
      for (int t = 0; t < T_; ++t) {
        const T* P = probs + ((size_t(b) * H + h) * T_ + t) * T_;
        const T* go = dout + (size_t(b) * T_ + t) * D + size_t(h) * hd;
        int smax = causal ? t : T_ - 1;
        T pdp = 0;
        for (int s = 0; s <= smax; ++s) {
          const T* vp = at(qkv, b, s, 2, h);
          T d = 0;
          for (int i = 0; i < hd; ++i) d += go[i] * vp[i];
          dP[s] = d;
          pdp += P[s] * d;
          T* dv = atw(dqkv, b, s, 2, h);
          for (int i = 0; i < hd; ++i) dv[i] += P[s] * go[i];
        }
        const T* qp = at(qkv, b, t, 0, h);
        T* dq = atw(dqkv, b, t, 0, h);
        for (int s = 0; s <= smax; ++s) {
          T ds = P[s] * (dP[s] - pdp) * T(scale);
          const T* kp = at(qkv, b, s, 1, h);
          T* dk = atw(dqkv, b, s, 1, h);
          for (int i = 0; i < hd; ++i) {
            dq[i] += ds * kp[i];
            dk[i] += ds * qp[i];
          }
        }
      }
    }
}

// ---- SwiGLU: in [N, 2H] = (gate | up), out = silu(gate) * up ----
template <class T>
void swiglu_forward(const T* in, T* out, int N, int H) {
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < H; ++j) {
      T g = in[size_t(n) * 2 * H + j], u = in[size_t(n) * 2 * H + H + j];
      out[size_t(n) * H + j] = g / (T(1) + std::exp(-g)) * u;
    }
}
template <class T>
void swiglu_backward(const T* dout, const T* in, T* din, int N, int H) {
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < H; ++j) {
      T g = in[size_t(n) * 2 * H + j], u = in[size_t(n) * 2 * H + H + j], d = dout[size_t(n) * H + j];
      T sig = T(1) / (T(1) + std::exp(-g));
      din[size_t(n) * 2 * H + j] = d * u * sig * (T(1) + g * (T(1) - sig));
      din[size_t(n) * 2 * H + H + j] = d * g * sig;
    }
}

// ---- softmax cross-entropy over the first V of Vp columns ----
template <class T>
void crossentropy_forward(const T* logits, const int32_t* targets, T* losses, int N, int V, int Vp) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const auto l = CRowMap<T>(logits + size_t(n) * Vp, V);
    const T mx = l.maxCoeff(), sum = (l - mx).exp().sum();  // Eigen's exp is vectorized; std::exp is not
    losses[n] = std::log(sum) + mx - l[targets[n]];
  }
}
// dlogits = dloss * (softmax - onehot); padding columns get 0. dlogits may alias logits. Each row's logsumexp
// comes from the forward's loss: lse = loss + logit[target].
template <class T>
void crossentropy_backward(const T* logits, const int32_t* targets, const T* losses, T* dlogits, int N, int V, int Vp,
                           double dloss) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const int tg = targets[n];
    const T lse = losses[n] + logits[size_t(n) * Vp + tg];
    auto d = RowMap<T>(dlogits + size_t(n) * Vp, Vp);
    d.head(V) = T(dloss) * (CRowMap<T>(logits + size_t(n) * Vp, V) - lse).exp();  // d may alias the logits
    d[tg] -= T(dloss);
    d.tail(Vp - V).setZero();
  }
}

}  // namespace mue::cpu
