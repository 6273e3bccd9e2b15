// Element types. bf16 is a 16-bit storage type on the host (round-to-nearest-even conversion); CUDA code
// reinterprets it as __nv_bfloat16. Host code never does arithmetic in bf16.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace mue {

struct bf16 {
  uint16_t bits;
};

inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

inline float bf16_to_float(bf16 h) {
  uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

enum class DType { f32, f64, bf16 };

inline size_t dtype_size(DType t) { return t == DType::f64 ? 8 : t == DType::f32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::f64 ? "f64" : t == DType::f32 ? "f32" : "bf16"; }

}  // namespace mue
