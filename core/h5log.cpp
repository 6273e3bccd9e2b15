#include "core/h5log.h"

#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "core/error.h"

namespace mue {
namespace {

namespace fs = std::filesystem;

// Silences HDF5's own stderr dump of its error stack; we report failures ourselves. The setting is per thread in
// thread-safe builds, so every entry point calls this.
void quiet_hdf5() {
  (void)H5open();
  (void)H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

herr_t collect_desc(unsigned, const H5E_error2_t* e, void* out) {
  auto* descs = static_cast<std::vector<std::string>*>(out);
  if (e && e->desc && *e->desc) descs->push_back(e->desc);
  return 0;
}

// The most specific message on HDF5's error stack (e.g. "... errno = 2, error message = 'No such file or
// directory' ..."), then clears the stack.
std::string hdf5_detail() {
  std::vector<std::string> descs;
  (void)H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_desc, &descs);
  (void)H5Eclear2(H5E_DEFAULT);
  return descs.empty() ? std::string() : descs.front();
}

[[noreturn]] void h5fail(const std::string& what, const std::string& file) {
  std::string d = hdf5_detail();
  std::replace(d.begin(), d.end(), '\n', ' ');  // some messages embed a ctime() date with its newline
  if (d.empty()) fail("HDF5: ", what, " in '", file, "'");
  fail("HDF5: ", what, " in '", file, "' (", d, ")");
}

hid_t check_id(hid_t id, const std::string& what, const std::string& file) {
  if (id < 0) h5fail(what, file);
  return id;
}
void check(herr_t r, const std::string& what, const std::string& file) {
  if (r < 0) h5fail(what, file);
}
bool check_tri(htri_t r, const std::string& what, const std::string& file) {
  if (r < 0) h5fail(what, file);
  return r > 0;
}

// Owns one HDF5 id.
class Hid {
 public:
  using Closer = herr_t (*)(hid_t);
  Hid() = default;
  Hid(hid_t id, Closer c) : id_(id), close_(c) {}
  Hid(Hid&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Hid& operator=(Hid&& o) noexcept {
    if (this != &o) reset(), id_ = o.id_, close_ = o.close_, o.id_ = -1;
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  ~Hid() { reset(); }
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  void reset() {
    if (id_ >= 0 && close_) (void)close_(id_);
    id_ = -1;
  }

 private:
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

Hid make(hid_t id, Hid::Closer c, const std::string& what, const std::string& file) {
  return Hid(check_id(id, what, file), c);
}

// Variable-length UTF-8 string type (same for file and memory).
Hid vlen_utf8(const std::string& file) {
  Hid t = make(H5Tcopy(H5T_C_S1), H5Tclose, "cannot copy string type", file);
  check(H5Tset_size(t, H5T_VARIABLE), "cannot make string type variable-length", file);
  check(H5Tset_cset(t, H5T_CSET_UTF8), "cannot set UTF-8 string type", file);
  return t;
}

std::string strip_slashes(const std::string& p) {
  size_t a = 0, b = p.size();
  while (a < b && p[a] == '/') ++a;
  while (b > a && p[b - 1] == '/') --b;
  return p.substr(a, b - a);
}

bool g_read_locking = true;  // set_read_locking

Hid file_access_plist(const std::string& file, bool lock = true) {
  Hid fapl = make(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, "cannot create file access property list", file);
#if H5_VERSION_GE(1, 10, 7)
  // Lock where the filesystem supports it, but do not fail where it does not (NFS, Lustre).
  check(H5Pset_file_locking(fapl, lock, 1), "cannot set file locking", file);
#endif
  return fapl;
}

Hid open_ro(const std::string& file) {
  quiet_hdf5();
  std::error_code ec;
  MUE_CHECK(fs::exists(file, ec), "HDF5 file '", file, "' does not exist");
  const htri_t h = H5Fis_hdf5(file.c_str());
  if (h < 0) h5fail("cannot read file", file);
  MUE_CHECK(h > 0, "'", file, "' is not an HDF5 file");
  Hid fapl = file_access_plist(file, g_read_locking);
  return make(H5Fopen(file.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose, "cannot open file for reading", file);
}

// Whether every component of the relative path `p` exists (HDF5 1.10's H5Lexists fails on a missing parent).
bool link_exists(hid_t f, const std::string& p, const std::string& file) {
  for (size_t pos = p.find('/');; pos = p.find('/', pos + 1)) {
    const std::string prefix = p.substr(0, pos);
    if (!check_tri(H5Lexists(f, prefix.c_str(), H5P_DEFAULT), "cannot look up '" + prefix + "'", file)) return false;
    if (pos == std::string::npos) return true;
  }
}

Hid open_dataset(hid_t f, const std::string& file, const std::string& dataset) {
  const std::string p = strip_slashes(dataset);
  MUE_CHECK(!p.empty(), "empty dataset name for '", file, "'");
  MUE_CHECK(link_exists(f, p, file), "no dataset '", p, "' in '", file, "'");
  return make(H5Dopen2(f, p.c_str(), H5P_DEFAULT), H5Dclose, "cannot open dataset '" + p + "'", file);
}

// A string read with the file's own string type: trims the padding.
std::string from_fixed(const char* s, size_t size, H5T_str_t pad) {
  size_t n = 0;
  while (n < size && s[n] != '\0') ++n;
  if (pad == H5T_STR_SPACEPAD)
    while (n > 0 && s[n - 1] == ' ') --n;
  return std::string(s, n);
}

// A root attribute, or with a path ("param_table/route_scale") an attribute of that group or dataset.
std::optional<Hid> open_root_attr(hid_t f, const std::string& file, const std::string& attr) {
  const size_t slash = attr.rfind('/');
  const std::string obj = slash == std::string::npos ? "." : attr.substr(0, slash);
  const std::string name = slash == std::string::npos ? attr : attr.substr(slash + 1);
  if (obj != "." && !check_tri(H5Lexists(f, obj.c_str(), H5P_DEFAULT), "cannot look up '" + obj + "'", file))
    return std::nullopt;
  if (!check_tri(H5Aexists_by_name(f, obj.c_str(), name.c_str(), H5P_DEFAULT),
                 "cannot look up attribute '" + attr + "'", file))
    return std::nullopt;
  return make(H5Aopen_by_name(f, obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
              "cannot open attribute '" + attr + "'", file);
}

// A new scalar float64 attribute `name` of the group or file `obj` (`what` names it in errors).
void create_double_attr(hid_t obj, const std::string& name, double value, const std::string& what,
                        const std::string& file) {
  Hid space = make(H5Screate(H5S_SCALAR), H5Sclose, "cannot create dataspace", file);
  Hid a = make(H5Acreate2(obj, name.c_str(), H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
               "cannot create " + what, file);
  check(H5Awrite(a, H5T_NATIVE_DOUBLE, &value), "cannot write " + what, file);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// RunLog

namespace {
struct Series {
  hid_t id = -1;
  int rank = 1;
  hsize_t width = 1;
  hsize_t rows = 0;
};
struct Columns {  // the append() columns of one group
  hsize_t rows = 0;
  std::vector<std::string> names;  // creation order
};
}  // namespace

struct RunLog::Impl {
  std::string path;
  hid_t file = -1;
  int lock_fd = -1;  // our exclusive flock on the file, held from before the truncation until close
  std::map<std::string, Series> series;  // key: dataset path without leading '/'
  std::map<std::string, Columns> groups;
  bool param_table_written = false;

  // Closes everything; reports the first failure after trying all.
  void close() {
    if (file < 0) return;
    std::string err;
    for (auto& [name, s] : series) {
      if (s.id >= 0 && H5Dclose(s.id) < 0 && err.empty()) err = "cannot close dataset '" + name + "'";
      s.id = -1;
    }
    series.clear();
    groups.clear();
    const herr_t r = H5Fclose(file);
    file = -1;
    if (lock_fd >= 0) ::close(lock_fd);  // releases the lock
    lock_fd = -1;
    if (r < 0 && err.empty()) err = "cannot close file";
    if (!err.empty()) h5fail(err, path);
  }

  // Grows `s` by one row and writes `values` (width of them) into it; values == nullptr leaves the fill value.
  void add_row(const std::string& name, Series& s, const double* values) {
    hsize_t dims[2] = {s.rows + 1, s.width};
    check(H5Dset_extent(s.id, dims), "cannot extend dataset '" + name + "'", path);
    s.rows += 1;
    if (!values) return;
    Hid fspace = make(H5Dget_space(s.id), H5Sclose, "cannot get dataspace of '" + name + "'", path);
    hsize_t start[2] = {s.rows - 1, 0}, count[2] = {1, s.width};
    check(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, count, nullptr),
          "cannot select row of '" + name + "'", path);
    Hid mspace = make(H5Screate_simple(s.rank, count, nullptr), H5Sclose, "cannot create dataspace", path);
    check(H5Dwrite(s.id, H5T_NATIVE_DOUBLE, mspace, fspace, H5P_DEFAULT, values),
          "cannot write row to '" + name + "'", path);
  }

  // Creates an empty extendible float64 dataset of rank 1 ([0]) or 2 ([0, width]).
  Series create_series(const std::string& name, int rank, hsize_t width) {
    hsize_t dims[2] = {0, width}, maxdims[2] = {H5S_UNLIMITED, width}, chunk[2] = {1024, width};
    if (rank == 2) chunk[0] = std::max<hsize_t>(1, std::min<hsize_t>(1024, 65536 / width));  // chunk <= 512 KiB
    Hid space = make(H5Screate_simple(rank, dims, maxdims), H5Sclose, "cannot create dataspace", path);
    Hid dcpl = make(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "cannot create property list", path);
    check(H5Pset_chunk(dcpl, rank, chunk), "cannot set chunking for '" + name + "'", path);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    check(H5Pset_fill_value(dcpl, H5T_NATIVE_DOUBLE, &nan), "cannot set fill value for '" + name + "'", path);
    Hid lcpl = make(H5Pcreate(H5P_LINK_CREATE), H5Pclose, "cannot create property list", path);
    check(H5Pset_create_intermediate_group(lcpl, 1), "cannot enable intermediate groups", path);
    Series s;
    s.rank = rank;
    s.width = width;
    s.id = check_id(H5Dcreate2(file, name.c_str(), H5T_IEEE_F64LE, space, lcpl, dcpl, H5P_DEFAULT),
                    "cannot create dataset '" + name + "'", path);
    return s;
  }
};

RunLog::RunLog(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RunLog::RunLog(RunLog&&) noexcept = default;
RunLog& RunLog::operator=(RunLog&& o) noexcept {
  if (this != &o) {
    if (impl_) {
      try {
        impl_->close();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "mue: warning: %s\n", e.what());
      }
    }
    impl_ = std::move(o.impl_);
  }
  return *this;
}
RunLog::~RunLog() {
  if (!impl_) return;
  try {
    impl_->close();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mue: warning: %s\n", e.what());
  }
}

bool RunLog::is_open() const { return impl_ && impl_->file >= 0; }
const std::string& RunLog::path() const {
  static const std::string none;
  return impl_ ? impl_->path : none;
}

RunLog::Impl& RunLog::live(const char* op) {
  MUE_CHECK(impl_, "run log: ", op, " on a moved-from RunLog");
  MUE_CHECK(impl_->file >= 0, "run log '", impl_->path, "': ", op, " after close()");
  quiet_hdf5();
  return *impl_;
}

RunLog RunLog::create(const std::string& path) {
  quiet_hdf5();
  MUE_CHECK(!path.empty(), "run log: empty file path");
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  MUE_CHECK(fs::is_directory(dir, ec), "cannot create run log '", path, "': folder '", dir.string(),
            "' does not exist");
  MUE_CHECK(!fs::is_directory(p, ec), "cannot create run log '", path, "': it is a folder");
  MUE_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, "cannot create run log '", path, "': folder '", dir.string(),
            "' is not writable");
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  // H5Fcreate truncates before it locks, so a second writer would empty a live run's file and only then find
  // it locked. Take the lock first, on a descriptor of our own that does not truncate, and keep it to the end;
  // HDF5's own lock is then off for this file (it would conflict with ours). Readers that lock still see the
  // file as busy. Filesystems without flock (some NFS) go on unlocked, as HDF5 does.
  const bool existed = fs::exists(p, ec);
  impl->lock_fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  MUE_CHECK(impl->lock_fd >= 0, "cannot create run log '", path, "': ", std::strerror(errno));
  if (::flock(impl->lock_fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
    ::close(impl->lock_fd);
    fail("'", path, "' is in use by another process (a run still writing it); not touching it");
  }
  Hid fapl = file_access_plist(path, false);
  impl->file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  if (impl->file < 0) {
    ::close(impl->lock_fd);
    if (!existed) ::unlink(path.c_str());  // leave no empty file of our own behind
    check_id(impl->file, "cannot create file", path);
  }
  return RunLog(std::move(impl));
}

void RunLog::set_attr(const std::string& name, const std::string& value) {
  Impl& m = live("set_attr");
  MUE_CHECK(!name.empty(), "run log '", m.path, "': empty attribute name");
  MUE_CHECK(value.find('\0') == std::string::npos, "run log '", m.path, "': attribute '", name,
            "' holds a NUL character");
  const std::string what = "attribute '" + name + "'";
  Hid type = vlen_utf8(m.path);
  if (auto a = open_root_attr(m.file, m.path, name)) {
    Hid old = make(H5Aget_type(*a), H5Tclose, "cannot get type of " + what, m.path);
    const bool same = check_tri(H5Tget_class(old) == H5T_STRING ? H5Tis_variable_str(old) : 0,
                                "cannot inspect " + what, m.path);
    if (same) {
      const char* s = value.c_str();
      check(H5Awrite(*a, type, &s), "cannot write " + what, m.path);
      return;
    }
    a->reset();
    check(H5Adelete(m.file, name.c_str()), "cannot replace " + what, m.path);
  }
  Hid space = make(H5Screate(H5S_SCALAR), H5Sclose, "cannot create dataspace", m.path);
  Hid a = make(H5Acreate2(m.file, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
               "cannot create " + what, m.path);
  const char* s = value.c_str();
  check(H5Awrite(a, type, &s), "cannot write " + what, m.path);
}

void RunLog::set_attr(const std::string& name, double value) {
  Impl& m = live("set_attr");
  MUE_CHECK(!name.empty(), "run log '", m.path, "': empty attribute name");
  const std::string what = "attribute '" + name + "'";
  if (auto a = open_root_attr(m.file, m.path, name)) {
    Hid old = make(H5Aget_type(*a), H5Tclose, "cannot get type of " + what, m.path);
    Hid space = make(H5Aget_space(*a), H5Sclose, "cannot get dataspace of " + what, m.path);
    if (H5Tget_class(old) == H5T_FLOAT && H5Sget_simple_extent_type(space) == H5S_SCALAR) {
      check(H5Awrite(*a, H5T_NATIVE_DOUBLE, &value), "cannot write " + what, m.path);
      return;
    }
    a->reset();
    check(H5Adelete(m.file, name.c_str()), "cannot replace " + what, m.path);
  }
  create_double_attr(m.file, name, value, what, m.path);
}

void RunLog::write_param_table(const std::vector<ParamTableRow>& rows,
                               const std::vector<std::pair<std::string, double>>& scalars) {
  Impl& m = live("write_param_table");
  MUE_CHECK(!m.param_table_written, "run log '", m.path, "': param_table written twice");
  Hid g = make(H5Gcreate2(m.file, "param_table", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose,
               "cannot create group 'param_table'", m.path);
  const hsize_t n = rows.size();
  Hid space = make(H5Screate_simple(1, &n, nullptr), H5Sclose, "cannot create dataspace", m.path);
  Hid str = vlen_utf8(m.path);

  auto strings = [&](const char* col, std::string ParamTableRow::*field) {
    const std::string what = std::string("param_table/") + col;
    std::vector<const char*> ptrs;
    for (const auto& r : rows) {
      MUE_CHECK((r.*field).find('\0') == std::string::npos, "run log '", m.path, "': ", what, " value holds NUL");
      ptrs.push_back((r.*field).c_str());
    }
    Hid d = make(H5Dcreate2(g, col, str, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose,
                 "cannot create dataset '" + what + "'", m.path);
    if (n) check(H5Dwrite(d, str, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()), "cannot write '" + what + "'", m.path);
  };
  auto doubles = [&](const char* col, double ParamTableRow::*field) {
    const std::string what = std::string("param_table/") + col;
    std::vector<double> v;
    for (const auto& r : rows) v.push_back(r.*field);
    Hid d = make(H5Dcreate2(g, col, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose,
                 "cannot create dataset '" + what + "'", m.path);
    if (n)
      check(H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), "cannot write '" + what + "'",
            m.path);
  };
  strings("name", &ParamTableRow::name);
  strings("shape", &ParamTableRow::shape);
  strings("init", &ParamTableRow::init);
  doubles("init_std", &ParamTableRow::init_std);
  doubles("multiplier", &ParamTableRow::multiplier);
  doubles("lr", &ParamTableRow::lr);
  doubles("wd", &ParamTableRow::wd);
  doubles("eps", &ParamTableRow::eps);
  doubles("forward_alpha", &ParamTableRow::forward_alpha);
  for (const auto& [name, value] : scalars)
    create_double_attr(g, name, value, "param_table attribute '" + name + "'", m.path);
  m.param_table_written = true;
}

void RunLog::append(const std::string& group, const std::vector<std::pair<std::string, double>>& row) {
  Impl& m = live("append");
  const std::string g = strip_slashes(group);
  MUE_CHECK(!g.empty(), "run log '", m.path, "': append needs a group name");
  MUE_CHECK(!row.empty(), "run log '", m.path, "': append to '", g, "' with no values");
  // Validate the whole row before touching the file, so a bad row leaves the columns of equal length.
  std::set<std::string> seen;
  for (const auto& [name, v] : row) {
    MUE_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..", "run log '",
              m.path, "': bad column name '", name, "' for group '", g, "'");
    MUE_CHECK(seen.insert(name).second, "run log '", m.path, "': column '", name, "' twice in one row of '", g,
              "'");
    auto it = m.series.find(g + "/" + name);
    MUE_CHECK(it == m.series.end() || it->second.rank == 1, "run log '", m.path, "': '", g, "/", name,
              "' is a 2-D append_row dataset, not a column");
  }
  Columns& cols = m.groups[g];
  for (const auto& [name, v] : row) {
    const std::string key = g + "/" + name;
    if (m.series.count(key)) continue;
    Series s = m.create_series(key, 1, 1);
    auto [it, ok] = m.series.emplace(key, s);
    cols.names.push_back(name);
    if (cols.rows) {  // a late column: NaN for the rows before it
      hsize_t dims[2] = {cols.rows, 1};
      check(H5Dset_extent(it->second.id, dims), "cannot extend dataset '" + key + "'", m.path);
      it->second.rows = cols.rows;
    }
  }
  std::map<std::string, double> vals(row.begin(), row.end());
  for (const auto& name : cols.names) {
    const std::string key = g + "/" + name;
    auto v = vals.find(name);
    m.add_row(key, m.series.at(key), v == vals.end() ? nullptr : &v->second);
  }
  cols.rows += 1;
}

void RunLog::append_row(const std::string& dataset_path, const std::vector<double>& values) {
  Impl& m = live("append_row");
  const std::string key = strip_slashes(dataset_path);
  MUE_CHECK(!key.empty(), "run log '", m.path, "': append_row needs a dataset path");
  MUE_CHECK(!values.empty(), "run log '", m.path, "': append_row to '", key, "' with no values");
  auto it = m.series.find(key);
  if (it == m.series.end()) {
    it = m.series.emplace(key, m.create_series(key, 2, values.size())).first;
  } else {
    MUE_CHECK(it->second.rank == 2, "run log '", m.path, "': '", key,
              "' is an append() column, not a 2-D append_row dataset");
    MUE_CHECK(it->second.width == values.size(), "run log '", m.path, "': append_row to '", key, "' with ",
              values.size(), " values, but its rows have width ", it->second.width);
  }
  m.add_row(key, it->second, values.data());
}

void RunLog::flush() {
  Impl& m = live("flush");
  check(H5Fflush(m.file, H5F_SCOPE_GLOBAL), "cannot flush file", m.path);
}

void RunLog::close() {
  if (!impl_) return;
  quiet_hdf5();
  impl_->close();
}

// ---------------------------------------------------------------------------------------------------------------
// Reading

void set_read_locking(bool lock) { g_read_locking = lock; }

bool file_in_use(const std::string& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool busy = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  return busy;
}

bool is_hdf5(const std::string& file) {
  quiet_hdf5();
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return false;
  const htri_t r = H5Fis_hdf5(file.c_str());
  if (r < 0) (void)H5Eclear2(H5E_DEFAULT);
  return r > 0;
}

std::optional<std::string> read_string_attr(const std::string& file, const std::string& attr) {
  quiet_hdf5();
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::nullopt;
  Hid f = open_ro(file);
  auto a = open_root_attr(f, file, attr);
  if (!a) return std::nullopt;
  const std::string what = "attribute '" + attr + "'";
  Hid type = make(H5Aget_type(*a), H5Tclose, "cannot get type of " + what, file);
  MUE_CHECK(H5Tget_class(type) == H5T_STRING, "attribute '", attr, "' in '", file, "' is not a string");
  Hid space = make(H5Aget_space(*a), H5Sclose, "cannot get dataspace of " + what, file);
  MUE_CHECK(H5Sget_simple_extent_npoints(space) == 1, "attribute '", attr, "' in '", file,
            "' is not a single string");
  if (check_tri(H5Tis_variable_str(type), "cannot inspect " + what, file)) {
    Hid mt = make(H5Tcopy(H5T_C_S1), H5Tclose, "cannot copy string type", file);
    check(H5Tset_size(mt, H5T_VARIABLE), "cannot make string type variable-length", file);
    check(H5Tset_cset(mt, H5Tget_cset(type)), "cannot set string charset", file);
    char* s = nullptr;
    check(H5Aread(*a, mt, &s), "cannot read " + what, file);
    std::string out = s ? s : "";
    if (s) H5free_memory(s);
    return out;
  }
  const size_t size = H5Tget_size(type);
  MUE_CHECK(size > 0, "attribute '", attr, "' in '", file, "' has a bad string size");
  std::vector<char> buf(size);
  check(H5Aread(*a, type, buf.data()), "cannot read " + what, file);
  return from_fixed(buf.data(), size, H5Tget_strpad(type));
}

std::optional<double> read_double_attr(const std::string& file, const std::string& attr) {
  quiet_hdf5();
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::nullopt;
  Hid f = open_ro(file);
  auto a = open_root_attr(f, file, attr);
  if (!a) return std::nullopt;
  const std::string what = "attribute '" + attr + "'";
  Hid type = make(H5Aget_type(*a), H5Tclose, "cannot get type of " + what, file);
  const H5T_class_t c = H5Tget_class(type);
  MUE_CHECK(c == H5T_FLOAT || c == H5T_INTEGER, "attribute '", attr, "' in '", file, "' is not a number");
  Hid space = make(H5Aget_space(*a), H5Sclose, "cannot get dataspace of " + what, file);
  MUE_CHECK(H5Sget_simple_extent_npoints(space) == 1, "attribute '", attr, "' in '", file,
            "' is not a single number");
  double v = 0;
  check(H5Aread(*a, H5T_NATIVE_DOUBLE, &v), "cannot read " + what, file);
  return v;
}

std::vector<uint64_t> dataset_shape(const std::string& file, const std::string& dataset) {
  Hid f = open_ro(file);
  Hid d = open_dataset(f, file, dataset);
  Hid space = make(H5Dget_space(d), H5Sclose, "cannot get dataspace of '" + dataset + "'", file);
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 0) h5fail("cannot get rank of '" + dataset + "'", file);
  std::vector<hsize_t> dims(rank);
  if (rank) check(H5Sget_simple_extent_dims(space, dims.data(), nullptr), "cannot get dims of '" + dataset + "'", file);
  return std::vector<uint64_t>(dims.begin(), dims.end());
}

std::vector<double> read_doubles(const std::string& file, const std::string& dataset) {
  Hid f = open_ro(file);
  Hid d = open_dataset(f, file, dataset);
  Hid type = make(H5Dget_type(d), H5Tclose, "cannot get type of '" + dataset + "'", file);
  const H5T_class_t c = H5Tget_class(type);
  MUE_CHECK(c == H5T_FLOAT || c == H5T_INTEGER, "dataset '", dataset, "' in '", file, "' is not numeric");
  Hid space = make(H5Dget_space(d), H5Sclose, "cannot get dataspace of '" + dataset + "'", file);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  if (n < 0) h5fail("cannot get size of '" + dataset + "'", file);
  std::vector<double> out(static_cast<size_t>(n));
  if (n) check(H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()),
               "cannot read '" + dataset + "'", file);
  return out;
}

std::vector<std::string> read_strings(const std::string& file, const std::string& dataset) {
  Hid f = open_ro(file);
  Hid d = open_dataset(f, file, dataset);
  Hid type = make(H5Dget_type(d), H5Tclose, "cannot get type of '" + dataset + "'", file);
  MUE_CHECK(H5Tget_class(type) == H5T_STRING, "dataset '", dataset, "' in '", file, "' is not a string dataset");
  Hid space = make(H5Dget_space(d), H5Sclose, "cannot get dataspace of '" + dataset + "'", file);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  if (n < 0) h5fail("cannot get size of '" + dataset + "'", file);
  std::vector<std::string> out;
  if (n == 0) return out;
  out.reserve(size_t(n));
  if (check_tri(H5Tis_variable_str(type), "cannot inspect type of '" + dataset + "'", file)) {
    Hid mt = make(H5Tcopy(H5T_C_S1), H5Tclose, "cannot copy string type", file);
    check(H5Tset_size(mt, H5T_VARIABLE), "cannot make string type variable-length", file);
    check(H5Tset_cset(mt, H5Tget_cset(type)), "cannot set string charset", file);
    std::vector<char*> buf(size_t(n), nullptr);
    check(H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()), "cannot read '" + dataset + "'", file);
    for (char* s : buf) out.emplace_back(s ? s : "");
    check(H5Dvlen_reclaim(mt, space, H5P_DEFAULT, buf.data()), "cannot free strings of '" + dataset + "'", file);
    return out;
  }
  const size_t size = H5Tget_size(type);
  MUE_CHECK(size > 0, "dataset '", dataset, "' in '", file, "' has a bad string size");
  std::vector<char> buf(size * size_t(n));
  check(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()), "cannot read '" + dataset + "'", file);
  const H5T_str_t pad = H5Tget_strpad(type);
  for (hssize_t i = 0; i < n; ++i) out.push_back(from_fixed(buf.data() + size_t(i) * size, size, pad));
  return out;
}

std::vector<std::string> list_datasets(const std::string& file, const std::string& group) {
  Hid f = open_ro(file);
  std::string g = strip_slashes(group);
  if (g.empty()) g = ".";
  else
    MUE_CHECK(link_exists(f, g, file), "no group '", g, "' in '", file, "'");
  Hid gid = make(H5Gopen2(f, g.c_str(), H5P_DEFAULT), H5Gclose, "cannot open group '" + g + "'", file);
  H5G_info_t info;
  check(H5Gget_info(gid, &info), "cannot get info of group '" + g + "'", file);
  std::vector<std::string> out;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len =
        H5Lget_name_by_idx(gid, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (len < 0) h5fail("cannot list group '" + g + "'", file);
    std::string name(size_t(len) + 1, '\0');
    if (H5Lget_name_by_idx(gid, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT) < 0)
      h5fail("cannot list group '" + g + "'", file);
    name.resize(size_t(len));
    const hid_t o = H5Oopen(gid, name.c_str(), H5P_DEFAULT);
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

std::map<std::string, std::vector<double>> read_columns(const std::string& file, const std::string& group) {
  {
    Hid f = open_ro(file);
    if (!link_exists(f, strip_slashes(group), file)) return {};
  }
  std::map<std::string, std::vector<double>> cols;
  for (auto& c : list_datasets(file, group))
    if (dataset_shape(file, group + "/" + c).size() == 1) cols[c] = read_doubles(file, group + "/" + c);
  return cols;
}

}  // namespace mue
