// fleetdl/core/file.hpp — whole-file reads with a size limit checked before
// allocation, and atomic whole-file writes. Shared by the model-file (io/)
// and dataset (data/) readers, which treat every file as untrusted.
#pragma once

#include "fleetdl/core/error.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace fleetdl {

/// Read a whole file. A regular file's size is checked against max_bytes
/// before anything is allocated; other files (pipes, devices) are read in
/// chunks and stopped as soon as they pass the limit. Errors: not_found
/// (no such file), io_error (a directory, or open/read failure),
/// limit_exceeded. Messages start with the path.
inline Result<std::vector<std::uint8_t>> read_file(const std::string& path, std::uint64_t max_bytes) {
  namespace fs = std::filesystem;
  std::error_code ec;
  // fopen succeeds on a directory and ftell may then report LLONG_MAX (ext4).
  if (fs::is_directory(path, ec)) return make_error(Errc::io_error, path + ": is a directory");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    const int e = errno;
    return make_error(e == ENOENT ? Errc::not_found : Errc::io_error,
                      path + ": cannot open (" + std::strerror(e) + ")");
  }
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};
  std::vector<std::uint8_t> buf;
  if (fs::is_regular_file(path, ec)) {
    const std::uintmax_t size = fs::file_size(path, ec);
    if (ec) return make_error(Errc::io_error, path + ": cannot tell size (" + ec.message() + ")");
    if (size > max_bytes)
      return make_error(Errc::limit_exceeded, path + ": file is " + std::to_string(size) + " bytes, above the limit " +
                                                  std::to_string(max_bytes));
    buf.resize(static_cast<std::size_t>(size));
    if (size > 0 && std::fread(buf.data(), 1, buf.size(), f) != buf.size())
      return make_error(Errc::io_error, path + ": short read (file changed while reading?)");
    return buf;
  }
  std::uint8_t chunk[65536];
  for (;;) {
    const std::size_t n = std::fread(chunk, 1, sizeof chunk, f);
    if (n > max_bytes - std::min<std::uint64_t>(buf.size(), max_bytes))
      return make_error(Errc::limit_exceeded, path + ": file is over " + std::to_string(buf.size()) +
                                                  " bytes, above the limit " + std::to_string(max_bytes));
    buf.insert(buf.end(), chunk, chunk + n);
    if (n < sizeof chunk) {
      if (std::ferror(f)) {
        const int e = errno;
        return make_error(Errc::io_error, path + ": read failed (" + std::strerror(e) + ")");
      }
      return buf;
    }
  }
}

/// Write bytes atomically: to "<path>.tmp", flushed, then renamed over path.
/// On failure nothing is left at path (an existing file stays untouched).
inline Result<void> write_file_atomic(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return make_error(Errc::io_error, path + ": cannot create (" + std::string(std::strerror(errno)) + ")");
  const bool ok =
      (bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size()) && std::fflush(f) == 0;
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) {
    std::remove(tmp.c_str());
    return make_error(Errc::io_error, path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    return make_error(Errc::io_error, path + ": cannot rename into place (" + std::string(std::strerror(e)) + ")");
  }
  return success();
}

}  // namespace fleetdl
