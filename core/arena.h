// One allocation per purpose (parameters, gradients, optimizer state, activations), handed out as typed views.
// Used in two passes: `Arena a;` counts what views ask for (take() returns nullptr), `a.allocate(on_device)`
// makes the single allocation, then the same layout code runs again and gets real pointers in the same order.
// A scratch arena is shared by users one at a time (each layer's buffers that live only inside one call):
// rewind() before each user starts it at offset 0 again, and the allocation covers the largest.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace mue {

namespace cuda {
void* device_alloc(size_t bytes);
void device_free(void* p);
}  // namespace cuda

class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&& o) noexcept { *this = std::move(o); }
  Arena& operator=(Arena&& o) noexcept {
    std::swap(base_, o.base_), std::swap(bytes_, o.bytes_), std::swap(used_, o.used_), std::swap(peak_, o.peak_);
    std::swap(device_, o.device_);
    return *this;
  }
  ~Arena() { release(); }

  // packed = true places the view right after the previous one (parameter arenas are one contiguous vector
  // that a single kernel can sweep); otherwise views start on 256-byte boundaries.
  template <class E>
  E* take(size_t n, bool packed = false) {
    size_t off = packed ? used_ : (used_ + 255) & ~size_t(255);
    used_ = off + n * sizeof(E);
    if (!base_) return nullptr;
    MUE_CHECK(used_ <= bytes_, "arena layout changed between passes (", used_, " > ", bytes_, " bytes)");
    return reinterpret_cast<E*>(static_cast<char*>(base_) + off);
  }
  // The next views start at offset 0 again, over those taken before (see the top of this file).
  void rewind() { peak_ = std::max(peak_, used_), used_ = 0; }
  // Turn the counted size into one allocation, zero-filled on the host; rewinds for the second pass.
  void allocate(bool on_device) {
    release();
    bytes_ = std::max(used_, peak_);
    if (bytes_ == 0) bytes_ = 256;
    peak_ = 0;
    device_ = on_device;
    if (on_device) {
      base_ = cuda::device_alloc(bytes_);
    } else {
      base_ = std::aligned_alloc(256, (bytes_ + 255) & ~size_t(255));
      MUE_CHECK(base_, "out of host memory allocating ", bytes_, " bytes");
      std::memset(base_, 0, bytes_);
    }
    used_ = 0;
  }
  void* data() const { return base_; }
  size_t bytes() const { return bytes_; }
  bool on_device() const { return device_; }

 private:
  void release() {
    if (!base_) return;
    if (device_) cuda::device_free(base_);
    else std::free(base_);
    base_ = nullptr;
  }
  void* base_ = nullptr;
  size_t bytes_ = 0, used_ = 0, peak_ = 0;
  bool device_ = false;
};

}  // namespace mue
