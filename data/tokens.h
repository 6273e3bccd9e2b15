// Token files: a tokenized corpus with a train and a validation split, memory-mapped for sampling; the format, its
// writer and its reader (data/tokenize.h builds one from a documentation tree).
//
// Layout (little-endian):
//   offset 0   magic "MUETOKS1"       8 bytes
//          8   version = 1            u32
//         12   vocab_size             u32   (every token id < vocab_size <= 65536)
//         16   n_train                u64
//         24   n_val                  u64
//         32   sources_len            u32
//         36   sources                sources_len bytes of JSON text (what went in: corpus, root, documents,
//                                     tokenizer files, validation rule); the writer pads it with spaces so the
//                                     tokens start 8-byte aligned
//   36+sources_len   n_train u16 train tokens, then n_val u16 val tokens. Nothing after.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace mue {

constexpr char kTokenFileMagic[8] = {'M', 'U', 'E', 'T', 'O', 'K', 'S', '1'};
constexpr uint32_t kTokenFileVersion = 1;
constexpr size_t kTokenFileHeaderBytes = 36;

// Writes path + ".tmp", then renames it to path, so a crash never leaves a half file under the real name.
// Errors when a token is >= vocab_size or vocab_size > 65536 (tokens are stored as uint16).
void write_token_file(const std::string& path, std::span<const uint16_t> train, std::span<const uint16_t> val,
                      const std::string& sources_json, uint32_t vocab_size);

class TokenFile {
 public:
  // Maps the file read-only and validates magic, version, sizes (header vs file size) and token ids.
  static TokenFile open(const std::string& path);

  TokenFile() = default;
  ~TokenFile();
  TokenFile(TokenFile&& o) noexcept;
  TokenFile& operator=(TokenFile&& o) noexcept;
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t vocab_size() const { return vocab_size_; }
  uint64_t n_train() const { return n_train_; }
  uint64_t n_val() const { return n_val_; }
  const std::string& sources() const { return sources_; }  // the JSON text as stored
  uint16_t train_token(uint64_t i) const;                  // bounds-checked single reads
  uint16_t val_token(uint64_t i) const;

  // B windows of T+1 consecutive train tokens; window b starts at rng_index(seed, step, first + b, n_train - T), so a
  // batch is a pure function of (seed, step). inputs[b*T + t] = window_b[t], targets[b*T + t] = window_b[t+1].
  // first > 0 gives rows first .. first+B-1 of the step's larger batch (a data-parallel rank's share of it).
  void sample_batch(uint64_t seed, uint64_t step, int B, int T, int32_t* inputs, int32_t* targets,
                    int first = 0) const;

  // Validation: window w covers val tokens [w*T, w*T + T] (inputs w*T.., targets shifted by one, so every val
  // token after the first is a target exactly once); batch i holds windows i*B .. i*B+B-1. Fixed for a file.
  // val_batches = floor(floor((n_val - 1) / T) / B); errors when T + 1 > n_val.
  int64_t val_batches(int B, int T) const;
  void val_batch(int64_t i, int B, int T, int32_t* inputs, int32_t* targets) const;
  // Validation windows first .. first+count-1 (val_batch(i, B) is windows i*B .. i*B+B-1): a data-parallel rank's
  // share of a batch. Errors past the last whole window.
  void val_windows(int64_t first, int count, int T, int32_t* inputs, int32_t* targets) const;

 private:
  void copy_window(const uint8_t* split, uint64_t start, int T, int32_t* inputs, int32_t* targets) const;
  void release();

  std::string path_;
  const uint8_t* map_ = nullptr;  // whole file
  size_t map_size_ = 0;
  const uint8_t* train_ = nullptr;  // u16 tokens, possibly unaligned (read with memcpy)
  const uint8_t* val_ = nullptr;
  uint32_t vocab_size_ = 0;
  uint64_t n_train_ = 0, n_val_ = 0;
  std::string sources_;
};

}  // namespace mue
