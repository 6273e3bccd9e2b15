// The DiT's images to patch tokens and back, on the host (the model uploads the tokens).
#pragma once
#include <cstddef>

namespace mue::cpu {

// patchify: images [B, C, S, S] -> tokens [B, (S/p)^2, C*p*p] (row-major patches, channel-major inside)
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

}  // namespace mue::cpu
