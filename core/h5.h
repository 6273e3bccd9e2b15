// The one wrapper of the HDF5 C API: run logs (core/h5log), image sets (data/images, data/prepare_images) and
// sweep indexes (experiments/sweep) all go through it.
//
// What it adds to the C API: ids that close themselves (Id), every failure as one mue::Error line that names
// the operation, the file and HDF5's innermost message (fail), and the handful of operations the callers share on
// a file or group (Node): paths that may not exist, scalar attributes, 1-D columns, string data of either
// kind (variable- or fixed-length), external links. Anything one caller alone needs (RunLog's extendible series,
// the image set's compressed uint8 arrays) stays with that caller, written with Id and check.
//
// Every function that starts talking to HDF5 (create_file, open_file_read, is_hdf5_file) first silences HDF5's own
// stderr dump of its error stack for the calling thread; callers that begin elsewhere call quiet().
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace mue::h5 {

// Turns off HDF5's stderr dump of its error stack for this thread (the setting is per thread in thread-safe
// builds); failures are reported through fail() instead.
void quiet();

// The innermost (most specific) message on this thread's HDF5 error stack, e.g. "unable to open file: ... errno =
// 2, error message = 'No such file or directory'", on one line; "" when the stack is empty. Clears the stack.
std::string take_error();

// Throws mue::Error "HDF5: <what> in '<file>' (<take_error()>)", without the parentheses when the stack is empty.
[[noreturn]] void fail(const std::string& what, const std::string& file);

// A negative result of the C API becomes fail(what, file).
void check(herr_t result, const std::string& what, const std::string& file);
bool check_tri(htri_t result, const std::string& what, const std::string& file);  // true / false, or fail

// Owns one HDF5 id and closes it with the matching H5?close.
class Id {
 public:
  using Closer = herr_t (*)(hid_t);
  Id() = default;
  Id(hid_t id, Closer closer) : id_(id), close_(closer) {}
  Id(Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Id& operator=(Id&& o) noexcept;
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  ~Id() { reset(); }

  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() { (void)close(); }  // closes now, ignoring a failure
  // Closes now and returns HDF5's result (H5Fclose flushes, so a file's close can fail where it matters); 0 when
  // nothing was open.
  herr_t close();

 private:
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

// Takes ownership of a freshly made id, or fail(what, file) when it is negative.
Id own(hid_t id, Id::Closer closer, const std::string& what, const std::string& file);

// A variable-length UTF-8 string type (the same for file and memory), as every string this project writes.
Id utf8_string_type(const std::string& file);

// A file or a group in it, with the file's path for the error messages. Paths are relative to this node; leading
// and trailing '/' are ignored ("/train/loss" and "train/loss" name the same dataset of a file).
class Node {
 public:
  Node() = default;
  Node(Id id, std::string file) : id_(std::move(id)), file_(std::move(file)) {}

  hid_t id() const { return id_.get(); }
  operator hid_t() const { return id_.get(); }
  const std::string& file() const { return file_; }
  // Closes now and returns HDF5's result; for a file this is where buffered data reaches the disk.
  herr_t close() { return id_.close(); }

  // Whether every component of `path` exists (HDF5 1.10's H5Lexists fails outright on a missing parent).
  bool exists(const std::string& path) const;

  Node create_group(const std::string& name, hid_t group_create_plist = H5P_DEFAULT) const;
  Node open_group(const std::string& path) const;  // "no group '<path>' in '<file>'" when missing
  // Names of the datasets directly inside this group, sorted by name; subgroups and dangling links are left out.
  std::vector<std::string> datasets() const;

  Id open_dataset(const std::string& path) const;  // "no dataset '<path>' in '<file>'" when missing
  std::vector<uint64_t> shape(const std::string& dataset) const;
  std::vector<double> read_doubles(const std::string& dataset) const;       // any numeric type, flattened
  std::vector<std::string> read_strings(const std::string& dataset) const;  // variable- or fixed-length

  // A new 1-D dataset `name` holding the values: float64, int64 or variable-length UTF-8 strings.
  void write_column(const std::string& name, std::span<const double> values) const;
  void write_column(const std::string& name, std::span<const int64_t> values) const;
  void write_column(const std::string& name, const std::vector<std::string>& values) const;

  // A link `name` in this group to the object `target_path` of another file (`target_file` is stored as given,
  // so a relative name resolves next to this file).
  void link_external(const std::string& name, const std::string& target_file, const std::string& target_path) const;

  // Attributes. Readers take "name" for an attribute of this node or "path/name" for one of the object at path;
  // nullopt when there is no such object or attribute; an error when it has another type or is not a scalar.
  std::optional<std::string> string_attr(const std::string& attr) const;
  std::optional<double> number_attr(const std::string& attr) const;  // a float or an integer, as double
  std::optional<int64_t> int_attr(const std::string& attr) const;    // an integer only
  // Scalar attributes of this node (float64, int64, variable-length UTF-8 string); setting one again replaces it,
  // in place when its type is the same, else by deleting and re-creating it.
  void set_attr(const std::string& name, const std::string& value) const;
  void set_attr(const std::string& name, double value) const;
  void set_attr(const std::string& name, int64_t value) const;

 private:
  std::optional<Id> open_attr(const std::string& attr) const;
  Id open_scalar_attr_for_write(const std::string& name, H5T_class_t cls, bool variable_string) const;

  Id id_;
  std::string file_;
};

// Creates `path`, truncating any file there. lock = false leaves HDF5's own file lock off (for a caller that holds
// its own lock on the file); where the file system has no locks, HDF5 goes on without them either way.
Node create_file(const std::string& path, bool lock = true);

// Opens an existing file read-only. Errors: "HDF5 file '<path>' does not exist", "'<path>' is not an HDF5 file",
// or fail(). lock = false reads a file another process is writing (ignored where HDF5 < 1.10.7 has no switch).
Node open_file_read(const std::string& path, bool lock = true);

// True iff `path` is a regular file with the HDF5 signature. Never throws.
bool is_hdf5_file(const std::string& path);

}  // namespace mue::h5
