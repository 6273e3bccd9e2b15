// Image data: npm-package conversion to HDF5, ImageSet loading and batching, PNG grids. Synthetic data only.
#include <hdf5.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/png_grid.h"
#include "data/images.h"
#include "data/prepare_images.h"
#include "tests/catch.h"
#include "tests/fixtures.h"

namespace {

namespace fs = std::filesystem;

using mue::test::TempDir;
using mue::test::error_of;

constexpr int kClasses = 10;
int count_of(int c) { return 7 + c; }  // images in class c

// Pixel p of image i of class c; pixels 0 and 1 carry (i, c) so each image names itself.
int pixel(int c, int i, int p, int salt = 0) {
  if (p == 0) return i;
  if (p == 1) return c;
  return (c * 37 + i * 11 + p * 7 + salt) % 256;
}

void write_file(const fs::path& p, const std::string& s) {
  std::ofstream o(p, std::ios::binary);
  o << s;
}

// fashion-mnist layout: {"data": [[784 ints], ...]}, with an empty entry in class 0 (as in the real package).
std::string fake_fashion(const TempDir& t, int salt = 0) {
  const fs::path root = t.path / "fashion-mnist";
  fs::create_directories(root / "src" / "clothes");
  write_file(root / "package.json", R"({"name": "fashion-mnist", "version": "1.1.0"})");
  for (int c = 0; c < kClasses; ++c) {
    std::ostringstream s;
    s << "{\"data\":[";
    for (int i = 0; i < count_of(c); ++i) {
      if (i) s << ",";
      if (c == 0 && i == 3) s << "[],";
      s << "[";
      for (int p = 0; p < 784; ++p) s << (p ? "," : "") << pixel(c, i, p, salt);
      s << "]";
    }
    s << (c == 0 ? ",[]" : "") << "]}";
    write_file(root / "src" / "clothes" / (std::to_string(c) + ".json"), s.str());
  }
  return root.string();
}

// mnist layout: {"data": [flat n*784 numbers in [0, 1], 3 decimals]}.
std::string fake_mnist(const TempDir& t) {
  const fs::path root = t.path / "mnist";
  fs::create_directories(root / "src" / "digits");
  for (int c = 0; c < kClasses; ++c) {
    std::ostringstream s;
    s << "{ \"data\": [";
    for (int i = 0; i < count_of(c); ++i)
      for (int p = 0; p < 784; ++p) {
        char buf[32];
        const int v = pixel(c, i, p);
        if (v == 0 || v == 255)
          std::snprintf(buf, sizeof buf, "%d", v / 255);
        else
          std::snprintf(buf, sizeof buf, "%.3f", v / 255.0);
        s << ((i || p) ? "," : "") << buf;
      }
    s << "]}";
    write_file(root / "src" / "digits" / (std::to_string(c) + ".json"), s.str());
  }
  return root.string();
}

int64_t expected_val() {
  int64_t n = 0;
  for (int c = 0; c < kClasses; ++c) n += std::llround(count_of(c) / 7.0);
  return n;
}

int64_t expected_total() {
  int64_t n = 0;
  for (int c = 0; c < kClasses; ++c) n += count_of(c);
  return n;
}

std::string slurp(const std::string& p) {
  std::ifstream i(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(i), {});
}

// (class, index) of every image of a split, checking each image's pixels and label on the way.
std::vector<std::pair<int, int>> ids_checked(const std::vector<uint8_t>& px, const std::vector<uint8_t>& lab,
                                             int salt = 0) {
  std::vector<std::pair<int, int>> ids;
  for (size_t j = 0; j < lab.size(); ++j) {
    const uint8_t* im = px.data() + j * 784;
    const int i = im[0], c = im[1];
    REQUIRE(int(lab[j]) == c);
    int bad = 0;
    for (int p = 0; p < 784; ++p) bad += int(im[p]) != pixel(c, i, p, salt);
    REQUIRE(bad == 0);
    ids.emplace_back(c, i);
  }
  return ids;
}

}  // namespace

TEST_CASE("prepare_images round-trips a synthetic fashion-mnist package", "[images]") {
  TempDir t("fashion");
  const std::string src = fake_fashion(t);
  mue::ImagePrepOptions o;
  o.source_dir = src;
  o.kind = "fashion-mnist";
  o.out = t.file("cache/fashion.h5");  // folder created on the way
  const mue::ImagePrepStats st = mue::prepare_images(o);
  CHECK(st.n_val == expected_val());
  CHECK(st.n_train + st.n_val == expected_total());
  CHECK(st.n_skipped == 2);
  REQUIRE(st.class_counts.size() == 10);
  CHECK(st.class_counts[9] == count_of(9));
  CHECK(st.file_bytes == int64_t(fs::file_size(o.out)));
  CHECK_FALSE(fs::exists(o.out + ".tmp"));

  const mue::ImageSet s = mue::ImageSet::open(o.out);
  CHECK(s.channels() == 1);
  CHECK(s.size() == 28);
  CHECK(s.classes() == 10);
  CHECK(s.kind() == "fashion-mnist");
  CHECK(s.class_names()[0] == "T-shirt/top");
  CHECK(s.class_names()[9] == "Ankle boot");
  CHECK(s.n_train() == st.n_train);
  CHECK(s.n_val() == st.n_val);

  // Every source image appears exactly once across the two splits, pixels and label exact; val is stratified.
  const auto tr = ids_checked(s.train_images(), s.train_labels());
  const auto va = ids_checked(s.val_images(), s.val_labels());
  std::set<std::pair<int, int>> all(tr.begin(), tr.end());
  all.insert(va.begin(), va.end());
  CHECK(all.size() == size_t(expected_total()));
  std::map<int, int> val_per_class;
  for (auto [c, i] : va) ++val_per_class[c];
  for (int c = 0; c < kClasses; ++c) CHECK(val_per_class[c] == std::llround(count_of(c) / 7.0));

  // Root attributes.
  {
    hid_t f = H5Fopen(o.out.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    REQUIRE(f >= 0);
    for (const char* a : {"kind", "classes", "source", "n_train", "n_val", "format_version"})
      CHECK(H5Aexists(f, a) > 0);
    H5Fclose(f);
  }

  // A second run gives the identical file; changing pixels (not identities) keeps the split; another seed moves it.
  const std::string again = t.file("again.h5");
  o.out = again;
  mue::prepare_images(o);
  CHECK(slurp(again) == slurp(t.file("cache/fashion.h5")));
  CHECK_NOTHROW(mue::prepare_images(o));  // an image set may replace an earlier one
  CHECK(slurp(again) == slurp(t.file("cache/fashion.h5")));

  TempDir t2("fashion_salt");
  mue::ImagePrepOptions o2 = o;
  o2.source_dir = fake_fashion(t2, 5);
  o2.out = t2.file("salted.h5");
  mue::prepare_images(o2);
  const mue::ImageSet s2 = mue::ImageSet::open(o2.out);
  CHECK(ids_checked(s2.val_images(), s2.val_labels(), 5) == va);
  CHECK(ids_checked(s2.train_images(), s2.train_labels(), 5) == tr);

  o2.seed = 7;
  o2.out = t2.file("seed7.h5");
  mue::prepare_images(o2);
  const mue::ImageSet s3 = mue::ImageSet::open(o2.out);
  CHECK(s3.n_val() == s.n_val());
  CHECK(ids_checked(s3.val_images(), s3.val_labels(), 5) != va);
}

TEST_CASE("prepare_images reads the flat mnist layout", "[images]") {
  TempDir t("mnist");
  mue::ImagePrepOptions o;
  o.source_dir = fake_mnist(t);
  o.kind = "mnist";
  o.out = t.file("mnist.h5");
  o.val_fraction = 0.2;
  const mue::ImagePrepStats st = mue::prepare_images(o);
  CHECK(st.n_skipped == 0);
  const mue::ImageSet s = mue::ImageSet::open(o.out);
  CHECK(s.kind() == "mnist");
  CHECK(s.class_names()[3] == "3");
  int64_t nv = 0;
  for (int c = 0; c < kClasses; ++c) nv += std::llround(count_of(c) * 0.2);
  CHECK(s.n_val() == nv);
  CHECK(s.n_train() + s.n_val() == expected_total());
  ids_checked(s.train_images(), s.train_labels());
  ids_checked(s.val_images(), s.val_labels());
}

TEST_CASE("prepare_images reports bad sources and outputs in one line", "[images]") {
  TempDir t("prep_errors");
  const std::string src = fake_fashion(t);
  mue::ImagePrepOptions o;
  o.source_dir = src;
  o.kind = "fashion-mnist";
  o.out = t.file("out.h5");

  auto err = [&](const mue::ImagePrepOptions& x) {
    const std::string e = error_of([&] { mue::prepare_images(x); });
    CHECK(e.find('\n') == std::string::npos);
    return e;
  };

  mue::ImagePrepOptions m = o;
  m.source_dir = t.file("nowhere");
  CHECK_THAT(err(m), HasText("does not exist") && HasText(t.file("nowhere")));

  m = o;
  m.kind = "cifar";
  CHECK_THAT(err(m), HasText("unknown image kind 'cifar'"));

  m = o;
  m.kind = "mnist";  // the fashion tree has no src/digits
  CHECK_THAT(err(m), HasText("does not exist") && HasText("src/digits"));

  m = o;
  m.val_fraction = 1.0;
  CHECK_THAT(err(m), HasText("val_fraction"));

  // Unwritable output: its folder would have to live under a regular file.
  write_file(t.path / "plainfile", "x");
  m = o;
  m.out = t.file("plainfile/out.h5");
  CHECK_THAT(err(m), HasText(m.out));

  const fs::path c4 = fs::path(src) / "src" / "clothes" / "4.json";
  const std::string good = slurp(c4.string());

  write_file(c4, "{\"data\": [[1, 2, ");
  CHECK_THAT(err(o), HasText("malformed JSON") && HasText(c4.string()));

  write_file(c4, "[1, 2, 3]");
  CHECK_THAT(err(o), HasText("malformed class file") && HasText(c4.string()));

  std::string short_img = "{\"data\": [[";
  for (int p = 0; p < 783; ++p) short_img += (p ? ",0" : "0");
  write_file(c4, short_img + "]]}");
  CHECK_THAT(err(o), HasText("wrong image size") && HasText("783") && HasText(c4.string()));

  std::string hot = "{\"data\": [[";
  for (int p = 0; p < 784; ++p) hot += (p ? ",300" : "300");
  write_file(c4, hot + "]]}");
  CHECK_THAT(err(o), HasText("bad pixel value 300") && HasText(c4.string()));

  fs::remove(c4);
  CHECK_THAT(err(o), HasText("missing class file") && HasText(c4.string()));
  CHECK_FALSE(fs::exists(o.out));
  CHECK_FALSE(fs::exists(o.out + ".tmp"));
  write_file(c4, good);
  mue::prepare_images(o);
  CHECK(fs::exists(o.out));
}

TEST_CASE("ImageSet::open rejects missing, truncated, corrupt and misshapen files", "[images]") {
  TempDir t("open_errors");
  mue::ImagePrepOptions o;
  o.source_dir = fake_fashion(t);
  o.kind = "fashion-mnist";
  o.out = t.file("good.h5");
  mue::prepare_images(o);
  const std::string good = slurp(o.out);

  auto err = [&](const std::string& p) {
    const std::string e = error_of([&] { mue::ImageSet::open(p); });
    CHECK(e.find('\n') == std::string::npos);
    CHECK_THAT(e, HasText(p));
    return e;
  };

  CHECK_THAT(err(t.file("missing.h5")), HasText("does not exist"));

  write_file(t.path / "text.h5", "this is not HDF5 at all");
  CHECK_THAT(err(t.file("text.h5")), HasText("not an HDF5 file"));

  write_file(t.path / "half.h5", good.substr(0, good.size() / 2));
  err(t.file("half.h5"));

  // Garbage over the middle of the file (chunk data and/or metadata).
  std::string bad = good;
  for (size_t k = bad.size() / 3; k < 2 * bad.size() / 3; ++k) bad[k] = char(0xA5);
  write_file(t.path / "garbled.h5", bad);
  err(t.file("garbled.h5"));

  auto edit = [&](const std::string& name, const std::function<void(hid_t)>& f) {
    const std::string p = t.file(name);
    write_file(p, good);
    hid_t h = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    REQUIRE(h >= 0);
    f(h);
    REQUIRE(H5Fclose(h) >= 0);
    return p;
  };
  const std::string nolabels = edit("nolabels.h5", [](hid_t h) { REQUIRE(H5Ldelete(h, "/val/labels", H5P_DEFAULT) >= 0); });
  CHECK_THAT(err(nolabels), HasText("no dataset '/val/labels'"));

  const std::string rank3 = edit("rank3.h5", [](hid_t h) {
    REQUIRE(H5Ldelete(h, "/train/images", H5P_DEFAULT) >= 0);
    hsize_t d[3] = {4, 28, 28};
    hid_t sp = H5Screate_simple(3, d, nullptr);
    hid_t ds = H5Dcreate2(h, "/train/images", H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(ds >= 0);
    H5Dclose(ds);
    H5Sclose(sp);
  });
  CHECK_THAT(err(rank3), HasText("/train/images") && HasText("rank 3"));

  const std::string wide = edit("wide.h5", [](hid_t h) {
    REQUIRE(H5Ldelete(h, "/val/images", H5P_DEFAULT) >= 0);
    hsize_t d[4] = {2, 1, 28, 30};
    hid_t sp = H5Screate_simple(4, d, nullptr);
    hid_t ds = H5Dcreate2(h, "/val/images", H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(ds >= 0);
    H5Dclose(ds);
    H5Sclose(sp);
  });
  CHECK_THAT(err(wide), HasText("/val/images") && HasText("[2, 1, 28, 30]"));

  const std::string noattr = edit("noattr.h5", [](hid_t h) { REQUIRE(H5Adelete(h, "n_val") >= 0); });
  CHECK_THAT(err(noattr), HasText("no attribute 'n_val'"));
}

TEST_CASE("ImageSet batches: deterministic training draws, fixed validation walk", "[images]") {
  TempDir t("batches");
  mue::ImagePrepOptions o;
  o.source_dir = fake_fashion(t);
  o.kind = "fashion-mnist";
  o.out = t.file("f.h5");
  mue::prepare_images(o);
  const mue::ImageSet s = mue::ImageSet::open(o.out);
  const int B = 16, P = 784;

  std::vector<float> a(size_t(B) * P), b(a.size()), c(a.size());
  std::vector<int32_t> la(B), lb(B), lc(B);
  s.sample_batch(42, 3, B, a.data(), la.data());
  s.sample_batch(42, 3, B, b.data(), lb.data());
  s.sample_batch(42, 4, B, c.data(), lc.data());
  CHECK(a == b);
  CHECK(la == lb);
  CHECK(a != c);

  // Values in [-1, 1] on the 255-step grid; each drawn image is a training image with its own label.
  std::set<std::pair<int, int>> train_ids;
  for (size_t j = 0; j < s.train_labels().size(); ++j)
    train_ids.emplace(s.train_images()[j * P + 1], s.train_images()[j * P]);
  for (int k = 0; k < B; ++k) {
    int off_grid = 0, out_of_range = 0;
    for (int p = 0; p < P; ++p) {
      const float v = a[size_t(k) * P + p];
      out_of_range += !(v >= -1.f && v <= 1.f);
      const double q = (double(v) + 1.0) * 127.5;
      off_grid += std::abs(q - std::round(q)) > 1e-3;
    }
    CHECK(out_of_range == 0);
    CHECK(off_grid == 0);
    const int i = int(std::lround((a[size_t(k) * P] + 1.0) * 127.5));
    const int cls = int(std::lround((a[size_t(k) * P + 1] + 1.0) * 127.5));
    CHECK(cls == la[k]);
    CHECK(train_ids.count({cls, i}) == 1);
  }
  float mn = 1, mx = -1;
  for (float v : a) mn = std::min(mn, v), mx = std::max(mx, v);
  CHECK(mn == -1.f);  // pixel 0 (index 0 images) and 255 occur in the synthetic pattern
  CHECK(mx <= 1.f);

  // Validation: consecutive, wrapping in the last batch.
  const int VB = 5;
  const int64_t nb = s.val_batches(VB);
  CHECK(nb == (s.n_val() + VB - 1) / VB);
  int64_t seen = 0;
  for (int64_t i = 0; i < nb; ++i) {
    std::vector<float> im(size_t(VB) * P);
    std::vector<int32_t> lab(VB);
    s.val_batch(i, VB, im.data(), lab.data());
    const int valid = s.val_batch_valid(i, VB);
    for (int k = 0; k < VB; ++k) {
      const int64_t j = (i * VB + k) % s.n_val();
      CHECK(lab[k] == s.val_labels()[size_t(j)]);
      CHECK(im[size_t(k) * P + 100] == float(s.val_images()[size_t(j) * P + 100] / 127.5 - 1.0));
    }
    seen += valid;
  }
  CHECK(seen == s.n_val());
  std::vector<float> im(size_t(VB) * P);
  std::vector<int32_t> lab(VB);
  CHECK_THAT(error_of([&] { s.val_batch(nb, VB, im.data(), lab.data()); }), HasText("out of range"));
}

TEST_CASE("write_png_grid lays out, clamps and reads back", "[images]") {
  TempDir t("png");
  const int n = 5, S = 4, cols = 3, pad = 2;
  std::vector<float> im(size_t(n) * S * S);
  for (int k = 0; k < n; ++k)
    for (int p = 0; p < S * S; ++p) im[size_t(k) * S * S + p] = -1.f + 0.5f * float(k);
  im[size_t(1) * S * S + 1 * S + 2] = 5.f;   // image 1, y=1, x=2: clamped to 1 -> 255
  im[size_t(2) * S * S + 0] = -7.f;          // image 2, y=0, x=0: clamped to -1 -> 0
  const std::string p = t.file("grid.png");
  mue::write_png_grid(p, im, n, 1, S, cols, pad);
  CHECK_FALSE(fs::exists(p + ".tmp"));

  int w = 0, h = 0;
  const std::vector<uint8_t> g = mue::read_png_grey(p, w, h);
  CHECK(w == cols * S + (cols + 1) * pad);  // 20
  CHECK(h == 2 * S + 3 * pad);              // 14
  REQUIRE(g.size() == size_t(w) * h);
  auto at = [&](int x, int y) { return int(g[size_t(y) * w + x]); };
  CHECK(at(0, 0) == 255);        // padding
  CHECK(at(2, 2) == 0);          // image 0 (value -1)
  CHECK(at(8, 2) == 64);         // image 1 (value -0.5): 63.75 -> 64
  CHECK(at(10, 3) == 255);       // image 1's clamped pixel
  CHECK(at(14, 2) == 0);         // image 2's clamped pixel
  CHECK(at(15, 3) == 128);       // image 2 (value 0)
  CHECK(at(3, 9) == 191);        // image 3, row 1 col 0 (value 0.5)
  CHECK(at(7, 9) == 255);        // padding between columns
  CHECK(at(15, 9) == 255);       // empty cell of the last row

  // RGB: size and a grey pixel survive.
  std::vector<float> rgb(size_t(2) * 3 * S * S, 0.f);
  const std::string q = t.file("rgb.png");
  mue::write_png_grid(q, rgb, 2, 3, S, 8, 1);
  const std::vector<uint8_t> gq = mue::read_png_grey(q, w, h);
  CHECK(w == 2 * S + 3);
  CHECK(h == S + 2);
  CHECK(std::abs(int(gq[size_t(1) * w + 1]) - 128) <= 1);

  CHECK_THAT(error_of([&] { mue::write_png_grid(t.file("no/such/dir/x.png"), im, n, 1, S, cols); }),
             HasText("cannot write PNG") && HasText("no/such/dir/x.png"));
  CHECK_THAT(error_of([&] { mue::write_png_grid(p, im, n + 1, 1, S, cols); }), HasText("expected n*C*S*S"));
  CHECK_THAT(error_of([&] { mue::read_png_grey(t.file("absent.png"), w, h); }), HasText("absent.png"));
}
