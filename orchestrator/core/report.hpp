// orchestrator/core/report.hpp — reports of one run from the fleet database.
//
// load_report() reads everything a report shows about a run (the run, its
// rounds, per-device per-round costs, per-device summaries, module
// assignments, events) inside one read transaction of the Store, so the parts
// agree with each other even while an orchestrator keeps committing rounds.
// Three renderers turn the result into:
//
//   render_html  one self-contained HTML page: no scripts, no external fonts,
//                styles or images; four inline SVG charts drawn here (test
//                accuracy per round, bytes per device per round as a heatmap,
//                peak memory against budget per device, round time); tables
//                of rounds, devices, assignments and the newest events.
//                Everything read from the database is HTML-escaped.
//   render_json  one JSON object with the same data, numbers exact (integers
//                as written, doubles in their shortest round-trip form, NaN
//                and infinities as null).
//   render_csv   one RFC 4180 table (CRLF line ends) with a `section` column
//                telling what each row is; docs/fleet-report.md lists the
//                columns each section fills.
//
// Renderers are pure functions of ReportData: the same data gives the same
// bytes (no clock, no locale).
#pragma once

#include "store.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fleetdl::core {

/// A device as a report shows it: its record, and what it cost over the run
/// (a summary of zeros, with the id and name, when it has no cost rows).
struct ReportDevice {
  DeviceRecord record;
  DeviceRunSummary summary;
};

/// Everything a report of one run shows, read in one snapshot.
struct ReportData {
  RunRecord run;
  std::vector<RoundRecord> rounds;       ///< by round number
  std::vector<ReportDevice> devices;     ///< devices with a cost row, assignment or event in the run; by id
  std::vector<DeviceRoundCost> costs;    ///< by round, then device
  std::vector<Assignment> assignments;   ///< in order of assignment
  std::vector<Event> events;             ///< all events of the run, oldest first
};

/// Read run `run` and everything about it from `store` in one read
/// transaction (Store::read_snapshot). Errors: the store's, e.g.
/// "fleet.db: no run 7" (Errc::not_found) for an unknown run.
Result<ReportData> load_report(Store& store, std::int64_t run);

/// The HTML report lists this many of the newest events (JSON and CSV carry all).
inline constexpr std::size_t html_report_max_events = 200;
/// The bytes heatmap gives this many devices (the most bytes) a row each; the
/// others share one row with their mean.
inline constexpr std::size_t html_report_heatmap_devices = 20;

std::string render_html(const ReportData& report);
std::string render_json(const ReportData& report);
std::string render_csv(const ReportData& report);

}  // namespace fleetdl::core
