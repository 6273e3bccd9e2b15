#include "core/h5.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"

namespace mue::h5 {
namespace {

namespace fs = std::filesystem;

herr_t collect_desc(unsigned, const H5E_error2_t* e, void* out) {
  auto* descs = static_cast<std::vector<std::string>*>(out);
  if (e && e->desc && *e->desc) descs->push_back(e->desc);
  return 0;
}

std::string strip_slashes(const std::string& p) {
  size_t a = 0, b = p.size();
  while (a < b && p[a] == '/') ++a;
  while (b > a && p[b - 1] == '/') --b;
  return p.substr(a, b - a);
}

// A string as stored with a fixed-length type: up to the first NUL, and without the padding spaces.
std::string from_fixed(const char* s, size_t size, H5T_str_t pad) {
  size_t n = 0;
  while (n < size && s[n] != '\0') ++n;
  if (pad == H5T_STR_SPACEPAD)
    while (n > 0 && s[n - 1] == ' ') --n;
  return std::string(s, n);
}

// A memory type that reads the variable-length strings of `stored` (keeping their character set).
Id vlen_memory_type(hid_t stored, const std::string& file) {
  Id t = own(H5Tcopy(H5T_C_S1), H5Tclose, "cannot copy string type", file);
  check(H5Tset_size(t, H5T_VARIABLE), "cannot make string type variable-length", file);
  check(H5Tset_cset(t, H5Tget_cset(stored)), "cannot set string charset", file);
  return t;
}

Id file_access_plist(const std::string& file, bool lock) {
  Id fapl = own(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, "cannot create file access property list", file);
#if H5_VERSION_GE(1, 10, 7)
  // Lock where the filesystem supports it, but do not fail where it does not (NFS, Lustre).
  check(H5Pset_file_locking(fapl, lock, 1), "cannot set file locking", file);
#else
  (void)lock;
#endif
  return fapl;
}

// A scalar attribute `name` of `obj`, created with type `stored` and written from `value` of type `memory`.
void create_scalar_attr(hid_t obj, const std::string& name, hid_t stored, hid_t memory, const void* value,
                        const std::string& file) {
  const std::string what = "attribute '" + name + "'";
  Id space = own(H5Screate(H5S_SCALAR), H5Sclose, "cannot create dataspace", file);
  Id a = own(H5Acreate2(obj, name.c_str(), stored, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose, "cannot create " + what,
             file);
  check(H5Awrite(a, memory, value), "cannot write " + what, file);
}

// A new 1-D dataset `name` of `values.size()` elements of file type `stored`, written from memory type `memory`.
void create_column(hid_t group, const std::string& name, hid_t stored, hid_t memory, size_t n, const void* values,
                   const std::string& file) {
  const hsize_t dims = n;
  Id space = own(H5Screate_simple(1, &dims, nullptr), H5Sclose, "cannot create dataspace", file);
  Id d = own(H5Dcreate2(group, name.c_str(), stored, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose,
             "cannot create dataset '" + name + "'", file);
  if (n) check(H5Dwrite(d, memory, H5S_ALL, H5S_ALL, H5P_DEFAULT, values), "cannot write '" + name + "'", file);
}

// Reads the scalar numeric attribute `a` (named `attr` in errors) as `memory` into *out; `integer_only` refuses a
// float. False when there is no such attribute.
bool read_number_attr(const std::optional<Id>& a, const std::string& attr, const std::string& file,
                      bool integer_only, hid_t memory, void* out) {
  if (!a) return false;
  const std::string what = "attribute '" + attr + "'";
  Id type = own(H5Aget_type(*a), H5Tclose, "cannot get type of " + what, file);
  const H5T_class_t c = H5Tget_class(type);
  if (integer_only) MUE_CHECK(c == H5T_INTEGER, what, " in '", file, "' is not an integer");
  MUE_CHECK(c == H5T_FLOAT || c == H5T_INTEGER, what, " in '", file, "' is not a number");
  Id space = own(H5Aget_space(*a), H5Sclose, "cannot get dataspace of " + what, file);
  MUE_CHECK(H5Sget_simple_extent_npoints(space) == 1, what, " in '", file, "' is not a single number");
  check(H5Aread(*a, memory, out), "cannot read " + what, file);
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Errors and ids

void quiet() {
  (void)H5open();
  (void)H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

std::string take_error() {
  std::vector<std::string> descs;
  (void)H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_desc, &descs);
  (void)H5Eclear2(H5E_DEFAULT);
  if (descs.empty()) return {};
  std::string d = descs.front();
  std::replace(d.begin(), d.end(), '\n', ' ');  // some messages embed a ctime() date with its newline
  return d;
}

void fail(const std::string& what, const std::string& file) {
  const std::string d = take_error();
  if (d.empty()) mue::fail("HDF5: ", what, " in '", file, "'");
  mue::fail("HDF5: ", what, " in '", file, "' (", d, ")");
}

void check(herr_t result, const std::string& what, const std::string& file) {
  if (result < 0) fail(what, file);
}

bool check_tri(htri_t result, const std::string& what, const std::string& file) {
  if (result < 0) fail(what, file);
  return result > 0;
}

Id& Id::operator=(Id&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_, close_ = o.close_;
    o.id_ = -1;
  }
  return *this;
}

herr_t Id::close() {
  const hid_t id = id_;
  id_ = -1;
  return id >= 0 && close_ ? close_(id) : 0;
}

Id own(hid_t id, Id::Closer closer, const std::string& what, const std::string& file) {
  if (id < 0) fail(what, file);
  return Id(id, closer);
}

Id utf8_string_type(const std::string& file) {
  Id t = own(H5Tcopy(H5T_C_S1), H5Tclose, "cannot copy string type", file);
  check(H5Tset_size(t, H5T_VARIABLE), "cannot make string type variable-length", file);
  check(H5Tset_cset(t, H5T_CSET_UTF8), "cannot set UTF-8 string type", file);
  return t;
}

// ---------------------------------------------------------------------------------------------------------------
// Files

Node create_file(const std::string& path, bool lock) {
  quiet();
  Id fapl = file_access_plist(path, lock);
  return Node(own(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), H5Fclose, "cannot create file", path),
              path);
}

Node open_file_read(const std::string& path, bool lock) {
  quiet();
  std::error_code ec;
  MUE_CHECK(fs::exists(path, ec), "HDF5 file '", path, "' does not exist");
  MUE_CHECK(!fs::is_directory(path, ec), "'", path, "' is a folder, not an HDF5 file");
  MUE_CHECK(check_tri(H5Fis_hdf5(path.c_str()), "cannot read file", path), "'", path, "' is not an HDF5 file");
  Id fapl = file_access_plist(path, lock);
  return Node(own(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose, "cannot open file for reading", path), path);
}

bool is_hdf5_file(const std::string& path) {
  quiet();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  const htri_t r = H5Fis_hdf5(path.c_str());
  if (r < 0) (void)H5Eclear2(H5E_DEFAULT);
  return r > 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Groups and datasets

bool Node::exists(const std::string& path) const {
  const std::string p = strip_slashes(path);
  if (p.empty()) return true;
  for (size_t pos = p.find('/');; pos = p.find('/', pos + 1)) {
    const std::string prefix = p.substr(0, pos);
    if (!check_tri(H5Lexists(id(), prefix.c_str(), H5P_DEFAULT), "cannot look up '" + prefix + "'", file_))
      return false;
    if (pos == std::string::npos) return true;
  }
}

Node Node::create_group(const std::string& name, hid_t group_create_plist) const {
  const std::string g = strip_slashes(name);
  return Node(own(H5Gcreate2(id(), g.c_str(), H5P_DEFAULT, group_create_plist, H5P_DEFAULT), H5Gclose,
                  "cannot create group '" + g + "'", file_),
              file_);
}

Node Node::open_group(const std::string& path) const {
  std::string g = strip_slashes(path);
  if (g.empty()) g = ".";
  else
    MUE_CHECK(exists(g), "no group '", g, "' in '", file_, "'");
  return Node(own(H5Gopen2(id(), g.c_str(), H5P_DEFAULT), H5Gclose, "cannot open group '" + g + "'", file_), file_);
}

std::vector<std::string> Node::datasets() const {
  H5G_info_t info;
  check(H5Gget_info(id(), &info), "cannot get info of a group", file_);
  std::vector<std::string> out;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(id(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (len < 0) fail("cannot list a group", file_);
    std::string name(size_t(len) + 1, '\0');
    if (H5Lget_name_by_idx(id(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT) < 0)
      fail("cannot list a group", file_);
    name.resize(size_t(len));
    const hid_t o = H5Oopen(id(), name.c_str(), H5P_DEFAULT);
    if (o < 0) {  // dangling soft/external link: not a dataset we can read
      (void)H5Eclear2(H5E_DEFAULT);
      continue;
    }
    const H5I_type_t t = H5Iget_type(o);
    (void)H5Oclose(o);
    if (t == H5I_DATASET) out.push_back(name);
  }
  return out;
}

Id Node::open_dataset(const std::string& path) const {
  const std::string p = strip_slashes(path);
  MUE_CHECK(!p.empty(), "empty dataset name for '", file_, "'");
  MUE_CHECK(exists(p), "no dataset '", path, "' in '", file_, "'");
  return own(H5Dopen2(id(), p.c_str(), H5P_DEFAULT), H5Dclose, "cannot open dataset '" + path + "'", file_);
}

std::vector<uint64_t> Node::shape(const std::string& dataset) const {
  Id d = open_dataset(dataset);
  Id space = own(H5Dget_space(d), H5Sclose, "cannot get dataspace of '" + dataset + "'", file_);
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 0) fail("cannot get rank of '" + dataset + "'", file_);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank)
    check(H5Sget_simple_extent_dims(space, dims.data(), nullptr), "cannot get dims of '" + dataset + "'", file_);
  return std::vector<uint64_t>(dims.begin(), dims.end());
}

std::vector<double> Node::read_doubles(const std::string& dataset) const {
  Id d = open_dataset(dataset);
  Id type = own(H5Dget_type(d), H5Tclose, "cannot get type of '" + dataset + "'", file_);
  const H5T_class_t c = H5Tget_class(type);
  MUE_CHECK(c == H5T_FLOAT || c == H5T_INTEGER, "dataset '", dataset, "' in '", file_, "' is not numeric");
  Id space = own(H5Dget_space(d), H5Sclose, "cannot get dataspace of '" + dataset + "'", file_);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  if (n < 0) fail("cannot get size of '" + dataset + "'", file_);
  std::vector<double> out(static_cast<size_t>(n));
  if (n)
    check(H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), "cannot read '" + dataset + "'",
          file_);
  return out;
}

std::vector<std::string> Node::read_strings(const std::string& dataset) const {
  Id d = open_dataset(dataset);
  Id type = own(H5Dget_type(d), H5Tclose, "cannot get type of '" + dataset + "'", file_);
  MUE_CHECK(H5Tget_class(type) == H5T_STRING, "dataset '", dataset, "' in '", file_, "' is not a string dataset");
  Id space = own(H5Dget_space(d), H5Sclose, "cannot get dataspace of '" + dataset + "'", file_);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  if (n < 0) fail("cannot get size of '" + dataset + "'", file_);
  std::vector<std::string> out;
  if (n == 0) return out;
  out.reserve(size_t(n));
  if (check_tri(H5Tis_variable_str(type), "cannot inspect type of '" + dataset + "'", file_)) {
    Id mt = vlen_memory_type(type, file_);
    std::vector<char*> buf(size_t(n), nullptr);
    check(H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()), "cannot read '" + dataset + "'", file_);
    for (char* s : buf) out.emplace_back(s ? s : "");
    check(H5Dvlen_reclaim(mt, space, H5P_DEFAULT, buf.data()), "cannot free strings of '" + dataset + "'", file_);
    return out;
  }
  const size_t size = H5Tget_size(type);
  MUE_CHECK(size > 0, "dataset '", dataset, "' in '", file_, "' has a bad string size");
  std::vector<char> buf(size * size_t(n));
  check(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()), "cannot read '" + dataset + "'", file_);
  const H5T_str_t pad = H5Tget_strpad(type);
  for (hssize_t i = 0; i < n; ++i) out.push_back(from_fixed(buf.data() + size_t(i) * size, size, pad));
  return out;
}

void Node::write_column(const std::string& name, std::span<const double> values) const {
  create_column(id(), name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, values.size(), values.data(), file_);
}

void Node::write_column(const std::string& name, std::span<const int64_t> values) const {
  create_column(id(), name, H5T_STD_I64LE, H5T_NATIVE_INT64, values.size(), values.data(), file_);
}

void Node::write_column(const std::string& name, const std::vector<std::string>& values) const {
  std::vector<const char*> ptrs;
  ptrs.reserve(values.size());
  for (const auto& s : values) {
    MUE_CHECK(s.find('\0') == std::string::npos, "HDF5: a value of column '", name, "' in '", file_,
              "' holds a NUL character");
    ptrs.push_back(s.c_str());
  }
  Id type = utf8_string_type(file_);
  create_column(id(), name, type, type, ptrs.size(), ptrs.data(), file_);
}

void Node::link_external(const std::string& name, const std::string& target_file,
                         const std::string& target_path) const {
  check(H5Lcreate_external(target_file.c_str(), target_path.c_str(), id(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT),
        "cannot create external link '" + name + "' to '" + target_file + "'", file_);
}

// ---------------------------------------------------------------------------------------------------------------
// Attributes

std::optional<Id> Node::open_attr(const std::string& attr) const {
  const size_t slash = attr.rfind('/');
  const std::string obj = slash == std::string::npos ? "." : attr.substr(0, slash);
  const std::string name = slash == std::string::npos ? attr : attr.substr(slash + 1);
  if (obj != "." && !exists(obj)) return std::nullopt;
  if (!check_tri(H5Aexists_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT),
                 "cannot look up attribute '" + attr + "'", file_))
    return std::nullopt;
  return own(H5Aopen_by_name(id(), obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
             "cannot open attribute '" + attr + "'", file_);
}

std::optional<std::string> Node::string_attr(const std::string& attr) const {
  auto a = open_attr(attr);
  if (!a) return std::nullopt;
  const std::string what = "attribute '" + attr + "'";
  Id type = own(H5Aget_type(*a), H5Tclose, "cannot get type of " + what, file_);
  MUE_CHECK(H5Tget_class(type) == H5T_STRING, what, " in '", file_, "' is not a string");
  Id space = own(H5Aget_space(*a), H5Sclose, "cannot get dataspace of " + what, file_);
  MUE_CHECK(H5Sget_simple_extent_npoints(space) == 1, what, " in '", file_, "' is not a single string");
  if (check_tri(H5Tis_variable_str(type), "cannot inspect " + what, file_)) {
    Id mt = vlen_memory_type(type, file_);
    char* s = nullptr;
    check(H5Aread(*a, mt, &s), "cannot read " + what, file_);
    std::string out = s ? s : "";
    if (s) H5free_memory(s);
    return out;
  }
  const size_t size = H5Tget_size(type);
  MUE_CHECK(size > 0, what, " in '", file_, "' has a bad string size");
  std::vector<char> buf(size);
  check(H5Aread(*a, type, buf.data()), "cannot read " + what, file_);
  return from_fixed(buf.data(), size, H5Tget_strpad(type));
}

std::optional<double> Node::number_attr(const std::string& attr) const {
  double v = 0;
  if (!read_number_attr(open_attr(attr), attr, file_, false, H5T_NATIVE_DOUBLE, &v)) return std::nullopt;
  return v;
}

std::optional<int64_t> Node::int_attr(const std::string& attr) const {
  int64_t v = 0;
  if (!read_number_attr(open_attr(attr), attr, file_, true, H5T_NATIVE_INT64, &v)) return std::nullopt;
  return v;
}

// The existing attribute `name` of this node when it is a scalar of class `cls` (and, for strings, of variable
// length), to be written in place; otherwise deletes any attribute of that name and returns an empty Id.
Id Node::open_scalar_attr_for_write(const std::string& name, H5T_class_t cls, bool variable_string) const {
  MUE_CHECK(!name.empty(), "HDF5: empty attribute name for '", file_, "'");
  const std::string what = "attribute '" + name + "'";
  if (!check_tri(H5Aexists(id(), name.c_str()), "cannot look up " + what, file_)) return {};
  Id a = own(H5Aopen(id(), name.c_str(), H5P_DEFAULT), H5Aclose, "cannot open " + what, file_);
  Id type = own(H5Aget_type(a), H5Tclose, "cannot get type of " + what, file_);
  Id space = own(H5Aget_space(a), H5Sclose, "cannot get dataspace of " + what, file_);
  bool same = H5Tget_class(type) == cls && H5Sget_simple_extent_type(space) == H5S_SCALAR;
  if (same && variable_string) same = check_tri(H5Tis_variable_str(type), "cannot inspect " + what, file_);
  if (same) return a;
  a.reset();
  check(H5Adelete(id(), name.c_str()), "cannot replace " + what, file_);
  return {};
}

void Node::set_attr(const std::string& name, const std::string& value) const {
  MUE_CHECK(value.find('\0') == std::string::npos, "HDF5: attribute '", name, "' for '", file_,
            "' holds a NUL character");
  Id type = utf8_string_type(file_);
  const char* s = value.c_str();
  if (Id a = open_scalar_attr_for_write(name, H5T_STRING, true); a.valid())
    check(H5Awrite(a, type, &s), "cannot write attribute '" + name + "'", file_);
  else
    create_scalar_attr(id(), name, type, type, &s, file_);
}

void Node::set_attr(const std::string& name, double value) const {
  if (Id a = open_scalar_attr_for_write(name, H5T_FLOAT, false); a.valid())
    check(H5Awrite(a, H5T_NATIVE_DOUBLE, &value), "cannot write attribute '" + name + "'", file_);
  else
    create_scalar_attr(id(), name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value, file_);
}

void Node::set_attr(const std::string& name, int64_t value) const {
  if (Id a = open_scalar_attr_for_write(name, H5T_INTEGER, false); a.valid())
    check(H5Awrite(a, H5T_NATIVE_INT64, &value), "cannot write attribute '" + name + "'", file_);
  else
    create_scalar_attr(id(), name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value, file_);
}

}  // namespace mue::h5
