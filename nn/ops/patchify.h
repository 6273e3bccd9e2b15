// The DiT's images to patch tokens and back, on the host (the model uploads the tokens).
#pragma once
#include <cstddef>

namespace mue::cpu {

// The permutation between images [B, C, S, S] and tokens [B, (S/p)^2, C*p*p] (row-major patches, channel-major
// inside): f(token element, image element) for every element.
template <class F>
void for_each_patch_element(int B, int C, int S, int p, F f) {
  const int G = S / p, P = C * p * p;
  for (int b = 0; b < B; ++b)
    for (int gy = 0; gy < G; ++gy)
      for (int gx = 0; gx < G; ++gx)
        for (int c = 0; c < C; ++c)
          for (int y = 0; y < p; ++y)
            for (int x = 0; x < p; ++x)
              f(((size_t(b) * G * G + gy * G + gx) * P) + (c * p + y) * p + x,
                ((size_t(b) * C + c) * S + gy * p + y) * S + gx * p + x);
}
template <class T>
void patchify(const T* img, T* tok, int B, int C, int S, int p) {
  for_each_patch_element(B, C, S, p, [&](size_t t, size_t i) { tok[t] = img[i]; });
}
// The inverse permutation (also patchify's backward).
template <class T>
void unpatchify(const T* tok, T* img, int B, int C, int S, int p) {
  for_each_patch_element(B, C, S, p, [&](size_t t, size_t i) { img[i] = tok[t]; });
}

}  // namespace mue::cpu
