// orchestrator/cli/cli_common.hpp — what the `fleetdl` commands share: the
// argument parser, one-line errors, number and JSON formatting, the progress
// bar, output-path checks and the dataset options. The commands live in
// fleetdl.cpp (train, eval, info, fl simulate), nonn.cpp (partition nonn,
// infer), micro.cpp (export-header), compress.cpp (compress) and report.cpp
// (report).
#pragma once

#include "fleetdl/core.hpp"
#include "fleetdl/data/dataset.hpp"  // FLEETDL_FASHION_MNIST_DIR

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace fleetdl::cli {

struct UsageError {
  std::string msg;
};

/// Parsed command line: flags with values, boolean switches, positionals.
class Args {
 public:
  Args(std::string cmd, int argc, char** argv, const std::set<std::string>& with_value,
       const std::set<std::string>& switches)
      : cmd_(std::move(cmd)) {
    for (int i = 0; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) == 0) {
        std::string v;
        const auto eq = a.find('=');
        bool inline_value = false;
        if (eq != std::string::npos) {
          v = a.substr(eq + 1);
          a = a.substr(0, eq);
          inline_value = true;
        }
        if (with_value.count(a)) {
          if (!inline_value) {
            if (i + 1 >= argc) throw UsageError{"flag '" + a + "' needs a value"};
            v = argv[++i];
          }
          if (values_.count(a)) throw UsageError{"flag '" + a + "' given twice"};
          values_[a] = v;
        } else if (switches.count(a)) {
          if (inline_value) throw UsageError{"flag '" + a + "' takes no value"};
          switches_.insert(a);
        } else {
          throw UsageError{"unknown flag '" + a + "'"};
        }
      } else {
        positional_.push_back(a);
      }
    }
  }
  bool has(const std::string& k) const { return values_.count(k) > 0 || switches_.count(k) > 0; }
  std::string str(const std::string& k, const std::string& def) const {
    auto it = values_.find(k);
    return it == values_.end() ? def : it->second;
  }
  long long integer(const std::string& k, long long def, long long lo, long long hi) const {
    auto it = values_.find(k);
    if (it == values_.end()) return def;
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end != '\0' || errno != 0)
      throw UsageError{"flag '" + k + "': '" + it->second + "' is not an integer"};
    if (v < lo || v > hi)
      throw UsageError{"flag '" + k + "': " + it->second + " is out of range [" + std::to_string(lo) + ", " +
                       std::to_string(hi) + "]"};
    return v;
  }
  double number(const std::string& k, double def, double lo, double hi) const {
    auto it = values_.find(k);
    if (it == values_.end()) return def;
    char* end = nullptr;
    const double v = std::strtod(it->second.c_str(), &end);
    if (it->second.empty() || *end != '\0' || !std::isfinite(v))
      throw UsageError{"flag '" + k + "': '" + it->second + "' is not a number"};
    if (v < lo || v > hi) throw UsageError{"flag '" + k + "': " + it->second + " is out of range"};
    return v;
  }
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::string cmd_;
  std::map<std::string, std::string> values_;
  std::set<std::string> switches_;
  std::vector<std::string> positional_;
};

inline std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += c;
        }
    }
  }
  return o;
}

inline std::string num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

/// A number for JSON output. JSON has no NaN or infinity (a diverged run has a
/// NaN loss), so those are written as null.
inline std::string json_num(double v) { return std::isfinite(v) ? num(v) : "null"; }

/// Progress bar on stderr, drawn only on a terminal.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : on_(enabled && isatty(STDERR_FILENO)) {}
  void draw(const std::string& prefix, Index done, Index total, const std::string& suffix) {
    if (!on_ || total <= 0) return;
    const auto now = std::chrono::steady_clock::now();
    if (done != total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr int width = 30;
    const int fill = static_cast<int>(width * done / total);
    std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% %s\033[K", prefix.c_str(), fill,
                 "==============================", width - fill, "", static_cast<int>(100 * done / total),
                 suffix.c_str());
    if (done == total) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  bool on_;
  std::chrono::steady_clock::time_point last_{};
};

inline int fail(const std::string& cmd, const std::string& msg, int code = 1) {
  std::fprintf(stderr, "fleetdl %s: %s\n", cmd.c_str(), msg.c_str());
  return code;
}

/// Why a file cannot be written at `path` (its directory is missing, or the
/// path is a directory), checked before long work rather than after it; empty
/// if it looks writable.
inline std::string unwritable_reason(const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec))
    return path + ": directory '" + parent.string() + "' does not exist";
  if (std::filesystem::is_directory(path, ec)) return path + ": is a directory";
  return {};
}

struct DatasetChoice {
  std::string dir;
};

inline DatasetChoice dataset_option(const Args& a) {
  const std::string name = a.str("--dataset", "fashion-mnist");
  if (name != "fashion-mnist") throw UsageError{"flag '--dataset': unknown dataset '" + name + "' (known: fashion-mnist)"};
  return {a.str("--data-dir", FLEETDL_FASHION_MNIST_DIR)};
}

/// Flush stdout and turn a write error (full disk, closed file) into a failure,
/// so that output that never arrived does not pass as success.
inline int finish(const std::string& cmd, int rc) {
  errno = 0;
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    const int e = errno;
    if (rc == 0) return fail(cmd, std::string("cannot write to standard output (") + std::strerror(e ? e : EIO) + ")");
  }
  return rc;
}

// The NoNN commands (nonn.cpp).
int cmd_partition(int argc, char** argv);
int cmd_infer(int argc, char** argv);
int cmd_infer_student(int argc, char** argv);
// The micro-runtime commands (micro.cpp).
int cmd_export_header(int argc, char** argv);
// `fleetdl eval` of an int8 micro blob, given the file's bytes (compress.cpp).
int eval_micro_blob(const std::string& cmd, const std::string& path, std::vector<std::uint8_t> bytes,
                    const std::string& data_dir, Index test_limit, bool json);
// The compression pipeline (compress.cpp).
int cmd_compress(int argc, char** argv);
// Reports of a run from the fleet database (report.cpp).
int cmd_report(int argc, char** argv);
// The fleet runtime's commands: up, down, token, run, resume (fleet.cpp).
int cmd_fleet(int argc, char** argv);

}  // namespace fleetdl::cli
