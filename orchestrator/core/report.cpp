// orchestrator/core/report.cpp — load_report() and the HTML, JSON and CSV
// renderers of a run. The SVG charts are drawn here from scratch: linear
// scales with "nice" 1-2-5 ticks, binary byte units (B, KiB, MiB, GiB), and
// native SVG <title> tooltips, so the page needs no JavaScript.
#include "report.hpp"

#include "fleetdl/core/json.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <set>
#include <string_view>
#include <utility>

namespace fleetdl::core {

// ------------------------------------------------------------------- load
Result<ReportData> load_report(Store& store, std::int64_t run) {
  ReportData d;
  FLEETDL_TRY(store.read_snapshot([&]() -> Result<void> {
    auto r = store.run(run);
    if (!r) return std::move(r).error();
    d.run = std::move(*r);
    auto rounds = store.rounds(run);
    if (!rounds) return std::move(rounds).error();
    d.rounds = std::move(*rounds);
    auto costs = store.device_costs(run);
    if (!costs) return std::move(costs).error();
    d.costs = std::move(*costs);
    auto assignments = store.assignments(run);
    if (!assignments) return std::move(assignments).error();
    d.assignments = std::move(*assignments);
    auto events = store.events(run);
    if (!events) return std::move(events).error();
    d.events = std::move(*events);
    auto summaries = store.device_summaries(run);
    if (!summaries) return std::move(summaries).error();
    auto devices = store.devices();
    if (!devices) return std::move(devices).error();

    std::set<std::int64_t> used;
    for (const auto& c : d.costs) used.insert(c.cost.device);
    for (const auto& a : d.assignments) used.insert(a.device);
    for (const auto& e : d.events)
      if (e.device) used.insert(*e.device);
    std::map<std::int64_t, DeviceRunSummary> by_id;
    for (auto& s : *summaries) by_id.emplace(s.device, std::move(s));
    for (auto& dev : *devices) {
      if (used.count(dev.id) == 0) continue;
      ReportDevice rd;
      const auto it = by_id.find(dev.id);
      if (it != by_id.end()) {
        rd.summary = it->second;
      } else {
        rd.summary.device = dev.id;
        rd.summary.name = dev.name;
      }
      rd.record = std::move(dev);
      d.devices.push_back(std::move(rd));
    }
    return success();
  }));
  return d;
}

namespace {

// ------------------------------------------------------------ text helpers
std::string printf_str(const char* fmt, double v) {
  std::array<char, 64> buf{};
  std::snprintf(buf.data(), buf.size(), fmt, v);
  return buf.data();
}

/// Length of the valid UTF-8 sequence at s[i], or 0 when it is not one.
std::size_t utf8_length(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  std::size_t n = 0;
  std::uint32_t cp = 0;
  if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1F;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0F;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07;
  else return 0;
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  // overlong forms, surrogates, beyond U+10FFFF
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return n;
}

/// Text for HTML content and attribute values: & < > " ' escaped, control
/// characters other than tab, CR and LF and bytes that are not UTF-8
/// replaced by U+FFFD.
std::string html(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 16);
  std::size_t i = 0;
  while (i < s.size()) {
    const std::size_t n = utf8_length(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    if (n > 1) {
      out.append(s.data() + i, n);
      i += n;
      continue;
    }
    const char c = s[i++];
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default:
        if ((static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t' && c != '\r') || c == 0x7F)
          out += "\xEF\xBF\xBD";
        else
          out += c;
    }
  }
  return out;
}

/// At most `max` code points of s, "…" appended when cut (before escaping).
std::string shorten(std::string_view s, std::size_t max) {
  std::size_t i = 0, count = 0;
  while (i < s.size() && count < max) {
    const std::size_t n = utf8_length(s, i);
    i += n == 0 ? 1 : n;
    ++count;
  }
  if (i >= s.size()) return std::string(s);
  return std::string(s.substr(0, i)) + "\xE2\x80\xA6";
}

std::string utc(UnixMs ms) {
  const auto t = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  std::tm tm{};
  if (gmtime_r(&t, &tm) == nullptr) return std::to_string(ms) + " ms";
  std::array<char, 40> buf{};
  std::strftime(buf.data(), buf.size(), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf.data();
}

struct ByteUnit {
  double div;
  const char* name;
};

ByteUnit byte_unit(double max) {
  if (max >= 1024.0 * 1024 * 1024) return {1024.0 * 1024 * 1024, "GiB"};
  if (max >= 1024.0 * 1024) return {1024.0 * 1024, "MiB"};
  if (max >= 1024.0) return {1024.0, "KiB"};
  return {1.0, "B"};
}

/// Three significant digits (whole numbers from 100 up): 0.0123, 1.5, 12.3, 123, 1234.
std::string short_number(double v) {
  if (std::fabs(v) >= 100 || v == 0) return printf_str("%.0f", v);
  return printf_str("%.3g", v);
}

std::string fmt_bytes(double v) {
  const ByteUnit u = byte_unit(v);
  if (u.div == 1.0) return printf_str("%.0f", v) + " B";
  return short_number(v / u.div) + " " + u.name;
}

std::string fmt_seconds(double s) {
  if (!std::isfinite(s)) return "–";
  return short_number(s) + " s";
}

std::string fmt_ms(double ms) {
  if (!std::isfinite(ms)) return "–";
  return ms >= 1000 ? fmt_seconds(ms / 1000) : short_number(ms) + " ms";
}

std::string fmt_percent(const std::optional<double>& v) {
  if (!v || !std::isfinite(*v)) return "–";
  return printf_str("%.2f", *v * 100) + "%";
}

std::string fmt_opt(const std::optional<double>& v) {
  if (!v || !std::isfinite(*v)) return "–";
  return printf_str("%.4g", *v);
}

std::string int_str(std::int64_t v) { return std::to_string(v); }

/// An SVG coordinate.
std::string co(double v) { return printf_str("%.1f", v); }

// ------------------------------------------------------------ JSON writer
/// JSON text of a parsed value: compact (indent < 0) or pretty. Integers keep
/// their exact int64 value; other numbers their shortest round-trip form.
void write_json(std::string& out, const json::Value& v, int indent, int depth) {
  const auto newline = [&](int d) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<std::size_t>(indent * d), ' ');
  };
  switch (v.kind()) {
    case json::Kind::null: out += "null"; break;
    case json::Kind::boolean: out += v.as_bool() ? "true" : "false"; break;
    case json::Kind::number:
      out += v.is_int() ? std::to_string(v.as_int()) : json::number(v.as_double());
      break;
    case json::Kind::string: out += '"' + json::escape(v.as_string()) + '"'; break;
    case json::Kind::array: {
      if (v.items().empty()) {
        out += "[]";
        break;
      }
      out += '[';
      for (std::size_t i = 0; i < v.items().size(); ++i) {
        if (i > 0) out += ',';
        newline(depth + 1);
        write_json(out, v.items()[i], indent, depth + 1);
      }
      newline(depth);
      out += ']';
      break;
    }
    case json::Kind::object: {
      if (v.members().empty()) {
        out += "{}";
        break;
      }
      out += '{';
      for (std::size_t i = 0; i < v.members().size(); ++i) {
        if (i > 0) out += ',';
        newline(depth + 1);
        out += '"' + json::escape(v.members()[i].first) + (indent < 0 ? "\":" : "\": ");
        write_json(out, v.members()[i].second, indent, depth + 1);
      }
      newline(depth);
      out += '}';
      break;
    }
  }
}

std::string jstr(std::string_view s) { return '"' + json::escape(s) + '"'; }
std::string jnum(double v) { return json::number(v); }
std::string jopt(const std::optional<double>& v) { return v ? json::number(*v) : "null"; }
std::string jopt(const std::optional<std::int64_t>& v) { return v ? std::to_string(*v) : "null"; }

/// A JSON object built member by member, in order.
class JsonObject {
 public:
  JsonObject& raw(std::string_view key, const std::string& text) {
    out_ += out_.empty() ? "{" : ",";
    out_ += jstr(key) + ":" + text;
    return *this;
  }
  JsonObject& str(std::string_view key, std::string_view v) { return raw(key, jstr(v)); }
  JsonObject& integer(std::string_view key, std::int64_t v) { return raw(key, std::to_string(v)); }
  JsonObject& real(std::string_view key, double v) { return raw(key, jnum(v)); }
  std::string done() { return out_.empty() ? "{}" : out_ + "}"; }

 private:
  std::string out_;
};

std::string json_array(const std::vector<std::string>& items) {
  if (items.empty()) return "[]";
  std::string out = "[\n";
  for (std::size_t i = 0; i < items.size(); ++i) out += items[i] + (i + 1 < items.size() ? ",\n" : "\n");
  return out + "]";
}

// ------------------------------------------------------------- SVG charts
struct Plot {
  double x, y, w, h;  ///< the plotting area inside the SVG
};

struct Ticks {
  double lo = 0, hi = 1, step = 1;
  std::vector<double> values;
};

/// Ticks at 1, 2 or 5 times a power of ten covering [lo, hi] with about
/// `target` intervals; the range grows to whole steps. `integer`: step >= 1.
Ticks nice_ticks(double lo, double hi, int target, bool integer = false) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (hi < lo) std::swap(lo, hi);
  if (hi == lo) {
    const double pad = integer || lo == 0 ? 1 : std::fabs(lo) * 0.1;
    const bool non_negative = lo >= 0;
    lo -= pad;
    hi += pad;
    if (non_negative && lo < 0) lo = 0;
  }
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  double step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
  if (integer) step = std::max(1.0, std::round(step));
  Ticks t;
  t.step = step;
  t.lo = std::floor(lo / step + 1e-9) * step;
  t.hi = std::ceil(hi / step - 1e-9) * step;
  for (int i = 0;; ++i) {
    const double v = t.lo + i * step;
    if (v > t.hi + step * 1e-6 || i > 1000) break;
    t.values.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  }
  return t;
}

std::string tick_label(double v, double step) {
  int decimals = 0;
  if (step < 1) decimals = std::min(6, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  std::array<char, 48> buf{};
  std::snprintf(buf.data(), buf.size(), "%.*f", decimals, v);
  return buf.data();
}

/// Rounds on the x axis as bands: round r is centred in its band, so points,
/// bars and heatmap columns line up across the charts.
struct RoundScale {
  std::int64_t first = 0, last = 0;
  Plot p{};
  double band() const { return p.w / static_cast<double>(last - first + 1); }
  double x(std::int64_t r) const { return p.x + (static_cast<double>(r - first) + 0.5) * band(); }
  double left(std::int64_t r) const { return p.x + static_cast<double>(r - first) * band(); }
};

struct LinearScale {
  double lo = 0, hi = 1, pixel_lo = 0, pixel_hi = 1;
  double operator()(double v) const {
    return pixel_lo + (v - lo) / (hi - lo) * (pixel_hi - pixel_lo);
  }
};

constexpr double kWidth = 860;
constexpr const char* kAxisColor = "#444";
constexpr const char* kGridColor = "#e3e3e3";
constexpr const char* kBlue = "#3b6fb6";
constexpr const char* kRed = "#d62728";
constexpr const char* kOrange = "#e8860c";

class Svg {
 public:
  Svg(std::string id, double height, std::string title, std::string description) : id_(std::move(id)) {
    out_ += "<svg class=\"chart\" id=\"" + id_ + "\" viewBox=\"0 0 " + co(kWidth) + " " + co(height) +
            "\" width=\"" + co(kWidth) + "\" height=\"" + co(height) + "\" role=\"img\" aria-labelledby=\"" +
            id_ + "-title\">\n<title id=\"" + id_ + "-title\">" + html(title) + ". " + html(description) +
            "</title>\n";
    text(kWidth / 2, 20, title, "middle", "chart-title", 15, "bold");
  }
  void raw(const std::string& s) { out_ += s; }
  void text(double x, double y, std::string_view s, const char* anchor = "start", const char* cls = nullptr,
            int size = 11, const char* weight = nullptr, const char* extra = nullptr) {
    out_ += "<text x=\"" + co(x) + "\" y=\"" + co(y) + "\" text-anchor=\"" + anchor + "\" font-size=\"" +
            std::to_string(size) + "\"";
    if (cls != nullptr) out_ += std::string(" class=\"") + cls + "\"";
    if (weight != nullptr) out_ += std::string(" font-weight=\"") + weight + "\"";
    if (extra != nullptr) out_ += std::string(" ") + extra;
    out_ += ">" + html(s) + "</text>\n";
  }
  void line(double x1, double y1, double x2, double y2, const char* color, double width = 1,
            const char* extra = nullptr) {
    out_ += "<line x1=\"" + co(x1) + "\" y1=\"" + co(y1) + "\" x2=\"" + co(x2) + "\" y2=\"" + co(y2) +
            "\" stroke=\"" + color + "\" stroke-width=\"" + printf_str("%.1f", width) + "\"";
    if (extra != nullptr) out_ += std::string(" ") + extra;
    out_ += "/>\n";
  }
  /// A rect with a tooltip.
  void rect(double x, double y, double w, double h, const std::string& fill, const char* cls,
            std::string_view tooltip) {
    out_ += "<rect";
    if (cls != nullptr) out_ += std::string(" class=\"") + cls + "\"";
    out_ += " x=\"" + co(x) + "\" y=\"" + co(y) + "\" width=\"" + co(std::max(w, 0.0)) + "\" height=\"" +
            co(std::max(h, 0.0)) + "\" fill=\"" + fill + "\"";
    if (tooltip.empty()) {
      out_ += "/>\n";
    } else {
      out_ += "><title>" + html(tooltip) + "</title></rect>\n";
    }
  }
  /// Horizontal grid lines and labels of a y axis, its title rotated.
  void y_axis(const Plot& p, const LinearScale& s, const Ticks& t, const std::string& unit_suffix,
              std::string_view title) {
    for (double v : t.values) {
      const double y = s(v);
      line(p.x, y, p.x + p.w, y, kGridColor);
      line(p.x - 4, y, p.x, y, kAxisColor);
      text(p.x - 7, y + 4, tick_label(v, t.step) + unit_suffix, "end");
    }
    line(p.x, p.y, p.x, p.y + p.h, kAxisColor);
    const double cx = 16, cy = p.y + p.h / 2;
    const std::string rot = "transform=\"rotate(-90 " + co(cx) + " " + co(cy) + ")\"";
    text(cx, cy, title, "middle", "axis-title", 12, nullptr, rot.c_str());
  }
  /// Round numbers along the bottom.
  void round_axis(const RoundScale& rs) {
    const Plot& p = rs.p;
    const Ticks t = nice_ticks(static_cast<double>(rs.first), static_cast<double>(rs.last),
                               std::max(2, std::min(10, static_cast<int>(rs.last - rs.first) + 1)), true);
    line(p.x, p.y + p.h, p.x + p.w, p.y + p.h, kAxisColor);
    for (double v : t.values) {
      const auto r = static_cast<std::int64_t>(std::llround(v));
      if (r < rs.first || r > rs.last) continue;
      const double x = rs.x(r);
      line(x, p.y + p.h, x, p.y + p.h + 4, kAxisColor);
      text(x, p.y + p.h + 16, std::to_string(r), "middle");
    }
    text(p.x + p.w / 2, p.y + p.h + 34, "round", "middle", "axis-title", 12);
  }
  /// A one-line legend: (swatch kind, color, label) items from x at y.
  struct LegendItem {
    const char* kind;  ///< "box", "dot", "cross", "line"
    std::string color;
    std::string label;
  };
  void legend(double x, double y, const std::vector<LegendItem>& items) {
    for (const auto& it : items) {
      const std::string k = it.kind;
      if (k == "box") {
        rect(x, y - 9, 11, 11, it.color, nullptr, "");
      } else if (k == "dot") {
        out_ += "<circle cx=\"" + co(x + 5.5) + "\" cy=\"" + co(y - 3.5) + "\" r=\"4\" fill=\"" + it.color + "\"/>\n";
      } else if (k == "cross") {
        line(x + 1, y - 8, x + 10, y + 1, it.color.c_str(), 2);
        line(x + 1, y + 1, x + 10, y - 8, it.color.c_str(), 2);
      } else {
        line(x + 5.5, y - 10, x + 5.5, y + 2, it.color.c_str(), 2.5);
      }
      text(x + 16, y, it.label);
      x += 16 + 6.5 * static_cast<double>(it.label.size()) + 22;
    }
  }
  void message(const Plot& p, std::string_view s) {
    text(p.x + p.w / 2, p.y + p.h / 2, s, "middle", "no-data", 13);
  }
  std::string done() { return out_ + "</svg>\n"; }

 private:
  std::string id_;
  std::string out_;
};

/// Sequential blue scale for t in [0, 1] (light to dark, readable in grey).
std::string heat_color(double t) {
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0);
  static constexpr std::array<std::array<double, 3>, 3> stops{{{247, 251, 255}, {107, 174, 214}, {8, 48, 107}}};
  const double s = t * 2;
  const std::size_t i = s >= 1 ? 1 : 0;
  const double f = s - static_cast<double>(i);
  std::array<char, 8> buf{};
  std::snprintf(buf.data(), buf.size(), "#%02x%02x%02x",
                static_cast<int>(std::lround(stops[i][0] + (stops[i + 1][0] - stops[i][0]) * f)),
                static_cast<int>(std::lround(stops[i][1] + (stops[i + 1][1] - stops[i][1]) * f)),
                static_cast<int>(std::lround(stops[i][2] + (stops[i + 1][2] - stops[i][2]) * f)));
  return buf.data();
}

/// The device's name (d.devices is sorted by id).
std::string device_label(const ReportData& d, std::int64_t id) {
  const auto it = std::lower_bound(d.devices.begin(), d.devices.end(), id,
                                   [](const ReportDevice& dev, std::int64_t v) { return dev.record.id < v; });
  if (it != d.devices.end() && it->record.id == id) return it->record.name;
  return "device " + std::to_string(id);
}

/// Devices with cost rows: the rows of the heatmap and the memory chart.
std::size_t devices_with_costs(const ReportData& d) {
  return static_cast<std::size_t>(std::count_if(d.devices.begin(), d.devices.end(),
                                                [](const ReportDevice& dev) { return dev.summary.rounds > 0; }));
}

RoundScale round_scale(const ReportData& d, const Plot& p) {
  RoundScale rs;
  rs.p = p;
  rs.first = d.rounds.front().round;
  rs.last = d.rounds.back().round;
  return rs;
}

// (1) test accuracy per round: a line through the evaluated rounds, a point
// each, and a red cross with a dashed line at every abandoned round.
std::string accuracy_chart(const ReportData& d) {
  const Plot p{70, 40, kWidth - 90, 220};
  Svg svg("chart-accuracy", p.y + p.h + 70, "Test accuracy per round",
          "One point per evaluated round; abandoned rounds are marked with a red cross");
  if (d.rounds.empty()) {
    svg.message(p, "no rounds recorded");
    return svg.done();
  }
  const RoundScale rs = round_scale(d, p);
  double lo = 100, hi = 0;
  std::size_t evaluated = 0;
  for (const auto& r : d.rounds)
    if (r.test_accuracy && std::isfinite(*r.test_accuracy)) {
      lo = std::min(lo, *r.test_accuracy * 100);
      hi = std::max(hi, *r.test_accuracy * 100);
      ++evaluated;
    }
  if (evaluated == 0) lo = 0, hi = 100;
  const double pad = std::max(1.0, (hi - lo) * 0.08);
  Ticks t = nice_ticks(std::max(0.0, lo - pad), std::min(100.0, hi + pad), 5);
  t.lo = std::max(0.0, t.lo);
  t.hi = std::min(100.0, t.hi);
  std::erase_if(t.values, [&](double v) { return v < t.lo - 1e-9 || v > t.hi + 1e-9; });
  const LinearScale ys{t.lo, t.hi, p.y + p.h, p.y};
  svg.y_axis(p, ys, t, "%", "test accuracy (%)");
  svg.round_axis(rs);

  for (const auto& r : d.rounds) {
    if (r.status != RoundStatus::abandoned) continue;
    const double x = rs.x(r.round), yb = p.y + p.h - 8;
    svg.raw("<g class=\"abandoned-mark\"><title>" + html("round " + std::to_string(r.round) + " abandoned (" +
                                                         std::to_string(r.completed) + " of " +
                                                         std::to_string(r.selected) + " updates)") +
            "</title>\n");
    svg.line(x, p.y, x, p.y + p.h, kRed, 1, "stroke-dasharray=\"3 3\" opacity=\"0.6\"");
    svg.line(x - 5, yb - 5, x + 5, yb + 5, kRed, 2);
    svg.line(x - 5, yb + 5, x + 5, yb - 5, kRed, 2);
    svg.raw("</g>\n");
  }
  if (evaluated == 0) {
    svg.message(p, "no round was evaluated");
  } else {
    std::string points;
    for (const auto& r : d.rounds)
      if (r.test_accuracy && std::isfinite(*r.test_accuracy)) {
        if (!points.empty()) points += ' ';
        points += co(rs.x(r.round));
        points += ',';
        points += co(ys(*r.test_accuracy * 100));
      }
    svg.raw("<polyline fill=\"none\" stroke=\"" + std::string(kBlue) + "\" stroke-width=\"2\" points=\"" + points +
            "\"/>\n");
    const double radius = std::clamp(rs.band() / 3, 1.5, 4.0);
    for (const auto& r : d.rounds) {
      if (!r.test_accuracy || !std::isfinite(*r.test_accuracy)) continue;
      svg.raw("<circle class=\"pt\" cx=\"" + co(rs.x(r.round)) + "\" cy=\"" + co(ys(*r.test_accuracy * 100)) +
              "\" r=\"" + co(radius) + "\" fill=\"" + kBlue + "\"><title>" +
              html("round " + std::to_string(r.round) + ": " + fmt_percent(r.test_accuracy) +
                   (r.status == RoundStatus::abandoned ? " (abandoned)" : "")) +
              "</title></circle>\n");
    }
  }
  svg.legend(p.x, p.y + p.h + 56, {{"dot", kBlue, "test accuracy"}, {"cross", kRed, "abandoned round"}});
  return svg.done();
}

// (2) bytes up + down per device per round as a heatmap: one row per device
// for the devices with the most bytes (html_report_heatmap_devices), one row
// with the mean of the others, one column per round. Cells of a device not
// selected in a round stay grey.
std::string bytes_chart(const ReportData& d) {
  struct Row {
    std::string label, tooltip_name;
    std::map<std::int64_t, double> cells;  ///< round -> bytes
  };
  std::map<std::int64_t, double> total;
  for (const auto& c : d.costs)
    total[c.cost.device] += static_cast<double>(c.cost.bytes_up) + static_cast<double>(c.cost.bytes_down);
  std::vector<std::pair<std::int64_t, double>> order(total.begin(), total.end());
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  const bool others = order.size() > html_report_heatmap_devices + 1;
  const std::size_t shown = others ? html_report_heatmap_devices : order.size();
  std::vector<Row> rows;
  std::map<std::int64_t, std::size_t> row_of;
  for (std::size_t i = 0; i < shown; ++i) {
    const std::string name = device_label(d, order[i].first);
    rows.push_back({shorten(name, 22), name, {}});
    row_of[order[i].first] = i;
  }
  std::map<std::int64_t, std::pair<double, int>> other_cells;  // round -> (sum, devices)
  for (const auto& c : d.costs) {
    const double b = static_cast<double>(c.cost.bytes_up) + static_cast<double>(c.cost.bytes_down);
    const auto it = row_of.find(c.cost.device);
    if (it != row_of.end()) {
      rows[it->second].cells[c.round] = b;
    } else {
      auto& o = other_cells[c.round];
      o.first += b;
      o.second += 1;
    }
  }
  if (others) {
    const std::string label = "others (" + std::to_string(order.size() - shown) + ", mean)";
    Row o{label, "mean of the other " + std::to_string(order.size() - shown) + " devices", {}};
    for (const auto& [round, sum_n] : other_cells) o.cells[round] = sum_n.first / sum_n.second;
    rows.push_back(std::move(o));
  }
  const double row_h = 16;
  const Plot p{180, 40, kWidth - 200, std::max(row_h, row_h * static_cast<double>(rows.size()))};
  Svg svg("chart-bytes", p.y + p.h + 96, "Bytes up + down per device per round",
          "Heatmap: one row per device, one column per round, darker is more bytes");
  if (d.rounds.empty() || d.costs.empty()) {
    svg.message(p, "no device costs recorded");
    return svg.done();
  }
  const RoundScale rs = round_scale(d, p);
  double max = 0;
  for (const auto& r : rows)
    for (const auto& [round, b] : r.cells) max = std::max(max, b);
  svg.rect(p.x, p.y, p.w, p.h, "#d9d9d9", "not-selected", "");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const double y = p.y + row_h * static_cast<double>(i);
    svg.text(p.x - 6, y + row_h / 2 + 4, rows[i].label, "end", nullptr, 11, nullptr, nullptr);
    for (const auto& [round, b] : rows[i].cells)
      svg.rect(rs.left(round), y, rs.band(), row_h, heat_color(max > 0 ? b / max : 0), "cell",
               rows[i].tooltip_name + ", round " + std::to_string(round) + ": " + fmt_bytes(b) + " (" +
                   printf_str("%.0f", b) + " B)");
  }
  svg.text(16, p.y + p.h / 2, "device", "middle", "axis-title", 12, nullptr,
           ("transform=\"rotate(-90 16 " + co(p.y + p.h / 2) + ")\"").c_str());
  svg.round_axis(rs);
  // colour legend: a strip of 40 steps from 0 to the largest cell, with ticks
  const ByteUnit u = byte_unit(max);
  const Ticks t = nice_ticks(0, max > 0 ? max / u.div : 1, 4);
  const double lx = p.x, ly = p.y + p.h + 52, lw = 260;
  const double top = t.hi;
  for (int i = 0; i < 40; ++i)
    svg.rect(lx + lw * i / 40.0, ly, lw / 40.0 + 0.3, 10, heat_color((i + 0.5) / 40.0 * top * u.div / std::max(max, 1.0)),
             nullptr, "");
  for (double v : t.values) {
    const double x = lx + lw * v / top;
    svg.line(x, ly + 10, x, ly + 14, kAxisColor);
    svg.text(x, ly + 26, tick_label(v, t.step) + " " + u.name, "middle", nullptr, 10);
  }
  svg.text(lx + lw + 14, ly + 9, "bytes up + down in the round", "start", nullptr, 11);
  svg.rect(lx + lw + 200, ly, 11, 10, "#d9d9d9", nullptr, "");
  svg.text(lx + lw + 216, ly + 9, "not selected", "start", nullptr, 11);
  return svg.done();
}

// (3) peak memory against budget per device: one horizontal bar each (the
// largest peak over the run), the budget as a black tick; devices over their
// budget in any round are red.
std::string memory_chart(const ReportData& d) {
  std::vector<const ReportDevice*> devs;
  for (const auto& dev : d.devices)
    if (dev.summary.rounds > 0) devs.push_back(&dev);
  const double row_h = 18;
  const Plot p{180, 40, kWidth - 210, std::max(row_h, row_h * static_cast<double>(devs.size()))};
  Svg svg("chart-memory", p.y + p.h + 74, "Peak memory against budget per device",
          "Bars: largest peak memory over the run; black tick: memory budget; red: over budget in some round");
  if (devs.empty()) {
    svg.message(p, "no device costs recorded");
    return svg.done();
  }
  double max = 0;
  for (const auto* dev : devs)
    max = std::max({max, static_cast<double>(dev->summary.max_peak_memory_bytes),
                    static_cast<double>(dev->summary.budget_bytes)});
  const ByteUnit u = byte_unit(max);
  const Ticks t = nice_ticks(0, max > 0 ? max / u.div : 1, 6);
  const LinearScale xs{0, t.hi * u.div, p.x, p.x + p.w};
  for (double v : t.values) {
    const double x = xs(v * u.div);
    svg.line(x, p.y, x, p.y + p.h, kGridColor);
    svg.line(x, p.y + p.h, x, p.y + p.h + 4, kAxisColor);
    svg.text(x, p.y + p.h + 16, tick_label(v, t.step) + " " + u.name, "middle");
  }
  svg.line(p.x, p.y, p.x, p.y + p.h, kAxisColor);
  svg.line(p.x, p.y + p.h, p.x + p.w, p.y + p.h, kAxisColor);
  svg.text(p.x + p.w / 2, p.y + p.h + 34, "peak memory (largest over the run)", "middle", "axis-title", 12);
  for (std::size_t i = 0; i < devs.size(); ++i) {
    const DeviceRunSummary& s = devs[i]->summary;
    const double y = p.y + row_h * static_cast<double>(i);
    const bool has_budget = s.budget_bytes > 0;
    const bool over = has_budget && s.rounds_over_budget > 0;
    svg.text(p.x - 6, y + row_h / 2 + 4, shorten(s.name, 24), "end");
    const std::string tip =
        s.name + ": peak " + fmt_bytes(static_cast<double>(s.max_peak_memory_bytes)) +
        (has_budget ? ", budget " + fmt_bytes(static_cast<double>(s.budget_bytes)) + ", over budget in " +
                          std::to_string(s.rounds_over_budget) + " of " + std::to_string(s.rounds) + " rounds"
                    : ", no budget recorded");
    svg.rect(p.x, y + 3, xs(static_cast<double>(s.max_peak_memory_bytes)) - p.x, row_h - 6, over ? kRed : kBlue,
             over ? "bar over" : "bar", tip);
    if (has_budget) {
      const double x = xs(static_cast<double>(s.budget_bytes));
      svg.raw("<g class=\"budget\"><title>" + html(s.name + ": budget " +
                                                    fmt_bytes(static_cast<double>(s.budget_bytes))) +
              "</title>\n");
      svg.line(x, y + 1, x, y + row_h - 1, "#111", 3);
      svg.raw("</g>\n");
    }
  }
  svg.legend(p.x, p.y + p.h + 58,
             {{"box", kBlue, "peak memory"}, {"box", kRed, "over budget"}, {"line", "#111", "budget"}});
  return svg.done();
}

// (4) round time per round: a bar each, abandoned rounds in orange.
std::string time_chart(const ReportData& d) {
  const Plot p{70, 40, kWidth - 90, 200};
  Svg svg("chart-time", p.y + p.h + 70, "Round time per round",
          "Bars: the round's duration; abandoned rounds in orange");
  if (d.rounds.empty()) {
    svg.message(p, "no rounds recorded");
    return svg.done();
  }
  const RoundScale rs = round_scale(d, p);
  double max = 0;
  for (const auto& r : d.rounds)
    if (std::isfinite(r.round_seconds)) max = std::max(max, r.round_seconds);
  const Ticks t = nice_ticks(0, max > 0 ? max : 1, 5);
  const LinearScale ys{0, t.hi, p.y + p.h, p.y};
  svg.y_axis(p, ys, t, "", "round time (s)");
  const double bw = std::max(0.5, rs.band() * 0.7);
  for (const auto& r : d.rounds) {
    const bool abandoned = r.status == RoundStatus::abandoned;
    const double v = std::isfinite(r.round_seconds) ? r.round_seconds : 0;
    svg.rect(rs.x(r.round) - bw / 2, ys(v), bw, p.y + p.h - ys(v), abandoned ? kOrange : kBlue,
             abandoned ? "bar abandoned" : "bar",
             "round " + std::to_string(r.round) + ": " + fmt_seconds(r.round_seconds) +
                 (abandoned ? " (abandoned)" : ""));
  }
  svg.round_axis(rs);
  svg.legend(p.x, p.y + p.h + 56, {{"box", kBlue, "committed round"}, {"box", kOrange, "abandoned round"}});
  return svg.done();
}

// ------------------------------------------------------------- HTML parts
constexpr const char* kStyle = R"(
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 24px auto; max-width: 960px; padding: 0 16px; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; }
dl.summary dt { font-weight: 600; color: #555; }
dl.summary dd { margin: 0; }
pre.config { background: #f6f8fa; border: 1px solid #ddd; padding: 10px; overflow-x: auto; font-size: 0.9em;
             white-space: pre-wrap; word-break: break-all; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f0f0f0; }
td.text { text-align: left; word-break: break-word; white-space: pre-wrap; }
tr.abandoned td { background: #fff1e0; }
tr.over td { background: #fde8e8; }
figure { margin: 16px 0; }
svg.chart { max-width: 100%; height: auto; font-family: inherit; background: #fff; }
svg .chart-title { fill: #222; }
svg text { fill: #333; }
.note { color: #666; font-size: 0.9em; }
footer { margin-top: 2em; color: #888; font-size: 0.85em; }
@media print { h2 { break-after: avoid; } figure { break-inside: avoid; } }
)";

std::string th_row(std::initializer_list<const char*> heads) {
  std::string s = "<tr>";
  for (const char* h : heads) s += std::string("<th>") + h + "</th>";
  return s + "</tr>\n";
}

std::string td(const std::string& text) { return "<td>" + html(text) + "</td>"; }
std::string td_text(const std::string& text) { return "<td class=\"text\">" + html(text) + "</td>"; }

std::string summary_list(const ReportData& d) {
  const RunRecord& r = d.run;
  std::int64_t committed = 0, abandoned = 0, up = 0, down = 0;
  std::optional<double> best, last;
  std::int64_t best_round = -1;
  double seconds = 0;
  for (const auto& rd : d.rounds) {
    (rd.status == RoundStatus::committed ? committed : abandoned) += 1;
    up += rd.bytes_up;
    down += rd.bytes_down;
    if (std::isfinite(rd.round_seconds)) seconds += rd.round_seconds;
    if (rd.test_accuracy && std::isfinite(*rd.test_accuracy)) {
      if (!best || *rd.test_accuracy > *best) best = rd.test_accuracy, best_round = rd.round;
      if (rd.status == RoundStatus::committed) last = rd.test_accuracy;
    }
  }
  std::string s = "<dl class=\"summary\">\n";
  const auto item = [&](const char* k, const std::string& v) {
    s += std::string("<dt>") + k + "</dt><dd>" + html(v) + "</dd>\n";
  };
  item("Run", std::to_string(r.id));
  item("Kind", to_string(r.kind));
  item("Status", to_string(r.status));
  item("Created", utc(r.created_at));
  item("Finished", r.finished_at ? utc(*r.finished_at) : "– (still running)");
  if (r.finished_at) item("Duration", fmt_seconds(static_cast<double>(*r.finished_at - r.created_at) / 1000));
  item("Seed", std::to_string(r.seed));
  item("Devices", std::to_string(d.devices.size()));
  item("Rounds", std::to_string(d.rounds.size()) + " (" + std::to_string(committed) + " committed, " +
                     std::to_string(abandoned) + " abandoned)");
  item("Best test accuracy", best ? fmt_percent(best) + " (round " + std::to_string(best_round) + ")" : "–");
  item("Last test accuracy", fmt_percent(last) + (last ? " (last evaluated committed round)" : ""));
  item("Total round time", fmt_seconds(seconds));
  item("Bytes up / down", fmt_bytes(static_cast<double>(up)) + " / " + fmt_bytes(static_cast<double>(down)));
  return s + "</dl>\n";
}

std::string pretty_config(const std::string& text) {
  auto v = json::parse(text);
  if (!v) return text;  // shown as stored
  std::string out;
  write_json(out, *v, 2, 0);
  return out;
}

std::string rounds_table(const ReportData& d) {
  if (d.rounds.empty()) return "<p class=\"note\">No rounds recorded.</p>\n";
  std::string s = "<table class=\"rounds\">\n" +
                  th_row({"Round", "Status", "Selected", "Completed", "Test accuracy", "Test loss", "Train loss",
                          "Round time", "Bytes up", "Bytes down", "Started"});
  for (const auto& r : d.rounds) {
    s += r.status == RoundStatus::abandoned ? "<tr class=\"abandoned\">" : "<tr>";
    s += td(int_str(r.round)) + td_text(to_string(r.status)) + td(int_str(r.selected)) + td(int_str(r.completed)) +
         td(fmt_percent(r.test_accuracy)) + td(fmt_opt(r.test_loss)) + td(fmt_opt(r.train_loss)) +
         td(fmt_seconds(r.round_seconds)) + td(fmt_bytes(static_cast<double>(r.bytes_up))) +
         td(fmt_bytes(static_cast<double>(r.bytes_down))) + td(utc(r.started_at)) + "</tr>\n";
  }
  return s + "</table>\n";
}

std::string devices_table(const ReportData& d) {
  if (d.devices.empty()) return "<p class=\"note\">No device took part.</p>\n";
  std::string s = "<table class=\"devices\">\n" +
                  th_row({"ID", "Name", "Profile", "Status", "Rounds", "Peak memory", "Budget", "Rounds over budget",
                          "Bytes up", "Bytes down", "Compute", "Energy"});
  for (const auto& dev : d.devices) {
    const DeviceRunSummary& m = dev.summary;
    const bool over = m.budget_bytes > 0 && m.rounds_over_budget > 0;
    s += over ? "<tr class=\"over\">" : "<tr>";
    s += td(int_str(dev.record.id)) + td_text(dev.record.name) + td_text(dev.record.capabilities.profile) +
         td_text(to_string(dev.record.status)) + td(int_str(m.rounds)) +
         td(fmt_bytes(static_cast<double>(m.max_peak_memory_bytes))) +
         td(m.budget_bytes > 0 ? fmt_bytes(static_cast<double>(m.budget_bytes)) : "–") +
         td(int_str(m.rounds_over_budget)) + td(fmt_bytes(static_cast<double>(m.bytes_up))) +
         td(fmt_bytes(static_cast<double>(m.bytes_down))) + td(fmt_ms(m.compute_ms)) +
         td(short_number(m.energy_joules) + " J") + "</tr>\n";
  }
  return s + "</table>\n";
}

std::string assignments_table(const ReportData& d) {
  if (d.assignments.empty()) return "<p class=\"note\">No module assignments recorded.</p>\n";
  std::string s = "<table class=\"assignments\">\n" +
                  th_row({"ID", "Device", "Module", "Kind", "Module size", "Peak memory", "Predicted latency",
                          "Assigned"});
  for (const auto& a : d.assignments)
    s += "<tr>" + td(int_str(a.id)) + td_text(device_label(d, a.device)) + td_text(a.module_name) +
         td_text(to_string(a.module_kind)) + td(fmt_bytes(static_cast<double>(a.module_bytes))) +
         td(fmt_bytes(static_cast<double>(a.peak_memory_bytes))) +
         td(fmt_ms(a.predicted_latency_ms)) + td(utc(a.assigned_at)) + "</tr>\n";
  return s + "</table>\n";
}

std::string events_table(const ReportData& d) {
  if (d.events.empty()) return "<p class=\"note\">No events recorded.</p>\n";
  std::string s;
  const std::size_t skip = d.events.size() > html_report_max_events ? d.events.size() - html_report_max_events : 0;
  if (skip > 0)
    s += "<p class=\"note\">The newest " + std::to_string(html_report_max_events) + " of " +
         std::to_string(d.events.size()) + " events; the JSON and CSV reports list all of them.</p>\n";
  s += "<table class=\"events\">\n" + th_row({"Time", "Kind", "Device", "Message"});
  for (std::size_t i = skip; i < d.events.size(); ++i) {
    const Event& e = d.events[i];
    s += "<tr>" + td(utc(e.at)) + td_text(e.kind) + td_text(e.device ? device_label(d, *e.device) : "") +
         td_text(e.message) + "</tr>\n";
  }
  return s + "</table>\n";
}

// ------------------------------------------------------------- CSV parts
std::string csv_field(std::string_view s) {
  if (s.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

/// The columns of the report's CSV, in order (docs/fleet-report.md).
constexpr std::array<std::string_view, 31> kCsvColumns{
    "section",       "run",          "round",         "device",        "name",
    "id",            "kind",         "status",        "at",            "finished_at",
    "seed",          "selected",     "completed",     "test_accuracy", "test_loss",
    "train_loss",    "round_seconds", "bytes_up",     "bytes_down",    "compute_ms",
    "peak_memory_bytes", "budget_bytes", "rounds_over_budget", "rounds", "energy_joules",
    "examples",      "profile",      "module",        "module_bytes",  "predicted_latency_ms",
    "text"};

class CsvRow {
 public:
  explicit CsvRow(std::string_view section) { set("section", std::string(section)); }
  CsvRow& set(std::string_view column, std::string value) {
    for (std::size_t i = 0; i < kCsvColumns.size(); ++i)
      if (kCsvColumns[i] == column) {
        cells_[i] = std::move(value);
        return *this;
      }
    FLEETDL_ASSERT(false, "CsvRow: unknown column");
    return *this;
  }
  CsvRow& integer(std::string_view column, std::int64_t v) { return set(column, std::to_string(v)); }
  /// Shortest round-trip form; empty for NaN and infinities.
  CsvRow& real(std::string_view column, double v) {
    return set(column, std::isfinite(v) ? json::number(v) : std::string());
  }
  CsvRow& opt(std::string_view column, const std::optional<double>& v) {
    return v ? real(column, *v) : *this;
  }
  std::string line() const {
    std::string s;
    // Appends, not "," + std::string: GCC 12 warns -Wrestrict on the latter at -O2.
    for (std::size_t i = 0; i < cells_.size(); ++i) {
      if (i != 0) s += ',';
      s += csv_field(cells_[i]);
    }
    return s + "\r\n";
  }

 private:
  std::array<std::string, kCsvColumns.size()> cells_{};
};

}  // namespace

// ------------------------------------------------------------------- HTML
std::string render_html(const ReportData& d) {
  const std::string title = "fleetdl run " + std::to_string(d.run.id) + " (" + to_string(d.run.kind) + ", " +
                            to_string(d.run.status) + ")";
  std::string s;
  s += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
       "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
       "<meta name=\"generator\" content=\"fleetdl report\">\n<title>" +
       html(title) + "</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n";
  s += "<h1>" + html(title) + "</h1>\n";
  s += summary_list(d);
  s += "<h2>Configuration</h2>\n<pre class=\"config\">" + html(pretty_config(d.run.config_json)) + "</pre>\n";
  s += "<h2>Charts</h2>\n";
  s += "<figure>\n" + accuracy_chart(d) + "</figure>\n";
  s += "<figure>\n" + bytes_chart(d);
  if (devices_with_costs(d) > html_report_heatmap_devices + 1)
    s += "<figcaption class=\"note\">The " + std::to_string(html_report_heatmap_devices) +
         " devices with the most bytes have a row each; the others share one row with their mean. The device "
         "table below has every device.</figcaption>\n";
  s += "</figure>\n";
  s += "<figure>\n" + memory_chart(d) + "</figure>\n";
  s += "<figure>\n" + time_chart(d) + "</figure>\n";
  s += "<h2>Rounds</h2>\n" + rounds_table(d);
  s += "<h2>Devices</h2>\n" + devices_table(d);
  s += "<h2>Module assignments</h2>\n" + assignments_table(d);
  s += "<h2>Events</h2>\n" + events_table(d);
  s += "<footer>Rendered by <code>fleetdl report</code> from the fleet database. Times are UTC; "
       "KiB, MiB and GiB are powers of 1024. The same data is available as CSV and JSON "
       "(<code>--format csv|json</code>).</footer>\n</body>\n</html>\n";
  return s;
}

// ------------------------------------------------------------------- JSON
std::string render_json(const ReportData& d) {
  const RunRecord& r = d.run;
  JsonObject run;
  run.integer("id", r.id)
      .str("kind", to_string(r.kind))
      .str("status", to_string(r.status))
      .integer("created_at", r.created_at)
      .raw("finished_at", jopt(r.finished_at))
      .raw("seed", std::to_string(r.seed));
  // The configuration as a JSON value when it parses strictly, else as text.
  if (auto v = json::parse(r.config_json)) {
    std::string text;
    write_json(text, *v, -1, 0);
    run.raw("config", text);
  } else {
    run.str("config_text", r.config_json);
  }

  std::vector<std::string> rounds, devices, costs, assignments, events;
  for (const auto& x : d.rounds)
    rounds.push_back(JsonObject()
                         .integer("round", x.round)
                         .str("status", to_string(x.status))
                         .integer("started_at", x.started_at)
                         .integer("finished_at", x.finished_at)
                         .integer("selected", x.selected)
                         .integer("completed", x.completed)
                         .raw("test_accuracy", jopt(x.test_accuracy))
                         .raw("test_loss", jopt(x.test_loss))
                         .raw("train_loss", jopt(x.train_loss))
                         .real("round_seconds", x.round_seconds)
                         .integer("bytes_up", x.bytes_up)
                         .integer("bytes_down", x.bytes_down)
                         .done());
  for (const auto& x : d.devices)
    devices.push_back(JsonObject()
                          .integer("id", x.record.id)
                          .str("name", x.record.name)
                          .str("profile", x.record.capabilities.profile)
                          .str("status", to_string(x.record.status))
                          .integer("memory_budget_bytes", x.record.capabilities.memory_budget_bytes)
                          .integer("rounds", x.summary.rounds)
                          .integer("budget_bytes", x.summary.budget_bytes)
                          .integer("max_peak_memory_bytes", x.summary.max_peak_memory_bytes)
                          .integer("rounds_over_budget", x.summary.rounds_over_budget)
                          .integer("bytes_up", x.summary.bytes_up)
                          .integer("bytes_down", x.summary.bytes_down)
                          .real("compute_ms", x.summary.compute_ms)
                          .real("energy_joules", x.summary.energy_joules)
                          .done());
  for (const auto& x : d.costs)
    costs.push_back(JsonObject()
                        .integer("round", x.round)
                        .integer("device", x.cost.device)
                        .integer("bytes_up", x.cost.bytes_up)
                        .integer("bytes_down", x.cost.bytes_down)
                        .real("compute_ms", x.cost.compute_ms)
                        .integer("peak_memory_bytes", x.cost.peak_memory_bytes)
                        .integer("budget_bytes", x.cost.budget_bytes)
                        .real("energy_joules", x.cost.energy_joules)
                        .str("status", to_string(x.cost.status))
                        .integer("examples", x.cost.examples)
                        .done());
  for (const auto& x : d.assignments)
    assignments.push_back(JsonObject()
                              .integer("id", x.id)
                              .integer("device", x.device)
                              .str("module_name", x.module_name)
                              .str("module_kind", to_string(x.module_kind))
                              .integer("module_bytes", x.module_bytes)
                              .integer("peak_memory_bytes", x.peak_memory_bytes)
                              .real("predicted_latency_ms", x.predicted_latency_ms)
                              .integer("assigned_at", x.assigned_at)
                              .done());
  for (const auto& x : d.events)
    events.push_back(JsonObject()
                         .integer("id", x.id)
                         .integer("at", x.at)
                         .raw("device", jopt(x.device))
                         .str("kind", x.kind)
                         .str("message", x.message)
                         .done());
  return "{\"format\":\"fleetdl-report\",\"version\":1,\n\"run\":" + run.done() +
         ",\n\"rounds\":" + json_array(rounds) + ",\n\"devices\":" + json_array(devices) +
         ",\n\"costs\":" + json_array(costs) + ",\n\"assignments\":" + json_array(assignments) +
         ",\n\"events\":" + json_array(events) + "}\n";
}

// -------------------------------------------------------------------- CSV
std::string render_csv(const ReportData& d) {
  std::string s;
  for (std::size_t i = 0; i < kCsvColumns.size(); ++i) {
    if (i != 0) s += ',';
    s += kCsvColumns[i];
  }
  s += "\r\n";
  const RunRecord& r = d.run;
  {
    CsvRow row("run");
    row.integer("run", r.id)
        .set("kind", to_string(r.kind))
        .set("status", to_string(r.status))
        .integer("at", r.created_at)
        .set("finished_at", r.finished_at ? std::to_string(*r.finished_at) : "")
        .set("seed", std::to_string(r.seed))
        .set("text", r.config_json);
    s += row.line();
  }
  std::map<std::int64_t, const RoundRecord*> round_of;
  for (const auto& x : d.rounds) {
    round_of[x.round] = &x;
    s += CsvRow("round")
             .integer("run", r.id)
             .integer("round", x.round)
             .set("status", to_string(x.status))
             .integer("at", x.started_at)
             .integer("finished_at", x.finished_at)
             .integer("selected", x.selected)
             .integer("completed", x.completed)
             .opt("test_accuracy", x.test_accuracy)
             .opt("test_loss", x.test_loss)
             .opt("train_loss", x.train_loss)
             .real("round_seconds", x.round_seconds)
             .integer("bytes_up", x.bytes_up)
             .integer("bytes_down", x.bytes_down)
             .line();
  }
  for (const auto& x : d.devices)
    s += CsvRow("device")
             .integer("run", r.id)
             .integer("device", x.record.id)
             .set("name", x.record.name)
             .set("status", to_string(x.record.status))
             .integer("rounds", x.summary.rounds)
             .integer("bytes_up", x.summary.bytes_up)
             .integer("bytes_down", x.summary.bytes_down)
             .real("compute_ms", x.summary.compute_ms)
             .integer("peak_memory_bytes", x.summary.max_peak_memory_bytes)
             .integer("budget_bytes", x.summary.budget_bytes)
             .integer("rounds_over_budget", x.summary.rounds_over_budget)
             .real("energy_joules", x.summary.energy_joules)
             .set("profile", x.record.capabilities.profile)
             .line();
  for (const auto& x : d.costs) {
    CsvRow row("cost");
    row.integer("run", r.id)
        .integer("round", x.round)
        .integer("device", x.cost.device)
        .set("name", device_label(d, x.cost.device))
        .set("status", to_string(x.cost.status))
        .integer("bytes_up", x.cost.bytes_up)
        .integer("bytes_down", x.cost.bytes_down)
        .real("compute_ms", x.cost.compute_ms)
        .integer("peak_memory_bytes", x.cost.peak_memory_bytes)
        .integer("budget_bytes", x.cost.budget_bytes)
        .real("energy_joules", x.cost.energy_joules)
        .integer("examples", x.cost.examples);
    // the round's accuracy and time on every cost row: one long table for pivots
    if (const auto it = round_of.find(x.round); it != round_of.end())
      row.opt("test_accuracy", it->second->test_accuracy).real("round_seconds", it->second->round_seconds);
    s += row.line();
  }
  for (const auto& x : d.assignments)
    s += CsvRow("assignment")
             .integer("run", r.id)
             .integer("device", x.device)
             .set("name", device_label(d, x.device))
             .integer("id", x.id)
             .set("kind", to_string(x.module_kind))
             .integer("at", x.assigned_at)
             .integer("peak_memory_bytes", x.peak_memory_bytes)
             .set("module", x.module_name)
             .integer("module_bytes", x.module_bytes)
             .real("predicted_latency_ms", x.predicted_latency_ms)
             .line();
  for (const auto& x : d.events) {
    CsvRow row("event");
    row.integer("run", r.id).integer("id", x.id).integer("at", x.at).set("kind", x.kind).set("text", x.message);
    if (x.device) row.integer("device", *x.device).set("name", device_label(d, *x.device));
    s += row.line();
  }
  return s;
}

}  // namespace fleetdl::core
