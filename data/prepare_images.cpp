#include "data/prepare_images.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>
#include <tuple>

#include "core/config.h"
#include "core/error.h"
#include "core/h5.h"
#include "core/h5log.h"
#include "core/output_file.h"
#include "core/rng.h"
#include "data/images.h"

namespace mue {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kSide = 28;
constexpr int kPixels = kSide * kSide;

// A uint8 dataset with the given dims; chunked along dim 0 and DEFLATE-compressed (contiguous when empty).
void write_u8(const h5::Node& group, const std::string& name, const std::vector<hsize_t>& dims,
              const uint8_t* data) {
  const std::string& file = group.file();
  const int rank = int(dims.size());
  h5::Id space = h5::own(H5Screate_simple(rank, dims.data(), nullptr), H5Sclose,
                         "cannot create dataspace for '" + name + "'", file);
  h5::Id dcpl = h5::own(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "cannot create property list", file);
  h5::check(H5Pset_obj_track_times(dcpl, 0), "cannot disable time tracking", file);
  if (dims[0] > 0) {
    hsize_t per_item = 1;
    for (int d = 1; d < rank; ++d) per_item *= dims[d];
    std::vector<hsize_t> chunk = dims;
    chunk[0] = std::min<hsize_t>(dims[0], std::max<hsize_t>(1, (1u << 20) / per_item));  // ~1 MB chunks
    h5::check(H5Pset_chunk(dcpl, rank, chunk.data()), "cannot set chunking for '" + name + "'", file);
    h5::check(H5Pset_deflate(dcpl, 4), "cannot set DEFLATE for '" + name + "'", file);
  }
  h5::Id ds = h5::own(H5Dcreate2(group, name.c_str(), H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT),
                      H5Dclose, "cannot create dataset '" + name + "'", file);
  if (dims[0] > 0)
    h5::check(H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, data),
              "cannot write dataset '" + name + "'", file);
}

struct ClassImages {
  std::vector<uint8_t> pixels;  // [n, 28, 28]
  int64_t n = 0, skipped = 0;
};

std::string class_dir(const std::string& kind) {
  if (kind == "fashion-mnist") return "src/clothes";
  if (kind == "mnist") return "src/digits";
  fail("unknown image kind '", kind, "' (expected fashion-mnist or mnist)");
}

ClassImages read_class_file(const fs::path& file, bool unit_scale) {
  const std::string f = file.string();
  std::ifstream in(file, std::ios::binary);
  MUE_CHECK(in, "cannot read class file '", f, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  MUE_CHECK(in.good() || in.eof(), "cannot read class file '", f, "'");
  json doc;
  try {
    doc = json::parse(ss.str());
  } catch (const json::exception& e) {
    fail("malformed JSON in '", f, "': ", json_error_text(e));
  }
  MUE_CHECK(doc.is_object() && doc.contains("data") && doc["data"].is_array(), "malformed class file '", f,
            "': expected an object {\"data\": [...]}");
  const json& data = doc["data"];

  ClassImages out;
  auto pixel = [&](const json& v, int64_t img) -> uint8_t {
    if (!unit_scale && v.is_number_unsigned()) {
      const uint64_t p = v.get<uint64_t>();
      if (p <= 255) return uint8_t(p);
    }
    MUE_CHECK(v.is_number(), "malformed class file '", f, "': non-numeric pixel in image ", img);
    const double x = v.get<double>();
    if (unit_scale) {
      MUE_CHECK(x >= 0 && x <= 1, "bad pixel value ", x, " in image ", img, " of '", f, "' (expected 0..1)");
      return uint8_t(std::lround(x * 255.0));
    }
    MUE_CHECK(x >= 0 && x <= 255 && x == std::floor(x), "bad pixel value ", x, " in image ", img, " of '", f,
              "' (expected an integer 0..255)");
    return uint8_t(x);
  };

  if (!data.empty() && data[0].is_array()) {  // nested: one array of 784 per image
    out.pixels.reserve(data.size() * kPixels);
    for (size_t i = 0; i < data.size(); ++i) {
      const json& im = data[i];
      MUE_CHECK(im.is_array(), "malformed class file '", f, "': entry ", i, " of data is not an array");
      if (im.empty()) {
        ++out.skipped;
        continue;
      }
      MUE_CHECK(im.size() == size_t(kPixels), "wrong image size in '", f, "': entry ", i, " has ", im.size(),
                " values, expected 28*28 = ", kPixels);
      for (const json& v : im) out.pixels.push_back(pixel(v, int64_t(i)));
      ++out.n;
    }
  } else {  // flat: n*784 numbers
    MUE_CHECK(data.size() % kPixels == 0, "wrong image size in '", f, "': ", data.size(),
              " values is not a multiple of 28*28 = ", kPixels);
    out.n = int64_t(data.size() / kPixels);
    out.pixels.resize(data.size());
    for (size_t i = 0; i < data.size(); ++i) out.pixels[i] = pixel(data[i], int64_t(i / kPixels));
  }
  return out;
}

std::string package_source(const fs::path& root, const std::string& kind) {
  std::string name = kind, version;
  std::ifstream in(root / "package.json");
  if (in) {
    try {
      const json p = json::parse(in);
      if (p.contains("name") && p["name"].is_string()) name = p["name"].get<std::string>();
      if (p.contains("version") && p["version"].is_string()) version = p["version"].get<std::string>();
    } catch (const json::exception&) {
      // provenance only; a broken package.json does not stop the conversion
    }
  }
  std::error_code ec;
  fs::path abs = fs::absolute(root, ec);
  if (ec) abs = root;
  return "npm:" + name + (version.empty() ? "" : "@" + version) + " (" + abs.lexically_normal().string() + ")";
}

// Split key of image `index` of class `cls`.
uint64_t split_key(uint64_t seed, int cls, int64_t index) {
  const Philox4 r = philox4x32(seed, hash_name("mue.images.split") + uint64_t(cls), uint64_t(index));
  return (uint64_t(r.v[0]) << 32) | r.v[1];
}

}  // namespace

std::vector<std::string> image_class_names(const std::string& kind) {
  if (kind == "fashion-mnist")
    return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
  if (kind == "mnist") return {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  fail("unknown image kind '", kind, "' (expected fashion-mnist or mnist)");
}

ImagePrepStats prepare_images(const ImagePrepOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<std::string> names = image_class_names(opt.kind);
  const bool unit_scale = opt.kind == "mnist";
  MUE_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1, "val_fraction must be in [0, 1), not ",
            opt.val_fraction);
  MUE_CHECK(!opt.out.empty(), "prepare-images: no output path given");
  check_replaceable(opt.out, "a mue image set", [](const std::string& p) {
    try {  // an image set: the root attributes kind and format_version, and not a run's status
      return is_hdf5(p) && read_string_attr(p, "kind") && read_double_attr(p, "format_version") &&
             !read_string_attr(p, "status");
    } catch (const Error&) {
      return false;
    }
  });
  std::error_code ec;
  const fs::path root(opt.source_dir);
  MUE_CHECK(!opt.source_dir.empty() && fs::is_directory(root, ec), "image source folder '", opt.source_dir,
            "' does not exist (expected the npm package root, e.g. node_modules/", opt.kind, ")");
  const fs::path dir = root / class_dir(opt.kind);
  MUE_CHECK(fs::is_directory(dir, ec), "image source folder '", dir.string(), "' does not exist (is '",
            opt.source_dir, "' the root of the npm package ", opt.kind, "?)");

  // Read every class, then choose the split per class.
  const int K = int(names.size());
  ImagePrepStats st;
  st.class_counts.assign(size_t(K), 0);
  std::vector<fs::path> files;
  for (int c = 0; c < K; ++c) {
    files.push_back(dir / (std::to_string(c) + ".json"));
    MUE_CHECK(fs::is_regular_file(files.back(), ec), "missing class file '", files.back().string(), "'");
  }
  // Parse the class files in parallel (JSON parsing is nearly all of the time); the first failure in class order
  // is reported, so the message does not depend on thread timing.
  std::vector<ClassImages> cls(static_cast<size_t>(K));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(K));
#pragma omp parallel for schedule(dynamic, 1)
  for (int c = 0; c < K; ++c) {
    try {
      cls[size_t(c)] = read_class_file(files[size_t(c)], unit_scale);
    } catch (...) {
      errors[size_t(c)] = std::current_exception();
    }
  }
  for (int c = 0; c < K; ++c) {
    if (errors[size_t(c)]) std::rethrow_exception(errors[size_t(c)]);
    MUE_CHECK(cls[size_t(c)].n > 0, "class file '", files[size_t(c)].string(), "' holds no images");
    st.class_counts[size_t(c)] = cls[size_t(c)].n;
    st.n_skipped += cls[size_t(c)].skipped;
  }

  struct Item {
    uint64_t key;
    int cls;
    int64_t index;
  };
  std::vector<Item> train, val;
  for (int c = 0; c < K; ++c) {
    const int64_t n = cls[size_t(c)].n;
    std::vector<Item> items(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) items[size_t(i)] = {split_key(opt.seed, c, i), c, i};
    std::sort(items.begin(), items.end(),
              [](const Item& a, const Item& b) { return std::tie(a.key, a.index) < std::tie(b.key, b.index); });
    const int64_t nv = std::min<int64_t>(n, std::llround(double(n) * opt.val_fraction));
    val.insert(val.end(), items.begin(), items.begin() + nv);
    train.insert(train.end(), items.begin() + nv, items.end());
  }
  auto order = [](const Item& a, const Item& b) {
    return std::tie(a.key, a.cls, a.index) < std::tie(b.key, b.cls, b.index);
  };
  std::sort(train.begin(), train.end(), order);
  std::sort(val.begin(), val.end(), order);
  MUE_CHECK(!train.empty(), "no training images left for '", opt.out, "'");
  MUE_CHECK(!val.empty() || opt.val_fraction == 0, "no validation images for '", opt.out, "': val_fraction ",
            opt.val_fraction, " of each class rounds to none");
  st.n_train = int64_t(train.size());
  st.n_val = int64_t(val.size());

  auto gather = [&](const std::vector<Item>& items, std::vector<uint8_t>& px, std::vector<uint8_t>& lab) {
    px.resize(items.size() * kPixels);
    lab.resize(items.size());
    for (size_t j = 0; j < items.size(); ++j) {
      const uint8_t* src = cls[size_t(items[j].cls)].pixels.data() + size_t(items[j].index) * kPixels;
      std::copy(src, src + kPixels, px.data() + j * kPixels);
      lab[j] = uint8_t(items[j].cls);
    }
  };
  std::vector<uint8_t> train_px, train_lab, val_px, val_lab;
  gather(train, train_px, train_lab);
  gather(val, val_px, val_lab);
  cls.clear();

  // Write out + ".tmp", then rename.
  h5::quiet();
  const fs::path out(opt.out);
  if (out.has_parent_path()) {
    fs::create_directories(out.parent_path(), ec);
    MUE_CHECK(!ec, "cannot create the folder of '", opt.out, "': ", ec.message());
  }
  const std::string tmp = opt.out + ".tmp";
  MUE_CHECK(H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0, "this HDF5 library has no DEFLATE filter (writing '",
            opt.out, "')");
  try {
    h5::Node f = h5::create_file(tmp);
    // No modification times in the object headers, so the same sources give the same bytes.
    h5::Id gcpl = h5::own(H5Pcreate(H5P_GROUP_CREATE), H5Pclose, "cannot create property list", tmp);
    h5::check(H5Pset_obj_track_times(gcpl, 0), "cannot disable time tracking", tmp);
    auto write_split = [&](const char* g, const std::vector<uint8_t>& px, const std::vector<uint8_t>& lab) {
      const h5::Node grp = f.create_group(g, gcpl);
      const hsize_t n = lab.size();
      write_u8(grp, "images", {n, 1, hsize_t(kSide), hsize_t(kSide)}, px.data());
      write_u8(grp, "labels", {n}, lab.data());
    };
    write_split("/train", train_px, train_lab);
    write_split("/val", val_px, val_lab);
    f.set_attr("kind", opt.kind);
    f.set_attr("classes", json(names).dump());
    f.set_attr("source", package_source(root, opt.kind));
    f.set_attr("n_train", st.n_train);
    f.set_attr("n_val", st.n_val);
    f.set_attr("format_version", kImageSetFormatVersion);
    f.set_attr("split_seed", int64_t(opt.seed));
    f.set_attr("val_fraction", opt.val_fraction);
    h5::check(f.close(), "cannot finish writing the file", tmp);
    fs::rename(tmp, out, ec);
    MUE_CHECK(!ec, "cannot rename '", tmp, "' to '", opt.out, "': ", ec.message());
  } catch (...) {
    std::error_code ec2;
    fs::remove(tmp, ec2);
    throw;
  }
  st.file_bytes = int64_t(fs::file_size(out, ec));
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace mue
