// Shared plumbing of the CUDA-vs-CPU tests: fresh random inputs rounded to bf16, device buffers, poisoned
// outputs, relative errors that a NaN (an unwritten element) can never pass.
#pragma once
#ifdef MUE_HAVE_CUDA
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "core/cuda_context.h"
#include "tests/catch.h"

using namespace mue;
using V = std::vector<double>;
using I = std::vector<int32_t>;

namespace {

constexpr uint64_t kSeed = 0x5eed0c0da;
constexpr double kTolBf16 = 1e-2;

// ---- host data: every draw uses a fresh RNG stream ----
uint64_t next_stream() {
  static uint64_t s = 1;
  return s++;
}
double round_bf16(double x) { return bf16_to_float(float_to_bf16(float(x))); }
// n normal numbers * scale + shift, rounded to bf16: the exact values both the CPU and the GPU see.
V randn_bf16(size_t n, double scale = 1.0, double shift = 0.0) {
  const uint64_t st = next_stream();
  V v(n);
  for (size_t i = 0; i < n; ++i) v[i] = round_bf16(shift + scale * rng_normal(kSeed, st, i));
  return v;
}
// Same, rounded to fp32.
V randn_f32(size_t n, double scale = 1.0) {
  const uint64_t st = next_stream();
  V v(n);
  for (size_t i = 0; i < n; ++i) v[i] = float(scale * rng_normal(kSeed, st, i));
  return v;
}
I rand_index(size_t n, int hi) {
  const uint64_t st = next_stream();
  I v(n);
  for (size_t i = 0; i < n; ++i) v[i] = int32_t(rng_index(kSeed, st, i, uint64_t(hi)));
  return v;
}
V minus(const V& a, const V& b) {
  V d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}
// Elements [off, off + len) of every `stride`-sized group: picks the q, k or v part out of [.., 3, H*hd] rows.
V part(const V& v, size_t stride, size_t off, size_t len) {
  V out;
  for (size_t g = 0; g + stride <= v.size(); g += stride) out.insert(out.end(), v.begin() + g + off, v.begin() + g + off + len);
  return out;
}

// The rows of tokens t >= t0 of every sequence of v ([B, T, row] flattened): a part small enough (a ragged last
// tile, say) that an error confined to it would hide in the norm of the whole tensor.
V token_rows_from(const V& v, int B, int T, size_t row, int t0) {
  V out;
  for (int b = 0; b < B; ++b)
    out.insert(out.end(), v.begin() + (size_t(b) * T + t0) * row, v.begin() + (size_t(b) + 1) * T * row);
  return out;
}

// ---- device buffers ----
struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Dev(size_t b) : p(cuda::device_alloc(b)), bytes(b) {}
  Dev(Dev&& o) noexcept : p(std::exchange(o.p, nullptr)), bytes(o.bytes) {}
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cuda::device_free(p); }
  bf16* h() const { return static_cast<bf16*>(p); }
  float* f() const { return static_cast<float*>(p); }
  int32_t* i() const { return static_cast<int32_t*>(p); }
  void poison() const {
    std::vector<unsigned char> x(bytes, 0xFF);
    cuda::copy_to_device(p, x.data(), bytes);
  }
};
Dev put_bf16(const V& v) {
  std::vector<bf16> h(v.size());
  for (size_t k = 0; k < v.size(); ++k) h[k] = float_to_bf16(float(v[k]));
  Dev d(h.size() * sizeof(bf16));
  cuda::copy_to_device(d.p, h.data(), d.bytes);
  return d;
}
Dev put_f32(const V& v) {
  std::vector<float> h(v.begin(), v.end());
  Dev d(h.size() * sizeof(float));
  cuda::copy_to_device(d.p, h.data(), d.bytes);
  return d;
}
Dev put_i32(const I& v) {
  Dev d(v.size() * sizeof(int32_t));
  cuda::copy_to_device(d.p, v.data(), d.bytes);
  return d;
}
Dev poisoned(size_t bytes) {
  Dev d(bytes);
  d.poison();
  return d;
}
// Downloads wait for the stream first, so a fault inside a kernel is reported here.
V get_bf16(cuda::Context& ctx, const Dev& d, size_t n) {
  ctx.synchronize();
  std::vector<bf16> h(n);
  cuda::copy_to_host(h.data(), d.p, n * sizeof(bf16));
  V v(n);
  for (size_t k = 0; k < n; ++k) v[k] = bf16_to_float(h[k]);
  return v;
}
V get_f32(cuda::Context& ctx, const Dev& d, size_t n) {
  ctx.synchronize();
  std::vector<float> h(n);
  cuda::copy_to_host(h.data(), d.p, n * sizeof(float));
  return V(h.begin(), h.end());
}

// Fills scratch slots [0, slots) of ctx with NaN bytes (growing them to `bytes`), so an op that reads a scratch
// element it never wrote (a GEMM that skipped part of its output, say) produces NaN and fails.
void poison_scratch(cuda::Context& ctx, int slots, size_t bytes) {
  std::vector<unsigned char> x(bytes, 0xFF);
  for (int s = 0; s < slots; ++s) cuda::copy_to_device(ctx.scratch(s, bytes), x.data(), bytes);
}

// ---- comparison ----
// ||out - ref|| / ||ref|| (the absolute ||out - ref|| when ref is all zero); +inf when out holds a NaN/inf
// (an unwritten, still poisoned element), so it can never pass.
double rel_err(const V& out, const V& ref) {
  if (out.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}
size_t count_nonfinite(const V& v) {
  size_t c = 0;
  for (double x : v) c += !std::isfinite(x);
  return c;
}
void expect_close(const V& out, const V& ref, double tol, const char* what) {
  const double err = rel_err(out, ref);
  INFO(what << ": rel err " << err << " (tol " << tol << "), " << count_nonfinite(out) << " of " << out.size()
            << " elements not finite (unwritten?)");
  CHECK(err <= tol);
}

}  // namespace
#endif
