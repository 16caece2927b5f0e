// orchestrator/cli/report.cpp — `fleetdl report`: a run of the fleet database
// as a self-contained HTML page with SVG charts, or the same data as CSV or
// JSON (docs/fleet-report.md).
//
//   fleetdl report --db fleet.db --run ID --out PATH [--format html|csv|json]
//
// The database is opened read-only (Store OpenOptions::read_only): the report
// never creates, migrates or otherwise writes it, and a schema newer (or
// older) than this program's is refused. Everything is read in one snapshot.
// --out is written atomically (temporary file, then rename), so a failure
// leaves no file and an existing one as it was.
#include "cli_common.hpp"
#include "report.hpp"
#include "store.hpp"

#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace fleetdl::cli {
namespace {

/// The format named by --out's extension, or "" when it names none.
std::string format_from_extension(const std::string& out) {
  std::string ext = std::filesystem::path(out).extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ext == ".html" || ext == ".htm") return "html";
  if (ext == ".csv") return "csv";
  if (ext == ".json") return "json";
  return {};
}

}  // namespace

int cmd_report(int argc, char** argv) {
  const std::string cmd = "report";
  Args a(cmd, argc, argv, {"--db", "--run", "--format", "--out"}, {});
  if (!a.positional().empty()) throw UsageError{"unexpected argument '" + a.positional()[0] + "'"};
  if (!a.has("--db")) throw UsageError{"--db FILE is required (the fleet database)"};
  if (!a.has("--run")) throw UsageError{"--run ID is required"};
  if (!a.has("--out")) throw UsageError{"--out PATH is required"};
  const std::string db = a.str("--db", ""), out = a.str("--out", "");
  const std::int64_t run = a.integer("--run", 0, 1, std::numeric_limits<long long>::max());
  std::string format = a.str("--format", "");
  if (!a.has("--format")) {
    format = format_from_extension(out);
    if (format.empty())
      throw UsageError{"--format html|csv|json is required (--out '" + out + "' has no .html, .csv or .json extension)"};
  } else if (format != "html" && format != "csv" && format != "json") {
    throw UsageError{"flag '--format': unknown format '" + format + "' (known: html, csv, json)"};
  }
  if (auto why = unwritable_reason(out); !why.empty()) return fail(cmd, why);

  core::OpenOptions options;
  options.read_only = true;
  options.create = false;
  auto store = core::Store::open(db, options);
  if (!store) return fail(cmd, store.error().message);
  auto data = core::load_report(*store, run);
  if (!data) return fail(cmd, data.error().message);

  const std::string text = format == "html"  ? core::render_html(*data)
                           : format == "csv" ? core::render_csv(*data)
                                             : core::render_json(*data);
  if (auto ok = write_file_atomic(out, std::vector<std::uint8_t>(text.begin(), text.end())); !ok)
    return fail(cmd, ok.error().message);
  std::printf("%s: %s report of run %lld (%zu rounds, %zu devices, %zu bytes)\n", out.c_str(), format.c_str(),
              static_cast<long long>(run), data->rounds.size(), data->devices.size(), text.size());
  return 0;
}

}  // namespace fleetdl::cli
