// Per-run HDF5 log (the file researchers open with h5py / pandas / h5ls).
//
// Layout:
//   /                 attributes: config, rule, status, git_commit, device, started, finished (variable-length
//                     UTF-8 strings) plus any further string or float64 attributes set with set_attr.
//   /param_table/     one float64 or string column dataset per field, all of one length (one row per tensor):
//                     name, shape, init (strings); init_std, multiplier, lr, wd, eps (float64).
//   /<group>/<col>    extendible 1-D float64 columns written by append(); chunk 1024, unlimited length. Every
//                     column of a group has one length: a column a row leaves out gets NaN for that row, and a
//                     column first seen at row n gets NaN for rows 0..n-1.
//   /<path>           extendible 2-D float64 datasets [rows, width] written by append_row().
//   /<group>          a group of float64 attributes written by set_group_attrs() (e.g. /timing).
// flush() pushes everything to disk, so a killed process leaves a readable file (whose status says "running").
// Every HDF5 failure becomes a mue::Error naming the operation and the file.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mue {

struct ParamTableRow {
  std::string name, shape, init;
  double init_std, multiplier, lr, wd, eps;
  double forward_alpha = 1;  // what the forward applies: multiplier x the branch multiplier on residual outputs
};

class RunLog {
 public:
  // Creates (truncating any existing file: the caller decides the overwrite policy). Fails with a clear error if
  // the folder is missing, the file cannot be created, or another process holds it (it is locked before it is
  // truncated, and stays locked until close).
  static RunLog create(const std::string& path);

  RunLog(RunLog&&) noexcept;
  RunLog& operator=(RunLog&&) noexcept;
  RunLog(const RunLog&) = delete;
  RunLog& operator=(const RunLog&) = delete;
  ~RunLog();  // closes; a failure there is printed to stderr, not thrown

  // Root attributes; setting one again replaces it (its type may change).
  void set_attr(const std::string& name, const std::string& value);
  void set_attr(const std::string& name, const char* value) { set_attr(name, std::string(value)); }
  void set_attr(const std::string& name, double value);
  // Float64 attributes of `group` (created on first use); setting one again replaces it.
  void set_group_attrs(const std::string& group, const std::vector<std::pair<std::string, double>>& values);

  // Writes /param_table once: its rows as columns, and the table-wide scalars (attention scale, branch
  // multiplier, route scale) as attributes of the group.
  void write_param_table(const std::vector<ParamTableRow>& rows,
                         const std::vector<std::pair<std::string, double>>& scalars = {});

  // Appends one row to the 1-D columns of `group` (e.g. "train" or "/train"), creating group and columns on first
  // use. Column names must be distinct and contain no '/'.
  void append(const std::string& group, const std::vector<std::pair<std::string, double>>& row);

  // Appends one row to the 2-D dataset `dataset_path` (e.g. "router/load"), created [0, width] on first use;
  // a later row of another width is an error.
  void append_row(const std::string& dataset_path, const std::vector<double>& values);

  void flush();  // H5Fflush(global)
  void close();  // idempotent; any other call after it is an error

  bool is_open() const;
  const std::string& path() const;

 private:
  struct Impl;
  explicit RunLog(std::unique_ptr<Impl> impl);
  Impl& live(const char* op);
  std::unique_ptr<Impl> impl_;
};

// ---- Reading (tests, the trainer's overwrite check, tools) ----

// Whether the readers below take the file's lock (default true: a file being written is refused). `mue show`
// turns it off to read a live run; where the HDF5 library has no file-locking switch (< 1.10.7) it changes nothing.
void set_read_locking(bool lock);

// True iff another process holds `file` locked for writing (a RunLog still open, or an HDF5 writer). Never throws.
bool file_in_use(const std::string& file);

// True iff `file` exists and carries the HDF5 signature. Never throws.
bool is_hdf5(const std::string& file);

// nullopt if the file does not exist or has no such root attribute; error if it is not an HDF5 file or the
// attribute is not a string.
std::optional<std::string> read_string_attr(const std::string& file, const std::string& attr);
// Same for a numeric root attribute (read as double). Both take "group/name" for an attribute of a group.
std::optional<double> read_double_attr(const std::string& file, const std::string& attr);
// Several numeric attributes ("name" or "group/name", as read_double_attr) with one opening of the file.
std::vector<std::optional<double>> read_double_attrs(const std::string& file, const std::vector<std::string>& attrs);

// A numeric dataset as doubles, flattened in row-major order (see dataset_shape for the dims).
std::vector<double> read_doubles(const std::string& file, const std::string& dataset);
std::vector<uint64_t> dataset_shape(const std::string& file, const std::string& dataset);
// A string dataset (variable- or fixed-length).
std::vector<std::string> read_strings(const std::string& file, const std::string& dataset);
// Names of the datasets directly inside `group` ("/" for the root), sorted by name; subgroups are left out.
std::vector<std::string> list_datasets(const std::string& file, const std::string& group);
// The 1-D columns of `group` (e.g. "train": step, loss, ...) by name; empty when the file has no such group.
std::map<std::string, std::vector<double>> read_columns(const std::string& file, const std::string& group);

}  // namespace mue
