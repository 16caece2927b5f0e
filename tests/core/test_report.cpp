// tests/core/test_report.cpp — reports of a run (orchestrator/core/report.hpp):
// load_report in one snapshot, the JSON read back equal to what was written,
// the CSV's layout and RFC 4180 quoting, and the HTML page: self-contained,
// balanced tags, everything from the database escaped, the four charts with
// one point per evaluated round, the abandoned round marked, exactly the
// over-budget device highlighted; the read-only open that reports use.
#include "report.hpp"
#include "store.hpp"

#include "fleetdl/core/json.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;
using namespace fleetdl::core;
namespace json = fleetdl::json;

namespace {

struct ReportTempDir {
  fs::path dir;
  ReportTempDir() {
    std::string tmpl = (fs::temp_directory_path() / "fleetdl-report-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    dir = tmpl;
  }
  ~ReportTempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

template <class T>
void ok_or_fail(const fleetdl::Result<T>& r) {
  INFO((r.ok() ? std::string("ok") : r.error().message));
  REQUIRE(r.ok());
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

bool has(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// The <svg id="..."> element of a chart, up to its </svg>.
std::string chart(const std::string& page, const std::string& id) {
  const std::size_t at = page.find("id=\"" + id + "\"");
  REQUIRE(at != std::string::npos);
  const std::size_t end = page.find("</svg>", at);
  REQUIRE(end != std::string::npos);
  return page.substr(at, end - at);
}

/// Every element opened is closed in order (void elements and "/>" aside);
/// empty when the page is balanced, else what went wrong.
std::string unbalanced_tags(const std::string& page) {
  static const std::vector<std::string> void_elements{"meta", "br", "hr", "img", "input", "link"};
  std::vector<std::string> open;
  std::size_t i = 0;
  while ((i = page.find('<', i)) != std::string::npos) {
    const std::size_t end = page.find('>', i);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
    const std::string tag = page.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '!') continue;  // <!DOCTYPE html>
    const bool closing = tag[0] == '/';
    std::size_t n = closing ? 1 : 0;
    while (n < tag.size() && (std::isalnum(static_cast<unsigned char>(tag[n])) != 0 || tag[n] == '-')) ++n;
    const std::string name = lower(tag.substr(closing ? 1 : 0, n - (closing ? 1 : 0)));
    if (name.empty()) return "tag without a name: <" + tag + ">";
    if (closing) {
      if (open.empty() || open.back() != name)
        return "</" + name + "> closes <" + (open.empty() ? std::string("nothing") : open.back()) + ">";
      open.pop_back();
    } else if (tag.back() != '/' &&
               std::find(void_elements.begin(), void_elements.end(), name) == void_elements.end()) {
      open.push_back(name);
    }
  }
  return open.empty() ? std::string() : "<" + open.back() + "> never closed";
}

/// RFC 4180: fields separated by ',', records by CRLF, quoted fields may hold
/// ',', CR, LF and doubled quotes.
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  std::size_t i = 0;
  bool quoted = false, field_started = false;
  while (i < text.size()) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        i += 2;
      } else if (c == '"') {
        quoted = false;
        ++i;
      } else {
        field += c;
        ++i;
      }
      continue;
    }
    if (c == '"' && !field_started) {
      quoted = field_started = true;
      ++i;
    } else if (c == ',') {
      row.push_back(field);
      field.clear();
      field_started = false;
      ++i;
    } else if (c == '\r') {
      REQUIRE(i + 1 < text.size());
      REQUIRE(text[i + 1] == '\n');  // records end with CRLF
      row.push_back(field);
      rows.push_back(row);
      row.clear();
      field.clear();
      field_started = false;
      i += 2;
    } else {
      REQUIRE(c != '"');  // a quote inside an unquoted field
      REQUIRE(c != '\n');  // a bare LF
      field += c;
      field_started = true;
      ++i;
    }
  }
  REQUIRE_FALSE(quoted);
  REQUIRE(row.empty());  // the last record ends with CRLF too
  return rows;
}

constexpr const char* kNastyName = "evil <script>alert(\"x\")</script> & 'q', too";
constexpr const char* kNastyNameHtml =
    "evil &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;, too";
constexpr const char* kMarkupMessage = "<img src=x onerror=alert(1)> & \"quoted\",\nsecond line";
constexpr const char* kConfig =
    R"({"strategy":"fedavg","rounds":5,"lr":0.1,"note":"<b>bold</b> & co","clients":{"per_round":4}})";
constexpr std::uint64_t kSeed = 0xFEDCBA9876543210ULL;  // above INT64_MAX: stored as a negative int64

/// A database with run 1 (5 rounds, round 2 abandoned; 4 devices, edge-b
/// over its budget in rounds 3 and 4; a device with markup in its name; two
/// assignments; three events) and run 2 (one round), written through Store.
struct ReportFixture {
  ReportTempDir tmp;
  std::string path = tmp.file("fleet.db");
  std::int64_t run = 0, other_run = 0;
  std::vector<std::int64_t> devices;
  std::vector<std::string> names{"edge-a", "edge-b", kNastyName, "edge-d"};

  ReportFixture() {
    auto opened = Store::open(path);
    ok_or_fail(opened);
    Store& s = *opened;
    for (std::size_t i = 0; i < names.size(); ++i) {
      DeviceRecord d;
      d.name = names[i];
      d.enrolled_at = 1'700'000'000'000;
      d.capabilities = DeviceCapabilities{2, 512 << 20, 1LL << 30, 1e9, 1e6, 256 * 1024, "pi-zero-2"};
      d.status = DeviceStatus::online;
      auto id = s.upsert_device(d);
      ok_or_fail(id);
      devices.push_back(*id);
    }
    auto r = s.create_run(RunKind::train, kConfig, kSeed, 1'700'000'000'000);
    ok_or_fail(r);
    run = *r;
    for (std::int64_t round = 0; round < 5; ++round) {
      ok_or_fail(round == 2 ? s.abandon_round(round_record(round), costs(round))
                            : s.commit_round(round_record(round), costs(round), Checkpoint{{1, 2, 3}, {4}}));
    }
    Assignment a;
    a.run = run;
    a.device = devices[2];
    a.module_name = "student<1>";
    a.module_kind = ModuleKind::student;
    a.module_bytes = 123'456;
    a.peak_memory_bytes = 200'000;
    a.predicted_latency_ms = 12.75;
    a.assigned_at = 1'700'000'000'500;
    ok_or_fail(s.add_assignment(a));
    a.device = devices[0];
    a.module_name = "student-0";
    ok_or_fail(s.add_assignment(a));
    ok_or_fail(s.add_event(Event{0, 1'700'000'001'000, run, devices[2], "dropout", kMarkupMessage}));
    ok_or_fail(s.add_event(Event{0, 1'700'000'002'000, run, std::nullopt, "round", "round 2 abandoned: 1 of 4"}));
    ok_or_fail(s.add_event(Event{0, 1'700'000'003'000, std::nullopt, std::nullopt, "enrolled", "not of this run"}));
    ok_or_fail(s.set_run_status(run, RunStatus::finished, 1'700'000'009'000));
    auto r2 = s.create_run(RunKind::infer, "{}", 7, 1'700'000'010'000);
    ok_or_fail(r2);
    other_run = *r2;
    RoundRecord o = round_record(0);
    o.run = other_run;
    o.selected = o.completed = 1;
    ok_or_fail(s.commit_round(o, std::vector<DeviceCost>{costs(0)[0]}, Checkpoint{}));
    ok_or_fail(s.add_event(Event{0, 1'700'000'011'000, other_run, devices[0], "other", "other run"}));
  }

  RoundRecord round_record(std::int64_t round) const {
    RoundRecord r;
    r.run = run;
    r.round = round;
    r.started_at = 1'700'000'000'000 + round * 1000;
    r.finished_at = r.started_at + 900 + round;
    r.status = round == 2 ? RoundStatus::abandoned : RoundStatus::committed;
    r.selected = 4;
    r.completed = round == 2 ? 1 : 4;
    if (round != 2) r.test_accuracy = 0.1 * static_cast<double>(round + 3) + 0.0123;  // not exact in binary
    if (round != 2) r.test_loss = 2.0 / static_cast<double>(round + 1);
    if (round == 4) r.train_loss = 0.3;
    r.round_seconds = 1.1 + 0.7 * static_cast<double>(round);
    r.bytes_up = 100'000 + round;
    r.bytes_down = 400'000 + round;
    return r;
  }

  std::vector<DeviceCost> costs(std::int64_t round) const {
    std::vector<DeviceCost> out;
    for (std::size_t i = 0; i < devices.size(); ++i) {
      DeviceCost c;
      c.device = devices[i];
      c.bytes_up = 10'000 * static_cast<std::int64_t>(i + 1) + round;
      c.bytes_down = 40'000 * static_cast<std::int64_t>(i + 1) + round;
      c.compute_ms = 0.1 * static_cast<double>(round + 1) + static_cast<double>(i);
      c.peak_memory_bytes = (i == 1 && round >= 3) ? 300 * 1024 : 100 * 1024 + static_cast<std::int64_t>(i) * 1024;
      c.budget_bytes = 256 * 1024;
      c.energy_joules = 0.3 * static_cast<double>(i + 1);
      c.status = round == 2 ? CostStatus::abandoned : (i == 3 && round == 1 ? CostStatus::dropped : CostStatus::ok);
      c.examples = 60 + static_cast<std::int64_t>(i);
      out.push_back(c);
    }
    return out;
  }

  ReportData load() const {
    OpenOptions o;
    o.read_only = true;
    auto s = Store::open(path, o);
    ok_or_fail(s);
    auto d = load_report(*s, run);
    ok_or_fail(d);
    return std::move(d).value();
  }
};

const json::Value& member(const json::Value& v, const char* key) {
  const json::Value* m = v.find(key);
  INFO(key);
  REQUIRE(m != nullptr);
  return *m;
}

void check_number(const json::Value& v, const char* key, double want) {
  INFO(key);
  REQUIRE(member(v, key).is_number());
  CHECK(member(v, key).as_double() == want);  // exact: shortest round-trip text
}

void check_int(const json::Value& v, const char* key, std::int64_t want) {
  INFO(key);
  REQUIRE(member(v, key).is_int());
  CHECK(member(v, key).as_int() == want);
}

void check_opt(const json::Value& v, const char* key, const std::optional<double>& want) {
  INFO(key);
  if (want) {
    check_number(v, key, *want);
  } else {
    CHECK(member(v, key).is_null());
  }
}

}  // namespace

TEST_CASE("[report] load_report reads one run and nothing of the others", "[report]") {
  ReportFixture f;
  const ReportData d = f.load();
  CHECK(d.run.id == f.run);
  CHECK(d.run.seed == kSeed);
  CHECK(d.run.status == RunStatus::finished);
  REQUIRE(d.rounds.size() == 5);
  CHECK(d.rounds[2].status == RoundStatus::abandoned);
  CHECK(d.costs.size() == 20);
  REQUIRE(d.devices.size() == 4);
  CHECK(d.devices[2].record.name == kNastyName);
  CHECK(d.devices[1].summary.rounds_over_budget == 2);
  CHECK(d.devices[1].summary.max_peak_memory_bytes == 300 * 1024);
  CHECK(d.assignments.size() == 2);
  REQUIRE(d.events.size() == 2);  // not the fleet-wide one, not run 2's
  CHECK(d.events[0].message == kMarkupMessage);

  OpenOptions o;
  o.read_only = true;
  auto s = Store::open(f.path, o);
  ok_or_fail(s);
  auto missing = load_report(*s, 99);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == fleetdl::Errc::not_found);
  CHECK(missing.error().message == f.path + ": no run 99");
}

TEST_CASE("[report] JSON parses and equals what was written", "[report]") {
  ReportFixture f;
  const ReportData d = f.load();
  const std::string text = render_json(d);
  auto parsed = json::parse(text);
  INFO((parsed.ok() ? std::string() : parsed.error().message));
  REQUIRE(parsed.ok());
  const json::Value& v = *parsed;
  CHECK(member(v, "format").as_string() == "fleetdl-report");
  const json::Value& run = member(v, "run");
  check_int(run, "id", f.run);
  CHECK(member(run, "kind").as_string() == "train");
  CHECK(member(run, "status").as_string() == "finished");
  check_int(run, "created_at", 1'700'000'000'000);
  check_int(run, "finished_at", 1'700'000'009'000);
  // the uint64 seed is written as its exact decimal digits
  CHECK(has(text, "\"seed\":" + std::to_string(kSeed)));
  const json::Value& config = member(run, "config");
  CHECK(member(config, "strategy").as_string() == "fedavg");
  CHECK(member(config, "note").as_string() == "<b>bold</b> & co");
  check_number(config, "lr", 0.1);
  check_int(member(config, "clients"), "per_round", 4);

  const auto& rounds = member(v, "rounds").items();
  REQUIRE(rounds.size() == 5);
  for (std::size_t i = 0; i < rounds.size(); ++i) {
    INFO("round " << i);
    const RoundRecord want = f.round_record(static_cast<std::int64_t>(i));
    check_int(rounds[i], "round", want.round);
    CHECK(member(rounds[i], "status").as_string() == (i == 2 ? "abandoned" : "committed"));
    check_int(rounds[i], "started_at", want.started_at);
    check_int(rounds[i], "finished_at", want.finished_at);
    check_int(rounds[i], "selected", want.selected);
    check_int(rounds[i], "completed", want.completed);
    check_opt(rounds[i], "test_accuracy", want.test_accuracy);
    check_opt(rounds[i], "test_loss", want.test_loss);
    check_opt(rounds[i], "train_loss", want.train_loss);
    check_number(rounds[i], "round_seconds", want.round_seconds);
    check_int(rounds[i], "bytes_up", want.bytes_up);
    check_int(rounds[i], "bytes_down", want.bytes_down);
  }

  const auto& costs = member(v, "costs").items();
  REQUIRE(costs.size() == 20);
  for (std::size_t k = 0; k < costs.size(); ++k) {
    const auto round = static_cast<std::int64_t>(k / 4);
    const DeviceCost want = f.costs(round)[k % 4];
    INFO("cost " << k);
    check_int(costs[k], "round", round);
    check_int(costs[k], "device", want.device);
    check_int(costs[k], "bytes_up", want.bytes_up);
    check_int(costs[k], "bytes_down", want.bytes_down);
    check_number(costs[k], "compute_ms", want.compute_ms);
    check_int(costs[k], "peak_memory_bytes", want.peak_memory_bytes);
    check_int(costs[k], "budget_bytes", want.budget_bytes);
    check_number(costs[k], "energy_joules", want.energy_joules);
    CHECK(member(costs[k], "status").as_string() == to_string(want.status));
    check_int(costs[k], "examples", want.examples);
  }

  const auto& devices = member(v, "devices").items();
  REQUIRE(devices.size() == 4);
  for (std::size_t i = 0; i < devices.size(); ++i) {
    check_int(devices[i], "id", f.devices[i]);
    CHECK(member(devices[i], "name").as_string() == f.names[i]);
    check_int(devices[i], "rounds", 5);
    check_int(devices[i], "rounds_over_budget", i == 1 ? 2 : 0);
    check_int(devices[i], "budget_bytes", 256 * 1024);
    check_number(devices[i], "compute_ms", d.devices[i].summary.compute_ms);
  }

  const auto& assignments = member(v, "assignments").items();
  REQUIRE(assignments.size() == 2);
  CHECK(member(assignments[0], "module_name").as_string() == "student<1>");
  CHECK(member(assignments[0], "module_kind").as_string() == "student");
  check_int(assignments[0], "device", f.devices[2]);
  check_number(assignments[0], "predicted_latency_ms", 12.75);

  const auto& events = member(v, "events").items();
  REQUIRE(events.size() == 2);
  CHECK(member(events[0], "message").as_string() == kMarkupMessage);
  check_int(events[0], "device", f.devices[2]);
  CHECK(member(events[1], "device").is_null());
}

TEST_CASE("[report] CSV: one header, one row per record, RFC 4180 quoting", "[report]") {
  ReportFixture f;
  const ReportData d = f.load();
  const std::string text = render_csv(d);
  const auto rows = parse_csv(text);
  // header + run + 5 rounds + 4 devices + 20 costs + 2 assignments + 2 events
  REQUIRE(rows.size() == 1 + 1 + 5 + 4 + 20 + 2 + 2);
  const auto& header = rows[0];
  REQUIRE(header.size() == 31);
  CHECK(header[0] == "section");
  std::map<std::string, std::size_t> col;
  for (std::size_t i = 0; i < header.size(); ++i) col[header[i]] = i;
  CHECK(col.size() == header.size());  // no column twice
  std::map<std::string, int> sections;
  for (std::size_t i = 1; i < rows.size(); ++i) {
    INFO("row " << i);
    REQUIRE(rows[i].size() == header.size());
    sections[rows[i][0]] += 1;
    CHECK(rows[i][col["run"]] == std::to_string(f.run));
  }
  CHECK(sections == std::map<std::string, int>{{"run", 1}, {"round", 5}, {"device", 4}, {"cost", 20},
                                               {"assignment", 2}, {"event", 2}});
  const auto& run = rows[1];
  CHECK(run[col["seed"]] == std::to_string(kSeed));
  CHECK(run[col["text"]] == kConfig);  // quoted: it has commas and quotes
  CHECK(run[col["finished_at"]] == "1700000009000");

  // the nasty name, quoted with its quotes doubled, reads back exactly
  CHECK(has(text, "\"evil <script>alert(\"\"x\"\")</script> & 'q', too\""));
  const auto& dev = rows[7 + 2];
  CHECK(dev[0] == "device");
  CHECK(dev[col["name"]] == kNastyName);
  CHECK(dev[col["rounds"]] == "5");
  CHECK(rows[7 + 1][col["rounds_over_budget"]] == "2");

  // round 2 abandoned: no accuracy; cost rows carry their round's accuracy and time
  CHECK(rows[2 + 2][col["status"]] == "abandoned");
  CHECK(rows[2 + 2][col["test_accuracy"]].empty());
  for (std::size_t i = 11; i < 31; ++i) {
    INFO("row " << i);
    const auto& c = rows[i];
    REQUIRE(c[0] == "cost");
    const auto round = std::stoll(c[col["round"]]);
    const RoundRecord r = f.round_record(round);
    if (r.test_accuracy)
      CHECK(std::stod(c[col["test_accuracy"]]) == *r.test_accuracy);
    else
      CHECK(c[col["test_accuracy"]].empty());
    CHECK(std::stod(c[col["round_seconds"]]) == r.round_seconds);
    const DeviceCost want = f.costs(round)[(i - 11) % 4];
    CHECK(c[col["device"]] == std::to_string(want.device));
    CHECK(std::stod(c[col["compute_ms"]]) == want.compute_ms);
    CHECK(c[col["status"]] == to_string(want.status));
  }
  // the event message with a newline, quotes and a comma survives
  const auto& ev = rows[33];
  CHECK(ev[0] == "event");
  CHECK(ev[col["text"]] == kMarkupMessage);
  CHECK(ev[col["name"]] == kNastyName);
  CHECK(rows[34][col["device"]].empty());
}

TEST_CASE("[report] HTML: self-contained, balanced, escaped, four charts", "[report]") {
  ReportFixture f;
  const ReportData d = f.load();
  const std::string page = render_html(d);
  CHECK(render_html(d) == page);  // deterministic

  INFO(unbalanced_tags(page));
  CHECK(unbalanced_tags(page).empty());
  CHECK(count(page, "<svg") == 4);
  CHECK(count(page, "</svg>") == 4);

  // nothing from outside, nothing that runs
  const std::string low = lower(page);
  for (const char* bad : {"<script", "http://", "https://", "<img", "<link", "<iframe", "<object", "<embed",
                          "url(", "@import", "javascript:"}) {
    INFO(bad);
    CHECK_FALSE(has(low, bad));
  }
  // everything from the database escaped
  CHECK_FALSE(has(page, kNastyName));
  CHECK(has(page, kNastyNameHtml));
  CHECK(has(page, "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot;"));
  CHECK(has(page, "student&lt;1&gt;"));
  CHECK(has(page, "&quot;note&quot;: &quot;&lt;b&gt;bold&lt;/b&gt; &amp; co&quot;"));  // pretty config
  CHECK(has(page, "&quot;per_round&quot;: 4"));
  // header
  CHECK(has(page, "<dt>Run</dt><dd>" + std::to_string(f.run) + "</dd>"));
  CHECK(has(page, "<dt>Kind</dt><dd>train</dd>"));
  CHECK(has(page, "<dt>Status</dt><dd>finished</dd>"));
  CHECK(has(page, "<dt>Seed</dt><dd>" + std::to_string(kSeed) + "</dd>"));
  CHECK(has(page, "<dt>Devices</dt><dd>4</dd>"));
  CHECK(has(page, "<dt>Created</dt><dd>2023-11-14 22:13:20 UTC</dd>"));

  // (1) one point per evaluated round, one mark for the abandoned round
  const std::string acc = chart(page, "chart-accuracy");
  CHECK(count(acc, "class=\"pt\"") == 4);
  CHECK(count(acc, "class=\"abandoned-mark\"") == 1);
  CHECK(has(acc, "round 2 abandoned"));
  CHECK(has(acc, "%</text>"));  // the axis is in percent
  // (2) a heatmap cell per device and round, with a legend
  const std::string bytes = chart(page, "chart-bytes");
  CHECK(count(bytes, "class=\"cell\"") == 20);
  CHECK(has(bytes, "not selected"));
  CHECK(has(bytes, " KiB</text>"));
  CHECK(has(bytes, kNastyNameHtml));
  // (3) exactly edge-b over budget, a budget tick per device
  const std::string mem = chart(page, "chart-memory");
  REQUIRE(count(mem, "class=\"bar over\"") == 1);
  const std::size_t over = mem.find("class=\"bar over\"");
  CHECK(mem.substr(over, mem.find("</rect>", over) - over).find("<title>edge-b: ") != std::string::npos);
  CHECK(count(mem, "class=\"bar\"") == 3);
  CHECK(count(mem, "class=\"budget\"") == 4);
  // (4) a bar per round, the abandoned one apart
  const std::string time = chart(page, "chart-time");
  CHECK(count(time, "class=\"bar\"") == 4);
  CHECK(count(time, "class=\"bar abandoned\"") == 1);
  CHECK(has(time, "round time (s)"));

  // tables: a row per round, the abandoned one marked
  CHECK(count(page, "<tr class=\"abandoned\">") == 1);
  CHECK(count(page, "<tr class=\"over\">") == 1);
}

TEST_CASE("[report] 100 devices: the heatmap keeps 20 rows and one for the others", "[report]") {
  ReportTempDir tmp;
  const std::string path = tmp.file("fleet.db");
  {
    auto s = Store::open(path);
    ok_or_fail(s);
    std::vector<std::int64_t> ids;
    for (int i = 0; i < 100; ++i) {
      DeviceRecord dev;
      dev.name = "node-" + std::to_string(i);
      dev.capabilities.memory_budget_bytes = 1 << 20;
      auto id = s->upsert_device(dev);
      ok_or_fail(id);
      ids.push_back(*id);
    }
    auto run = s->create_run(RunKind::train, "{}", 1, 0);
    ok_or_fail(run);
    for (std::int64_t round = 1; round <= 3; ++round) {
      RoundRecord r;
      r.run = *run;
      r.round = round;
      r.selected = r.completed = 100;
      r.test_accuracy = 0.5;
      std::vector<DeviceCost> costs;
      for (int i = 0; i < 100; ++i) {
        DeviceCost c;
        c.device = ids[static_cast<std::size_t>(i)];
        c.bytes_up = 1000 * (i + 1);
        c.peak_memory_bytes = (i == 42 ? 2 : 1) * 600'000;
        c.budget_bytes = 1 << 20;
        costs.push_back(c);
      }
      ok_or_fail(s->commit_round(r, costs, Checkpoint{}));
    }
  }
  OpenOptions o;
  o.read_only = true;
  auto s = Store::open(path, o);
  ok_or_fail(s);
  auto d = load_report(*s, 1);
  ok_or_fail(d);
  const std::string page = render_html(*d);
  CHECK(unbalanced_tags(page).empty());
  const std::string bytes = chart(page, "chart-bytes");
  CHECK(count(bytes, "class=\"cell\"") == 21 * 3);
  CHECK(has(bytes, "others (80, mean)"));
  CHECK(has(bytes, ">node-99</text>"));  // the most bytes: a row of its own
  CHECK_FALSE(has(bytes, ">node-0</text>"));
  const std::string mem = chart(page, "chart-memory");
  CHECK(count(mem, "class=\"bar\"") + count(mem, "class=\"bar over\"") == 100);
  CHECK(count(mem, "class=\"bar over\"") == 1);
  CHECK(has(mem, "<title>node-42: "));
  CHECK(count(chart(page, "chart-accuracy"), "class=\"pt\"") == 3);
}

TEST_CASE("[report] a run without rounds renders in all three formats", "[report]") {
  ReportTempDir tmp;
  const std::string path = tmp.file("fleet.db");
  {
    auto s = Store::open(path);
    ok_or_fail(s);
    ok_or_fail(s->create_run(RunKind::infer, "[1, 2]", 0, 0));
  }
  OpenOptions o;
  o.read_only = true;
  auto s = Store::open(path, o);
  ok_or_fail(s);
  auto d = load_report(*s, 1);
  ok_or_fail(d);
  const std::string page = render_html(*d);
  CHECK(unbalanced_tags(page).empty());
  CHECK(count(page, "</svg>") == 4);
  CHECK(has(page, "no rounds recorded"));
  CHECK(has(page, "– (still running)"));
  auto v = json::parse(render_json(*d));
  REQUIRE(v.ok());
  CHECK(member(*v, "rounds").items().empty());
  CHECK(member(member(*v, "run"), "finished_at").is_null());
  CHECK(member(member(*v, "run"), "config").items().size() == 2);
  CHECK(parse_csv(render_csv(*d)).size() == 2);
}

TEST_CASE("[report] a read-only open writes nothing and refuses what it cannot read", "[report]") {
  ReportFixture f;
  // The writer closed: its WAL was checkpointed into the file and removed.
  const std::string before = slurp(f.path);
  CHECK_FALSE(fs::exists(f.path + "-wal"));
  {
    const ReportData d = f.load();
    CHECK(d.rounds.size() == 5);
  }
  CHECK(slurp(f.path) == before);
  CHECK_FALSE(fs::exists(f.path + "-wal"));
  CHECK_FALSE(fs::exists(f.path + "-shm"));

  OpenOptions o;
  o.read_only = true;
  {
    auto s = Store::open(f.path, o);
    ok_or_fail(s);
    DeviceRecord dev;
    dev.name = "intruder";
    auto w = s->upsert_device(dev);
    REQUIRE_FALSE(w.ok());
    CHECK(has(w.error().message, "readonly"));
  }
  CHECK(slurp(f.path) == before);

  const std::string missing = f.tmp.file("missing.db");
  auto m = Store::open(missing, o);
  REQUIRE_FALSE(m.ok());
  CHECK(m.error().message == missing + ": no such fleet database");
  CHECK_FALSE(fs::exists(missing));

  const std::string empty = f.tmp.file("empty.db");
  { std::ofstream(empty, std::ios::binary); }
  auto e = Store::open(empty, o);
  REQUIRE_FALSE(e.ok());
  CHECK(has(e.error().message, "not a fleetdl database"));
  CHECK(fs::file_size(empty) == 0);  // not migrated
}

TEST_CASE("[report] read_snapshot: a round committed meanwhile stays invisible until it ends", "[report]") {
  ReportFixture f;
  auto writer = Store::open(f.path);
  ok_or_fail(writer);
  OpenOptions o;
  o.read_only = true;
  auto reader = Store::open(f.path, o);
  ok_or_fail(reader);
  std::size_t first = 0, second = 0, costs = 0;
  ok_or_fail(reader->read_snapshot([&]() -> fleetdl::Result<void> {
    auto r = reader->rounds(f.run);
    if (!r) return std::move(r).error();
    first = r->size();
    // another connection commits round 5 while the snapshot is open
    RoundRecord next = f.round_record(4);
    next.round = 5;
    FLEETDL_TRY(writer->commit_round(next, f.costs(5), Checkpoint{}));
    auto again = reader->rounds(f.run);
    if (!again) return std::move(again).error();
    second = again->size();
    auto c = reader->device_costs(f.run);
    if (!c) return std::move(c).error();
    costs = c->size();
    return fleetdl::success();
  }));
  CHECK(first == 5);
  CHECK(second == 5);
  CHECK(costs == 20);
  auto after = reader->rounds(f.run);
  ok_or_fail(after);
  CHECK(after->size() == 6);
  // a failing body ends the transaction too
  auto failed = reader->read_snapshot([]() -> fleetdl::Result<void> {
    return fleetdl::make_error(fleetdl::Errc::invalid_argument, "stop");
  });
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.error().message == "stop");
  ok_or_fail(reader->read_snapshot([]() -> fleetdl::Result<void> { return fleetdl::success(); }));
}
