#include "data/tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace mue {

namespace {

// ---- Unicode classes ---------------------------------------------------------------------------------------

struct Range {
  uint32_t lo, hi;  // inclusive
};

// \p{L} beyond ASCII: the main letter blocks, sorted, non-overlapping. Approximate (see tokenizer.h).
constexpr Range kLetters[] = {
    {0x00AA, 0x00AA}, {0x00B5, 0x00B5}, {0x00BA, 0x00BA}, {0x00C0, 0x00D6}, {0x00D8, 0x00F6},
    {0x00F8, 0x02C1},  // Latin-1 letters, Latin Extended-A/B, IPA, modifier letters
    {0x02C6, 0x02D1}, {0x02E0, 0x02E4}, {0x02EC, 0x02EC}, {0x02EE, 0x02EE},
    {0x0370, 0x0374}, {0x0376, 0x0377}, {0x037A, 0x037D}, {0x037F, 0x037F}, {0x0386, 0x0386},
    {0x0388, 0x038A}, {0x038C, 0x038C}, {0x038E, 0x03A1}, {0x03A3, 0x03F5}, {0x03F7, 0x0481},  // Greek, Cyrillic
    {0x048A, 0x052F}, {0x0531, 0x0556}, {0x0559, 0x0559}, {0x0560, 0x0588},                     // Armenian
    {0x05D0, 0x05EA}, {0x05EF, 0x05F2},                                                         // Hebrew
    {0x0620, 0x064A}, {0x066E, 0x066F}, {0x0671, 0x06D3}, {0x06D5, 0x06D5}, {0x06E5, 0x06E6},   // Arabic
    {0x06EE, 0x06EF}, {0x06FA, 0x06FC}, {0x06FF, 0x06FF}, {0x0710, 0x0710}, {0x0712, 0x072F},
    {0x074D, 0x07A5}, {0x07B1, 0x07B1},
    {0x0904, 0x0939}, {0x093D, 0x093D}, {0x0950, 0x0950}, {0x0958, 0x0961}, {0x0971, 0x0980},   // Devanagari
    {0x0985, 0x09B9}, {0x0A05, 0x0A39}, {0x0A85, 0x0AB9}, {0x0B05, 0x0B39}, {0x0B85, 0x0BB9},   // Indic (approx.)
    {0x0C05, 0x0C39}, {0x0C85, 0x0CB9}, {0x0D05, 0x0D3A}, {0x0D85, 0x0DC6},
    {0x0E01, 0x0E30}, {0x0E32, 0x0E33}, {0x0E40, 0x0E46},                                       // Thai
    {0x0E81, 0x0EB0}, {0x0EB2, 0x0EB3}, {0x0EBD, 0x0EC6}, {0x0F00, 0x0F00}, {0x0F40, 0x0F6C},   // Lao, Tibetan
    {0x1000, 0x102A}, {0x10A0, 0x10C5}, {0x10D0, 0x10FA}, {0x10FC, 0x1248},                     // Myanmar, Georgian, Jamo, Ethiopic
    {0x124A, 0x135A}, {0x13A0, 0x13F5}, {0x1401, 0x166C}, {0x166F, 0x167F}, {0x1681, 0x169A},   // Cherokee, UCAS, Ogham
    {0x16A0, 0x16EA}, {0x1780, 0x17B3}, {0x1820, 0x1878},                                       // Runic, Khmer, Mongolian
    {0x1D00, 0x1DBF}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D}, {0x1F20, 0x1F45}, {0x1F48, 0x1F4D},   // phonetic, Latin/Greek ext.
    {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D},
    {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC},
    {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC},
    {0x2071, 0x2071}, {0x207F, 0x207F}, {0x2090, 0x209C},
    {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D},   // letterlike
    {0x2124, 0x2124}, {0x2126, 0x2126}, {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2139},
    {0x213C, 0x213F}, {0x2145, 0x2149}, {0x214E, 0x214E}, {0x2183, 0x2184},
    {0x2C00, 0x2CE4}, {0x2CEB, 0x2CEE}, {0x2D00, 0x2D25}, {0x2D30, 0x2D67}, {0x2D80, 0x2DDE},   // Glagolitic, Coptic, ...
    {0x2E2F, 0x2E2F}, {0x3005, 0x3006}, {0x3031, 0x3035}, {0x303B, 0x303C},
    {0x3041, 0x3096}, {0x309D, 0x309F}, {0x30A1, 0x30FA}, {0x30FC, 0x30FF},                     // kana
    {0x3105, 0x312F}, {0x3131, 0x318E}, {0x31A0, 0x31BF}, {0x31F0, 0x31FF},                     // Bopomofo, Jamo
    {0x3400, 0x4DBF}, {0x4E00, 0xA48C},                                                         // CJK, Yi
    {0xA4D0, 0xA4FD}, {0xA500, 0xA60C}, {0xA610, 0xA61F}, {0xA62A, 0xA62B}, {0xA640, 0xA66E},
    {0xA67F, 0xA69D}, {0xA6A0, 0xA6E5}, {0xA717, 0xA71F}, {0xA722, 0xA788}, {0xA78B, 0xA7CA},
    {0xA7D0, 0xA801}, {0xAB30, 0xAB5A}, {0xAB5C, 0xAB69}, {0xAB70, 0xABE2},
    {0xAC00, 0xD7A3}, {0xD7B0, 0xD7C6}, {0xD7CB, 0xD7FB},                                       // Hangul
    {0xF900, 0xFA6D}, {0xFA70, 0xFAD9}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFB1D, 0xFB1D},   // compat, presentation
    {0xFB1F, 0xFB28}, {0xFB2A, 0xFBB1}, {0xFBD3, 0xFD3D}, {0xFD50, 0xFDC7}, {0xFDF0, 0xFDFB},
    {0xFE70, 0xFEFC}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0xFF66, 0xFFDC},                     // fullwidth, halfwidth
    {0x10000, 0x100FA}, {0x10280, 0x1031F}, {0x10330, 0x10340}, {0x10400, 0x1049D},             // old scripts (approx.)
    {0x1D400, 0x1D6C0}, {0x1D6C2, 0x1D6DA}, {0x1D6DC, 0x1D6FA}, {0x1D6FC, 0x1D714},             // math alphanumerics
    {0x1D716, 0x1D734}, {0x1D736, 0x1D74E}, {0x1D750, 0x1D76E}, {0x1D770, 0x1D788},
    {0x1D78A, 0x1D7A8}, {0x1D7AA, 0x1D7C2}, {0x1D7C4, 0x1D7CB},
    {0x20000, 0x2A6DF}, {0x2A700, 0x2EBE0}, {0x2F800, 0x2FA1D}, {0x30000, 0x3134A},             // CJK ext. B..G
};

// \p{N} beyond ASCII (Nd, Nl, No), main ranges.
constexpr Range kNumbers[] = {
    {0x00B2, 0x00B3}, {0x00B9, 0x00B9}, {0x00BC, 0x00BE}, {0x0660, 0x0669}, {0x06F0, 0x06F9},
    {0x07C0, 0x07C9}, {0x0966, 0x096F}, {0x09E6, 0x09EF}, {0x09F4, 0x09F9}, {0x0A66, 0x0A6F},
    {0x0AE6, 0x0AEF}, {0x0B66, 0x0B6F}, {0x0BE6, 0x0BF2}, {0x0C66, 0x0C6F}, {0x0CE6, 0x0CEF},
    {0x0D66, 0x0D78}, {0x0E50, 0x0E59}, {0x0ED0, 0x0ED9}, {0x0F20, 0x0F33}, {0x1040, 0x1049},
    {0x1369, 0x137C}, {0x16EE, 0x16F0}, {0x17E0, 0x17E9}, {0x1810, 0x1819},
    {0x2070, 0x2070}, {0x2074, 0x2079}, {0x2080, 0x2089}, {0x2150, 0x2182}, {0x2185, 0x2189},
    {0x2460, 0x249B}, {0x24EA, 0x24FF}, {0x2776, 0x2793}, {0x2CFD, 0x2CFD}, {0x3007, 0x3007},
    {0x3021, 0x3029}, {0x3038, 0x303A}, {0x3192, 0x3195}, {0x3220, 0x3229}, {0x3248, 0x324F},
    {0x3251, 0x325F}, {0x3280, 0x3289}, {0x32B1, 0x32BF}, {0xA620, 0xA629}, {0xA6E6, 0xA6EF},
    {0xA830, 0xA835}, {0xFF10, 0xFF19}, {0x10107, 0x10133}, {0x1D7CE, 0x1D7FF}, {0x1F100, 0x1F10C},
};

template <size_t N>
constexpr bool sorted_disjoint(const Range (&r)[N]) {
  for (size_t i = 0; i < N; ++i) {
    if (r[i].lo > r[i].hi) return false;
    if (i > 0 && r[i].lo <= r[i - 1].hi) return false;
  }
  return true;
}
static_assert(sorted_disjoint(kLetters) && sorted_disjoint(kNumbers), "Unicode range tables must be sorted");

bool in_ranges(const Range* begin, const Range* end, uint32_t cp) {
  const Range* it = std::upper_bound(begin, end, cp, [](uint32_t v, const Range& r) { return v < r.lo; });
  return it != begin && cp <= (it - 1)->hi;
}

constexpr uint32_t kInvalid = 0xFFFFFFFFu;  // an undecodable byte: classified as a symbol

enum Cls : uint8_t { kLetter, kNumber, kSpace, kOther };

// Decodes one code point at s[i]; invalid or truncated sequences yield (kInvalid, 1).
inline uint32_t decode_utf8(std::string_view s, size_t i, size_t& len) {
  const auto b0 = uint8_t(s[i]);
  if (b0 < 0x80) {
    len = 1;
    return b0;
  }
  size_t n;
  uint32_t cp, min;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    len = 1;
    return kInvalid;
  }
  if (i + n > s.size()) {
    len = 1;
    return kInvalid;
  }
  for (size_t k = 1; k < n; ++k) {
    const auto b = uint8_t(s[i + k]);
    if ((b & 0xC0) != 0x80) {
      len = 1;
      return kInvalid;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    len = 1;
    return kInvalid;
  }
  len = n;
  return cp;
}

struct AsciiTable {
  std::array<Cls, 128> cls{};
  constexpr AsciiTable() {
    for (int c = 0; c < 128; ++c) {
      Cls k = kOther;
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) k = kLetter;
      else if (c >= '0' && c <= '9') k = kNumber;
      else if (c == ' ' || (c >= 9 && c <= 13)) k = kSpace;
      cls[c] = k;
    }
  }
};
constexpr AsciiTable kAscii;

inline Cls classify(uint32_t cp) {
  if (cp < 128) return kAscii.cls[cp];
  if (cp == kInvalid) return kOther;
  if (unicode_is_space(cp)) return kSpace;
  if (unicode_is_letter(cp)) return kLetter;
  if (unicode_is_number(cp)) return kNumber;
  return kOther;
}

inline Cls class_at(std::string_view s, size_t i, size_t& len) { return classify(decode_utf8(s, i, len)); }

// End of the pre-token that starts at byte i (< s.size()), following the GPT-2 pattern's alternatives in order.
size_t piece_end(std::string_view s, size_t i) {
  const size_t n = s.size();
  // 's|'t|'re|'ve|'m|'ll|'d  (case-sensitive, ASCII apostrophe only)
  if (s[i] == '\'' && i + 1 < n) {
    const char a = s[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 < n) {
      const char b = s[i + 2];
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
  }
  size_t len;
  const Cls c = class_at(s, i, len);
  size_t j = i;
  Cls run;
  if (c != kSpace) {
    run = c;  // \p{L}+ | \p{N}+ | [^\s\p{L}\p{N}]+
  } else {
    // " ?X+" where the space is U+0020 and X is the class of the next (non-space) code point.
    size_t len2;
    if (s[i] == ' ' && i + 1 < n && (run = class_at(s, i + 1, len2)) != kSpace) {
      j = i + 1;
    } else {
      // \s+(?!\S) then \s+: a whitespace run keeps its last code point for the next word, unless the run ends
      // the text or is a single code point.
      size_t last = i;
      while (j < n) {
        if (class_at(s, j, len) != kSpace) break;
        last = j;
        j += len;
      }
      if (j == n || last == i) return j;
      return last;
    }
  }
  while (j < n) {
    if (class_at(s, j, len) != run) break;
    j += len;
  }
  return j;
}

// ---- GPT-2 byte <-> unicode spelling -----------------------------------------------------------------------

struct ByteSpelling {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 512> to_byte{};  // code point -> byte; all mapped code points are < 512
  ByteSpelling() {
    to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? uint32_t(b) : uint32_t(256 + extra++);
      to_byte[to_cp[b]] = int16_t(b);
    }
  }
};

const ByteSpelling& byte_spelling() {
  static const ByteSpelling t;
  return t;
}

// "Ġthe" -> " the". Returns false when a code point is not in the byte spelling.
bool unspell(std::string_view spelled, std::string& out) {
  const ByteSpelling& t = byte_spelling();
  out.clear();
  for (size_t i = 0; i < spelled.size();) {
    size_t len;
    const uint32_t cp = decode_utf8(spelled, i, len);
    if (cp == kInvalid || cp >= 512 || t.to_byte[cp] < 0) return false;
    out.push_back(char(uint8_t(t.to_byte[cp])));
    i += len;
  }
  return true;
}

std::string read_whole(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MUE_CHECK(f.good(), "tokenizer: cannot open ", path);
  std::ostringstream os;
  os << f.rdbuf();
  MUE_CHECK(!f.bad(), "tokenizer: error reading ", path);
  return os.str();
}

std::string printable(std::string_view s) {
  std::string r;
  for (char ch : s) {
    const auto c = uint8_t(ch);
    if (c >= 0x20 && c < 0x7F) {
      r.push_back(ch);
    } else {
      static const char* hex = "0123456789abcdef";
      r += "\\x";
      r.push_back(hex[c >> 4]);
      r.push_back(hex[c & 15]);
    }
  }
  return r;
}

}  // namespace

bool unicode_is_letter(uint32_t cp) {
  if (cp < 128) return kAscii.cls[cp] == kLetter;
  return in_ranges(std::begin(kLetters), std::end(kLetters), cp);
}

bool unicode_is_number(uint32_t cp) {
  if (cp < 128) return kAscii.cls[cp] == kNumber;
  return in_ranges(std::begin(kNumbers), std::end(kNumbers), cp);
}

bool unicode_is_space(uint32_t cp) {
  if (cp < 128) return kAscii.cls[cp] == kSpace;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::vector<std::string_view> gpt2_pretokenize(std::string_view text) {
  std::vector<std::string_view> out;
  for (size_t i = 0; i < text.size();) {
    const size_t e = piece_end(text, i);
    out.push_back(text.substr(i, e - i));
    i = e;
  }
  return out;
}

GPT2Tokenizer GPT2Tokenizer::load(const std::string& dir) {
  GPT2Tokenizer tok;
  std::fill(std::begin(tok.byte_id_), std::end(tok.byte_id_), -1);
  const std::string enc_path = dir + "/encoder.json", bpe_path = dir + "/vocab.bpe";

  // encoder.json: {"spelled token": id, ...}
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_whole(enc_path));
  } catch (const nlohmann::json::exception& e) {
    fail("tokenizer: ", enc_path, " is not valid JSON: ", e.what());
  }
  MUE_CHECK(j.is_object() && !j.empty(), "tokenizer: ", enc_path, " must be a non-empty JSON object token -> id");
  std::unordered_map<std::string, uint32_t> bytes_to_id;
  bytes_to_id.reserve(j.size() * 2);
  std::string raw;
  for (auto it = j.begin(); it != j.end(); ++it) {
    MUE_CHECK(it.value().is_number_unsigned(), "tokenizer: ", enc_path, ": id of token \"", printable(it.key()),
              "\" is not a non-negative integer");
    const uint64_t id = it.value().get<uint64_t>();
    MUE_CHECK(id < 10'000'000, "tokenizer: ", enc_path, ": id ", id, " is implausibly large");
    MUE_CHECK(!it.key().empty(), "tokenizer: ", enc_path, ": empty token string");
    MUE_CHECK(unspell(it.key(), raw), "tokenizer: ", enc_path, ": token \"", printable(it.key()),
              "\" uses a character outside GPT-2's byte spelling");
    if (id >= tok.id_to_bytes_.size()) tok.id_to_bytes_.resize(id + 1);
    MUE_CHECK(tok.id_to_bytes_[id].empty(), "tokenizer: ", enc_path, ": id ", id, " is used twice");
    tok.id_to_bytes_[id] = raw;
    MUE_CHECK(bytes_to_id.emplace(raw, uint32_t(id)).second, "tokenizer: ", enc_path, ": token \"",
              printable(it.key()), "\" appears twice");
    if (raw.size() == 1) tok.byte_id_[uint8_t(raw[0])] = int32_t(id);
  }
  const auto eot = bytes_to_id.find("<|endoftext|>");
  MUE_CHECK(eot != bytes_to_id.end(), "tokenizer: ", enc_path, " has no \"<|endoftext|>\" token");
  tok.eot_ = eot->second;

  // vocab.bpe: "#version: ..." then one merge "left right" per line, highest priority first.
  const std::string text = read_whole(bpe_path);
  size_t line_no = 0;
  uint32_t rank = 0;
  std::string left, right;
  for (size_t pos = 0; pos < text.size();) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string_view line(text.data() + pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.substr(0, 8) == "#version")) continue;
    const size_t sp = line.find(' ');
    MUE_CHECK(sp != std::string_view::npos && sp > 0 && sp + 1 < line.size() &&
                  line.find(' ', sp + 1) == std::string_view::npos,
              "tokenizer: ", bpe_path, ":", line_no, ": expected \"left right\", got \"", printable(line), "\"");
    MUE_CHECK(unspell(line.substr(0, sp), left) && unspell(line.substr(sp + 1), right), "tokenizer: ", bpe_path,
              ":", line_no, ": character outside GPT-2's byte spelling");
    const auto a = bytes_to_id.find(left), b = bytes_to_id.find(right), ab = bytes_to_id.find(left + right);
    MUE_CHECK(a != bytes_to_id.end() && b != bytes_to_id.end() && ab != bytes_to_id.end(), "tokenizer: ",
              bpe_path, ":", line_no, ": merge \"", printable(line), "\" uses or makes a token missing from ",
              enc_path);
    tok.merges_.emplace((uint64_t(a->second) << 32) | b->second, Merge{rank++, ab->second});
  }
  return tok;
}

const std::string& GPT2Tokenizer::token_bytes(uint32_t id) const {
  MUE_CHECK(id < id_to_bytes_.size() && !id_to_bytes_[id].empty(), "tokenizer: token id ", id,
            " is not in the vocabulary (size ", id_to_bytes_.size(), ")");
  return id_to_bytes_[id];
}

void GPT2Tokenizer::bpe(std::string_view piece, std::vector<uint32_t>& out) const {
  std::vector<uint32_t> w(piece.size()), next;
  for (size_t i = 0; i < piece.size(); ++i) {
    const int32_t id = byte_id_[uint8_t(piece[i])];
    MUE_CHECK(id >= 0, "tokenizer: byte 0x", std::hex, int(uint8_t(piece[i])), " has no token in the vocabulary");
    w[i] = uint32_t(id);
  }
  while (w.size() > 1) {
    uint32_t best_rank = std::numeric_limits<uint32_t>::max(), best_id = 0;
    uint64_t best_key = 0;
    for (size_t i = 0; i + 1 < w.size(); ++i) {
      const uint64_t key = (uint64_t(w[i]) << 32) | w[i + 1];
      const auto it = merges_.find(key);
      if (it != merges_.end() && it->second.rank < best_rank) {
        best_rank = it->second.rank;
        best_id = it->second.id;
        best_key = key;
      }
    }
    if (best_rank == std::numeric_limits<uint32_t>::max()) break;
    const auto a = uint32_t(best_key >> 32), b = uint32_t(best_key);
    next.clear();
    for (size_t i = 0; i < w.size();) {
      if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
        next.push_back(best_id);
        i += 2;
      } else {
        next.push_back(w[i++]);
      }
    }
    w.swap(next);
  }
  out.insert(out.end(), w.begin(), w.end());
}

void GPT2Tokenizer::encode_append(std::string_view utf8, std::vector<uint32_t>& out, Cache& cache) const {
  for (size_t i = 0; i < utf8.size();) {
    const size_t e = piece_end(utf8, i);
    const std::string_view piece = utf8.substr(i, e - i);
    i = e;
    auto it = cache.map.find(piece);
    if (it == cache.map.end()) {
      std::vector<uint32_t> ids;
      bpe(piece, ids);
      it = cache.map.emplace(std::string(piece), std::move(ids)).first;
    }
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
}

std::vector<uint32_t> GPT2Tokenizer::encode(std::string_view utf8) const {
  Cache cache;
  std::vector<uint32_t> out;
  out.reserve(utf8.size() / 3 + 1);
  encode_append(utf8, out, cache);
  return out;
}

std::string GPT2Tokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string s;
  for (uint32_t id : ids) s += token_bytes(id);
  return s;
}

}  // namespace mue
