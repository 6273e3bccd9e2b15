#include "data/tokenize.h"

#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokenizer.h"
#include "data/tokens.h"

namespace mue {

namespace fs = std::filesystem;

bool tokenize_goes_to_val(const std::string& relative_path, double val_fraction) {
  return double(hash_name(relative_path.c_str()) % 10000) < val_fraction * 10000.0;
}

namespace {

constexpr const char* kPatterns[] = {".rst.gz", ".txt.gz", ".rst", ".txt"};

bool wanted(const std::string& name) {
  for (const char* suf : kPatterns) {
    const size_t n = std::strlen(suf);
    if (name.size() > n && name.compare(name.size() - n, n, suf) == 0) return true;
  }
  return false;
}

bool is_skipped_dir(const std::string& rel) {  // html/_sources at any depth
  const std::string s = "html/_sources";
  return rel == s || (rel.size() > s.size() && rel.compare(rel.size() - s.size(), s.size(), s) == 0 &&
                      rel[rel.size() - s.size() - 1] == '/');
}

// Reads a gzip file, or a plain one (zlib passes non-gzip data through unchanged).
std::string read_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  MUE_CHECK(f, "tokenize: cannot open ", path, ": ", std::strerror(errno));
  gzbuffer(f, 1 << 17);
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const int n = gzread(f, buf, sizeof buf);
    if (n < 0) {
      int code = 0;
      const std::string msg = gzerror(f, &code);
      gzclose(f);
      fail("tokenize: cannot decompress ", path, ": ", msg);
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  gzclose(f);
  return out;
}

std::string file_fnv_hex(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  MUE_CHECK(f, "tokenize: cannot open ", path);
  uint64_t h = 1469598103934665603ull;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
    for (size_t i = 0; i < n; ++i) h = (h ^ uint8_t(buf[i])) * 1099511628211ull;
  std::fclose(f);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
  return hex;
}

}  // namespace

TokenizeStats tokenize_tree(const TokenizeOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  MUE_CHECK(!opts.vocab_dir.empty(), "tokenize: vocab_dir (encoder.json + vocab.bpe) is not set");
  MUE_CHECK(!opts.out.empty(), "tokenize: output path is not set");
  MUE_CHECK(opts.val_fraction >= 0 && opts.val_fraction <= 1, "tokenize: val_fraction ", opts.val_fraction,
            " outside [0, 1]");
  std::error_code ec;
  MUE_CHECK(fs::is_directory(opts.root, ec), "tokenize: corpus root ", opts.root, " is not a directory");

  const GPT2Tokenizer tok = GPT2Tokenizer::load(opts.vocab_dir);
  MUE_CHECK(tok.vocab_size() <= 65536, "tokenize: vocabulary of ", tok.vocab_size(),
            " tokens does not fit the uint16 token file (ids must be <= 65535)");

  // Collect documents, sorted by relative path.
  const fs::path root(opts.root);
  std::vector<std::string> rel;
  for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const std::string r = it->path().lexically_relative(root).generic_string();
    if (it->is_directory(ec)) {
      if (is_skipped_dir(r)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file(ec) && wanted(it->path().filename().string())) rel.push_back(r);
  }
  MUE_CHECK(!ec, "tokenize: cannot walk ", opts.root, ": ", ec.message());
  MUE_CHECK(!rel.empty(), "tokenize: no *.rst.gz, *.txt.gz, *.rst or *.txt documents under ", opts.root);
  std::sort(rel.begin(), rel.end());

  // Tokenize, documents spread over threads; results land in their sorted slot.
  const size_t n_docs = rel.size();
  int threads = opts.threads > 0 ? opts.threads : int(std::thread::hardware_concurrency());
  threads = std::max(1, std::min<int>(threads, int(n_docs)));
  std::vector<std::vector<uint16_t>> doc_tokens(n_docs);
  std::atomic<size_t> next{0}, done{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex mu;
  double last_report = 0;  // seconds; progress goes to stderr at most every 5 s
  auto worker = [&] {
    GPT2Tokenizer::Cache cache;
    std::vector<uint32_t> ids;
    try {
      for (size_t i; !failed && (i = next.fetch_add(1)) < n_docs;) {
        const std::string text = read_gz((root / rel[i]).string());
        bytes += text.size();
        ids.clear();
        tok.encode_append(text, ids, cache);
        doc_tokens[i].assign(ids.begin(), ids.end());  // ids < vocab_size <= 65536, checked above
        const size_t d = ++done;
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::lock_guard<std::mutex> lock(mu);
        if (s - last_report >= 5.0) {
          last_report = s;
          std::fprintf(stderr, "tokenize: %zu/%zu documents, %.1f MB, %.1f s\n", d, n_docs, bytes.load() / 1e6, s);
        }
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
      failed = true;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);

  // Assemble the splits in path order; eot after every document.
  TokenizeStats st;
  st.documents = n_docs;
  st.bytes = bytes.load();
  std::vector<uint16_t> train, val;
  const auto eot = uint16_t(tok.eot());
  for (size_t i = 0; i < n_docs; ++i) {
    const bool to_val = tokenize_goes_to_val(rel[i], opts.val_fraction);
    auto& dst = to_val ? val : train;
    dst.insert(dst.end(), doc_tokens[i].begin(), doc_tokens[i].end());
    dst.push_back(eot);
    (to_val ? st.val_documents : st.train_documents)++;
    std::vector<uint16_t>().swap(doc_tokens[i]);
  }
  st.train_tokens = train.size();
  st.val_tokens = val.size();
  MUE_CHECK(!opts.require_both_splits || (!train.empty() && !val.empty()), "tokenize: the ",
            train.empty() ? "training" : "validation", " split is empty (", n_docs, " documents, val_fraction ",
            opts.val_fraction, "); change --val-fraction or add documents");
  if (val.empty() && opts.val_fraction > 0)
    std::fprintf(stderr, "tokenize: warning: no document fell into the validation split\n");

  const std::string enc = opts.vocab_dir + "/encoder.json", bpe = opts.vocab_dir + "/vocab.bpe";
  nlohmann::json sources = {
      {"corpus", opts.corpus_name},
      {"root", fs::absolute(root).lexically_normal().string()},
      {"patterns", {"*.rst.gz", "*.txt.gz", "*.rst", "*.txt"}},
      {"skipped", "html/_sources"},
      {"order", "documents sorted by relative path"},
      {"documents", st.documents},
      {"train_documents", st.train_documents},
      {"val_documents", st.val_documents},
      {"text_bytes", st.bytes},
      {"train_tokens", st.train_tokens},
      {"val_tokens", st.val_tokens},
      {"tokenizer",
       {{"kind", "gpt2-byte-level-bpe"},
        {"encoder_json", enc},
        {"vocab_bpe", bpe},
        {"encoder_json_fnv1a64", file_fnv_hex(enc)},
        {"vocab_bpe_fnv1a64", file_fnv_hex(bpe)},
        {"vocab_size", tok.vocab_size()},
        {"merges", tok.n_merges()},
        {"eot", tok.eot()}}},
      {"document_separator", "eot appended after every document"},
      {"validation",
       {{"rule", "fnv1a64(relative_path) % 10000 < val_fraction * 10000, whole documents"},
        {"val_fraction", opts.val_fraction}}},
  };
  write_token_file(opts.out, train, val, sources.dump(), uint32_t(tok.vocab_size()));
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "tokenize: wrote %s: %llu documents (%llu val), %llu train + %llu val tokens, %.1f s\n",
               opts.out.c_str(), (unsigned long long)st.documents, (unsigned long long)st.val_documents,
               (unsigned long long)st.train_tokens, (unsigned long long)st.val_tokens, st.seconds);
  return st;
}

}  // namespace mue
