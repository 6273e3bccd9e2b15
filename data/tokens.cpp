#include "data/tokens.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "core/error.h"
#include "core/output_file.h"
#include "core/rng.h"

namespace mue {

static_assert(std::endian::native == std::endian::little, "token files are little-endian; big-endian hosts unsupported");

namespace {

template <class T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

}  // namespace

// ---- writing -----------------------------------------------------------------------------------------------

void write_token_file(const std::string& path, std::span<const uint16_t> train, std::span<const uint16_t> val,
                      const std::string& sources_json, uint32_t vocab_size) {
  check_replaceable(path, "a mue token file", [](const std::string& p) { return file_starts_with(p, "MUETOKS1"); });
  MUE_CHECK(vocab_size > 0 && vocab_size <= 65536, "token file ", path, ": vocab_size ", vocab_size,
            " does not fit uint16 token storage (must be 1..65536)");
  for (auto split : {train, val})
    for (uint16_t t : split)
      MUE_CHECK(t < vocab_size, "token file ", path, ": token id ", t, " >= vocab_size ", vocab_size);
  std::string sources = sources_json;
  while ((kTokenFileHeaderBytes + sources.size()) % 8 != 0) sources.push_back(' ');  // align the tokens
  MUE_CHECK(sources.size() <= UINT32_MAX, "token file ", path, ": sources JSON too large");

  std::string header(kTokenFileMagic, 8);
  put<uint32_t>(header, kTokenFileVersion);
  put<uint32_t>(header, vocab_size);
  put<uint64_t>(header, train.size());
  put<uint64_t>(header, val.size());
  put<uint32_t>(header, uint32_t(sources.size()));

  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  MUE_CHECK(f, "token file: cannot create ", tmp, ": ", std::strerror(errno));
  auto write = [&](const void* p, size_t size, size_t n) {  // an empty span may have no data pointer at all
    return n == 0 || std::fwrite(p, size, n, f) == n;
  };
  bool ok = write(header.data(), 1, header.size()) && write(sources.data(), 1, sources.size()) &&
            write(train.data(), sizeof(uint16_t), train.size()) && write(val.data(), sizeof(uint16_t), val.size()) &&
            std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  const int err = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    fail("token file: error writing ", tmp, ": ", std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    fail("token file: cannot rename ", tmp, " to ", path, ": ", std::strerror(e));
  }
}

// ---- reading -----------------------------------------------------------------------------------------------

TokenFile TokenFile::open(const std::string& path) {
  TokenFile tf;
  tf.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MUE_CHECK(fd >= 0, "token file ", path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail("token file ", path, ": cannot stat: ", std::strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {  // open() takes a folder; mmap would then fail with "No such device"
    ::close(fd);
    fail("token file ", path, " is a directory, not a token file (mue tokenize writes one)");
  }
  const auto size = uint64_t(st.st_size);
  if (size < kTokenFileHeaderBytes) {
    ::close(fd);
    fail("token file ", path, ": ", size, " bytes, shorter than the ", kTokenFileHeaderBytes,
         "-byte header (truncated or not a token file)");
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int e = errno;
  ::close(fd);
  MUE_CHECK(m != MAP_FAILED, "token file ", path, ": mmap failed: ", std::strerror(e));
  tf.map_ = static_cast<const uint8_t*>(m);
  tf.map_size_ = size;  // from here on tf's destructor unmaps on error

  const uint8_t* p = tf.map_;
  MUE_CHECK(std::memcmp(p, kTokenFileMagic, 8) == 0, "token file ", path,
            ": bad magic (expected \"MUETOKS1\"; not a mue token file)");
  const auto version = load_le<uint32_t>(p + 8);
  MUE_CHECK(version == kTokenFileVersion, "token file ", path, ": version ", version, ", this build reads ",
            kTokenFileVersion);
  tf.vocab_size_ = load_le<uint32_t>(p + 12);
  tf.n_train_ = load_le<uint64_t>(p + 16);
  tf.n_val_ = load_le<uint64_t>(p + 24);
  const auto sources_len = load_le<uint32_t>(p + 32);
  MUE_CHECK(tf.vocab_size_ > 0 && tf.vocab_size_ <= 65536, "token file ", path, ": bad vocab_size ",
            tf.vocab_size_);
  const unsigned __int128 expected = (unsigned __int128)kTokenFileHeaderBytes + sources_len +
                                     2 * ((unsigned __int128)tf.n_train_ + tf.n_val_);
  if (expected != size) {
    const auto exp64 = expected > UINT64_MAX ? UINT64_MAX : uint64_t(expected);
    fail("token file ", path, ": header says ", exp64, " bytes (", tf.n_train_, " train + ", tf.n_val_,
         " val tokens), file has ", size, expected > size ? " (truncated)" : " (trailing bytes)");
  }
  tf.sources_.assign(reinterpret_cast<const char*>(p + kTokenFileHeaderBytes), sources_len);
  while (!tf.sources_.empty() && tf.sources_.back() == ' ') tf.sources_.pop_back();
  tf.train_ = p + kTokenFileHeaderBytes + sources_len;
  tf.val_ = tf.train_ + 2 * tf.n_train_;

  // Every id must index the embedding table; one pass over the tokens is cheap next to training.
  uint16_t max_id = 0;
  const uint8_t* t = tf.train_;
  for (uint64_t i = 0, n = tf.n_train_ + tf.n_val_; i < n; ++i) max_id = std::max(max_id, load_le<uint16_t>(t + 2 * i));
  MUE_CHECK(tf.n_train_ + tf.n_val_ == 0 || max_id < tf.vocab_size_, "token file ", path, ": token id ", max_id,
            " >= vocab_size ", tf.vocab_size_, " (corrupt)");
  return tf;
}

void TokenFile::release() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
  map_ = nullptr;
  map_size_ = 0;
}

TokenFile::~TokenFile() { release(); }

TokenFile::TokenFile(TokenFile&& o) noexcept { *this = std::move(o); }

TokenFile& TokenFile::operator=(TokenFile&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    sources_ = std::move(o.sources_);
    map_ = std::exchange(o.map_, nullptr);
    map_size_ = std::exchange(o.map_size_, 0);
    train_ = std::exchange(o.train_, nullptr);
    val_ = std::exchange(o.val_, nullptr);
    vocab_size_ = std::exchange(o.vocab_size_, 0);
    n_train_ = std::exchange(o.n_train_, 0);
    n_val_ = std::exchange(o.n_val_, 0);
  }
  return *this;
}

uint16_t TokenFile::train_token(uint64_t i) const {
  MUE_CHECK(i < n_train_, "token file ", path_, ": train index ", i, " out of range (", n_train_, ")");
  return load_le<uint16_t>(train_ + 2 * i);
}

uint16_t TokenFile::val_token(uint64_t i) const {
  MUE_CHECK(i < n_val_, "token file ", path_, ": val index ", i, " out of range (", n_val_, ")");
  return load_le<uint16_t>(val_ + 2 * i);
}

void TokenFile::copy_window(const uint8_t* split, uint64_t start, int T, int32_t* inputs, int32_t* targets) const {
  const uint8_t* w = split + 2 * start;
  int32_t prev = load_le<uint16_t>(w);
  for (int t = 0; t < T; ++t) {
    const int32_t next = load_le<uint16_t>(w + 2 * (t + 1));
    inputs[t] = prev;
    targets[t] = next;
    prev = next;
  }
}

void TokenFile::sample_batch(uint64_t seed, uint64_t step, int B, int T, int32_t* inputs, int32_t* targets,
                             int first) const {
  MUE_CHECK(map_, "token file: sample_batch on an unopened TokenFile");
  MUE_CHECK(B > 0 && T > 0, "token file ", path_, ": sample_batch needs B > 0 and T > 0 (got B=", B, " T=", T, ")");
  MUE_CHECK(uint64_t(T) + 1 <= n_train_, "token file ", path_, ": T+1 = ", T + 1, " exceeds the train split (",
            n_train_, " tokens)");
  MUE_CHECK(first >= 0, "token file ", path_, ": sample_batch needs first >= 0 (got ", first, ")");
  for (int b = 0; b < B; ++b) {
    const uint64_t start = rng_index(seed, step, uint64_t(first) + uint64_t(b), n_train_ - uint64_t(T));
    copy_window(train_, start, T, inputs + size_t(b) * T, targets + size_t(b) * T);
  }
}

int64_t TokenFile::val_batches(int B, int T) const {
  MUE_CHECK(map_, "token file: val_batches on an unopened TokenFile");
  MUE_CHECK(B > 0 && T > 0, "token file ", path_, ": val_batches needs B > 0 and T > 0 (got B=", B, " T=", T, ")");
  MUE_CHECK(uint64_t(T) + 1 <= n_val_, "token file ", path_, ": T+1 = ", T + 1, " exceeds the val split (", n_val_,
            " tokens)");
  return int64_t((n_val_ - 1) / uint64_t(T) / uint64_t(B));
}

void TokenFile::val_batch(int64_t i, int B, int T, int32_t* inputs, int32_t* targets) const {
  const int64_t n = val_batches(B, T);
  MUE_CHECK(i >= 0 && i < n, "token file ", path_, ": val batch ", i, " out of range (", n, " batches of B=", B,
            " T=", T, ")");
  val_windows(i * B, B, T, inputs, targets);
}

void TokenFile::val_windows(int64_t first, int count, int T, int32_t* inputs, int32_t* targets) const {
  const int64_t n = val_batches(1, T);  // whole windows
  MUE_CHECK(first >= 0 && count > 0 && first + count <= n, "token file ", path_, ": val windows ", first, "..",
            first + count - 1, " out of range (", n, " windows of T=", T, ")");
  for (int b = 0; b < count; ++b)
    copy_window(val_, uint64_t(first + b) * uint64_t(T), T, inputs + size_t(b) * T, targets + size_t(b) * T);
}

}  // namespace mue
