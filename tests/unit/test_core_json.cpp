// tests/unit/test_core_json.cpp — the strict JSON reader (core/json.hpp):
// valid documents decode to exactly the expected values (escapes, surrogate
// pairs, integer vs double, extremes); a table of bad inputs, each rejected
// with a specific Errc and a one-line message giving the line, column and
// problem; the limits; parse_file on real, missing and directory paths;
// escape() and number() round trips.
#include "fleetdl/core/json.hpp"
#include "fleetdl/core/rng.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using fleetdl::Errc;
namespace json = fleetdl::json;
namespace fs = std::filesystem;

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

json::Value parse_ok(const std::string& text, const json::Limits& limits = {}) {
  auto r = json::parse(text, limits);
  if (!r) FAIL("parse failed: " << r.error().message << "\ninput: " << text);
  return std::move(r).value();
}

/// A fresh temporary directory, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "fleetdl_json_XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_text(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!text.empty()) REQUIRE(std::fwrite(text.data(), 1, text.size(), f) == text.size());
  std::fclose(f);
}

/// depth nested empty arrays: "[[...]]".
std::string nested(std::size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

struct BadCase {
  const char* what;
  std::string text;
  Errc code;
  std::string where;                  // "line L, column C" the message starts with ("" for none)
  std::vector<std::string> needles;  // substrings the message must contain
  json::Limits limits{};
};

std::vector<BadCase> bad_cases() {
  const Errc syn = Errc::invalid_argument, lim = Errc::limit_exceeded;
  json::Limits small_bytes;
  small_bytes.max_bytes = 10;
  json::Limits few_elements;
  few_elements.max_elements = 4;
  json::Limits short_strings;
  short_strings.max_string = 5;
  json::Limits shallow;
  shallow.max_depth = 2;
  std::vector<BadCase> v;
  // Structure.
  v.push_back({"empty input", "", syn, "line 1, column 1", {"empty input"}});
  v.push_back({"whitespace only", " \n\t ", syn, "line 2, column 3", {"empty input"}});
  v.push_back({"trailing comma in an array", "[1, 2,]", syn, "line 1, column 6", {"trailing comma before ']'"}});
  v.push_back({"trailing comma in an object", "{\n  \"a\": 1,\n}", syn, "line 2, column 9", {"trailing comma before '}'"}});
  v.push_back({"missing comma in an object", "{\n  \"a\": 1,\n  \"b\": {\"c\": 2} \"d\": 3\n}", syn,
               "line 3, column 17", {"expected ',' or '}' after object member, found '\"'"}});
  v.push_back({"missing comma in an array", "[1 2]", syn, "line 1, column 4",
               {"expected ',' or ']' after array element, found '2'"}});
  v.push_back({"unclosed array", "[1,\n 2", syn, "line 2, column 3",
               {"expected ',' or ']' after array element, found end of input", "the array opened at line 1, column 1"}});
  v.push_back({"unclosed object", "{\"a\": 1", syn, "line 1, column 8",
               {"expected ',' or '}' after object member, found end of input", "the object opened at line 1, column 1"}});
  v.push_back({"missing colon", "{\"a\" 1}", syn, "line 1, column 6", {"expected ':' after object key, found '1'"}});
  v.push_back({"unquoted key", "{a: 1}", syn, "line 1, column 2", {"expected a string key, found 'a'", "keys must be quoted"}});
  v.push_back({"leading comma", "[,1]", syn, "line 1, column 2", {"expected a value, found ','"}});
  v.push_back({"missing value", "{\"a\": }", syn, "line 1, column 7", {"expected a value, found '}'"}});
  v.push_back({"line comment", "// cfg\n{}", syn, "line 1, column 1", {"comments are not allowed in JSON"}});
  v.push_back({"block comment", "[1, /* two */ 2]", syn, "line 1, column 5", {"comments are not allowed"}});
  v.push_back({"comment after a value", "[1, 2 // two\n]", syn, "line 1, column 7",
               {"expected ',' or ']' after array element, found '/' (comments are not allowed in JSON)"}});
  v.push_back({"comment at a key", "{\n  // the seed\n  \"seed\": 1\n}", syn, "line 2, column 3",
               {"expected a string key, found '/' (comments are not allowed in JSON)"}});
  v.push_back({"hash comment", "# cfg\n{}", syn, "line 1, column 1", {"comments are not allowed"}});
  v.push_back({"single-quoted string", "['a']", syn, "line 1, column 2", {"strings take double quotes"}});
  v.push_back({"single-quoted key", "{'a': 1}", syn, "line 1, column 2",
               {"expected a string key, found \"'\" (strings take double quotes)"}});
  v.push_back({"trailing garbage", "{} x", syn, "line 1, column 4", {"unexpected 'x' after the JSON value"}});
  v.push_back({"two values", "1 2", syn, "line 1, column 3", {"unexpected '2' after the JSON value"}});
  v.push_back({"garbage after a number", "12abc", syn, "line 1, column 3", {"unexpected 'a' after the JSON value"}});
  v.push_back({"BOM in the middle", "[\xEF\xBB\xBF]", syn, "line 1, column 2", {"expected a value, found character U+FEFF"}});
  v.push_back({"UTF-16 BOM", "\xFF\xFE[]", syn, "line 1, column 1", {"invalid UTF-8 byte 0xFF"}});
  // Literals.
  v.push_back({"NaN", "[NaN]", syn, "line 1, column 2", {"NaN is not valid JSON"}});
  v.push_back({"Infinity", "{\"x\": Infinity}", syn, "line 1, column 7", {"Infinity is not valid JSON"}});
  v.push_back({"-Infinity", "-Infinity", syn, "line 1, column 1", {"-Infinity is not valid JSON"}});
  v.push_back({"True", "True", syn, "line 1, column 1", {"invalid literal 'True'"}});
  v.push_back({"truex", "truex", syn, "line 1, column 1", {"invalid literal 'truex'"}});
  v.push_back({"nul", "[nul]", syn, "line 1, column 2", {"invalid literal 'nul'"}});
  v.push_back({"a very long word is shortened", "[" + std::string(100, 'z') + "]", syn, "line 1, column 2",
               {"invalid literal '" + std::string(32, 'z') + "...'"}});
  // Numbers.
  v.push_back({"leading zero", "[01]", syn, "line 1, column 2", {"leading zeros"}});
  v.push_back({"negative leading zero", "-00.5", syn, "line 1, column 1", {"leading zeros"}});
  v.push_back({"leading plus", "+1", syn, "line 1, column 1", {"numbers cannot start with '+'"}});
  v.push_back({"leading dot", "[.5]", syn, "line 1, column 2", {"digit before '.'"}});
  v.push_back({"trailing dot", "[1.]", syn, "line 1, column 4", {"expected a digit after '.', found ']'"}});
  v.push_back({"bare minus", "-", syn, "line 1, column 2", {"expected a digit after '-', found end of input"}});
  v.push_back({"empty exponent", "1e", syn, "line 1, column 3", {"expected a digit in the exponent"}});
  v.push_back({"exponent sign only", "1e+]", syn, "line 1, column 4", {"expected a digit in the exponent, found ']'"}});
  v.push_back({"hex number", "0x10", syn, "line 1, column 2", {"unexpected 'x' after the JSON value"}});
  v.push_back({"1e400 overflows a double", "{\"lr\": 1e400}", syn, "line 1, column 8",
               {"number 1e400 is out of the range of a double"}});
  v.push_back({"-1e400 overflows a double", "-1e400", syn, "line 1, column 1", {"out of the range of a double"}});
  v.push_back({"a long integer overflows a double", "1" + std::string(400, '0'), syn, "line 1, column 1",
               {"number 1" + std::string(31, '0') + "... is out of the range"}});
  v.push_back({"overflow despite a negative exponent", "1" + std::string(320, '0') + "e-5", syn, "line 1, column 1",
               {"out of the range of a double"}});
  // Strings.
  v.push_back({"unterminated string", "[\"abc", syn, "line 1, column 2", {"unterminated string"}});
  v.push_back({"unterminated string ending in a backslash", "\"ab\\", syn, "line 1, column 1", {"unterminated string"}});
  v.push_back({"newline in a string", "{\"a\": \"x\n\"}", syn, "line 1, column 9", {"unescaped newline in string"}});
  v.push_back({"raw tab in a string", "\"a\tb\"", syn, "line 1, column 3", {"unescaped control character U+0009 in string"}});
  v.push_back({"raw NUL in a string", std::string("\"a\0b\"", 5), syn, "line 1, column 3",
               {"unescaped control character U+0000 in string"}});
  v.push_back({"NUL outside a string", std::string("[\0]", 3), syn, "line 1, column 2",
               {"expected a value, found control character U+0000"}});
  v.push_back({"invalid escape", "\"a\\x\"", syn, "line 1, column 3", {"invalid escape '\\x'"}});
  v.push_back({"escaped single quote", "\"\\'\"", syn, "line 1, column 2", {"invalid escape '\\''"}});
  v.push_back({"short \\u escape", "\"\\u12\"", syn, "line 1, column 2", {"invalid \\u escape (expected 4 hex digits)"}});
  v.push_back({"non-hex \\u escape", "\"\\u12G4\"", syn, "line 1, column 2", {"invalid \\u escape"}});
  v.push_back({"lone high surrogate", "[\"a\\uD83D\"]", syn, "line 1, column 4", {"lone surrogate \\uD83D"}});
  v.push_back({"high surrogate then a letter", "\"\\uD83Dx\"", syn, "line 1, column 2", {"lone surrogate \\uD83D"}});
  v.push_back({"two high surrogates", "\"\\uD83D\\uD83D\"", syn, "line 1, column 2", {"lone surrogate \\uD83D"}});
  v.push_back({"high surrogate then a bad escape", "\"\\uD83D\\u00\"", syn, "line 1, column 8", {"invalid \\u escape"}});
  v.push_back({"lone low surrogate", "\"\\uDE00\"", syn, "line 1, column 2", {"lone surrogate \\uDE00", "low surrogate"}});
  v.push_back({"invalid UTF-8 byte in a string", "{\"name\": \"caf\xFF\"}", syn, "line 1, column 14",
               {"invalid UTF-8 byte 0xFF in string"}});
  v.push_back({"stray continuation byte", "\"\x80\"", syn, "line 1, column 2", {"invalid UTF-8 byte 0x80"}});
  v.push_back({"truncated UTF-8 sequence", "\"\xC3\"", syn, "line 1, column 2", {"invalid UTF-8 sequence 0xC3 0x22"}});
  v.push_back({"UTF-8 cut by the end of input", "\"\xE2\x82", syn, "line 1, column 2",
               {"invalid UTF-8 sequence 0xE2 0x82 then end of input"}});
  v.push_back({"overlong UTF-8 ('/' in 2 bytes)", "\"\xC0\xAF\"", syn, "line 1, column 2", {"invalid UTF-8 byte 0xC0"}});
  v.push_back({"overlong UTF-8 (3 bytes)", "\"\xE0\x80\xAF\"", syn, "line 1, column 2", {"invalid UTF-8 sequence 0xE0 0x80"}});
  v.push_back({"UTF-8 encoded surrogate", "\"\xED\xA0\x80\"", syn, "line 1, column 2", {"invalid UTF-8 sequence 0xED 0xA0"}});
  v.push_back({"UTF-8 above U+10FFFF", "\"\xF4\x90\x80\x80\"", syn, "line 1, column 2", {"invalid UTF-8 sequence 0xF4 0x90"}});
  v.push_back({"columns count characters, not bytes", "[\"\xC3\xA9\xE2\x82\xAC\", ?]", syn, "line 1, column 8",
               {"expected a value, found '?'"}});
  v.push_back({"valid UTF-8 outside a string", "[\xC3\xA9]", syn, "line 1, column 2",
               {"expected a value, found character U+00E9"}});
  // Objects.
  v.push_back({"duplicate key", "{\n  \"rounds\": 10,\n  \"rounds\": 20\n}", syn, "line 3, column 3",
               {"duplicate key \"rounds\""}});
  v.push_back({"duplicate key written two ways", "{\"ab\": 1, \"a\\u0062\": 2}", syn, "line 1, column 11",
               {"duplicate key \"ab\""}});
  v.push_back({"duplicate key with a newline is shown escaped", "{\"a\\nb\": 1, \"a\\nb\": 2}", syn, "line 1, column 13",
               {"duplicate key \"a\\nb\""}});
  v.push_back({"duplicate key in a nested object", "{\"a\": {\"x\": 1, \"y\": 2, \"x\": 3}}", syn, "line 1, column 24",
               {"duplicate key \"x\""}});
  {
    std::string big = "{";
    for (int i = 0; i < 100; ++i) big += "\"k" + std::to_string(i) + "\": " + std::to_string(i) + ", ";
    big += "\"k57\": 0}";
    v.push_back({"duplicate key in a large object (hashed)", big, syn, "", {"duplicate key \"k57\""}});
  }
  // Limits.
  v.push_back({"depth 65 with the default limit", nested(65), lim, "line 1, column 65", {"nesting deeper than 64", "max_depth"}});
  v.push_back({"object depth 65", std::string(64, '[') + "{\"a\": 1}" + std::string(64, ']'), lim, "line 1, column 65",
               {"nesting deeper than 64"}});
  v.push_back({"depth 3 with max_depth 2", "{\"a\": [[1]]}", lim, "line 1, column 8", {"nesting deeper than 2"}, shallow});
  v.push_back({"input over max_bytes", "[1, 2, 3, 4]", lim, "",
               {"input is 12 bytes, above the limit 10", "max_bytes"}, small_bytes});
  v.push_back({"input over max_bytes, even if broken", "{{{{{{{{{{{", lim, "", {"input is 11 bytes, above the limit 10"},
               small_bytes});
  v.push_back({"element count over max_elements", "[1, [2, 3], 4]", lim, "line 1, column 9",
               {"more than 4 values in the document", "max_elements"}, few_elements});
  v.push_back({"object members count as values", "{\"a\": 1, \"b\": 2, \"c\": 3, \"d\": 4}", lim, "line 1, column 31",
               {"more than 4 values"}, few_elements});
  v.push_back({"string over max_string", "[\"abcdef\"]", lim, "line 1, column 2", {"string longer than 5 bytes", "max_string"},
               short_strings});
  v.push_back({"key over max_string", "{\"abcdef\": 1}", lim, "line 1, column 2", {"string longer than 5 bytes"}, short_strings});
  v.push_back({"escapes count decoded bytes", "\"\\u00e9\\u00e9\\u00e9\"", lim, "line 1, column 1",
               {"string longer than 5 bytes"}, short_strings});
  return v;
}

}  // namespace

TEST_CASE("json::parse rejects bad input with a specific one-line error", "[json]") {
  for (const auto& c : bad_cases()) {
    INFO(c.what);
    auto r = json::parse(c.text, c.limits);
    REQUIRE_FALSE(r.ok());
    const std::string& msg = r.error().message;
    INFO(msg);
    CHECK(r.error().code == c.code);
    if (!c.where.empty()) CHECK(msg.rfind(c.where + ": ", 0) == 0);
    for (const auto& needle : c.needles) CHECK(contains(msg, needle));
    CHECK(msg.find('\n') == std::string::npos);
    CHECK(msg.find('\r') == std::string::npos);
  }
}

TEST_CASE("json::parse: the example messages are exact", "[json]") {
  auto r = json::parse("{\n  \"clients\": 10,\n  \"rounds\":5 \"seed\": 1\n}");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::invalid_argument);
  CHECK(r.error().message == "line 3, column 14: expected ',' or '}' after object member, found '\"'");

  auto d = json::parse(nested(65));
  REQUIRE_FALSE(d.ok());
  CHECK(d.error().code == Errc::limit_exceeded);
  CHECK(d.error().message == "line 1, column 65: nesting deeper than 64 (json::Limits::max_depth)");
}

TEST_CASE("json::parse: depth is bounded, deep input never overflows the stack", "[json]") {
  CHECK(json::parse(nested(64)).ok());
  CHECK(json::parse(nested(65)).error().code == Errc::limit_exceeded);
  // Far deeper than any stack could recurse: refused at depth 65.
  const std::string deep(std::size_t{4} << 20, '[');
  auto r = json::parse(deep);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::limit_exceeded);
  CHECK(contains(r.error().message, "line 1, column 65"));
  json::Limits flat;
  flat.max_depth = 0;
  CHECK(json::parse("1", flat).ok());
  CHECK(json::parse("[]", flat).error().code == Errc::limit_exceeded);
}

TEST_CASE("json::parse: input size is checked before anything else", "[json]") {
  json::Limits l;
  l.max_bytes = 4;
  CHECK(json::parse("[12]", l).ok());
  auto r = json::parse("[123]", l);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::limit_exceeded);
  CHECK(r.error().message == "input is 5 bytes, above the limit 4 (json::Limits::max_bytes)");
}

TEST_CASE("json::parse: element and string limits are exact", "[json]") {
  json::Limits l;
  l.max_elements = 5;  // [1, [2, 3]] has 5 values: both arrays and the three numbers
  CHECK(json::parse("[1, [2, 3]]", l).ok());
  l.max_elements = 4;
  CHECK(json::parse("[1, [2, 3]]", l).error().code == Errc::limit_exceeded);
  json::Limits s;
  s.max_string = 5;
  CHECK(json::parse("\"abcde\"", s).ok());
  CHECK(json::parse("\"\\u00e9\\u00e9a\"", s).ok());  // 5 decoded bytes from 13 source bytes
  CHECK(json::parse("\"abcdef\"", s).error().code == Errc::limit_exceeded);
  s.max_string = 0;
  CHECK(json::parse("{\"\": \"\"}", s).ok());
}

TEST_CASE("json::parse: scalars", "[json]") {
  CHECK(parse_ok("null").is_null());
  CHECK(parse_ok(" true ").as_bool());
  CHECK_FALSE(parse_ok("false").as_bool());
  CHECK(parse_ok("\"x\"").as_string() == "x");
  CHECK(parse_ok("\r\n\t 7 \n").as_int() == 7);
  CHECK(parse_ok("null").kind() == json::Kind::null);
  CHECK(std::string(json::kind_name(parse_ok("{}").kind())) == "object");
}

TEST_CASE("json::parse: numbers keep the double and the exact integer", "[json]") {
  const auto n = [](const std::string& t) { return parse_ok(t); };
  {
    auto v = n("42");
    CHECK(v.is_number());
    CHECK(v.is_integer_literal());
    CHECK(v.is_int());
    CHECK(v.as_int() == 42);
    CHECK(v.as_double() == 42.0);
  }
  {
    auto v = n("42.0");
    CHECK_FALSE(v.is_integer_literal());
    CHECK_FALSE(v.is_int());
    CHECK(v.as_double() == 42.0);
  }
  CHECK_FALSE(n("4e1").is_integer_literal());
  CHECK_FALSE(n("4E1").is_int());
  CHECK(n("4E+1").as_double() == 40.0);
  CHECK(n("400e-1").as_double() == 40.0);
  {
    auto v = n("-0");
    CHECK(v.is_int());
    CHECK(v.as_int() == 0);
    CHECK(v.as_double() == 0.0);
    CHECK(std::signbit(v.as_double()));
  }
  CHECK(std::signbit(n("-0.0").as_double()));
  CHECK_FALSE(std::signbit(n("0").as_double()));
  CHECK(n("0.1").as_double() == 0.1);
  CHECK(n("-1.5e-3").as_double() == -1.5e-3);
  CHECK(n("1e308").as_double() == 1e308);
  CHECK(n("1.7976931348623157e308").as_double() == std::numeric_limits<double>::max());
  CHECK(n("-1.7976931348623157e308").as_double() == -std::numeric_limits<double>::max());
  CHECK(n("5e-324").as_double() == std::numeric_limits<double>::denorm_min());
  CHECK(n("2.2250738585072014e-308").as_double() == std::numeric_limits<double>::min());
  // Too small for a double: rounds to zero, keeping the sign.
  CHECK(n("1e-400").as_double() == 0.0);
  CHECK(std::signbit(n("-1e-400").as_double()));
  CHECK(n("0." + std::string(400, '0') + "1").as_double() == 0.0);
  CHECK(n("0e999999999999999999999").as_double() == 0.0);
  CHECK(n("123456789012345678901234567890e-300").as_double() == 123456789012345678901234567890e-300);
  // Integers beyond 2^53: exact as int64, rounded as double.
  {
    auto v = n("9007199254740993");  // 2^53 + 1
    CHECK(v.as_int() == 9007199254740993LL);
    CHECK(v.as_double() == 9007199254740992.0);
  }
  CHECK(n("9223372036854775807").as_int() == std::numeric_limits<std::int64_t>::max());
  CHECK(n("-9223372036854775808").as_int() == std::numeric_limits<std::int64_t>::min());
  {
    auto v = n("9223372036854775808");  // 2^63: an integer literal, but not an int64
    CHECK(v.is_integer_literal());
    CHECK_FALSE(v.is_int());
    CHECK(v.as_double() == 9223372036854775808.0);
  }
  {
    auto v = n("-9223372036854775809");
    CHECK(v.is_integer_literal());
    CHECK_FALSE(v.is_int());
  }
  {
    auto v = n("1" + std::string(300, '0'));
    CHECK(v.is_integer_literal());
    CHECK_FALSE(v.is_int());
    CHECK(v.as_double() == 1e300);
  }
}

TEST_CASE("json::parse: strings, escapes and surrogate pairs decode to exact UTF-8", "[json]") {
  const auto s = [](const std::string& t) { return parse_ok(t).as_string(); };
  CHECK(s(R"("")") == "");
  CHECK(s(R"("\"\\\/\b\f\n\r\t")") == "\"\\/\b\f\n\r\t");
  CHECK(s(R"("a\u0000b")") == std::string("a\0b", 3));
  CHECK(s(R"("\u0041\u00e9\u00E9")") == "A\xC3\xA9\xC3\xA9");
  CHECK(s(R"("\u20AC")") == "\xE2\x82\xAC");                  // euro sign, 3 bytes
  CHECK(s(R"("\uFFFF")") == "\xEF\xBF\xBF");
  CHECK(s(R"("\uD83D\uDE00")") == "\xF0\x9F\x98\x80");         // U+1F600
  CHECK(s(R"("\ud834\udd1e")") == "\xF0\x9D\x84\x9E");         // U+1D11E, lower-case hex
  CHECK(s(R"("\uD800\uDC00")") == "\xF0\x90\x80\x80");         // U+10000
  CHECK(s(R"("\uDBFF\uDFFF")") == "\xF4\x8F\xBF\xBF");         // U+10FFFF
  CHECK(s(R"("x\uD83D\uDE00y\u00e9")") == "x\xF0\x9F\x98\x80y\xC3\xA9");
  // Raw UTF-8 passes through: 2, 3 and 4 bytes, and the extremes.
  CHECK(s("\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\"") == "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  CHECK(s("\"\xC2\x80\xEF\xBF\xBF\xF4\x8F\xBF\xBF\xED\x9F\xBF\xEE\x80\x80\"") ==
        "\xC2\x80\xEF\xBF\xBF\xF4\x8F\xBF\xBF\xED\x9F\xBF\xEE\x80\x80");
  CHECK(s("\"\x7F\"") == "\x7F");  // DEL is not a control character in JSON
  const std::string long_text(100000, 'q');
  CHECK(s("\"" + long_text + "\"") == long_text);
}

TEST_CASE("json::parse: nested documents keep order and values", "[json]") {
  const std::string text = R"({
  "name": "fedavg-mnist",
  "rounds": 100,
  "lr": 0.01,
  "clients": [
    {"id": 0, "weight": 0.5, "tags": ["edge", "arm"]},
    {"id": 1, "weight": 1.5e0, "tags": []}
  ],
  "dp": {"enabled": false, "noise": null, "clip": 1},
  "empty": {},
  "zeta": "last",
  "alpha": "not sorted"
})";
  const auto v = parse_ok(text);
  REQUIRE(v.is_object());
  const auto& m = v.members();
  REQUIRE(m.size() == 8);
  const char* const order[] = {"name", "rounds", "lr", "clients", "dp", "empty", "zeta", "alpha"};
  for (std::size_t i = 0; i < m.size(); ++i) CHECK(m[i].first == order[i]);
  CHECK(v.find("name")->as_string() == "fedavg-mnist");
  CHECK(v.find("rounds")->as_int() == 100);
  CHECK(v.find("lr")->as_double() == 0.01);
  CHECK(v.find("missing") == nullptr);
  const auto& clients = v.find("clients")->items();
  REQUIRE(clients.size() == 2);
  CHECK(clients[0].find("id")->as_int() == 0);
  CHECK(clients[0].find("weight")->as_double() == 0.5);
  REQUIRE(clients[0].find("tags")->items().size() == 2);
  CHECK(clients[0].find("tags")->items()[1].as_string() == "arm");
  CHECK(clients[1].find("weight")->as_double() == 1.5);
  CHECK_FALSE(clients[1].find("weight")->is_integer_literal());
  CHECK(clients[1].find("tags")->items().empty());
  const auto* dp = v.find("dp");
  REQUIRE(dp != nullptr);
  CHECK_FALSE(dp->find("enabled")->as_bool());
  CHECK(dp->find("noise")->is_null());
  CHECK(dp->find("clip")->as_int() == 1);
  CHECK(v.find("empty")->members().empty());
  // find() on a non-object is a miss, not an abort.
  CHECK(v.find("rounds")->find("x") == nullptr);
  CHECK(clients[0].find("tags")->find("edge") == nullptr);
  // Arrays of every kind, and a copy is deep.
  const auto a = parse_ok(R"([null, true, 1, 1.5, "s", [], {}, [[[]]]])");
  REQUIRE(a.items().size() == 8);
  const json::Kind kinds[] = {json::Kind::null,   json::Kind::boolean, json::Kind::number, json::Kind::number,
                              json::Kind::string, json::Kind::array,   json::Kind::object, json::Kind::array};
  for (std::size_t i = 0; i < 8; ++i) CHECK(a.items()[i].kind() == kinds[i]);
  const json::Value copy = v;
  CHECK(copy.find("clients")->items()[0].find("tags")->items()[0].as_string() == "edge");
}

TEST_CASE("json::parse: a large object is checked for duplicates through a hash set", "[json]") {
  std::string text = "{";
  const int n = 50000;
  for (int i = 0; i < n; ++i) text += (i ? ",\"" : "\"") + std::to_string(i) + "\":" + std::to_string(i);
  text += "}";
  const auto v = parse_ok(text);
  REQUIRE(v.members().size() == static_cast<std::size_t>(n));
  CHECK(v.members()[12345].first == "12345");
  CHECK(v.members()[12345].second.as_int() == 12345);
  // A repeat of the last key and of the first one.
  for (const std::string key : {"49999", "0"}) {
    std::string dup = text;
    dup.back() = ',';
    dup += "\"" + key + "\":0}";
    auto r = json::parse(dup);
    REQUIRE_FALSE(r.ok());
    CHECK(contains(r.error().message, "duplicate key \"" + key + "\""));
  }
}

TEST_CASE("json::parse: BOM and whitespace", "[json]") {
  CHECK(parse_ok("\xEF\xBB\xBF{\"a\": 1}").find("a")->as_int() == 1);
  // Positions are counted after the BOM.
  auto r = json::parse("\xEF\xBB\xBF[1,]");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.rfind("line 1, column 3: trailing comma", 0) == 0);
  // A second BOM is not whitespace.
  CHECK_FALSE(json::parse("\xEF\xBB\xBF\xEF\xBB\xBF[]").ok());
  CHECK_FALSE(json::parse("\xEF\xBB").ok());
  // Only space, tab, LF and CR are whitespace.
  CHECK_FALSE(json::parse("[1,\f2]").ok());
  CHECK_FALSE(json::parse("[1,\v2]").ok());
  CHECK_FALSE(json::parse("\xC2\xA0[]").ok());  // no-break space
  CHECK(parse_ok("\r\n[\r\n1\r\n]\r\n").items().size() == 1);
  // CRLF line endings: lines still count by LF.
  auto c = json::parse("{\r\n  \"a\": 1,\r\n}");
  REQUIRE_FALSE(c.ok());
  CHECK(c.error().message.rfind("line 2, column 9: trailing comma before '}'", 0) == 0);
}

TEST_CASE("json::parse: random damage to a document never crashes", "[json]") {
  const std::string good = R"({"a": [1, -2.5e3, "x\u00e9\uD83D\uDE00", true, null], "b": {"c": "d\n"}})";
  REQUIRE(json::parse(good).ok());
  fleetdl::Rng rng(7);
  for (int trial = 0; trial < 5000; ++trial) {
    std::string t = good;
    const int edits = 1 + static_cast<int>(rng.below(3));
    for (int e = 0; e < edits; ++e) {
      const std::size_t pos = rng.below(t.size());
      switch (rng.below(3)) {
        case 0: t[pos] = static_cast<char>(rng.below(256)); break;
        case 1: t.erase(pos, 1); break;
        default: t.insert(pos, 1, static_cast<char>(rng.below(256))); break;
      }
    }
    auto r = json::parse(t);
    if (!r.ok()) {
      const auto& msg = r.error().message;
      CHECK(r.error().code == Errc::invalid_argument);
      CHECK(msg.rfind("line ", 0) == 0);
      CHECK(msg.find('\n') == std::string::npos);
    }
  }
  // Every prefix is either valid or a clean error.
  for (std::size_t n = 0; n < good.size(); ++n) {
    auto r = json::parse(good.substr(0, n));
    CHECK_FALSE(r.ok());
  }
}

TEST_CASE("json::parse_file: paths in messages, missing files, directories, limits", "[json]") {
  TempDir dir;
  const std::string good = dir.file("cfg.json");
  write_text(good, "{\n  \"rounds\": 3\n}\n");
  auto r = json::parse_file(good);
  REQUIRE(r.ok());
  CHECK(r->find("rounds")->as_int() == 3);

  const std::string bad = dir.file("bad.json");
  write_text(bad, "{\n  \"rounds\": 3,\n}\n");
  auto b = json::parse_file(bad);
  REQUIRE_FALSE(b.ok());
  CHECK(b.error().code == Errc::invalid_argument);
  CHECK(b.error().message == bad + ": line 2, column 14: trailing comma before '}'");

  auto m = json::parse_file(dir.file("missing.json"));
  REQUIRE_FALSE(m.ok());
  CHECK(m.error().code == Errc::not_found);
  CHECK(m.error().message.rfind(dir.file("missing.json") + ": cannot open", 0) == 0);

  auto d = json::parse_file(dir.path.string());
  REQUIRE_FALSE(d.ok());
  CHECK(d.error().code == Errc::io_error);
  CHECK(d.error().message == dir.path.string() + ": is a directory");

  json::Limits small;
  small.max_bytes = 8;
  auto big = json::parse_file(good, small);
  REQUIRE_FALSE(big.ok());
  CHECK(big.error().code == Errc::limit_exceeded);
  CHECK(big.error().message.rfind(good + ": file is 18 bytes, above the limit 8", 0) == 0);

  const std::string deep = dir.file("deep.json");
  write_text(deep, nested(100));
  auto dp = json::parse_file(deep);
  REQUIRE_FALSE(dp.ok());
  CHECK(dp.error().code == Errc::limit_exceeded);
  CHECK(dp.error().message == deep + ": line 1, column 65: nesting deeper than 64 (json::Limits::max_depth)");

  const std::string empty = dir.file("empty.json");
  write_text(empty, "");
  auto e = json::parse_file(empty);
  REQUIRE_FALSE(e.ok());
  CHECK(e.error().message == empty + ": line 1, column 1: empty input (expected a JSON value)");
}

TEST_CASE("json::escape", "[json]") {
  CHECK(json::escape("") == "");
  CHECK(json::escape("plain text / 123") == "plain text / 123");
  CHECK(json::escape("a\"b\\c") == "a\\\"b\\\\c");
  CHECK(json::escape("\b\f\n\r\t") == "\\b\\f\\n\\r\\t");
  CHECK(json::escape(std::string("\0\x01\x1f", 3)) == "\\u0000\\u0001\\u001f");
  CHECK(json::escape("\x7F") == "\x7F");
  CHECK(json::escape("caf\xC3\xA9 \xF0\x9F\x98\x80") == "caf\xC3\xA9 \xF0\x9F\x98\x80");
  // Bytes that are not UTF-8 become U+FFFD, one per byte, so the output is always valid JSON.
  CHECK(json::escape("a\xFF" "b") == "a\\ufffdb");
  CHECK(json::escape("\xC3") == "\\ufffd");
  CHECK(json::escape("\xED\xA0\x80") == "\\ufffd\\ufffd\\ufffd");
  // Round trip: every byte value, through parse.
  std::string all;
  for (int c = 0; c < 128; ++c) all += static_cast<char>(c);
  all += "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";
  CHECK(parse_ok("\"" + json::escape(all) + "\"").as_string() == all);
  // As a key, too.
  CHECK(parse_ok("{\"" + json::escape("k\n\"") + "\": 1}").find("k\n\"")->as_int() == 1);
}

TEST_CASE("json::number: shortest text that round-trips", "[json]") {
  CHECK(json::number(0.0) == "0");
  CHECK(json::number(-0.0) == "-0");
  CHECK(json::number(1.0) == "1");
  CHECK(json::number(0.1) == "0.1");
  CHECK(json::number(-2.5) == "-2.5");
  CHECK(json::number(1e21) == "1e+21");
  CHECK(json::number(123456789.0) == "123456789");
  CHECK(json::number(std::nan("")) == "null");
  CHECK(json::number(std::numeric_limits<double>::infinity()) == "null");
  CHECK(json::number(-std::numeric_limits<double>::infinity()) == "null");
  const double samples[] = {0.1,
                            1.0 / 3.0,
                            -2.0 / 7.0,
                            1e308,
                            std::numeric_limits<double>::max(),
                            std::numeric_limits<double>::lowest(),
                            std::numeric_limits<double>::min(),
                            std::numeric_limits<double>::denorm_min(),
                            9007199254740993.0,
                            1e-7,
                            6.02214076e23,
                            -0.0};
  for (const double x : samples) {
    INFO(json::number(x));
    const auto v = parse_ok(json::number(x));
    CHECK(v.as_double() == x);
    CHECK(std::signbit(v.as_double()) == std::signbit(x));
  }
  fleetdl::Rng rng(11);
  for (int i = 0; i < 2000; ++i) {
    std::uint64_t bits = (rng.below(1U << 31) << 33) ^ (rng.below(1U << 31) << 2) ^ rng.below(4);
    double x = 0;
    std::memcpy(&x, &bits, sizeof x);
    if (!std::isfinite(x)) continue;
    const std::string t = json::number(x);
    INFO(t);
    CHECK(parse_ok(t).as_double() == x);
    CHECK(t.size() <= 24);
  }
}

TEST_CASE("json::Value builders", "[json]") {
  using V = json::Value;
  CHECK(V().is_null());
  CHECK(V::make_bool(true).as_bool());
  CHECK(V::make_number(2.5).as_double() == 2.5);
  CHECK_FALSE(V::make_number(2.0).is_integer_literal());
  CHECK(V::make_int(-7).as_int() == -7);
  CHECK(V::make_int(-7).as_double() == -7.0);
  CHECK(V::make_string("s").as_string() == "s");
  const V arr = V::make_array({V::make_int(1), V::make_string("two")});
  CHECK(arr.items().size() == 2);
  const V obj = V::make_object({{"a", V::make_int(1)}, {"b", arr}});
  CHECK(obj.find("b")->items()[1].as_string() == "two");
}
