// GPT-2 byte-level BPE tokenizer (Radford et al. 2019), reimplemented without regex or ICU.
//
// Pipeline, as in OpenAI's encoder.py: UTF-8 text -> pre-tokens by the GPT-2 pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (matched by hand on code points) -> each pre-token's bytes -> BPE merges ranked by vocab.bpe line order.
// encoder.json / vocab.bpe spell bytes through GPT-2's bytes->unicode table; load() undoes that, so internally
// every token is a plain byte string.
//
// Unicode classes: ASCII is exact. Beyond ASCII, \p{L} and \p{N} come from a compact table of the main letter
// and number ranges (Latin-1 letters, Latin Extended, IPA, Greek, Cyrillic, Armenian, Hebrew, Arabic, Indic,
// Thai, Georgian, Hangul, kana, CJK, fullwidth forms, superscript/subscript/circled digits, ...); rare scripts
// and a few scattered code points are approximated, so on such text the split can differ from GPT-2's (the
// round trip decode(encode(s)) == s holds for all input regardless). \s is Unicode White_Space (as Python's
// `regex` module). Bytes that are not valid UTF-8 are treated as symbols (neither letter, number nor space).
// "<|endoftext|>" in the text is NOT special: callers insert eot() between documents.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace mue {

// Unicode classes used by the pre-tokenizer (see the approximation note above).
bool unicode_is_letter(uint32_t cp);
bool unicode_is_number(uint32_t cp);
bool unicode_is_space(uint32_t cp);

// GPT-2 pre-tokenization: the pieces are views into `text`, in order, and concatenate back to `text`.
std::vector<std::string_view> gpt2_pretokenize(std::string_view text);

class GPT2Tokenizer {
 public:
  // Memo of BPE results per pre-token. Not thread-safe: give each thread its own.
  struct Cache {
    struct Hash {
      using is_transparent = void;
      size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    std::unordered_map<std::string, std::vector<uint32_t>, Hash, std::equal_to<>> map;
  };

  // Reads dir/encoder.json and dir/vocab.bpe; mue::Error naming the file when missing or malformed.
  static GPT2Tokenizer load(const std::string& dir);

  std::vector<uint32_t> encode(std::string_view utf8) const;  // fresh cache per call
  void encode_append(std::string_view utf8, std::vector<uint32_t>& out, Cache& cache) const;
  std::string decode(const std::vector<uint32_t>& ids) const;  // error on an id outside the vocabulary

  uint32_t eot() const { return eot_; }  // id of "<|endoftext|>" (50256 for GPT-2)
  size_t vocab_size() const { return id_to_bytes_.size(); }  // max id + 1 (50257 for GPT-2)
  size_t n_merges() const { return merges_.size(); }
  const std::string& token_bytes(uint32_t id) const;  // raw bytes of a token

 private:
  struct Merge {
    uint32_t rank, id;
  };
  void bpe(std::string_view piece, std::vector<uint32_t>& out) const;

  std::vector<std::string> id_to_bytes_;      // id -> raw bytes ("" for unused ids)
  int32_t byte_id_[256];                      // single-byte token ids, -1 when absent
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank, merged id
  uint32_t eot_ = 0;
};

}  // namespace mue
