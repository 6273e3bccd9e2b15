#include "core/h5log.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "core/error.h"
#include "core/h5.h"

namespace mue {
namespace {

namespace fs = std::filesystem;
using h5::check;
using h5::Id;
using h5::own;

std::string strip_slashes(const std::string& p) {
  size_t a = 0, b = p.size();
  while (a < b && p[a] == '/') ++a;
  while (b > a && p[b - 1] == '/') --b;
  return p.substr(a, b - a);
}

bool g_read_locking = true;  // set_read_locking

h5::Node open_ro(const std::string& file) { return h5::open_file_read(file, g_read_locking); }

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// RunLog

namespace {
struct Series {
  Id id;
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
  h5::Node file;
  int lock_fd = -1;  // our exclusive flock on the file, held from before the truncation until close
  std::map<std::string, Series> series;  // key: dataset path without leading '/'
  std::map<std::string, Columns> groups;
  bool param_table_written = false;

  // Closes everything; reports the first failure after trying all.
  void close() {
    if (file.id() < 0) return;
    std::string err;
    for (auto& [name, s] : series)
      if (s.id.close() < 0 && err.empty()) err = "cannot close dataset '" + name + "'";
    series.clear();
    groups.clear();
    const herr_t r = file.close();
    if (lock_fd >= 0) ::close(lock_fd);  // releases the lock
    lock_fd = -1;
    if (r < 0 && err.empty()) err = "cannot close file";
    if (!err.empty()) h5::fail(err, path);
  }

  // Grows `s` by one row and writes `values` (width of them) into it; values == nullptr leaves the fill value.
  void add_row(const std::string& name, Series& s, const double* values) {
    hsize_t dims[2] = {s.rows + 1, s.width};
    check(H5Dset_extent(s.id, dims), "cannot extend dataset '" + name + "'", path);
    s.rows += 1;
    if (!values) return;
    Id fspace = own(H5Dget_space(s.id), H5Sclose, "cannot get dataspace of '" + name + "'", path);
    hsize_t start[2] = {s.rows - 1, 0}, count[2] = {1, s.width};
    check(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, count, nullptr),
          "cannot select row of '" + name + "'", path);
    Id mspace = own(H5Screate_simple(s.rank, count, nullptr), H5Sclose, "cannot create dataspace", path);
    check(H5Dwrite(s.id, H5T_NATIVE_DOUBLE, mspace, fspace, H5P_DEFAULT, values),
          "cannot write row to '" + name + "'", path);
  }

  // Creates an empty extendible float64 dataset of rank 1 ([0]) or 2 ([0, width]).
  Series create_series(const std::string& name, int rank, hsize_t width) {
    hsize_t dims[2] = {0, width}, maxdims[2] = {H5S_UNLIMITED, width}, chunk[2] = {1024, width};
    if (rank == 2) chunk[0] = std::max<hsize_t>(1, std::min<hsize_t>(1024, 65536 / width));  // chunk <= 512 KiB
    Id space = own(H5Screate_simple(rank, dims, maxdims), H5Sclose, "cannot create dataspace", path);
    Id dcpl = own(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "cannot create property list", path);
    check(H5Pset_chunk(dcpl, rank, chunk), "cannot set chunking for '" + name + "'", path);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    check(H5Pset_fill_value(dcpl, H5T_NATIVE_DOUBLE, &nan), "cannot set fill value for '" + name + "'", path);
    Id lcpl = own(H5Pcreate(H5P_LINK_CREATE), H5Pclose, "cannot create property list", path);
    check(H5Pset_create_intermediate_group(lcpl, 1), "cannot enable intermediate groups", path);
    Series s;
    s.rank = rank;
    s.width = width;
    s.id = own(H5Dcreate2(file, name.c_str(), H5T_IEEE_F64LE, space, lcpl, dcpl, H5P_DEFAULT), H5Dclose,
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

bool RunLog::is_open() const { return impl_ && impl_->file.id() >= 0; }
const std::string& RunLog::path() const {
  static const std::string none;
  return impl_ ? impl_->path : none;
}

RunLog::Impl& RunLog::live(const char* op) {
  MUE_CHECK(impl_, "run log: ", op, " on a moved-from RunLog");
  MUE_CHECK(impl_->file.id() >= 0, "run log '", impl_->path, "': ", op, " after close()");
  h5::quiet();
  return *impl_;
}

RunLog RunLog::create(const std::string& path) {
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
  try {
    impl->file = h5::create_file(path, /*lock=*/false);
  } catch (...) {
    ::close(impl->lock_fd);
    if (!existed) ::unlink(path.c_str());  // leave no empty file of our own behind
    throw;
  }
  return RunLog(std::move(impl));
}

void RunLog::set_attr(const std::string& name, const std::string& value) {
  Impl& m = live("set_attr");
  MUE_CHECK(!name.empty(), "run log '", m.path, "': empty attribute name");
  m.file.set_attr(name, value);
}

void RunLog::set_attr(const std::string& name, double value) {
  Impl& m = live("set_attr");
  MUE_CHECK(!name.empty(), "run log '", m.path, "': empty attribute name");
  m.file.set_attr(name, value);
}

void RunLog::set_group_attrs(const std::string& group, const std::vector<std::pair<std::string, double>>& values) {
  Impl& m = live("set_group_attrs");
  const std::string g = strip_slashes(group);
  MUE_CHECK(!g.empty(), "run log '", m.path, "': set_group_attrs needs a group name");
  const h5::Node node = m.file.exists(g) ? m.file.open_group(g) : m.file.create_group(g);
  for (const auto& [name, value] : values) node.set_attr(name, value);
}

void RunLog::write_param_table(const std::vector<ParamTableRow>& rows,
                               const std::vector<std::pair<std::string, double>>& scalars) {
  Impl& m = live("write_param_table");
  MUE_CHECK(!m.param_table_written, "run log '", m.path, "': param_table written twice");
  const h5::Node g = m.file.create_group("param_table");
  auto strings = [&](const char* col, std::string ParamTableRow::*field) {
    std::vector<std::string> v;
    for (const auto& r : rows) v.push_back(r.*field);
    g.write_column(col, v);
  };
  auto doubles = [&](const char* col, double ParamTableRow::*field) {
    std::vector<double> v;
    for (const auto& r : rows) v.push_back(r.*field);
    g.write_column(col, v);
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
  for (const auto& [name, value] : scalars) g.set_attr(name, value);
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
    auto [it, ok] = m.series.emplace(key, std::move(s));
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
  check(H5Fflush(m.file.id(), H5F_SCOPE_GLOBAL), "cannot flush file", m.path);
}

void RunLog::close() {
  if (!impl_) return;
  h5::quiet();
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

bool is_hdf5(const std::string& file) { return h5::is_hdf5_file(file); }

std::optional<std::string> read_string_attr(const std::string& file, const std::string& attr) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::nullopt;
  return open_ro(file).string_attr(attr);
}

std::optional<double> read_double_attr(const std::string& file, const std::string& attr) {
  return read_double_attrs(file, {attr})[0];
}

std::vector<std::optional<double>> read_double_attrs(const std::string& file, const std::vector<std::string>& attrs) {
  std::vector<std::optional<double>> values(attrs.size());
  std::error_code ec;
  if (!fs::exists(file, ec)) return values;
  const h5::Node f = open_ro(file);
  for (size_t i = 0; i < attrs.size(); ++i) values[i] = f.number_attr(attrs[i]);
  return values;
}

std::vector<uint64_t> dataset_shape(const std::string& file, const std::string& dataset) {
  return open_ro(file).shape(dataset);
}

std::vector<double> read_doubles(const std::string& file, const std::string& dataset) {
  return open_ro(file).read_doubles(dataset);
}

std::vector<std::string> read_strings(const std::string& file, const std::string& dataset) {
  return open_ro(file).read_strings(dataset);
}

std::vector<std::string> list_datasets(const std::string& file, const std::string& group) {
  return open_ro(file).open_group(group).datasets();
}

std::map<std::string, std::vector<double>> read_columns(const std::string& file, const std::string& group) {
  const h5::Node f = open_ro(file);
  if (!f.exists(group)) return {};
  const h5::Node g = f.open_group(group);
  std::map<std::string, std::vector<double>> cols;
  for (auto& c : g.datasets())
    if (g.shape(c).size() == 1) cols[c] = g.read_doubles(c);
  return cols;
}

}  // namespace mue
