#include "data/images.h"

#include <array>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <system_error>

#include "core/config.h"
#include "core/error.h"
#include "core/h5.h"
#include "core/rng.h"

namespace mue {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

template <class T>
T required_attr(const std::optional<T>& v, const std::string& file, const char* name) {
  MUE_CHECK(v, "image set '", file, "' has no attribute '", name, "'");
  return *v;
}

// Opens `name` and returns its dims after checking it is an unsigned 8-bit integer dataset of `rank`.
h5::Id open_u8(const h5::Node& f, const std::string& name, int rank, std::vector<hsize_t>& dims) {
  const std::string& file = f.file();
  h5::Id ds = f.open_dataset(name);
  h5::Id t = h5::own(H5Dget_type(ds), H5Tclose, "cannot read the type of '" + name + "'", file);
  MUE_CHECK(H5Tget_class(t) == H5T_INTEGER && H5Tget_size(t) == 1 && H5Tget_sign(t) == H5T_SGN_NONE, "dataset '",
            name, "' in '", file, "' is not uint8");
  h5::Id sp = h5::own(H5Dget_space(ds), H5Sclose, "cannot read the shape of '" + name + "'", file);
  const int r = H5Sget_simple_extent_ndims(sp);
  MUE_CHECK(r == rank, "dataset '", name, "' in '", file, "' has rank ", r, ", expected ", rank);
  dims.assign(size_t(rank), 0);
  h5::check(H5Sget_simple_extent_dims(sp, dims.data(), nullptr), "cannot read the shape of '" + name + "'", file);
  return ds;
}

void read_u8(hid_t ds, const std::string& file, const std::string& name, std::vector<uint8_t>& out, size_t n) {
  out.resize(n);
  if (n == 0) return;
  h5::check(H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()),
            "cannot read dataset '" + name + "' (corrupt file?)", file);
}

const std::array<float, 256>& pixel_lut() {
  static const std::array<float, 256> lut = [] {
    std::array<float, 256> t{};
    for (int p = 0; p < 256; ++p) t[size_t(p)] = float(double(p) / 127.5 - 1.0);
    return t;
  }();
  return lut;
}

}  // namespace

ImageSet ImageSet::open(const std::string& path) {
  const h5::Node f = h5::open_file_read(path);

  ImageSet s;
  s.path_ = path;
  const int64_t version = required_attr(f.int_attr("format_version"), path, "format_version");
  MUE_CHECK(version == kImageSetFormatVersion, "image set '", path, "' has format_version ", version,
            "; this build reads ", kImageSetFormatVersion);
  s.kind_ = required_attr(f.string_attr("kind"), path, "kind");
  const std::string classes = required_attr(f.string_attr("classes"), path, "classes");
  try {
    s.class_names_ = json::parse(classes).get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    fail("attribute 'classes' of '", path, "' is not a JSON list of names: ", json_error_text(e));
  }
  MUE_CHECK(!s.class_names_.empty() && s.class_names_.size() <= 256, "image set '", path, "' lists ",
            s.class_names_.size(), " classes (need 1..256)");

  auto load = [&](const std::string& g, const char* count_attr, std::vector<uint8_t>& px, std::vector<uint8_t>& lab,
                  bool first) {
    std::vector<hsize_t> d, ld;
    h5::Id di = open_u8(f, g + "/images", 4, d);
    h5::Id dl = open_u8(f, g + "/labels", 1, ld);
    MUE_CHECK((d[1] == 1 || d[1] == 3) && d[2] == d[3] && d[2] > 0 && d[2] <= 4096, "dataset '", g,
              "/images' in '", path, "' has shape [", d[0], ", ", d[1], ", ", d[2], ", ", d[3],
              "], expected [n, C, S, S] with C = 1 or 3");
    if (first) {
      s.C_ = int(d[1]);
      s.S_ = int(d[2]);
    } else {
      MUE_CHECK(int(d[1]) == s.C_ && int(d[2]) == s.S_, "dataset '", g, "/images' in '", path,
                "' has images of shape [", d[1], ", ", d[2], ", ", d[3], "], but /train/images has [", s.C_, ", ",
                s.S_, ", ", s.S_, "]");
    }
    MUE_CHECK(ld[0] == d[0], "dataset '", g, "/labels' in '", path, "' has ", ld[0], " labels for ", d[0],
              " images");
    const int64_t want = required_attr(f.int_attr(count_attr), path, count_attr);
    MUE_CHECK(want == int64_t(d[0]), "attribute ", count_attr, " = ", want, " of '", path, "' disagrees with ",
              g, "/images (", d[0], " images)");
    read_u8(di, path, g + "/images", px, size_t(d[0] * d[1] * d[2] * d[3]));
    read_u8(dl, path, g + "/labels", lab, size_t(d[0]));
    for (size_t i = 0; i < lab.size(); ++i)
      MUE_CHECK(lab[i] < s.class_names_.size(), "label ", int(lab[i]), " of ", g, " image ", i, " in '", path,
                "' is out of range (", s.class_names_.size(), " classes)");
  };
  load("/train", "n_train", s.train_images_, s.train_labels_, true);
  load("/val", "n_val", s.val_images_, s.val_labels_, false);
  MUE_CHECK(!s.train_labels_.empty(), "image set '", path, "' has no training images");
  return s;
}

void ImageSet::copy_out(const std::vector<uint8_t>& imgs, const std::vector<uint8_t>& labs, int64_t src,
                        float* images, int32_t* labels, int64_t dst) const {
  const size_t per = size_t(C_) * size_t(S_) * size_t(S_);
  const auto& lut = pixel_lut();
  const uint8_t* p = imgs.data() + size_t(src) * per;
  float* o = images + size_t(dst) * per;
  for (size_t k = 0; k < per; ++k) o[k] = lut[p[k]];
  labels[dst] = int32_t(labs[size_t(src)]);
}

void ImageSet::sample_batch(uint64_t seed, uint64_t step, int B, float* images, int32_t* labels, int first) const {
  MUE_CHECK(B > 0 && first >= 0, "sample_batch: batch size must be positive and first >= 0, not ", B, " and ", first,
            " ('", path_, "')");
  const uint64_t stream = hash_name("mue.images.train_batch") + step;
  const uint64_t n = uint64_t(train_labels_.size());
  for (int b = 0; b < B; ++b)
    copy_out(train_images_, train_labels_, int64_t(rng_index(seed, stream, uint64_t(first) + uint64_t(b), n)), images,
             labels, b);
}

int64_t ImageSet::val_batches(int B) const {
  MUE_CHECK(B > 0, "val_batches: batch size must be positive, not ", B, " ('", path_, "')");
  return (n_val() + B - 1) / B;
}

int ImageSet::val_batch_valid(int64_t i, int B) const {
  MUE_CHECK(i >= 0 && i < val_batches(B), "val batch ", i, " out of range [0, ", val_batches(B), ") for B = ", B,
            " ('", path_, "')");
  return int(std::min<int64_t>(B, n_val() - i * B));
}

void ImageSet::val_batch(int64_t i, int B, float* images, int32_t* labels) const {
  MUE_CHECK(i >= 0 && i < val_batches(B), "val batch ", i, " out of range [0, ", val_batches(B), ") for B = ", B,
            " ('", path_, "')");
  val_images(i * B, B, images, labels);
}

void ImageSet::val_images(int64_t first, int count, float* images, int32_t* labels) const {
  MUE_CHECK(first >= 0 && count > 0, "val_images: bad range ", first, " + ", count, " ('", path_, "')");
  const int64_t n = n_val();
  for (int b = 0; b < count; ++b) copy_out(val_images_, val_labels_, (first + b) % n, images, labels, b);
}

}  // namespace mue
