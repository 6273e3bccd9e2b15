// The HDF5 layer (core/h5.h): error lines, id ownership, attributes that change type, strings of both kinds,
// columns, paths that may not exist, external links.
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/h5.h"
#include "tests/catch.h"
#include "tests/fixtures.h"

namespace {

using mue::test::error_of;
using mue::test::TempDir;
namespace h5 = mue::h5;

// A fixed-length, space-padded string attribute or 1-D dataset, as other tools (h5py with numpy 'S' dtypes) write.
h5::Id fixed_string_type(size_t size) {
  h5::Id t(H5Tcopy(H5T_C_S1), H5Tclose);
  REQUIRE(H5Tset_size(t, size) >= 0);
  REQUIRE(H5Tset_strpad(t, H5T_STR_SPACEPAD) >= 0);
  return t;
}

}  // namespace

TEST_CASE("h5 failures are one line naming the operation, the file and HDF5's own reason", "[h5]") {
  TempDir t("h5_errors");
  const std::string path = t.file("no/such/folder/x.h5");
  const std::string e = error_of([&] { h5::create_file(path); });
  CHECK_THAT(e, HasText("HDF5: cannot create file in '" + path + "' ("));
  CHECK(e.find('\n') == std::string::npos);
  CHECK(e.back() == ')');
  CHECK(h5::take_error().empty());  // the walk cleared the stack

  // Without anything on HDF5's stack there are no parentheses.
  const std::string bare = error_of([] { h5::fail("cannot do it", "f.h5"); });
  CHECK(bare == "HDF5: cannot do it in 'f.h5'");

  CHECK_THAT(error_of([&] { h5::open_file_read(t.file("absent.h5")); }), HasText("does not exist"));
  std::ofstream(t.file("text.h5")) << "not HDF5";
  CHECK_THAT(error_of([&] { h5::open_file_read(t.file("text.h5")); }), HasText("is not an HDF5 file"));
  CHECK_FALSE(h5::is_hdf5_file(t.file("text.h5")));
  CHECK_FALSE(h5::is_hdf5_file(t.path.string()));
}

TEST_CASE("h5::Id closes what it owns, once, and hands it on when moved", "[h5]") {
  h5::quiet();
  hid_t raw = -1;
  {
    h5::Id a(H5Screate(H5S_SCALAR), H5Sclose);
    raw = a.get();
    REQUIRE(H5Iis_valid(raw) > 0);
    h5::Id b = std::move(a);
    CHECK_FALSE(a.valid());
    CHECK(b.get() == raw);
    h5::Id c;
    c = std::move(b);
    CHECK(H5Iis_valid(raw) > 0);
  }
  CHECK(H5Iis_valid(raw) <= 0);
  h5::Id d(H5Screate(H5S_SCALAR), H5Sclose);
  CHECK(d.close() >= 0);
  CHECK(d.close() == 0);  // nothing left to close
  CHECK_THAT(error_of([] { h5::own(-1, H5Sclose, "cannot make it", "g.h5"); }), HasText("cannot make it in 'g.h5'"));
}

TEST_CASE("h5::Node attributes, columns, groups and links round-trip", "[h5]") {
  TempDir t("h5_node");
  const std::string path = t.file("a.h5");
  {
    h5::Node f = h5::create_file(path);
    f.set_attr("s", std::string("first"));
    f.set_attr("s", std::string("second, longer than the first"));  // in place
    f.set_attr("x", 1.5);
    f.set_attr("x", std::string("now a string"));  // type change: deleted and re-created
    f.set_attr("n", int64_t(1) << 40);
    f.set_attr("n", 2.5);
    f.set_attr("i", int64_t(7));
    CHECK_THAT(error_of([&] { f.set_attr("bad", std::string("a\0b", 3)); }), HasText("NUL"));

    h5::Node g = f.create_group("/grp/");
    const std::vector<double> d = {1.0, -2.5, 1e300};
    const std::vector<int64_t> n = {-1, 0, int64_t(1) << 62};
    g.write_column("d", d);
    g.write_column("n", n);
    g.write_column("s", std::vector<std::string>{"caf\xc3\xa9", "", "x"});
    g.write_column("empty", std::vector<double>{});
    g.set_attr("scale", 0.125);
    h5::Id fixed = fixed_string_type(8);
    const hsize_t two = 2;
    h5::Id space(H5Screate_simple(1, &two, nullptr), H5Sclose);
    h5::Id ds(H5Dcreate2(g, "fixed", fixed, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    char buf[16];
    std::memcpy(buf, "ab      cdefghij", 16);
    REQUIRE(H5Dwrite(ds, fixed, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    h5::Id one(H5Screate(H5S_SCALAR), H5Sclose);
    h5::Id a(H5Acreate2(g, "fixed_attr", fixed, one, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    REQUIRE(H5Awrite(a, fixed, "pad     ") >= 0);

    f.create_group("links").link_external("other", "b.h5", "/");  // b.h5 does not exist: a dangling link
    CHECK(g.close() >= 0);
    CHECK(f.close() >= 0);
  }
  const h5::Node f = h5::open_file_read(path);
  CHECK(f.string_attr("s") == "second, longer than the first");
  CHECK(f.string_attr("x") == "now a string");
  CHECK(f.number_attr("n") == 2.5);
  CHECK(f.int_attr("i") == 7);
  CHECK(f.number_attr("i") == 7.0);
  CHECK_FALSE(f.string_attr("absent").has_value());
  CHECK_FALSE(f.string_attr("no/such/group/attr").has_value());
  CHECK(f.number_attr("grp/scale") == 0.125);
  CHECK(f.string_attr("grp/fixed_attr") == "pad");
  CHECK_THAT(error_of([&] { f.string_attr("n"); }), HasText("attribute 'n'") && HasText("is not a string"));
  CHECK_THAT(error_of([&] { f.int_attr("n"); }), HasText("is not an integer"));
  CHECK_THAT(error_of([&] { f.number_attr("s"); }), HasText("is not a number"));

  CHECK(f.exists("grp/d"));
  CHECK_FALSE(f.exists("grp/nope"));
  CHECK_FALSE(f.exists("nope/deeper/still"));  // a missing parent is "no", not an error
  CHECK(f.read_doubles("/grp/d") == std::vector<double>{1.0, -2.5, 1e300});
  CHECK(f.read_doubles("grp/n") == std::vector<double>{-1.0, 0.0, double(int64_t(1) << 62)});
  CHECK(f.read_strings("grp/s") == std::vector<std::string>{"caf\xc3\xa9", "", "x"});
  CHECK(f.read_strings("grp/fixed") == std::vector<std::string>{"ab", "cdefghij"});
  CHECK(f.read_doubles("grp/empty").empty());
  CHECK(f.shape("grp/d") == std::vector<uint64_t>{3});
  CHECK_THAT(error_of([&] { f.read_doubles("grp/s"); }), HasText("is not numeric"));
  CHECK_THAT(error_of([&] { f.read_strings("grp/d"); }), HasText("not a string dataset"));
  CHECK_THAT(error_of([&] { f.read_doubles("grp/missing"); }), HasText("no dataset 'grp/missing' in '" + path + "'"));

  const h5::Node g = f.open_group("grp");
  CHECK(g.datasets() == std::vector<std::string>{"d", "empty", "fixed", "n", "s"});
  CHECK(f.open_group("/").datasets().empty());
  CHECK(f.open_group("links").datasets().empty());  // the dangling external link is left out
  CHECK(f.exists("links/other"));
  CHECK_THAT(error_of([&] { f.open_group("nogroup"); }), HasText("no group 'nogroup'"));
}
