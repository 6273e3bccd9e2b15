// JSON configs with checked merging: a user file or `key=value` override may only name keys the defaults have,
// with a value of a compatible type. Every mistake is one line naming the key.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mue {

using json = nlohmann::json;

json load_json_file(const std::string& path);
// Recursively merge `user` into `base`; unknown keys and type mismatches throw ("unknown config key 'a.b'").
// A null in `base` accepts any value; an object in `base` whose key "*" exists accepts any key.
void merge_checked(json& base, const json& user, const std::string& where = "");
// Apply "a.b.c=value": value parsed as JSON when it parses, else taken as a string.
void apply_override(json& cfg, const std::string& assignment);
void apply_overrides(json& cfg, const std::vector<std::string>& assignments);

}  // namespace mue
