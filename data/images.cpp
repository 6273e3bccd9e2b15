#include "data/images.h"

#include <hdf5.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>
#include <tuple>

#include "core/error.h"
#include "core/h5log.h"
#include "core/output_file.h"
#include "core/rng.h"

namespace mue {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kSide = 28;
constexpr int kPixels = kSide * kSide;
constexpr int64_t kFormatVersion = 1;

// ---------------------------------------------------------------------------------------------------------------
// HDF5 plumbing (errors become one-line mue::Errors naming the file)

void quiet_hdf5() {
  (void)H5open();
  (void)H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

herr_t first_desc(unsigned, const H5E_error2_t* e, void* out) {
  auto* s = static_cast<std::string*>(out);
  if (s->empty() && e && e->desc && *e->desc) *s = e->desc;
  return 0;
}

// The innermost message on HDF5's error stack (then cleared), in parentheses, or "".
std::string h5detail() {
  std::string d;
  (void)H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, first_desc, &d);
  (void)H5Eclear2(H5E_DEFAULT);
  return d.empty() ? d : " (" + d + ")";
}

class Id {
 public:
  using Closer = herr_t (*)(hid_t);
  Id(hid_t id, Closer c) : id_(id), c_(c) {}
  Id(Id&& o) noexcept : id_(o.id_), c_(o.c_) { o.id_ = -1; }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  Id& operator=(Id&&) = delete;
  ~Id() {
    if (id_ >= 0) (void)c_(id_);
  }
  operator hid_t() const { return id_; }
  // Closes now and reports whether that worked (H5Fclose flushes, so its failure matters).
  bool close() {
    const hid_t id = id_;
    id_ = -1;
    return id < 0 || c_(id) >= 0;
  }

 private:
  hid_t id_;
  Closer c_;
};

template <class... A>
Id h5(hid_t id, Id::Closer c, const A&... what) {
  if (id < 0) {
    const std::string d = h5detail();
    fail(what..., d);
  }
  return Id(id, c);
}

template <class... A>
void h5ok(herr_t r, const A&... what) {
  if (r < 0) {
    const std::string d = h5detail();
    fail(what..., d);
  }
}

Id vlen_string_type() {
  Id t = h5(H5Tcopy(H5T_C_S1), H5Tclose, "HDF5: cannot copy the string type");
  h5ok(H5Tset_size(t, H5T_VARIABLE), "HDF5: cannot make a variable-length string type");
  h5ok(H5Tset_cset(t, H5T_CSET_UTF8), "HDF5: cannot set UTF-8");
  return t;
}

void write_attr(hid_t loc, const std::string& file, const std::string& name, const std::string& value) {
  Id type = vlen_string_type();
  Id space = h5(H5Screate(H5S_SCALAR), H5Sclose, "HDF5: cannot create a scalar dataspace for '", file, "'");
  Id a = h5(H5Acreate2(loc, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
            "cannot create attribute '", name, "' in '", file, "'");
  const char* p = value.c_str();
  h5ok(H5Awrite(a, type, &p), "cannot write attribute '", name, "' in '", file, "'");
}

template <class T>
void write_attr_num(hid_t loc, const std::string& file, const std::string& name, T value, hid_t mem, hid_t disk) {
  Id space = h5(H5Screate(H5S_SCALAR), H5Sclose, "HDF5: cannot create a scalar dataspace for '", file, "'");
  Id a = h5(H5Acreate2(loc, name.c_str(), disk, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
            "cannot create attribute '", name, "' in '", file, "'");
  h5ok(H5Awrite(a, mem, &value), "cannot write attribute '", name, "' in '", file, "'");
}

// A uint8 dataset with the given dims; chunked along dim 0 and DEFLATE-compressed (contiguous when empty).
void write_u8(hid_t group, const std::string& file, const std::string& name, const std::vector<hsize_t>& dims,
              const uint8_t* data) {
  const int rank = int(dims.size());
  Id space = h5(H5Screate_simple(rank, dims.data(), nullptr), H5Sclose, "HDF5: cannot create dataspace for '",
                name, "' in '", file, "'");
  Id dcpl = h5(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "HDF5: cannot create property list for '", file, "'");
  h5ok(H5Pset_obj_track_times(dcpl, 0), "HDF5: cannot disable time tracking for '", file, "'");
  if (dims[0] > 0) {
    hsize_t per_item = 1;
    for (int d = 1; d < rank; ++d) per_item *= dims[d];
    std::vector<hsize_t> chunk = dims;
    chunk[0] = std::min<hsize_t>(dims[0], std::max<hsize_t>(1, (1u << 20) / per_item));  // ~1 MB chunks
    h5ok(H5Pset_chunk(dcpl, rank, chunk.data()), "HDF5: cannot set chunking for '", name, "' in '", file, "'");
    h5ok(H5Pset_deflate(dcpl, 4), "HDF5: cannot set DEFLATE for '", name, "' in '", file, "'");
  }
  Id ds = h5(H5Dcreate2(group, name.c_str(), H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose,
             "cannot create dataset '", name, "' in '", file, "'");
  if (dims[0] > 0)
    h5ok(H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "cannot write dataset '", name,
         "' in '", file, "'");
}

// ---------------------------------------------------------------------------------------------------------------
// Source parsing

struct ClassImages {
  std::vector<uint8_t> pixels;  // [n, 28, 28]
  int64_t n = 0, skipped = 0;
};

std::string class_dir(const std::string& kind) {
  if (kind == "fashion-mnist") return "src/clothes";
  if (kind == "mnist") return "src/digits";
  fail("unknown image kind '", kind, "' (expected fashion-mnist or mnist)");
}

// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
std::string json_message(const std::exception& e) {
  std::string m = e.what();
  if (!m.empty() && m[0] == '[') {
    const size_t p = m.find("] ");
    if (p != std::string::npos) m = m.substr(p + 2);
  }
  return m;
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
    fail("malformed JSON in '", f, "': ", json_message(e));
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

// ---------------------------------------------------------------------------------------------------------------
// Reading

std::string read_string_attr(hid_t f, const std::string& file, const char* name) {
  const htri_t ex = H5Aexists(f, name);
  if (ex < 0) h5detail();
  MUE_CHECK(ex > 0, "image set '", file, "' has no attribute '", name, "'");
  Id a = h5(H5Aopen(f, name, H5P_DEFAULT), H5Aclose, "cannot open attribute '", name, "' in '", file, "'");
  Id t = h5(H5Aget_type(a), H5Tclose, "cannot read the type of attribute '", name, "' in '", file, "'");
  MUE_CHECK(H5Tget_class(t) == H5T_STRING, "attribute '", name, "' in '", file, "' is not a string");
  if (H5Tis_variable_str(t) > 0) {
    Id mt = vlen_string_type();
    char* p = nullptr;
    h5ok(H5Aread(a, mt, &p), "cannot read attribute '", name, "' in '", file, "'");
    std::string s = p ? p : "";
    H5free_memory(p);
    return s;
  }
  const size_t n = H5Tget_size(t);
  std::string s(n, '\0');
  h5ok(H5Aread(a, t, s.data()), "cannot read attribute '", name, "' in '", file, "'");
  s.resize(std::strlen(s.c_str()));
  return s;
}

int64_t read_int_attr(hid_t f, const std::string& file, const char* name) {
  const htri_t ex = H5Aexists(f, name);
  if (ex < 0) h5detail();
  MUE_CHECK(ex > 0, "image set '", file, "' has no attribute '", name, "'");
  Id a = h5(H5Aopen(f, name, H5P_DEFAULT), H5Aclose, "cannot open attribute '", name, "' in '", file, "'");
  Id t = h5(H5Aget_type(a), H5Tclose, "cannot read the type of attribute '", name, "' in '", file, "'");
  MUE_CHECK(H5Tget_class(t) == H5T_INTEGER, "attribute '", name, "' in '", file, "' is not an integer");
  int64_t v = 0;
  h5ok(H5Aread(a, H5T_NATIVE_INT64, &v), "cannot read attribute '", name, "' in '", file, "'");
  return v;
}

// Opens `name` and returns its dims after checking it is an unsigned 8-bit integer dataset of `rank`.
Id open_u8(hid_t f, const std::string& file, const std::string& name, int rank, std::vector<hsize_t>& dims) {
  const std::string grp = name.substr(0, name.find('/', 1));
  htri_t ex = H5Lexists(f, grp.c_str(), H5P_DEFAULT);
  if (ex > 0) ex = H5Lexists(f, name.c_str(), H5P_DEFAULT);
  if (ex < 0) h5detail();
  MUE_CHECK(ex > 0, "image set '", file, "' has no dataset '", name, "'");
  Id ds = h5(H5Dopen2(f, name.c_str(), H5P_DEFAULT), H5Dclose, "cannot open dataset '", name, "' in '", file, "'");
  Id t = h5(H5Dget_type(ds), H5Tclose, "cannot read the type of '", name, "' in '", file, "'");
  MUE_CHECK(H5Tget_class(t) == H5T_INTEGER && H5Tget_size(t) == 1 && H5Tget_sign(t) == H5T_SGN_NONE, "dataset '",
            name, "' in '", file, "' is not uint8");
  Id sp = h5(H5Dget_space(ds), H5Sclose, "cannot read the shape of '", name, "' in '", file, "'");
  const int r = H5Sget_simple_extent_ndims(sp);
  MUE_CHECK(r == rank, "dataset '", name, "' in '", file, "' has rank ", r, ", expected ", rank);
  dims.assign(size_t(rank), 0);
  h5ok(H5Sget_simple_extent_dims(sp, dims.data(), nullptr), "cannot read the shape of '", name, "' in '", file,
       "'");
  return ds;
}

void read_u8(hid_t ds, const std::string& file, const std::string& name, std::vector<uint8_t>& out, size_t n) {
  out.resize(n);
  if (n == 0) return;
  h5ok(H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), "cannot read dataset '", name,
       "' from '", file, "' (corrupt file?)");
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

// ---------------------------------------------------------------------------------------------------------------

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
  quiet_hdf5();
  const fs::path out(opt.out);
  if (out.has_parent_path()) {
    fs::create_directories(out.parent_path(), ec);
    MUE_CHECK(!ec, "cannot create the folder of '", opt.out, "': ", ec.message());
  }
  const std::string tmp = opt.out + ".tmp";
  MUE_CHECK(H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0, "this HDF5 library has no DEFLATE filter (writing '",
            opt.out, "')");
  try {
    Id f = h5(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose, "cannot create '", tmp,
              "' (is the folder writable?)");
    Id gcpl = h5(H5Pcreate(H5P_GROUP_CREATE), H5Pclose, "HDF5: cannot create property list for '", tmp, "'");
    h5ok(H5Pset_obj_track_times(gcpl, 0), "HDF5: cannot disable time tracking for '", tmp, "'");
    auto write_split = [&](const char* g, const std::vector<uint8_t>& px, const std::vector<uint8_t>& lab) {
      Id grp = h5(H5Gcreate2(f, g, H5P_DEFAULT, gcpl, H5P_DEFAULT), H5Gclose, "cannot create group '", g, "' in '",
                  tmp, "'");
      const hsize_t n = lab.size();
      write_u8(grp, tmp, "images", {n, 1, hsize_t(kSide), hsize_t(kSide)}, px.data());
      write_u8(grp, tmp, "labels", {n}, lab.data());
    };
    write_split("/train", train_px, train_lab);
    write_split("/val", val_px, val_lab);
    write_attr(f, tmp, "kind", opt.kind);
    write_attr(f, tmp, "classes", json(names).dump());
    write_attr(f, tmp, "source", package_source(root, opt.kind));
    write_attr_num<int64_t>(f, tmp, "n_train", st.n_train, H5T_NATIVE_INT64, H5T_STD_I64LE);
    write_attr_num<int64_t>(f, tmp, "n_val", st.n_val, H5T_NATIVE_INT64, H5T_STD_I64LE);
    write_attr_num<int64_t>(f, tmp, "format_version", kFormatVersion, H5T_NATIVE_INT64, H5T_STD_I64LE);
    write_attr_num<int64_t>(f, tmp, "split_seed", int64_t(opt.seed), H5T_NATIVE_INT64, H5T_STD_I64LE);
    write_attr_num<double>(f, tmp, "val_fraction", opt.val_fraction, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE);
    if (!f.close()) {
      const std::string d = h5detail();
      fail("cannot finish writing '", tmp, "'", d);
    }
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

ImageSet ImageSet::open(const std::string& path) {
  quiet_hdf5();
  std::error_code ec;
  MUE_CHECK(fs::is_regular_file(path, ec), "image set file '", path, "' does not exist");
  const htri_t is = H5Fis_hdf5(path.c_str());
  if (is < 0) h5detail();
  MUE_CHECK(is > 0, "'", path, "' is not an HDF5 file (or is truncated)");
  Id f = h5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, "cannot open image set '", path,
            "' (truncated or corrupt?)");

  ImageSet s;
  s.path_ = path;
  const int64_t version = read_int_attr(f, path, "format_version");
  MUE_CHECK(version == kFormatVersion, "image set '", path, "' has format_version ", version, "; this build reads ",
            kFormatVersion);
  s.kind_ = read_string_attr(f, path, "kind");
  const std::string classes = read_string_attr(f, path, "classes");
  try {
    s.class_names_ = json::parse(classes).get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    fail("attribute 'classes' of '", path, "' is not a JSON list of names: ", json_message(e));
  }
  MUE_CHECK(!s.class_names_.empty() && s.class_names_.size() <= 256, "image set '", path, "' lists ",
            s.class_names_.size(), " classes (need 1..256)");

  auto load = [&](const std::string& g, const char* count_attr, std::vector<uint8_t>& px, std::vector<uint8_t>& lab,
                  bool first) {
    std::vector<hsize_t> d, ld;
    Id di = open_u8(f, path, g + "/images", 4, d);
    Id dl = open_u8(f, path, g + "/labels", 1, ld);
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
    const int64_t want = read_int_attr(f, path, count_attr);
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

void ImageSet::sample_batch(uint64_t seed, uint64_t step, int B, float* images, int32_t* labels) const {
  MUE_CHECK(B > 0, "sample_batch: batch size must be positive, not ", B, " ('", path_, "')");
  const uint64_t stream = hash_name("mue.images.train_batch") + step;
  const uint64_t n = uint64_t(train_labels_.size());
  for (int b = 0; b < B; ++b)
    copy_out(train_images_, train_labels_, int64_t(rng_index(seed, stream, uint64_t(b), n)), images, labels, b);
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
  const int64_t n = n_val();
  for (int b = 0; b < B; ++b) copy_out(val_images_, val_labels_, (i * B + b) % n, images, labels, b);
}

}  // namespace mue
