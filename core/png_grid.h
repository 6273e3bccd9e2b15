// PNG image grids (sample sheets of generated or data images) through libpng.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mue {

// Writes n images (images: [n, C, S, S] floats, row-major, values in [-1, 1]; values outside are clamped, NaN
// counts as -1) as one PNG: a grid of min(cols, n) columns and ceil(n / cols) rows, each cell S x S pixels, with
// `pad` pixels of white (255) around and between cells (cells of an incomplete last row stay white).
// Pixel value = round((v + 1) * 127.5). C = 1 gives an 8-bit grey PNG, C = 3 an 8-bit RGB PNG.
// Image size: width = cols * S + (cols + 1) * pad, height = rows * S + (rows + 1) * pad.
// Writes path + ".tmp", then renames it to path. Any failure (bad arguments, unwritable path) is a mue::Error
// naming the path.
void write_png_grid(const std::string& path, const std::vector<float>& images, int n, int C, int S, int cols,
                    int pad = 2);

// Reads a PNG as 8-bit grey (colour images are converted by libpng): w * h bytes, row-major; sets w and h.
std::vector<uint8_t> read_png_grey(const std::string& path, int& w, int& h);

}  // namespace mue
