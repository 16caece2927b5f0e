// fleetdl/core/json.hpp — a strict, bounded JSON reader for untrusted
// configuration files (simulator configs, manifests), and the two helpers a
// JSON writer needs: escape() and number().
//
// Strict means RFC 8259 and nothing else: no comments, no trailing commas, no
// single quotes, no NaN or Infinity, no leading '+' or leading zeros, no raw
// control characters in strings, no invalid UTF-8 anywhere, no duplicate
// object keys, no second value after the first. The one tolerance: a UTF-8
// byte order mark at the very start is skipped (RFC 8259 §8.1 lets a parser
// ignore it; Windows editors write it). A BOM anywhere else is an error.
//
// Bounded means every resource is capped by json::Limits and checked before
// it is spent: the input size first, then the nesting depth (which also caps
// the recursion, so no input can overflow the stack), the decoded length of
// each string and the number of values in the whole document. Decoded
// strings are never longer than their source text, so memory stays within
// about max_bytes + max_elements * 300 bytes. Keep max_depth modest: each
// level costs a few hundred bytes of stack when parsing, copying and
// destroying a Value.
//
// Errors are values, never exceptions (the reader works with
// -fno-exceptions): Errc::invalid_argument for malformed text, with a
// one-line message "line L, column C: <what>", or Errc::limit_exceeded
// naming the limit and its value. Lines count '\n'; columns count characters
// (UTF-8 code points, a tab is one), both from 1, after any BOM. Strings in
// messages are escaped and shortened, so a message is always one line.
//
// Numbers keep the double the literal rounds to and, for literals without
// '.', 'e' or 'E', whether it fits an int64 and its exact value (integers
// beyond 2^53 lose precision as doubles, not as int64). A literal too large
// for a double (1e400) is an error; one too small (1e-400) becomes 0 with
// its sign, like any other rounding.
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/file.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_set>
#include <utility>
#include <vector>

namespace fleetdl::json {

/// Caps on what parse() accepts, each checked before the memory is spent.
struct Limits {
  std::size_t max_bytes = std::size_t{1} << 24;     ///< input size (checked first)
  int max_depth = 64;                               ///< nested arrays/objects; also the recursion bound
  std::size_t max_string = std::size_t{1} << 20;    ///< decoded bytes of one string or key
  std::size_t max_elements = std::size_t{1} << 20;  ///< values in the whole document, all depths
};

enum class Kind : std::uint8_t { null, boolean, number, string, array, object };

inline const char* kind_name(Kind k) {
  switch (k) {
    case Kind::null: return "null";
    case Kind::boolean: return "boolean";
    case Kind::number: return "number";
    case Kind::string: return "string";
    case Kind::array: return "array";
    case Kind::object: return "object";
  }
  return "unknown";
}

namespace detail {
class Parser;
}

/// One JSON value. Objects keep their members in document order. Accessing a
/// value as the wrong kind is a programmer error (FLEETDL_ASSERT); check
/// kind() or is_*() first when the input is untrusted.
class Value {
 public:
  using Array = std::vector<Value>;
  using Member = std::pair<std::string, Value>;
  using Object = std::vector<Member>;

  Value() = default;  ///< null

  // Builders for values made in code (defaults, tests). make_object does not
  // check for duplicate keys: parse() does, for untrusted text.
  static Value make_bool(bool b) {
    Value v(Kind::boolean);
    v.bool_ = b;
    return v;
  }
  static Value make_number(double d) {
    Value v(Kind::number);
    v.num_ = d;
    return v;
  }
  static Value make_int(std::int64_t i) {
    Value v(Kind::number);
    v.num_ = static_cast<double>(i);
    v.int_ = i;
    v.integer_ = v.int_ok_ = true;
    return v;
  }
  static Value make_string(std::string s) {
    Value v(Kind::string);
    v.str_ = std::move(s);
    return v;
  }
  static Value make_array(Array items) {
    Value v(Kind::array);
    v.items_ = std::move(items);
    return v;
  }
  static Value make_object(Object members) {
    Value v(Kind::object);
    v.members_ = std::move(members);
    return v;
  }

  Kind kind() const noexcept { return kind_; }
  bool is_null() const noexcept { return kind_ == Kind::null; }
  bool is_bool() const noexcept { return kind_ == Kind::boolean; }
  bool is_number() const noexcept { return kind_ == Kind::number; }
  bool is_string() const noexcept { return kind_ == Kind::string; }
  bool is_array() const noexcept { return kind_ == Kind::array; }
  bool is_object() const noexcept { return kind_ == Kind::object; }
  /// A number written without '.', 'e' or 'E' (it may still exceed int64).
  bool is_integer_literal() const noexcept { return kind_ == Kind::number && integer_; }
  /// An integer literal within int64: as_int() is valid.
  bool is_int() const noexcept { return kind_ == Kind::number && int_ok_; }

  bool as_bool() const {
    FLEETDL_ASSERT(is_bool(), "json::Value::as_bool() on a non-boolean");
    return bool_;
  }
  /// The nearest double (for every number, integer literals included).
  double as_double() const {
    FLEETDL_ASSERT(is_number(), "json::Value::as_double() on a non-number");
    return num_;
  }
  /// The exact value of an integer literal; requires is_int().
  std::int64_t as_int() const {
    FLEETDL_ASSERT(is_int(), "json::Value::as_int() on a value that is not an int64 integer literal");
    return int_;
  }
  const std::string& as_string() const {
    FLEETDL_ASSERT(is_string(), "json::Value::as_string() on a non-string");
    return str_;
  }
  const Array& items() const {
    FLEETDL_ASSERT(is_array(), "json::Value::items() on a non-array");
    return items_;
  }
  const Object& members() const {
    FLEETDL_ASSERT(is_object(), "json::Value::members() on a non-object");
    return members_;
  }
  /// The member named key, or nullptr when absent or when this is not an
  /// object (so a lookup on untrusted input never aborts). Linear scan.
  const Value* find(std::string_view key) const {
    if (kind_ != Kind::object) return nullptr;
    for (const auto& m : members_)
      if (m.first == key) return &m.second;
    return nullptr;
  }

 private:
  friend class detail::Parser;
  explicit Value(Kind k) : kind_(k) {}

  Kind kind_ = Kind::null;
  bool bool_ = false;
  bool integer_ = false;  // number literal without '.', 'e', 'E'
  bool int_ok_ = false;   // integer_ and int_ holds its exact value
  double num_ = 0.0;
  std::int64_t int_ = 0;
  std::string str_;
  Array items_;
  Object members_;
};

namespace detail {

inline bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
inline bool is_word_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_';
}

inline int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

inline std::string hex_byte(unsigned char c) {
  static const char* const digits = "0123456789ABCDEF";
  return std::string("0x") + digits[c >> 4] + digits[c & 15];
}

inline std::string code_point_name(std::uint32_t cp) {
  static const char* const digits = "0123456789ABCDEF";
  std::string s = "U+";
  const int width = cp > 0xFFFF ? (cp > 0xFFFFF ? 6 : 5) : 4;
  for (int k = width - 1; k >= 0; --k) s += digits[(cp >> (4 * k)) & 15];
  return s;
}

/// Length (1..4) of the well-formed UTF-8 sequence at s[i], or 0. Rejects
/// overlong forms, encoded surrogates and code points above U+10FFFF. On 0,
/// *bad is the first offending byte (s.size() when the input ends early).
inline std::size_t utf8_sequence(std::string_view s, std::size_t i, std::size_t* bad) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    *bad = i;
    return 0;
  }
  for (std::size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) {
      *bad = s.size();
      return 0;
    }
    const auto d = static_cast<unsigned char>(s[i + k]);
    if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) {
      *bad = i + k;
      return 0;
    }
  }
  return n;
}

/// The code point of a sequence utf8_sequence() accepted with length n.
inline std::uint32_t utf8_decode(std::string_view s, std::size_t i, std::size_t n) {
  const auto b = [&](std::size_t k) { return static_cast<std::uint32_t>(static_cast<unsigned char>(s[i + k])); };
  if (n == 1) return b(0);
  if (n == 2) return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
  if (n == 3) return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

inline void utf8_append(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace detail

/// The body of a JSON string literal for s (no surrounding quotes): '"' and
/// '\' escaped, \b \f \n \r \t in their short forms, other control
/// characters as \u00XX. Valid UTF-8 is copied as is; each byte that is not
/// part of valid UTF-8 becomes \ufffd, so the result is always valid JSON.
inline std::string escape(std::string_view s) {
  static const char* const digits = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 2);
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      std::size_t bad = 0;
      const std::size_t n = detail::utf8_sequence(s, i, &bad);
      if (n == 0) {
        out += "\\ufffd";
        ++i;
      } else {
        out.append(s.data() + i, n);
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += digits[c >> 4];
          out += digits[c & 15];
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  return out;
}

/// The shortest decimal text that reads back as exactly v (std::to_chars),
/// e.g. "0.1", "-0", "1e+21"; "null" for NaN and infinities, which JSON
/// cannot represent.
inline std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

namespace detail {

/// Recursive descent over the text. Each step returns false after storing
/// the error in err_; the recursion depth is bounded by Limits::max_depth.
class Parser {
 public:
  Parser(std::string_view text, const Limits& limits) : s_(text), lim_(limits) {}

  Result<Value> run() {
    if (s_.size() > lim_.max_bytes)
      return make_error(Errc::limit_exceeded, "input is " + std::to_string(s_.size()) + " bytes, above the limit " +
                                                  std::to_string(lim_.max_bytes) + " (json::Limits::max_bytes)");
    if (s_.substr(0, 3) == "\xEF\xBB\xBF") p_ = begin_ = 3;
    skip_ws();
    if (at_end()) {
      syntax(p_, "empty input (expected a JSON value)");
      return std::move(err_);
    }
    Value v;
    if (!value(v, 0)) return std::move(err_);
    skip_ws();
    if (!at_end()) {
      syntax(p_, "unexpected " + found() + " after the JSON value (trailing data)");
      return std::move(err_);
    }
    return v;
  }

 private:
  // Duplicate keys: a linear scan for small objects; from kHashFrom members
  // on, a hash set of member indices (indices survive the vector growing,
  // pointers into it would not). Keeps a huge object O(n), not O(n^2).
  static constexpr std::size_t kHashFrom = 16;
  struct KeyHash {
    const Value::Object* members;
    std::size_t operator()(std::size_t i) const { return std::hash<std::string>{}((*members)[i].first); }
  };
  struct KeyEq {
    const Value::Object* members;
    bool operator()(std::size_t a, std::size_t b) const { return (*members)[a].first == (*members)[b].first; }
  };
  using KeySet = std::unordered_set<std::size_t, KeyHash, KeyEq>;

  std::string_view s_;
  const Limits& lim_;
  std::size_t p_ = 0;
  std::size_t begin_ = 0;  // after the BOM, where line 1 column 1 is
  std::size_t elements_ = 0;
  Error err_;

  bool at_end() const { return p_ >= s_.size(); }
  unsigned char peek() const { return static_cast<unsigned char>(s_[p_]); }
  unsigned char byte(std::size_t i) const { return static_cast<unsigned char>(s_[i]); }

  void skip_ws() {
    while (!at_end()) {
      const unsigned char c = peek();
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
      ++p_;
    }
  }

  /// "line L, column C" of byte offset at.
  std::string where(std::size_t at) const {
    std::size_t line = 1, col = 1;
    for (std::size_t i = begin_; i < at && i < s_.size(); ++i) {
      const unsigned char c = byte(i);
      if (c == '\n') {
        ++line;
        col = 1;
      } else if ((c & 0xC0) != 0x80) {  // not a UTF-8 continuation byte
        ++col;
      }
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(col);
  }

  bool fail(std::size_t at, Errc code, const std::string& what) {
    err_ = make_error(code, where(at) + ": " + what);
    return false;
  }
  bool syntax(std::size_t at, const std::string& what) { return fail(at, Errc::invalid_argument, what); }

  /// What sits at offset i, for a message: 'x', "'", U+00E9, invalid UTF-8
  /// byte 0xFF, control character U+0000, end of input.
  std::string describe(std::size_t i) const {
    if (i >= s_.size()) return "end of input";
    const unsigned char c = byte(i);
    if (c == '\'') return "\"'\"";
    if (c > 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
    if (c < 0x80) return "control character " + code_point_name(c);
    std::size_t bad = 0;
    const std::size_t n = utf8_sequence(s_, i, &bad);
    if (n == 0) return "invalid UTF-8 byte " + hex_byte(c);
    return "character " + code_point_name(utf8_decode(s_, i, n));
  }
  std::string found() const { return describe(p_); }
  /// found(), plus why when the byte suggests a JSON dialect.
  std::string found_why() const {
    std::string f = found();
    if (at_end()) return f;
    if (peek() == '/' || peek() == '#') f += " (comments are not allowed in JSON)";
    if (peek() == '\'') f += " (strings take double quotes)";
    return f;
  }

  /// The run of letters, digits and '_' at i, shortened for a message.
  std::string word_at(std::size_t i) const {
    std::size_t e = i;
    while (e < s_.size() && is_word_char(byte(e))) ++e;
    if (e - i > 32) return std::string(s_.substr(i, 32)) + "...";
    return std::string(s_.substr(i, e - i));
  }

  bool value(Value& out, int depth) {
    skip_ws();
    if (at_end()) return syntax(p_, "expected a value, found end of input");
    if (elements_ >= lim_.max_elements)
      return fail(p_, Errc::limit_exceeded, "more than " + std::to_string(lim_.max_elements) +
                                                " values in the document (json::Limits::max_elements)");
    ++elements_;
    const unsigned char c = peek();
    if (c == '{') return object(out, depth);
    if (c == '[') return array(out, depth);
    if (c == '"') {
      out.kind_ = Kind::string;
      return string(out.str_);
    }
    if (c == '-' || is_digit(c)) return number(out);
    if (is_word_char(c)) return literal(out);
    switch (c) {
      case '+': return syntax(p_, "numbers cannot start with '+'");
      case '.': return syntax(p_, "numbers need a digit before '.'");
      case '\'': return syntax(p_, "strings take double quotes, not single quotes");
      case '/':
      case '#': return syntax(p_, "comments are not allowed in JSON");
      default: return syntax(p_, "expected a value, found " + found());
    }
  }

  bool literal(Value& out) {
    const std::size_t start = p_;
    std::size_t e = p_;
    while (e < s_.size() && is_word_char(byte(e))) ++e;
    const std::string_view w = s_.substr(start, e - start);
    if (w == "true" || w == "false") {
      out.kind_ = Kind::boolean;
      out.bool_ = w == "true";
    } else if (w == "null") {
      out.kind_ = Kind::null;
    } else if (w == "NaN" || w == "nan" || w == "Infinity" || w == "inf") {
      return syntax(start, std::string(w) + " is not valid JSON (use null or a finite number)");
    } else {
      return syntax(start, "invalid literal '" + word_at(start) +
                               "' (expected true, false, null, a number, a string, an array or an object)");
    }
    p_ = e;
    return true;
  }

  /// Whether an out-of-range literal is too large (else too small): the
  /// decimal order of magnitude of its first significant digit.
  static bool is_overflow(std::string_view lit) {
    std::size_t i = lit[0] == '-' ? 1 : 0;
    long long order = 0;
    if (lit[i] == '0') {
      ++i;
      if (i < lit.size() && lit[i] == '.') {
        ++i;
        while (i < lit.size() && lit[i] == '0') --order, ++i;
      }
    } else {
      while (i < lit.size() && is_digit(static_cast<unsigned char>(lit[i]))) ++order, ++i;
    }
    while (i < lit.size() && lit[i] != 'e' && lit[i] != 'E') ++i;
    if (i < lit.size()) {
      ++i;
      const bool neg = lit[i] == '-';
      if (lit[i] == '-' || lit[i] == '+') ++i;
      long long e = 0;
      for (; i < lit.size(); ++i) e = std::min<long long>(e * 10 + (lit[i] - '0'), 1000000000LL);
      order += neg ? -e : e;
    }
    return order > 0;
  }

  bool number(Value& out) {
    const std::size_t start = p_;
    bool integer = true;
    if (peek() == '-') {
      ++p_;
      if (!at_end() && word_at(p_) == "Infinity")
        return syntax(start, "-Infinity is not valid JSON (use null or a finite number)");
      if (at_end() || !is_digit(peek())) return syntax(p_, "expected a digit after '-', found " + found());
    }
    if (peek() == '0') {
      ++p_;
      if (!at_end() && is_digit(peek())) return syntax(start, "numbers cannot have leading zeros");
    } else {
      while (!at_end() && is_digit(peek())) ++p_;
    }
    if (!at_end() && peek() == '.') {
      integer = false;
      ++p_;
      if (at_end() || !is_digit(peek())) return syntax(p_, "expected a digit after '.', found " + found());
      while (!at_end() && is_digit(peek())) ++p_;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      integer = false;
      ++p_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++p_;
      if (at_end() || !is_digit(peek())) return syntax(p_, "expected a digit in the exponent, found " + found());
      while (!at_end() && is_digit(peek())) ++p_;
    }
    const std::string_view lit = s_.substr(start, p_ - start);
    const char* const first = lit.data();
    const char* const last = first + lit.size();
    double d = 0.0;
    const auto r = std::from_chars(first, last, d);
    if (r.ec == std::errc::result_out_of_range) {
      const std::string shown = lit.size() > 32 ? std::string(lit.substr(0, 32)) + "..." : std::string(lit);
      if (is_overflow(lit)) return syntax(start, "number " + shown + " is out of the range of a double");
      d = lit[0] == '-' ? -0.0 : 0.0;  // underflow: rounds to zero
    } else if (r.ec != std::errc() || r.ptr != last) {
      return syntax(start, "malformed number");  // unreachable: the grammar was checked above
    }
    out.kind_ = Kind::number;
    out.num_ = d;
    out.integer_ = integer;
    if (integer) {
      std::int64_t i = 0;
      const auto ri = std::from_chars(first, last, i);
      if (ri.ec == std::errc() && ri.ptr == last) {
        out.int_ = i;
        out.int_ok_ = true;
      }
    }
    return true;
  }

  bool append(std::string& out, const char* data, std::size_t n, std::size_t string_start) {
    if (n > lim_.max_string - std::min(out.size(), lim_.max_string))
      return fail(string_start, Errc::limit_exceeded, "string longer than " + std::to_string(lim_.max_string) +
                                                          " bytes (json::Limits::max_string)");
    out.append(data, n);
    return true;
  }

  /// Four hex digits at i, or -1.
  long hex4(std::size_t i) const {
    if (i + 4 > s_.size()) return -1;
    long v = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      const int h = hex_value(byte(i + k));
      if (h < 0) return -1;
      v = v * 16 + h;
    }
    return v;
  }

  /// A string at p_ (on its opening quote), decoded into out.
  bool string(std::string& out) {
    const std::size_t start = p_;
    ++p_;
    for (;;) {
      std::size_t run = p_;  // plain ASCII copies in one go
      while (run < s_.size()) {
        const unsigned char c = byte(run);
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++run;
      }
      if (!append(out, s_.data() + p_, run - p_, start)) return false;
      p_ = run;
      if (at_end()) return syntax(start, "unterminated string (no closing '\"')");
      const unsigned char c = peek();
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c == '\n') return syntax(p_, "unescaped newline in string (missing closing '\"'?)");
      if (c < 0x20) return syntax(p_, "unescaped control character " + code_point_name(c) + " in string");
      if (c >= 0x80) {
        std::size_t bad = 0;
        const std::size_t n = utf8_sequence(s_, p_, &bad);
        if (n == 0) {
          if (bad == p_) return syntax(p_, "invalid UTF-8 byte " + hex_byte(c) + " in string");
          std::string seq;
          for (std::size_t k = p_; k <= bad && k < s_.size(); ++k) seq += (k == p_ ? "" : " ") + hex_byte(byte(k));
          if (bad >= s_.size()) seq += " then end of input";
          return syntax(p_, "invalid UTF-8 sequence " + seq + " in string");
        }
        if (!append(out, s_.data() + p_, n, start)) return false;
        p_ += n;
        continue;
      }
      if (!escape_sequence(out, start)) return false;
    }
  }

  /// The escape at p_ (on its backslash).
  bool escape_sequence(std::string& out, std::size_t string_start) {
    const std::size_t esc = p_;
    ++p_;
    if (at_end()) return syntax(string_start, "unterminated string (no closing '\"')");
    char ch = 0;
    switch (peek()) {
      case '"': ch = '"'; break;
      case '\\': ch = '\\'; break;
      case '/': ch = '/'; break;
      case 'b': ch = '\b'; break;
      case 'f': ch = '\f'; break;
      case 'n': ch = '\n'; break;
      case 'r': ch = '\r'; break;
      case 't': ch = '\t'; break;
      case 'u': return unicode_escape(out, esc, string_start);
      default: {
        const unsigned char c = peek();
        if (c > 0x20 && c < 0x7F) return syntax(esc, std::string("invalid escape '\\") + static_cast<char>(c) + "'");
        return syntax(esc, "invalid escape: '\\' followed by " + found());
      }
    }
    ++p_;
    return append(out, &ch, 1, string_start);
  }

  /// \uXXXX at esc, with a following \uXXXX when it is a high surrogate.
  bool unicode_escape(std::string& out, std::size_t esc, std::size_t string_start) {
    const long hi = hex4(esc + 2);
    if (hi < 0) return syntax(esc, "invalid \\u escape (expected 4 hex digits)");
    p_ = esc + 6;
    auto cp = static_cast<std::uint32_t>(hi);
    const std::string text(s_.substr(esc, 6));
    if (cp >= 0xDC00 && cp <= 0xDFFF)
      return syntax(esc, "lone surrogate " + text + " (a low surrogate must follow a high surrogate)");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      const bool next_is_u = p_ + 1 < s_.size() && s_[p_] == '\\' && s_[p_ + 1] == 'u';
      const long lo = next_is_u ? hex4(p_ + 2) : -1;
      if (next_is_u && lo < 0) return syntax(p_, "invalid \\u escape (expected 4 hex digits)");
      if (lo < 0xDC00 || lo > 0xDFFF)
        return syntax(esc, "lone surrogate " + text +
                               " (a high surrogate must be followed by a \\uDC00-\\uDFFF low surrogate)");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (static_cast<std::uint32_t>(lo) - 0xDC00);
      p_ += 6;
    }
    std::string utf8;
    utf8_append(utf8, cp);
    return append(out, utf8.data(), utf8.size(), string_start);
  }

  bool enter(std::size_t open, int depth) {
    if (depth >= lim_.max_depth)
      return fail(open, Errc::limit_exceeded, "nesting deeper than " + std::to_string(lim_.max_depth) +
                                                  " (json::Limits::max_depth)");
    return true;
  }

  bool array(Value& out, int depth) {
    const std::size_t open = p_;
    if (!enter(open, depth)) return false;
    out.kind_ = Kind::array;
    ++p_;
    skip_ws();
    if (!at_end() && peek() == ']') {
      ++p_;
      return true;
    }
    for (;;) {
      out.items_.emplace_back();
      if (!value(out.items_.back(), depth + 1)) return false;
      skip_ws();
      if (at_end() || (peek() != ',' && peek() != ']')) {
        std::string what = "expected ',' or ']' after array element, found " + found_why();
        if (at_end()) what += " (the array opened at " + where(open) + ")";
        return syntax(p_, what);
      }
      if (peek() == ']') {
        ++p_;
        return true;
      }
      const std::size_t comma = p_++;
      skip_ws();
      if (!at_end() && peek() == ']') return syntax(comma, "trailing comma before ']'");
    }
  }

  bool object(Value& out, int depth) {
    const std::size_t open = p_;
    if (!enter(open, depth)) return false;
    out.kind_ = Kind::object;
    Value::Object& members = out.members_;
    ++p_;
    skip_ws();
    if (!at_end() && peek() == '}') {
      ++p_;
      return true;
    }
    KeySet keys(0, KeyHash{&members}, KeyEq{&members});
    for (;;) {
      skip_ws();
      if (at_end() || peek() != '"') {
        std::string what = "expected a string key, found " + found_why();
        if (at_end()) what += " (the object opened at " + where(open) + ")";
        if (!at_end() && is_word_char(peek())) what += " (keys must be quoted)";
        return syntax(p_, what);
      }
      const std::size_t key_at = p_;
      std::string key;
      if (!string(key)) return false;
      members.emplace_back(std::move(key), Value());
      if (is_duplicate(members, keys)) {
        const std::string& k = members.back().first;
        std::string shown = escape(k.size() > 64 ? k.substr(0, 64) : k);
        if (k.size() > 64) shown += "...";
        return syntax(key_at, "duplicate key \"" + shown + "\"");
      }
      skip_ws();
      if (at_end() || peek() != ':') return syntax(p_, "expected ':' after object key, found " + found_why());
      ++p_;
      if (!value(members.back().second, depth + 1)) return false;
      skip_ws();
      if (at_end() || (peek() != ',' && peek() != '}')) {
        std::string what = "expected ',' or '}' after object member, found " + found_why();
        if (at_end()) what += " (the object opened at " + where(open) + ")";
        return syntax(p_, what);
      }
      if (peek() == '}') {
        ++p_;
        return true;
      }
      const std::size_t comma = p_++;
      skip_ws();
      if (!at_end() && peek() == '}') return syntax(comma, "trailing comma before '}'");
    }
  }

  /// Whether the last member's key repeats an earlier one.
  static bool is_duplicate(const Value::Object& members, KeySet& keys) {
    const std::size_t last = members.size() - 1;
    if (members.size() < kHashFrom) {
      for (std::size_t i = 0; i < last; ++i)
        if (members[i].first == members[last].first) return true;
      return false;
    }
    if (keys.empty())
      for (std::size_t i = 0; i < last; ++i) keys.insert(i);  // unique so far
    return !keys.insert(last).second;
  }
};

}  // namespace detail

/// Parse one JSON document (RFC 8259, strict; see the top of this file).
/// Errors: invalid_argument "line L, column C: <what>", limit_exceeded.
inline Result<Value> parse(std::string_view text, const Limits& limits = {}) {
  return detail::Parser(text, limits).run();
}

/// Read a file with fleetdl::read_file (size checked against
/// limits.max_bytes before reading) and parse it. Every message starts with
/// the path: "cfg.json: line 2, column 5: ...". Errors: those of read_file
/// (not_found, io_error, limit_exceeded) and of parse.
inline Result<Value> parse_file(const std::string& path, const Limits& limits = {}) {
  auto bytes = read_file(path, limits.max_bytes);
  if (!bytes) return std::move(bytes).error();
  const std::string_view text(reinterpret_cast<const char*>(bytes->data()), bytes->size());
  auto r = parse(text, limits);
  if (!r) {
    Error e = std::move(r).error();
    e.message = path + ": " + e.message;
    return e;
  }
  return r;
}

}  // namespace fleetdl::json
