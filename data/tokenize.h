// Building a token file (data/tokens.h has the format and its reader): tokenize_tree() runs the GPT-2 tokenizer
// (data/tokenizer.h) over a documentation tree and writes the train and validation splits.
#pragma once
#include <cstdint>
#include <string>

namespace mue {

struct TokenizeOptions {
  std::string root = "/usr/share/doc/linux-doc-6.1/Documentation";
  std::string vocab_dir;  // holds encoder.json and vocab.bpe
  std::string out;        // token file to write
  double val_fraction = 0.02;
  std::string corpus_name = "linux-doc-6.1";
  int threads = 0;  // 0 = hardware concurrency
  bool require_both_splits = false;  // fail (before writing) when the train or the validation split is empty
};

struct TokenizeStats {
  uint64_t documents = 0, train_documents = 0, val_documents = 0;
  uint64_t bytes = 0;  // decompressed text
  uint64_t train_tokens = 0, val_tokens = 0;
  double seconds = 0;  // whole call: read, tokenize, write
};

// Finds every *.rst.gz, *.txt.gz, *.rst and *.txt under root (recursively, skipping html/_sources), sorted by
// relative path; decompresses and tokenizes each document (threads over documents, output order fixed), appends
// eot() after each, and puts a whole document in the validation split iff
//   fnv1a64(relative path) % 10000 < val_fraction * 10000,
// a rule that depends on nothing but the path. Writes opts.out (write_token_file) and returns the counts.
TokenizeStats tokenize_tree(const TokenizeOptions& opts);

// The split rule above, exposed for tests.
bool tokenize_goes_to_val(const std::string& relative_path, double val_fraction);

}  // namespace mue
