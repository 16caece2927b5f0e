// fleetdl/core/error.hpp — error codes, Error, Result<T> and FLEETDL_ASSERT.
//
// Programmer errors (a broken precondition) go through FLEETDL_ASSERT, which a
// user may redefine. Runtime and untrusted-input failures are values:
// Result<T> holds either a T or an Error {code, message}. Messages say what,
// where and why ("model.fdl: tensor 3 'conv2.weight' needs 4608 bytes, file
// has 212 left"). Throwing wrappers exist only when exceptions are enabled.
#pragma once

#include "fleetdl/core/config.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#if FLEETDL_EXCEPTIONS
#  include <stdexcept>
#endif

#ifndef FLEETDL_ASSERT
// Default: report the broken precondition on stderr and abort. Redefine before
// including fleetdl to route it elsewhere (a firmware fault handler, a test).
#  define FLEETDL_ASSERT(cond, msg)                                                      \
    do {                                                                                 \
      if (!(cond)) ::fleetdl::detail::assert_fail(#cond, msg, __FILE__, __LINE__);       \
    } while (0)
#endif

namespace fleetdl {

namespace detail {
[[noreturn]] inline void assert_fail(const char* cond, const char* msg, const char* file, int line) {
  std::fprintf(stderr, "fleetdl: assertion '%s' failed at %s:%d: %s\n", cond, file, line, msg);
  std::abort();
}
}  // namespace detail

/// Error categories. Stable numeric values: they travel in files and frames.
enum class Errc : std::uint16_t {
  ok = 0,
  invalid_argument = 1,   ///< a caller-supplied value is out of its domain
  io_error = 2,           ///< open/read/write failed
  bad_magic = 3,          ///< the bytes are not of the expected format
  bad_version = 4,        ///< right format, unsupported version
  truncated = 5,          ///< fewer bytes than the structure needs
  corrupt = 6,            ///< internally inconsistent content
  checksum_mismatch = 7,  ///< CRC does not match
  limit_exceeded = 8,     ///< a size exceeds a configured FLEETDL_MAX_* limit
  unsupported = 9,        ///< valid but not supported by this build
  shape_mismatch = 10,    ///< tensor shapes do not fit together
  not_found = 11,         ///< named item absent
};

inline const char* errc_name(Errc c) {
  switch (c) {
    case Errc::ok: return "ok";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::io_error: return "io_error";
    case Errc::bad_magic: return "bad_magic";
    case Errc::bad_version: return "bad_version";
    case Errc::truncated: return "truncated";
    case Errc::corrupt: return "corrupt";
    case Errc::checksum_mismatch: return "checksum_mismatch";
    case Errc::limit_exceeded: return "limit_exceeded";
    case Errc::unsupported: return "unsupported";
    case Errc::shape_mismatch: return "shape_mismatch";
    case Errc::not_found: return "not_found";
  }
  return "unknown";
}

struct Error {
  Errc code = Errc::ok;
  std::string message;
};

inline Error make_error(Errc code, std::string message) { return Error{code, std::move(message)}; }

#if FLEETDL_EXCEPTIONS
/// Thrown by the throwing wrappers (Result::value_or_throw).
class FleetdlError : public std::runtime_error {
 public:
  explicit FleetdlError(Error e) : std::runtime_error(e.message), error_(std::move(e)) {}
  const Error& error() const noexcept { return error_; }

 private:
  Error error_;
};
#endif

/// Either a value or an Error. Accessing the wrong side is a programmer error.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT implicit
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT implicit

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & {
    FLEETDL_ASSERT(ok(), "Result::value() on an error");
    return std::get<0>(v_);
  }
  const T& value() const& {
    FLEETDL_ASSERT(ok(), "Result::value() on an error");
    return std::get<0>(v_);
  }
  T&& value() && {
    FLEETDL_ASSERT(ok(), "Result::value() on an error");
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const& {
    FLEETDL_ASSERT(!ok(), "Result::error() on a value");
    return std::get<1>(v_);
  }
  Error&& error() && {
    FLEETDL_ASSERT(!ok(), "Result::error() on a value");
    return std::get<1>(std::move(v_));
  }

#if FLEETDL_EXCEPTIONS
  T value_or_throw() && {
    if (!ok()) throw FleetdlError(std::get<1>(std::move(v_)));
    return std::get<0>(std::move(v_));
  }
#endif

 private:
  std::variant<T, Error> v_;
};

/// Result without a value: success or an Error.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : err_(std::move(error)), failed_(true) {}  // NOLINT implicit

  bool ok() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return ok(); }
  const Error& error() const& {
    FLEETDL_ASSERT(!ok(), "Result::error() on success");
    return err_;
  }
  Error&& error() && {
    FLEETDL_ASSERT(!ok(), "Result::error() on success");
    return std::move(err_);
  }
#if FLEETDL_EXCEPTIONS
  void value_or_throw() && {
    if (failed_) throw FleetdlError(std::move(err_));
  }
#endif

 private:
  Error err_{};
  bool failed_ = false;
};

inline Result<void> success() { return {}; }

}  // namespace fleetdl

/// Propagate an error from a Result-returning expression.
#define FLEETDL_TRY(expr)                                       \
  do {                                                          \
    auto fleetdl_try_r_ = (expr);                               \
    if (!fleetdl_try_r_.ok()) return std::move(fleetdl_try_r_).error(); \
  } while (0)
