#include "core/config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace mue {

std::string json_error_text(const std::exception& e) {
  std::string t = e.what();  // "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error ..."
  if (t.rfind("[json.exception.", 0) == 0 && t.find("] ") != std::string::npos) t = t.substr(t.find("] ") + 2);
  return t;
}

json parse_json_text(const std::string& text, const std::string& what) {
  // Object keys seen so far, one set per open object; a repeated key is remembered and reported after the
  // parse (nlohmann keeps the last value silently, which would drop the first object without a word).
  std::vector<std::vector<std::string>> open;
  std::string duplicate;
  auto note = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) open.emplace_back();
    else if (ev == json::parse_event_t::object_end && !open.empty()) open.pop_back();
    else if (ev == json::parse_event_t::key && !open.empty()) {
      const std::string k = parsed.get<std::string>();
      auto& keys = open.back();
      if (duplicate.empty() && std::find(keys.begin(), keys.end(), k) != keys.end()) duplicate = k;
      keys.push_back(k);
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text, note);
  } catch (const json::parse_error& e) {
    fail("malformed JSON in ", what, " at byte ", e.byte, ": ", json_error_text(e));
  } catch (const json::exception& e) {  // e.g. a number beyond double's range
    fail("unreadable JSON in ", what, ": ", json_error_text(e));
  }
  MUE_CHECK(duplicate.empty(), "duplicate key '", duplicate, "' in ", what, " (each key may appear once per object)");
  return j;
}

json load_json_file(const std::string& path) {
  std::error_code ec;
  MUE_CHECK(!std::filesystem::is_directory(path, ec), "config '", path, "' is a directory, not a JSON file");
  std::ifstream in(path);
  MUE_CHECK(in, "cannot open config file '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_json_text(ss.str(), "'" + path + "'");
}

namespace {
const char* type_word(const json& v) {
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "a list";
  if (v.is_object()) return "an object";
  return "null";
}
// Only keys whose default is null (optional values) take null; any other key keeps its default's type.
bool compatible(const json& base, const json& v) {
  if (base.is_null()) return true;
  if (base.is_number()) return v.is_number();
  if (base.is_boolean()) return v.is_boolean();
  if (base.is_string()) return v.is_string();
  if (base.is_array()) return v.is_array();
  if (base.is_object()) return v.is_object();
  return false;
}
}  // namespace

void merge_checked(json& base, const json& user, const std::string& where) {
  MUE_CHECK(user.is_object(), "config ", where.empty() ? "root" : "'" + where + "'", " must be a JSON object");
  for (auto it = user.begin(); it != user.end(); ++it) {
    const std::string key = where.empty() ? it.key() : where + "." + it.key();
    if (!base.contains(it.key())) {
      MUE_CHECK(base.contains("*"), "unknown config key '", key, "'");
      base[it.key()] = it.value();
      continue;
    }
    json& b = base[it.key()];
    MUE_CHECK(compatible(b, it.value()), "config key '", key, "' must be ", type_word(b), ", got ",
              type_word(it.value()));
    if (b.is_object() && it.value().is_object() && !b.empty()) merge_checked(b, it.value(), key);
    else b = it.value();
  }
}

void apply_override(json& cfg, const std::string& assignment) {
  auto eq = assignment.find('=');
  MUE_CHECK(eq != std::string::npos && eq > 0, "override '", assignment, "' is not of the form key=value");
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value;
  try {
    value = json::parse(text);
  } catch (const json::parse_error&) {
    value = text;
  } catch (const json::exception& e) {  // e.g. 1e999
    fail("override '", assignment, "': ", json_error_text(e));
  }
  if (value.is_structured()) value = parse_json_text(text, "override '" + assignment + "'");  // repeated keys
  // Build {"a": {"b": value}} and merge it, so overrides get the same checks as files.
  json patch = value;
  std::string rest = key;
  std::vector<std::string> parts;
  for (size_t p; (p = rest.find('.')) != std::string::npos; rest = rest.substr(p + 1)) parts.push_back(rest.substr(0, p));
  parts.push_back(rest);
  // A key whose default is a string takes the text as it is (name=123, ffn.score=1e3 stay strings).
  const json* base = &cfg;
  for (const auto& part : parts) base = base && base->is_object() && base->contains(part) ? &(*base)[part] : nullptr;
  if (base && base->is_string() && !value.is_string()) patch = text;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    MUE_CHECK(!it->empty(), "override key '", key, "' has an empty part");
    patch = json{{*it, patch}};
  }
  merge_checked(cfg, patch);
}

void apply_overrides(json& cfg, const std::vector<std::string>& assignments) {
  for (const auto& a : assignments) apply_override(cfg, a);
}

}  // namespace mue
