#include "core/png_grid.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "core/error.h"
#include "core/output_file.h"

namespace mue {

namespace {
uint8_t to_u8(float v) {
  if (!(v >= -1.f)) v = -1.f;  // also NaN
  if (v > 1.f) v = 1.f;
  return uint8_t(std::lround((double(v) + 1.0) * 127.5));
}
}  // namespace

void write_png_grid(const std::string& path, const std::vector<float>& images, int n, int C, int S, int cols,
                    int pad) {
  MUE_CHECK(n > 0, "PNG grid '", path, "': need at least one image (n = ", n, ")");
  check_replaceable(path, "a PNG image", [](const std::string& p) { return file_starts_with(p, "\x89PNG\r\n\x1a\n"); });
  MUE_CHECK(C == 1 || C == 3, "PNG grid '", path, "': channels must be 1 or 3, not ", C);
  MUE_CHECK(S > 0 && cols > 0 && pad >= 0, "PNG grid '", path, "': bad geometry (S = ", S, ", cols = ", cols,
            ", pad = ", pad, ")");
  const size_t want = size_t(n) * size_t(C) * size_t(S) * size_t(S);
  MUE_CHECK(images.size() == want, "PNG grid '", path, "': got ", images.size(), " values, expected n*C*S*S = ",
            want);
  cols = std::min(cols, n);
  const int rows = (n + cols - 1) / cols;
  const int64_t W = int64_t(cols) * S + int64_t(cols + 1) * pad;
  const int64_t H = int64_t(rows) * S + int64_t(rows + 1) * pad;
  MUE_CHECK(W < (1 << 20) && H < (1 << 20), "PNG grid '", path, "': image too large (", W, " x ", H, ")");

  std::vector<uint8_t> buf(size_t(W * H * C), 255);
  for (int k = 0; k < n; ++k) {
    const int64_t x0 = pad + int64_t(k % cols) * (S + pad), y0 = pad + int64_t(k / cols) * (S + pad);
    for (int ch = 0; ch < C; ++ch)
      for (int y = 0; y < S; ++y) {
        const float* src = images.data() + ((size_t(k) * C + ch) * S + y) * S;
        uint8_t* dst = buf.data() + ((y0 + y) * W + x0) * C + ch;
        for (int x = 0; x < S; ++x) dst[size_t(x) * C] = to_u8(src[x]);
      }
  }

  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = png_uint_32(W);
  img.height = png_uint_32(H);
  img.format = C == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  const std::string tmp = path + ".tmp";
  if (!png_image_write_to_file(&img, tmp.c_str(), 0, buf.data(), 0, nullptr)) {
    const std::string msg = img.message;
    png_image_free(&img);
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    fail("cannot write PNG '", path, "': ", msg);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    fail("cannot rename '", tmp, "' to '", path, "': ", ec.message());
  }
}

std::vector<uint8_t> read_png_grey(const std::string& path, int& w, int& h) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&img, path.c_str())) {
    const std::string msg = img.message;
    png_image_free(&img);
    fail("cannot read PNG '", path, "': ", msg);
  }
  img.format = PNG_FORMAT_GRAY;
  std::vector<uint8_t> buf(PNG_IMAGE_SIZE(img));
  if (!png_image_finish_read(&img, nullptr, buf.data(), 0, nullptr)) {
    const std::string msg = img.message;
    png_image_free(&img);
    fail("cannot decode PNG '", path, "': ", msg);
  }
  w = int(img.width);
  h = int(img.height);
  return buf;
}

}  // namespace mue
