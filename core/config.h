// JSON configs with checked merging: a user file or `key=value` override may only name keys the defaults have,
// with a value of a compatible type. Every mistake is one line naming the key.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mue {

using json = nlohmann::json;

// Parses JSON text; malformed text, and a key repeated within one object, are one-line errors naming `what`.
json parse_json_text(const std::string& text, const std::string& what);
json load_json_file(const std::string& path);
// The text of a JSON library exception without its "[json.exception.…]" prefix.
std::string json_error_text(const std::exception& e);
// Recursively merge `user` into `base`; unknown keys and type mismatches throw ("unknown config key 'a.b'").
// A null in `base` accepts any value; an object in `base` whose key "*" exists accepts any key.
void merge_checked(json& base, const json& user, const std::string& where = "");
// Apply "a.b.c=value": value parsed as JSON when it parses (a repeated key inside it is an error), else taken as
// a string. Of two overrides of one key, the later wins.
void apply_override(json& cfg, const std::string& assignment);
void apply_overrides(json& cfg, const std::vector<std::string>& assignments);

}  // namespace mue
