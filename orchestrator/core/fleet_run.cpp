// orchestrator/core/fleet_run.cpp — see fleet_run.hpp.
#include "fleet_run.hpp"

#include "discovery.hpp"
#include "fleet_ca.hpp"
#include "fleet_server.hpp"

#include "fleetdl/compress/quantize.hpp"
#include "fleetdl/core/crc32.hpp"
#include "fleetdl/core/json.hpp"
#include "fleetdl/core/parallel.hpp"
#include "fleetdl/data/dataset.hpp"
#include "fleetdl/fl/codec.hpp"
#include "fleetdl/fl/dp.hpp"
#include "fleetdl/fl/fedbuff.hpp"
#include "fleetdl/fl/selection.hpp"
#include "fleetdl/io/fdl.hpp"
#include "fleetdl/micro/blob.hpp"
#include "fleetdl/micro/planner.hpp"
#include "fleetdl/nn/train.hpp"
#include "fleetdl/nn/zoo.hpp"
#include "fleetdl/partition/modules.hpp"
#include "fleetdl/partition/placement.hpp"
#include "fleetdl/sim/simulator.hpp"

#include <asio.hpp>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

namespace fleetdl::core {

namespace {

/// The IPv4 addresses of this host's interfaces (getifaddrs).
std::vector<std::string> local_ipv4_addresses() {
  std::vector<std::string> out;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return out;
  for (const ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN] = {};
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
    if (::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text)) out.emplace_back(text);
  }
  ::freeifaddrs(list);
  return out;
}

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kRoundTag = 0x464C5254524E44ULL;  // the rounds' stream
constexpr std::size_t kChunkBytes = 64 * 1024;

Clock::time_point after(Clock::time_point t, double seconds) {
  return t + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

Error fail_cfg(const std::string& path, const Error& e) { return make_error(e.code, path + ": " + e.message); }

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

/// The partition object of the config as the agents parse it (sim's keys).
std::string partition_spec_json(const sim::PartitionSpec& p) {
  std::ostringstream o;
  o << "{\"kind\":\"" << p.kind << "\"";
  if (p.kind == "dirichlet") o << ",\"alpha\":" << json::number(p.alpha) << ",\"min_size\":" << p.min_size;
  if (p.kind == "shards") o << ",\"shards_per_client\":" << p.shards_per_client;
  if (p.kind == "k_labels") o << ",\"labels_per_client\":" << p.labels_per_client;
  o << "}";
  return o.str();
}

wire::CodecId codec_id(sim::UpdateCodec c) {
  switch (c) {
    case sim::UpdateCodec::fp16: return wire::CodecId::fp16;
    case sim::UpdateCodec::q8: return wire::CodecId::quant8;
    case sim::UpdateCodec::q4: return wire::CodecId::quant4;
    case sim::UpdateCodec::q2: return wire::CodecId::quant2;
    case sim::UpdateCodec::topk: return wire::CodecId::topk_pairs;
    case sim::UpdateCodec::none: break;
  }
  return wire::CodecId::raw_f32;
}

Blob float_bytes(const Vector<float>& v) {
  Blob b(static_cast<std::size_t>(v.size()) * sizeof(float));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

Result<Vector<float>> floats_of(const Blob& b, Index expect, const std::string& what) {
  if (b.size() != static_cast<std::size_t>(expect) * sizeof(float))
    return make_error(Errc::corrupt, what + ": " + std::to_string(b.size()) + " bytes, the model needs " +
                                         std::to_string(expect * static_cast<Index>(sizeof(float))));
  Vector<float> v(expect);
  if (expect > 0) std::memcpy(v.data(), b.data(), b.size());
  return v;
}

/// What every fleet job has: the database, the fleet CA, the server with its
/// listeners, discovery, and the log and event helpers.
class FleetHost {
 public:
  FleetHost(const FleetSection& fleet, std::string db_path, std::filesystem::path ca_dir,
            std::function<void(const std::string&)> log)
      : fleet_(fleet), db_path_(std::move(db_path)), ca_dir_(std::move(ca_dir)), log_(std::move(log)) {}
  FleetHost(const FleetHost&) = delete;
  FleetHost& operator=(const FleetHost&) = delete;
  ~FleetHost() {
    if (disc_) disc_->stop();
    disc_work_.reset();
    disc_io_.stop();
    if (disc_thread_.joinable()) disc_thread_.join();
  }

 protected:
  Result<void> open_store() {
    auto st = Store::open(db_path_);
    if (!st) return std::move(st).error();
    store_.emplace(std::move(*st));
    std::error_code ec;
    auto ca = std::filesystem::exists(ca_dir_ / "ca.crt", ec) ? FleetCa::load(ca_dir_) : FleetCa::create(ca_dir_);
    if (!ca) return std::move(ca).error();
    ca_.emplace(std::move(*ca));
    return success();
  }

  /// Start the server (with limits_) and, when configured, discovery.
  Result<void> listen() {
    ServerOptions so;
    so.db_path = db_path_;
    so.bind_address = fleet_.bind_address;
    so.enroll_port = fleet_.enroll_port;
    so.fleet_port = fleet_.fleet_port;
    so.heartbeat_ms = fleet_.heartbeat_ms;
    so.limits = limits_;
    if (fleet_.bind_address == "0.0.0.0") {
      // any interface may answer, so the certificate names them all: an agent
      // checks the address it connects to (the invite's) against the SANs
      for (const std::string& a : local_ipv4_addresses())
        if (std::find(so.server_names.begin(), so.server_names.end(), a) == so.server_names.end())
          so.server_names.push_back(a);
    } else if (fleet_.bind_address != "127.0.0.1") {
      so.server_names.push_back(fleet_.bind_address);
    }
    auto srv = FleetServer::start(so, *ca_);
    if (!srv) return std::move(srv).error();
    server_ = std::move(*srv);
    log("listening on " + fleet_.bind_address + ": enrollment port " + std::to_string(server_->enroll_port()) +
        ", fleet port " + std::to_string(server_->fleet_port()));
    if (fleet_.discovery) FLEETDL_TRY(start_discovery());
    return success();
  }

  Result<void> start_discovery() {
    ListenerOptions lo;
    lo.port = fleet_.discovery_port;
    // A loopback-only fleet answers only loopback announces; a fleet bound to
    // one address hears broadcasts on every interface but invites agents to
    // that address; 0.0.0.0 lets each invite name the address that answered.
    std::error_code aec;
    const auto bind = asio::ip::make_address_v4(fleet_.bind_address, aec);
    if (!aec && bind.is_loopback()) lo.bind_address = bind;
    else if (!aec && !bind.is_unspecified()) lo.advertise = bind;
    lo.enroll_port = server_->enroll_port();
    lo.fleet_port = server_->fleet_port();
    auto fp = fingerprint_bytes(ca_->ca_fingerprint_sha256());
    if (!fp) return make_error(fp.error().code, "discovery: the fleet CA's " + fp.error().message);
    lo.ca_fingerprint = *fp;
    std::uint64_t id = 0;
    for (std::size_t i = 0; i < 8; ++i) id = (id << 8) | lo.ca_fingerprint[i];
    lo.fleet_id = id == 0 ? 1 : id;
    disc_.emplace(disc_io_, lo);
    auto ok = disc_->start();
    if (!ok) return make_error(ok.error().code, "discovery: " + ok.error().message);
    disc_work_.emplace(asio::make_work_guard(disc_io_));
    disc_thread_ = std::thread([this] { disc_io_.run(); });
    log("discovery: answering announcements on UDP port " + std::to_string(disc_->local_port()));
    return success();
  }

  /// Queue `bytes` for `device` as assign chunks of module `module_id`;
  /// returns the bytes of all its frames.
  Result<std::size_t> send_module(std::int64_t device, std::uint64_t module_id, wire::ModuleKind kind,
                                  const std::vector<std::uint8_t>& bytes) {
    const std::uint32_t crc = crc32(bytes.data(), bytes.size());
    const auto count = static_cast<std::uint32_t>(std::max<std::size_t>(1, (bytes.size() + kChunkBytes - 1) / kChunkBytes));
    std::size_t total = 0;
    for (std::uint32_t i = 0; i < count; ++i) {
      wire::AssignChunk c;
      c.module_id = module_id;
      c.kind = kind;
      c.chunk_index = i;
      c.chunk_count = count;
      c.total_bytes = bytes.size();
      c.module_crc = crc;
      const std::size_t at = static_cast<std::size_t>(i) * kChunkBytes;
      c.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(at),
                    bytes.begin() + static_cast<std::ptrdiff_t>(std::min(bytes.size(), at + kChunkBytes)));
      auto sent = server_->send(device, c, wire::Binding{0, static_cast<std::uint64_t>(run_), 0, 0});
      if (!sent) return std::move(sent).error();
      total += *sent;
    }
    return total;
  }

  std::int64_t budget(std::int64_t device) const {
    const auto h = server_->hello_of(device);
    return h ? static_cast<std::int64_t>(h->memory_budget_bytes) : 0;
  }

  std::string name(std::int64_t device) {
    if (auto h = server_->hello_of(device)) return "'" + h->agent_name + "'";
    auto rec = store_->device(device);
    return rec ? "'" + rec->name + "'" : std::to_string(device);
  }

  void log(const std::string& line) {
    if (log_) log_(line);
  }

  void event(const std::string& kind, const std::string& message, std::optional<std::int64_t> device = std::nullopt) {
    Event e;
    e.at = unix_ms_now();
    if (run_ > 0) e.run = run_;
    e.device = device;
    e.kind = kind;
    e.message = message;
    (void)store_->add_event(e);
  }

  FleetSection fleet_;
  std::string db_path_;
  std::filesystem::path ca_dir_;
  std::function<void(const std::string&)> log_;
  std::optional<Store> store_;
  std::optional<FleetCa> ca_;
  std::unique_ptr<FleetServer> server_;
  asio::io_context disc_io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> disc_work_;
  std::optional<DiscoveryListener> disc_;
  std::thread disc_thread_;
  wire::Limits limits_{};
  std::int64_t run_ = 0;
};

/// Everything one run needs, for a new run and for a resumed one.
class Engine : public FleetHost {
 public:
  Engine(const FleetConfig& cfg, const FleetRunOptions& o) : FleetHost(cfg.fleet, o.db_path, o.ca_dir, o.log), cfg_(cfg), o_(o) {}

  Result<std::int64_t> start(const std::string& config_text) {
    FLEETDL_TRY(prepare());
    // no run is recorded until its devices are there: a fleet that cannot
    // hold the module leaves the runs table as it was
    FLEETDL_TRY(gather_new());
    auto run = store_->create_run(RunKind::train, config_text, cfg_.fl.seed, unix_ms_now());
    if (!run) return std::move(run).error();
    run_ = *run;
    log("run " + std::to_string(run_) + ": " + strategy_name() + " on " + cfg_.fl.model + ", " +
        std::to_string(cfg_.fl.clients) + " devices, " + std::to_string(cfg_.fl.sim.rounds) + " rounds");
    event("run_started", "run " + std::to_string(run_) + " started");
    auto r = record_assignments();
    if (r) r = drive(1, false);
    return finish(std::move(r));
  }

  Result<std::int64_t> resume(std::int64_t run) {
    run_ = run;
    FLEETDL_TRY(prepare());
    auto rec = store_->run(run);
    if (!rec) return std::move(rec).error();
    if (rec->status == RunStatus::finished)
      return make_error(Errc::invalid_argument, "run " + std::to_string(run) + " is finished; nothing to resume");
    auto last = store_->last_committed_round(run);
    if (!last) return std::move(last).error();
    std::int64_t from = 1;
    if (*last) {
      auto p = floats_of((*last)->checkpoint.parameters, model_.param_count(), "checkpoint of round " +
                                                                               std::to_string((*last)->round.round));
      if (!p) return std::move(p).error();
      model_.params() = *p;
      FLEETDL_TRY(restore_server_state((*last)->checkpoint.state, (*last)->round.round));
      from = (*last)->round.round + 1;
    }
    auto next = store_->next_round(run);
    if (!next) return std::move(next).error();
    from = std::max<std::int64_t>(from, *next);
    // the same devices on the same shards
    auto as = store_->assignments(run);
    if (!as) return std::move(as).error();
    for (const auto& a : *as) {
      shard_device_.push_back(a.device);
      if (!widths_.empty()) {  // HeteroFL: "MODEL/shard-I@WIDTH"
        const auto at = a.module_name.rfind('@');
        const double w = at == std::string::npos ? 1.0 : std::strtod(a.module_name.c_str() + at + 1, nullptr);
        if (!width_by_value(w))
          return make_error(Errc::corrupt, "run " + std::to_string(run) + ": assignment '" + a.module_name +
                                               "' names no width of fleet.heterofl_widths");
        shard_width_.push_back(w);
      }
    }
    if (shard_device_.empty())
      return make_error(Errc::invalid_argument, "run " + std::to_string(run) + " has no module assignments to resume with");
    (void)store_->set_run_status(run, RunStatus::running, unix_ms_now());
    log("run " + std::to_string(run_) + ": resuming at round " + std::to_string(from) + " of " +
        std::to_string(cfg_.fl.sim.rounds));
    event("run_resumed", "run " + std::to_string(run_) + " resumed at round " + std::to_string(from));
    auto r = drive(from, true);
    return finish(std::move(r));
  }

 private:
  // ------------------------------------------------------------ setup
  Result<void> prepare() {
    FLEETDL_TRY(open_store());

    const std::string dir = o_.data_dir.empty() ? cfg_.fl.dataset_dir : o_.data_dir;
    auto test = data::load_fashion_mnist<float>(dir, false, cfg_.fl.test_limit);
    if (!test) return std::move(test).error();
    test_ = std::move(*test);
    auto model = nn::make_model<float>(cfg_.fl.model, test_.shape, test_.classes);
    if (!model) return std::move(model).error();
    model_ = std::move(*model);
    model_.init(Rng(cfg_.fl.seed).fork(0x1417).next_u64());  // as `fl simulate`
    if (cfg_.fl.strategy.name == "fedbuff") {  // asynchronous: not a fl::Strategy
      fl::FedBuffOptions fo;
      fo.buffer_size = cfg_.fl.strategy.buffer_size;
      fo.server_learning_rate = cfg_.fl.strategy.server_learning_rate;
      fo.max_staleness = static_cast<long>(cfg_.fl.strategy.max_staleness);
      fo.client = cfg_.fl.client;
      fedbuff_.emplace(fo);
    } else {
      auto bundle = sim::make_strategy<float>(cfg_.fl, &model_);
      if (!bundle) return std::move(bundle).error();
      bundle_ = std::move(*bundle);
    }
    pool_.emplace(std::max(1, o_.threads));
    demand_ = compute_demand();
    if (bundle_.heterofl) FLEETDL_TRY(prepare_widths());

    // the frames this model needs: a round's parameters (and SCAFFOLD's
    // control variate) in one frame
    const auto d = static_cast<std::size_t>(model_.param_count());
    // (each connection holds a decoder buffer of max_frame_payload bytes, so
    // it is sized to the model rather than left at the 8 MiB default)
    limits_.max_train_params = std::max<std::size_t>(d, 1);
    limits_.max_frame_payload = std::max<std::size_t>(2 * d * sizeof(float) + 64 * 1024, 256 * 1024);
    return listen();
  }


  // ------------------------------------------------------------ devices
  /// One device's training round, from the model's cost report (computed
  /// once in prepare(): it depends only on the config and the architecture).
  const partition::ModuleDemand& demand() const { return demand_; }

  partition::ModuleDemand compute_demand() const {
    const double examples = cfg_.fl.train_limit > 0 ? static_cast<double>(cfg_.fl.train_limit) : 60000.0;
    return partition::training_demand<float>(cfg_.fl.model, model_, cfg_.fl.client.batch,
                                             examples / static_cast<double>(cfg_.fl.clients) * cfg_.fl.client.epochs,
                                             cfg_.fl.client.momentum > 0.0 ? 1 : 0, bundle_.scaffold ? 2 : 0);
  }

  /// One HeteroFL width: its sub-model's bytes, size and training demand.
  struct Width {
    double width = 1.0;
    std::vector<std::uint8_t> bytes;
    Index params = 0;
    partition::ModuleDemand demand;
  };

  /// HeteroFL: the sub-model of every width of fleet.heterofl_widths, with
  /// its training demand and module bytes. A device trains the widest one
  /// its budget holds.
  Result<void> prepare_widths() {
    hetero_ = dynamic_cast<fl::HeteroFL<float>*>(bundle_.strategy.get());
    if (!hetero_) return make_error(Errc::unsupported, "heterofl: the strategy chain is not plain HeteroFL");
    const double examples = cfg_.fl.train_limit > 0 ? static_cast<double>(cfg_.fl.train_limit) : 60000.0;
    for (const double w : cfg_.fleet.heterofl_widths) {
      Width wd;
      wd.width = w;
      auto sub = fl::make_submodel(model_, w);
      if (!sub) return make_error(sub.error().code, "heterofl: width " + num(w) + ": " + sub.error().message);
      wd.bytes = io::encode_model(*sub);
      wd.params = sub->param_count();
      wd.demand = partition::training_demand<float>(cfg_.fl.model + "@" + num(w), *sub, cfg_.fl.client.batch,
                                                    examples / static_cast<double>(cfg_.fl.clients) * cfg_.fl.client.epochs,
                                                    cfg_.fl.client.momentum > 0.0 ? 1 : 0, 0);
      widths_.push_back(std::move(wd));
    }
    return success();
  }

  /// The widest sub-model a budget holds (HeteroFL), or nullptr.
  const Width* width_for(double budget) const {
    for (const auto& w : widths_)
      if (budget >= w.demand.memory_bytes) return &w;
    return nullptr;
  }
  const Width* width_by_value(double width) const {
    for (const auto& w : widths_)
      if (w.width == width) return &w;
    return nullptr;
  }
  double shard_width(Index shard) const {
    return shard_width_.empty() ? 1.0 : shard_width_[static_cast<std::size_t>(shard)];
  }

  /// New run: wait until `clients` devices that can hold the module are
  /// connected, then give them shards in device-id order.
  Result<void> gather_new() {
    const auto want = static_cast<std::size_t>(cfg_.fl.clients);
    const auto& dem = demand();
    const auto until = after(Clock::now(), cfg_.fleet.wait_seconds);
    std::set<std::int64_t> too_small;
    log("waiting up to " + num(cfg_.fleet.wait_seconds) + " s for " + std::to_string(want) + " devices");
    for (;;) {
      std::vector<std::int64_t> fit;
      for (const auto d : server_->connected()) {
        auto h = server_->hello_of(d);
        if (!h) continue;
        const double smallest = widths_.empty() ? dem.memory_bytes : widths_.back().demand.memory_bytes;
        if (static_cast<double>(h->memory_budget_bytes) >= smallest) {
          fit.push_back(d);
        } else if (too_small.insert(d).second) {
          event("too_small", "device '" + h->agent_name + "' has a budget of " + std::to_string(h->memory_budget_bytes) +
                                 " B; training " + cfg_.fl.model + " needs " + num(dem.memory_bytes) + " B", d);
        }
      }
      if (fit.size() >= want) {
        std::sort(fit.begin(), fit.end());
        fit.resize(want);
        shard_device_ = fit;
        if (!widths_.empty())
          for (const auto d : fit) shard_width_.push_back(width_for(static_cast<double>(budget(d)))->width);
        return success();
      }
      if (Clock::now() >= until) {
        if (fit.empty() && !too_small.empty())
          return make_error(Errc::limit_exceeded, "module '" + cfg_.fl.model + "' needs " + num(dem.memory_bytes) +
                                                      " B to train, more than every connected device's budget (" +
                                                      std::to_string(too_small.size()) + " connected)");
        return make_error(Errc::not_found, "only " + std::to_string(fit.size()) + " of " + std::to_string(want) +
                                               " devices able to train " + cfg_.fl.model + " connected within " +
                                               num(cfg_.fleet.wait_seconds) + " s (fleet.wait_seconds)");
      }
      (void)server_->next(std::min(until, Clock::now() + std::chrono::milliseconds(200)));
    }
  }

  /// The run's devices and their shards, with the placement's prediction.
  Result<void> record_assignments() {
    const auto& dem = demand();
    const auto now = unix_ms_now();
    for (std::size_t i = 0; i < shard_device_.size(); ++i) {
      const auto d = shard_device_[i];
      const auto h = server_->hello_of(d);
      partition::DeviceCapacity cap{h ? h->agent_name : std::to_string(d),
                                    h ? static_cast<double>(h->memory_budget_bytes) : 1.0,
                                    h && h->mac_per_s > 0 ? h->mac_per_s : 1e9,
                                    h && h->link_bytes_per_s > 0 ? h->link_bytes_per_s : 1.25e6};
      const Width* w = widths_.empty() ? nullptr : width_by_value(shard_width_[i]);
      const auto& dm = w ? w->demand : dem;
      Assignment a;
      a.run = run_;
      a.device = d;
      // a HeteroFL sub-model names its width, which `fleet resume` reads back
      a.module_name = cfg_.fl.model + "/shard-" + std::to_string(i) + (w ? "@" + num(w->width) : std::string());
      a.module_kind = w && w->width < 1.0 ? ModuleKind::segment : ModuleKind::whole;
      a.module_bytes = static_cast<std::int64_t>(w ? w->bytes.size() : module_bytes().size());
      a.peak_memory_bytes = static_cast<std::int64_t>(dm.memory_bytes);
      a.predicted_latency_ms = 1000.0 * partition::predicted_seconds(dm, cap);
      a.assigned_at = now;
      auto id = store_->add_assignment(a);
      if (!id) return std::move(id).error();
    }
    return success();
  }

  /// Resumed run: wait for the run's own devices.
  Result<void> gather_resumed() {
    const auto until = after(Clock::now(), cfg_.fleet.wait_seconds);
    for (;;) {
      const auto c = server_->connected();
      std::vector<std::int64_t> missing;
      for (const auto d : shard_device_)
        if (!std::binary_search(c.begin(), c.end(), d)) missing.push_back(d);
      if (missing.empty()) return success();
      if (Clock::now() >= until) {
        std::string names;
        for (const auto d : missing) {
          auto rec = store_->device(d);
          names += (names.empty() ? "" : ", ") + (rec ? rec->name : std::to_string(d));
        }
        return make_error(Errc::not_found, "devices of run " + std::to_string(run_) + " not connected within " +
                                               num(cfg_.fleet.wait_seconds) + " s: " + names);
      }
      (void)server_->next(std::min(until, Clock::now() + std::chrono::milliseconds(200)));
    }
  }

  const std::vector<std::uint8_t>& module_bytes() {
    if (module_.empty()) module_ = io::encode_model(model_);
    return module_;
  }

  /// Send the module to every device of the run and wait for its answer.
  Result<void> assign() {
    const std::uint64_t module_id = static_cast<std::uint64_t>(run_);
    std::set<std::int64_t> waiting(shard_device_.begin(), shard_device_.end());
    for (std::size_t i = 0; i < shard_device_.size(); ++i) {
      const Width* w = widths_.empty() ? nullptr : width_by_value(shard_width_[i]);
      auto sent = send_module(shard_device_[i], module_id, wire::ModuleKind::fdl_model, w ? w->bytes : module_bytes());
      if (!sent) return make_error(sent.error().code, "assigning the module: " + sent.error().message);
    }
    const auto until = after(Clock::now(), cfg_.fleet.wait_seconds);
    while (!waiting.empty()) {
      auto ev = server_->next(until);
      if (!ev) break;
      if (ev->kind == Inbound::Kind::closed && waiting.count(ev->device))
        return make_error(Errc::io_error, "device " + name(ev->device) + " disconnected while receiving the module (" +
                                              ev->reason + ")");
      if (ev->kind != Inbound::Kind::message || !std::holds_alternative<wire::AssignResult>(ev->message)) continue;
      const auto& r = std::get<wire::AssignResult>(ev->message);
      if (!waiting.count(ev->device) || r.module_id != module_id) continue;
      if (!r.accepted)
        return make_error(Errc::limit_exceeded, "device " + name(ev->device) + " refused module '" + cfg_.fl.model +
                                                    "': needs " + std::to_string(r.peak_memory_bytes) + " B, budget " +
                                                    std::to_string(r.budget_bytes) + " B (" + r.reason_text + ")");
      waiting.erase(ev->device);
    }
    if (!waiting.empty())
      return make_error(Errc::not_found, "device " + name(*waiting.begin()) + " did not acknowledge the module within " +
                                             num(cfg_.fleet.wait_seconds) + " s");
    log("module " + cfg_.fl.model + " (" + std::to_string(module_bytes().size()) + " B) accepted by " +
        std::to_string(shard_device_.size()) + " devices");
    return success();
  }

  // ------------------------------------------------------------ rounds
  Result<void> drive(std::int64_t from, bool resumed) {
    if (resumed) FLEETDL_TRY(gather_resumed());
    FLEETDL_TRY(assign());
    if (fedbuff_) return drive_async(from);
    for (std::int64_t r = from; r <= cfg_.fl.sim.rounds; ++r) FLEETDL_TRY(round(r));
    return success();
  }

  /// FedBuff (Nguyen et al. 2022) on the fleet: up to clients_per_round
  /// devices (all, by default) train at once, each on the newest model when
  /// it is handed a task; a finished device gets its next task at once. Each
  /// update is weighted by its staleness (versions since its task was sent;
  /// over max_staleness it is dropped) and buffered, and every buffer_size
  /// accepted updates make one server step, committed as one round. A
  /// round's cost row for a device sums what it received and sent while that
  /// round's buffer filled. A round whose buffer does not fill within
  /// round_deadline_seconds is recorded as abandoned (the buffer carries
  /// over); a task older than the deadline makes its device a straggler.
  Result<void> drive_async(std::int64_t from) {
    struct Task {
      Index shard = 0;
      long version = 0;  // FedBuff's version when the task was sent
      std::int64_t round = 0;
      std::uint32_t id = 0;  // the binding's round field: one update per task (the replay guard allows one per round)
      Clock::time_point sent;
      bool overdue = false;  // past the deadline (its update still counts, weighted by staleness)
    };
    std::map<std::int64_t, Task> busy;  // by device
    const Index shards = static_cast<Index>(shard_device_.size());
    const Index concurrency = cfg_.fl.sim.clients_per_round > 0 ? cfg_.fl.sim.clients_per_round : shards;
    const auto deadline = std::chrono::duration<double>(cfg_.fleet.round_deadline_seconds);
    const auto deadline_ms = static_cast<std::uint32_t>(std::min(4.0e9, cfg_.fleet.round_deadline_seconds * 1000.0));
    const Vector<float> zero = Vector<float>::Zero(model_.param_count());
    const Vector<float> no_c;
    std::uint64_t dispatched = 0;
    std::uint32_t task_id = 0;  // this process's tasks: 1, 2, ...
    for (std::int64_t r = from; r <= cfg_.fl.sim.rounds; ++r) {
      const auto t0 = Clock::now();
      RoundRecord rec = start_record(r);
      Rng rr = round_rng(r);
      std::map<std::int64_t, DeviceCost> costs;  // by device
      std::map<std::int64_t, int> contributed;  // accepted updates by device
      std::map<std::int64_t, int> trained;      // updates received by device (accepted or stale: energy)
      std::set<std::int64_t> refused;           // refused a task this round: not asked again in it
      auto cost_of = [&](std::int64_t d) -> DeviceCost& {
        auto it = costs.find(d);
        if (it == costs.end()) {
          DeviceCost c;
          c.device = d;
          c.budget_bytes = budget(d);
          it = costs.emplace(d, c).first;
        }
        return it->second;
      };
      // a status other than ok, unless the device already has an accepted update in this round
      auto mark = [&](std::int64_t d, CostStatus st) -> DeviceCost& {
        auto& c = cost_of(d);
        if (!contributed.count(d)) c.status = st;
        return c;
      };
      double loss_sum = 0, loss_weight = 0;
      Index accepted = 0, stale = 0;
      bool stepped = false;
      while (!stepped) {
        if (Clock::now() - t0 >= deadline) break;
        // hand tasks to free, connected devices (uniformly, from this round's stream); an
        // overdue task keeps its device busy but not its slot
        const auto conn = server_->connected();
        std::vector<Index> free;
        for (Index sh = 0; sh < shards; ++sh) {
          const auto d = shard_device_[static_cast<std::size_t>(sh)];
          if (!busy.count(d) && !refused.count(d) && std::binary_search(conn.begin(), conn.end(), d)) free.push_back(sh);
        }
        Index working = 0;
        for (const auto& [d, t] : busy) working += t.overdue ? 0 : 1;
        const Index want = std::min<Index>(concurrency - working, static_cast<Index>(free.size()));
        if (want > 0) {
          Rng pick = rr.fork(1).fork(dispatched);
          for (const Index sh : fl::select_uniform(free, want, pick)) {
            const auto d = shard_device_[static_cast<std::size_t>(sh)];
            const fl::ClientInstruction ins{sh, cfg_.fl.client};
            auto tr = make_train_round(ins, rr.fork(3).fork(static_cast<std::uint64_t>(sh)).fork(dispatched).next_u64(),
                                       model_.params(), no_c, deadline_ms);
            if (!tr) return std::move(tr).error();
            ++dispatched;
            const std::uint32_t id = ++task_id;
            auto sent = server_->send(d, *tr, wire::Binding{0, static_cast<std::uint64_t>(run_), id, 0});
            if (!sent) {
              mark(d, CostStatus::dropped);
              continue;
            }
            cost_of(d).bytes_down += static_cast<std::int64_t>(*sent);
            busy[d] = Task{sh, fedbuff_->version(), r, id, Clock::now()};
          }
        }
        if (busy.empty()) {  // no device to wait for (none connected, or all refused): the round cannot fill
          event("abandoned", "round " + std::to_string(r) + ": no connected device can take a task");
          break;
        }
        // the round's deadline, or the oldest task's
        auto until = t0 + std::chrono::duration_cast<Clock::duration>(deadline);
        for (const auto& [d, t] : busy)
          if (!t.overdue) until = std::min(until, t.sent + std::chrono::duration_cast<Clock::duration>(deadline));
        auto ev = server_->next(until);
        if (!ev) {
          const auto now = Clock::now();
          for (auto& [d, t] : busy)
            if (!t.overdue && now - t.sent >= deadline) {
              // still busy: its update counts when it comes, weighted by its staleness
              t.overdue = true;
              mark(d, CostStatus::straggler);
              event("straggler", "device " + name(d) + " did not finish task " + std::to_string(t.id) + " (sent in round " +
                                     std::to_string(t.round) + ") within " + num(cfg_.fleet.round_deadline_seconds) + " s",
                    d);
            }
          if (now - t0 >= deadline) break;
          continue;
        }
        if (ev->kind == Inbound::Kind::closed) {
          if (busy.erase(ev->device)) {
            mark(ev->device, CostStatus::dropped);
            event("dropped", "device " + name(ev->device) + " dropped out during round " + std::to_string(r) + ": " + ev->reason,
                  ev->device);
          }
          continue;
        }
        if (ev->kind != Inbound::Kind::message) continue;
        auto it = busy.find(ev->device);
        if (std::holds_alternative<wire::AssignResult>(ev->message) && it != busy.end() &&
            !std::get<wire::AssignResult>(ev->message).accepted) {
          const auto& ar = std::get<wire::AssignResult>(ev->message);
          mark(ev->device, CostStatus::rejected);
          event("refused", "device " + name(ev->device) + " refused its task: " + ar.reason_text, ev->device);
          busy.erase(it);
          refused.insert(ev->device);
          continue;
        }
        if (!std::holds_alternative<wire::Update>(ev->message)) continue;
        if (ev->header.binding.run != static_cast<std::uint64_t>(run_) || it == busy.end() ||
            ev->header.binding.round != it->second.id) {
          event("late", "device " + name(ev->device) + " sent an update for task " +
                            std::to_string(ev->header.binding.round) + ", which is not its task; ignored",
                ev->device);
          continue;
        }
        const Task task = it->second;
        busy.erase(it);
        const auto& u = std::get<wire::Update>(ev->message);
        auto& c = cost_of(ev->device);
        c.bytes_up += static_cast<std::int64_t>(ev->frame_bytes);
        ++trained[ev->device];
        c.compute_ms += u.compute_ms;
        c.peak_memory_bytes = std::max<std::int64_t>(c.peak_memory_bytes, static_cast<std::int64_t>(u.peak_memory_bytes));
        auto cu = to_update(u, task.shard, zero, 0);  // zero base: params hold the device's delta
        if (!cu) {
          mark(ev->device, CostStatus::rejected);
          event("rejected", "device " + name(ev->device) + ": round " + std::to_string(r) + ": " + cu.error().message,
                ev->device);
          continue;
        }
        cu->base_round = task.version;
        const long dropped_before = fedbuff_->dropped();
        auto step = fedbuff_->submit_delta(VectorMap<float>(model_.params().data(), model_.param_count()), *cu);
        if (!step) {
          mark(ev->device, CostStatus::rejected);
          event("rejected", "device " + name(ev->device) + ": round " + std::to_string(r) + ": " + step.error().message,
                ev->device);
          continue;
        }
        if (fedbuff_->dropped() > dropped_before) {  // older than max_staleness
          ++stale;
          mark(ev->device, CostStatus::straggler);  // (stale)
          event("stale", "device " + name(ev->device) + ": update of version " + std::to_string(task.version) +
                             " is " + std::to_string(fedbuff_->version() - task.version) + " versions old; dropped",
                ev->device);
          continue;
        }
        ++accepted;
        ++contributed[ev->device];
        c.status = CostStatus::ok;
        c.examples += u.example_count;
        loss_sum += u.loss * u.example_count;
        loss_weight += u.example_count;
        stepped = *step;
      }

      rec.selected = static_cast<std::int64_t>(costs.size());
      rec.completed = static_cast<std::int64_t>(accepted);
      rec.round_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      if (loss_weight > 0) rec.train_loss = loss_sum / loss_weight;
      std::vector<DeviceCost> rows;
      const sim::DeviceProfile p;
      const double macs = demand().macs;
      for (auto& [d, c] : costs) {
        const auto tt = trained.find(d);
        const double updates = tt == trained.end() ? 0.0 : static_cast<double>(tt->second);
        c.energy_joules = updates * macs * p.energy_per_mac_joules +
                          static_cast<double>(c.bytes_up + c.bytes_down) * p.energy_per_byte_joules;
        rec.bytes_up += c.bytes_up;
        rec.bytes_down += c.bytes_down;
        rows.push_back(c);
      }
      rec.finished_at = unix_ms_now();
      if (stepped) {
        if (r % cfg_.fl.sim.eval_every == 0 || r == cfg_.fl.sim.rounds) {
          const auto ev = nn::evaluate(model_, test_.images, test_.labels, cfg_.fl.sim.eval_batch, &*pool_);
          rec.test_accuracy = ev.accuracy;
          rec.test_loss = ev.loss;
        }
        Checkpoint ck;
        ck.parameters = float_bytes(model_.params());
        ck.state = server_state();
        auto ok = store_->commit_round(rec, rows, ck);
        if (!ok) return std::move(ok).error();
      } else {  // (accepted updates stay in the buffer for the next step: their rows stay ok)
        rec.status = RoundStatus::abandoned;
        auto ok = store_->abandon_round(rec, rows);
        if (!ok) return std::move(ok).error();
        event("abandoned", "round " + std::to_string(r) + ": " + std::to_string(fedbuff_->buffered()) + " of " +
                               std::to_string(cfg_.fl.strategy.buffer_size) + " buffered updates within the deadline");
      }
      log("round " + std::to_string(r) + "/" + std::to_string(cfg_.fl.sim.rounds) + " " +
          (stepped ? "committed" : "abandoned") + ": version " + std::to_string(fedbuff_->version()) + ", " +
          std::to_string(accepted) + " updates buffered, " + std::to_string(stale) + " stale" +
          (rec.test_accuracy ? ", accuracy " + num(*rec.test_accuracy) : std::string()) + ", up " +
          std::to_string(rec.bytes_up) + " B, down " + std::to_string(rec.bytes_down) + " B, " + num(rec.round_seconds) + " s");
      if (o_.on_round) o_.on_round(rec);
      if (o_.after_commit) o_.after_commit(r);
    }
    return success();
  }

  std::string strategy_name() const { return fedbuff_ ? fedbuff_->name() : bundle_.strategy->name(); }

  /// The train_round for one device: its config, the global parameters (its
  /// HeteroFL share) and SCAFFOLD's c. `seed` is the device's training seed.
  Result<wire::TrainRound> make_train_round(const fl::ClientInstruction& ins, std::uint64_t seed, const Vector<float>& global,
                                            const Vector<float>& server_c, std::uint32_t deadline_ms) {
    wire::TrainRound tr;
    auto& c = tr.config;
    c.local_epochs = static_cast<std::uint32_t>(ins.config.epochs);
    c.batch_size = static_cast<std::uint32_t>(ins.config.batch);
    c.learning_rate = static_cast<float>(ins.config.lr);
    c.momentum = static_cast<float>(ins.config.momentum);
    c.weight_decay = static_cast<float>(ins.config.weight_decay);
    c.proximal_mu = static_cast<float>(ins.config.prox_mu);
    c.flags = static_cast<std::uint8_t>((ins.config.scaffold && bundle_.scaffold ? wire::round_flag::scaffold : 0) |
                                        (bundle_.needs_loss_before ? wire::round_flag::loss_before : 0));
    c.codec = codec_id(cfg_.fl.sim.codec);
    c.deadline_ms = deadline_ms;
    c.seed = seed;
    c.partition_spec = partition_spec_json(cfg_.fl.partition);
    c.shard_index = static_cast<std::uint32_t>(ins.client);
    c.shard_count = static_cast<std::uint32_t>(shard_device_.size());
    c.partition_seed = cfg_.fl.seed;
    c.train_limit = cfg_.fl.train_limit > 0 ? static_cast<std::uint32_t>(cfg_.fl.train_limit) : 0;
    c.topk_fraction = static_cast<float>(cfg_.fl.sim.topk_fraction);
    if (cfg_.fl.sim.local_dp.enabled) {
      c.dp_clip = static_cast<float>(cfg_.fl.sim.local_dp.clipping_norm);
      c.dp_noise_multiplier = static_cast<float>(cfg_.fl.sim.local_dp.noise_multiplier);
    }
    if (shard_width(ins.client) < 1.0) {  // HeteroFL: the device's share of the global model
      auto sub = hetero_->extract(ConstVectorMap<float>(global.data(), global.size()), shard_width(ins.client));
      if (!sub) return std::move(sub).error();
      tr.parameters.assign(sub->data(), sub->data() + sub->size());
      sub_global_[ins.client] = std::move(*sub);
    } else {
      tr.parameters.assign(global.data(), global.data() + global.size());
    }
    if (c.scaffold()) tr.server_control.assign(server_c.data(), server_c.data() + server_c.size());
    return tr;
  }

  /// Round r's record, started now.
  RoundRecord start_record(std::int64_t r) const {
    RoundRecord rec;
    rec.run = run_;
    rec.round = r;
    rec.started_at = unix_ms_now();
    return rec;
  }
  /// Round r's random stream (selection, the devices' training seeds).
  Rng round_rng(std::int64_t r) const { return Rng(cfg_.fl.seed).fork(kRoundTag).fork(static_cast<std::uint64_t>(r)); }

  Result<void> round(std::int64_t r) {
    const auto t0 = Clock::now();
    RoundRecord rec = start_record(r);
    Rng rr = round_rng(r);
    Rng select_rng = rr.fork(1);
    const auto conn = server_->connected();
    std::vector<Index> online;
    for (std::size_t s = 0; s < shard_device_.size(); ++s)
      if (std::binary_search(conn.begin(), conn.end(), shard_device_[s])) online.push_back(static_cast<Index>(s));
    const Index k = cfg_.fl.sim.clients_per_round > 0 ? cfg_.fl.sim.clients_per_round : static_cast<Index>(online.size());
    std::vector<Index> chosen;
    std::optional<Index> keep_first;  // over-commit: the first K updates
    switch (cfg_.fl.sim.selection) {
      case sim::SelectionPolicy::uniform: chosen = fl::select_uniform(online, k, select_rng); break;
      case sim::SelectionPolicy::overcommit: {
        auto sel = fl::select_overcommit(online, k, select_rng, cfg_.fl.sim.overcommit);
        if (!sel) return std::move(sel).error();
        chosen = std::move(*sel);
        keep_first = k;
        break;
      }
      case sim::SelectionPolicy::deadline: {
        const auto& dem = demand();
        std::vector<double> predicted;
        for (const Index s : online) {
          const auto h = server_->hello_of(shard_device_[static_cast<std::size_t>(s)]);
          partition::DeviceCapacity cap{"", 1.0, h && h->mac_per_s > 0 ? h->mac_per_s : 1e9,
                                        h && h->link_bytes_per_s > 0 ? h->link_bytes_per_s : 1.25e6};
          predicted.push_back(partition::predicted_seconds(dem, cap));
        }
        auto sel = fl::select_deadline_aware(online, predicted, cfg_.fleet.round_deadline_seconds, k, select_rng);
        if (!sel) return std::move(sel).error();
        chosen = std::move(sel->clients);
        break;
      }
      case sim::SelectionPolicy::oort: {
        if (!oort_) oort_.emplace(cfg_.fl.sim.oort);
        auto sel = oort_->select(online, k, select_rng);
        if (!sel) return std::move(sel).error();
        chosen = std::move(sel->clients);
        break;
      }
    }
    auto instructions = bundle_.strategy->configure(r, chosen, select_rng);
    const Index required = std::max(cfg_.fl.sim.min_clients, bundle_.strategy->min_updates());

    const Vector<float> global = model_.params();
    Vector<float> server_c;
    if (bundle_.scaffold) {
      server_c = bundle_.scaffold->control();
      if (server_c.size() == 0) server_c.setZero(global.size());
    }
    struct Slot {
      Index shard = 0;
      std::int64_t device = 0;
      DeviceCost cost;
      bool pending = true;
      double loss = 0, seconds = 0;  ///< of its update (Oort)
    };
    std::map<std::int64_t, Slot> slots;  // by device
    const auto deadline = after(t0, cfg_.fleet.round_deadline_seconds);
    const auto deadline_ms = static_cast<std::uint32_t>(std::min(4.0e9, cfg_.fleet.round_deadline_seconds * 1000.0));
    for (const auto& ins : instructions) {
      Slot s;
      s.shard = ins.client;
      s.device = shard_device_.at(static_cast<std::size_t>(ins.client));
      s.cost.device = s.device;
      s.cost.budget_bytes = budget(s.device);
      auto tr = make_train_round(ins, rr.fork(3).fork(static_cast<std::uint64_t>(ins.client)).next_u64(), global,
                                 server_c, deadline_ms);
      if (!tr) return std::move(tr).error();
      auto sent = server_->send(s.device, *tr, wire::Binding{0, static_cast<std::uint64_t>(run_), static_cast<std::uint32_t>(r), 0});
      if (sent) {
        s.cost.bytes_down = static_cast<std::int64_t>(*sent);
      } else {
        s.pending = false;
        s.cost.status = CostStatus::dropped;
      }
      slots[s.device] = s;
    }

    std::vector<fl::ClientUpdate<float>> updates;
    double loss_sum = 0, loss_weight = 0;
    auto pending = [&] {
      Index n = 0;
      for (const auto& [d, s] : slots) n += s.pending ? 1 : 0;
      return n;
    };
    while (pending() > 0 && !(keep_first && static_cast<Index>(updates.size()) >= *keep_first)) {
      auto ev = server_->next(deadline);
      if (!ev) break;
      auto it = slots.find(ev->device);
      if (ev->kind == Inbound::Kind::closed) {
        if (it != slots.end() && it->second.pending) {
          it->second.pending = false;
          it->second.cost.status = CostStatus::dropped;
          event("dropped", "device " + name(ev->device) + " dropped out of round " + std::to_string(r) + ": " + ev->reason,
                ev->device);
        }
        continue;
      }
      if (ev->kind == Inbound::Kind::message && std::holds_alternative<wire::AssignResult>(ev->message) &&
          it != slots.end() && it->second.pending && !std::get<wire::AssignResult>(ev->message).accepted) {
        // the device cannot train this round's batch within its budget
        const auto& ar = std::get<wire::AssignResult>(ev->message);
        it->second.pending = false;
        it->second.cost.status = CostStatus::rejected;
        it->second.cost.peak_memory_bytes = static_cast<std::int64_t>(ar.peak_memory_bytes);
        event("refused", "device " + name(ev->device) + " refused round " + std::to_string(r) + ": " + ar.reason_text,
              ev->device);
        continue;
      }
      if (ev->kind != Inbound::Kind::message || !std::holds_alternative<wire::Update>(ev->message)) continue;
      if (ev->header.binding.run != static_cast<std::uint64_t>(run_) ||
          ev->header.binding.round != static_cast<std::uint32_t>(r) || it == slots.end() || !it->second.pending) {
        event("late", "device " + name(ev->device) + " sent an update for round " +
                          std::to_string(ev->header.binding.round) + " during round " + std::to_string(r) + "; ignored",
              ev->device);
        continue;
      }
      Slot& s = it->second;
      s.pending = false;
      const auto& u = std::get<wire::Update>(ev->message);
      s.cost.bytes_up = static_cast<std::int64_t>(ev->frame_bytes);
      s.cost.compute_ms = u.compute_ms;
      s.cost.peak_memory_bytes = static_cast<std::int64_t>(u.peak_memory_bytes);
      s.cost.examples = u.example_count;
      const double sw = shard_width(s.shard);
      auto cu = to_update(u, s.shard, sw < 1.0 ? sub_global_.at(s.shard) : global, r);
      if (cu) cu->width = sw;
      if (!cu) {
        s.cost.status = CostStatus::rejected;
        event("rejected", "device " + name(s.device) + ": round " + std::to_string(r) + ": " + cu.error().message, s.device);
        continue;
      }
      s.cost.status = CostStatus::ok;
      loss_sum += u.loss * u.example_count;
      loss_weight += u.example_count;
      // Oort: the device's statistical utility (its loss) and its measured
      // round time, wall clock from train_round sent to update received
      s.loss = u.loss;
      s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      updates.push_back(std::move(*cu));
    }
    const auto conn_now = server_->connected();
    for (auto& [d, s] : slots)
      if (s.pending) {
        s.pending = false;
        s.cost.status = std::binary_search(conn_now.begin(), conn_now.end(), d) ? CostStatus::straggler : CostStatus::dropped;
      }
    std::sort(updates.begin(), updates.end(), [](const auto& a, const auto& b) { return a.client < b.client; });

    rec.selected = static_cast<std::int64_t>(slots.size());
    rec.completed = static_cast<std::int64_t>(updates.size());
    rec.round_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (loss_weight > 0) rec.train_loss = loss_sum / loss_weight;
    std::vector<DeviceCost> costs;
    const sim::DeviceProfile p;  // energy estimate: the default device profile's figures (sim/profile.hpp)
    const double macs = demand().macs;
    for (auto& [d, s] : slots) {
      s.cost.energy_joules = (s.cost.status == CostStatus::ok ? macs * p.energy_per_mac_joules : 0.0) +
                             static_cast<double>(s.cost.bytes_up + s.cost.bytes_down) * p.energy_per_byte_joules;
      rec.bytes_up += s.cost.bytes_up;
      rec.bytes_down += s.cost.bytes_down;
      costs.push_back(s.cost);
    }
    bool completed = static_cast<Index>(updates.size()) >= required && !updates.empty();
    if (completed) {
      auto agg = bundle_.strategy->aggregate(r, VectorMap<float>(model_.params().data(), model_.param_count()), updates);
      if (!agg) {
        event("aggregation_failed", "round " + std::to_string(r) + ": " + agg.error().message);
        completed = false;
      }
    }
    rec.finished_at = unix_ms_now();
    if (completed) {
      if (r % cfg_.fl.sim.eval_every == 0 || r == cfg_.fl.sim.rounds) {
        const auto ev = nn::evaluate(model_, test_.images, test_.labels, cfg_.fl.sim.eval_batch, &*pool_);
        rec.test_accuracy = ev.accuracy;
        rec.test_loss = ev.loss;
      }
      if (oort_)
        for (const auto& [d, sl] : slots)
          if (sl.cost.status == CostStatus::ok)
            (void)oort_->report(sl.shard, std::max<Index>(1, static_cast<Index>(sl.cost.examples)), sl.loss * sl.loss,
                                std::max(sl.seconds, 1e-6));
      Checkpoint ck;
      ck.parameters = float_bytes(model_.params());
      ck.state = server_state();
      auto ok = store_->commit_round(rec, costs, ck);
      if (!ok) return std::move(ok).error();
    } else {
      model_.params() = global;
      for (auto& c : costs)
        if (c.status == CostStatus::ok) c.status = CostStatus::abandoned;
      rec.status = RoundStatus::abandoned;
      auto ok = store_->abandon_round(rec, costs);
      if (!ok) return std::move(ok).error();
      event("abandoned", "round " + std::to_string(r) + ": " + std::to_string(updates.size()) + " of " +
                             std::to_string(required) + " required updates");
    }
    log("round " + std::to_string(r) + "/" + std::to_string(cfg_.fl.sim.rounds) + " " +
        (completed ? "committed" : "abandoned") + ": " + std::to_string(updates.size()) + "/" +
        std::to_string(slots.size()) + " updates" +
        (rec.test_accuracy ? ", accuracy " + num(*rec.test_accuracy) : std::string()) + ", up " +
        std::to_string(rec.bytes_up) + " B, down " + std::to_string(rec.bytes_down) + " B, " + num(rec.round_seconds) + " s");
    if (cfg_.fl.sim.local_dp.enabled) FLEETDL_TRY(account_local_dp(r));
    if (bundle_.accountant && completed) FLEETDL_TRY(account_central_dp(r));
    if (o_.on_round) o_.on_round(rec);
    if (o_.after_commit) o_.after_commit(r);
    return success();
  }

  /// Local DP: the privacy spent so far, as `fl simulate` reports it: RDP of
  /// the Gaussian mechanism (z = noise_multiplier, sampling rate 1) composed
  /// over the most releases any device has made (its cost rows that carried
  /// an update), as epsilon at dp.delta; logged and recorded as an event.
  Result<void> account_local_dp(std::int64_t r) {
    auto costs = store_->device_costs(run_);
    if (!costs) return std::move(costs).error();
    std::map<std::int64_t, long> released;
    for (const auto& c : *costs)
      if (c.cost.bytes_up > 0 && c.cost.status != CostStatus::dropped) ++released[c.cost.device];
    long most = 0;
    for (const auto& [d, n] : released) most = std::max(most, n);
    double eps = 0.0;
    fl::RdpAccountant acc;
    if (most > 0 && acc.step(1.0, cfg_.fl.sim.local_dp.noise_multiplier, most)) {
      auto e = acc.epsilon(cfg_.fl.sim.dp_delta);
      if (!e) return make_error(e.error().code, "local DP accounting: " + e.error().message);
      eps = e->epsilon;
    }
    const std::string line = "round " + std::to_string(r) + ": local DP epsilon " + num(eps) + " at delta " +
                             num(cfg_.fl.sim.dp_delta) + " (" + std::to_string(most) + " releases by one device)";
    log(line);
    event("privacy", line);
    return success();
  }

  /// Central DP: the wrapper's accountant (one step of the sampled Gaussian
  /// mechanism per committed round, as `fl simulate` accounts it; restored
  /// with the checkpoint on resume), as epsilon at dp.delta; logged and
  /// recorded as an event.
  Result<void> account_central_dp(std::int64_t r) {
    auto e = bundle_.accountant->epsilon(cfg_.fl.sim.dp_delta);
    if (!e) return make_error(e.error().code, "central DP accounting: " + e.error().message);
    const std::string line = "round " + std::to_string(r) + ": central DP epsilon " + num(e->epsilon) + " at delta " +
                             num(cfg_.fl.sim.dp_delta) + " (" + std::to_string(bundle_.accountant->steps()) +
                             " accounted rounds)";
    log(line);
    event("privacy", line);
    return success();
  }

  Result<fl::ClientUpdate<float>> to_update(const wire::Update& u, Index shard, const Vector<float>& global, std::int64_t r) {
    const Index d = global.size();
    fl::ClientUpdate<float> cu;
    cu.client = shard;
    cu.num_examples = u.example_count;
    cu.local_steps = u.local_steps;
    cu.loss_before = u.loss_before;
    cu.base_round = r - 1;
    if (u.codec == wire::CodecId::raw_f32) {
      if (u.delta.size() != static_cast<std::size_t>(d) * sizeof(float))
        return make_error(Errc::shape_mismatch, "raw delta of " + std::to_string(u.delta.size()) + " bytes, the model has " +
                                                    std::to_string(d) + " parameters");
      Vector<float> delta(d);
      std::memcpy(delta.data(), u.delta.data(), u.delta.size());
      cu.params = global + delta;
    } else {
      auto delta = fl::decode_update<float>(u.delta, d);
      if (!delta) return std::move(delta).error();
      cu.params = global + *delta;
    }
    if (!cu.params.allFinite()) return make_error(Errc::invalid_argument, "the update holds NaN or infinity");
    if (!u.control_delta.empty()) {
      if (static_cast<Index>(u.control_delta.size()) != d)
        return make_error(Errc::shape_mismatch, "control delta of " + std::to_string(u.control_delta.size()) +
                                                    " values, the model has " + std::to_string(d));
      cu.control_delta = Eigen::Map<const Vector<float>>(u.control_delta.data(), d);
    }
    return cu;
  }

  // ------------------------------------------------------------ server state
  /// What the strategy carries from round to round, for the checkpoint
  /// (fl::Strategy::save_state): SCAFFOLD's c; FedAvgM's momentum; FedOpt's
  /// step count (u64 LE) then m and v; a central-DP wrapper's noise stream,
  /// accountant and clipping norm before its inner strategy's; nothing for
  /// the stateless strategies. Vectors are float32 little-endian, empty
  /// before the first aggregation.
  /// With Oort selection, its per-shard statistics and exploration rate
  /// (fl::OortSelector::save_state) come first.
  Blob server_state() const {
    ByteWriter w;
    if (fedbuff_) {  // FedBuff: its version, counters and buffer (fl::FedBuff::save_state)
      fedbuff_->save_state(w);
      return std::move(w).bytes();
    }
    if (cfg_.fl.sim.selection == sim::SelectionPolicy::oort)
      (oort_ ? *oort_ : fl::OortSelector(cfg_.fl.sim.oort)).save_state(w);
    bundle_.strategy->save_state(w);
    return std::move(w).bytes();
  }

  /// The inverse of server_state(), checked against the model's size and
  /// the number of shards; on error nothing changes.
  Result<void> restore_server_state(const Blob& b, std::int64_t round) {
    const auto bad = [&](const std::string& why) {
      return make_error(Errc::corrupt, "server state of the checkpoint of round " + std::to_string(round) + ": " + why);
    };
    ByteReader r(b.data(), b.size());
    if (fedbuff_) {
      if (auto ok = fedbuff_->load_state(r, model_.param_count()); !ok) return bad(ok.error().message);
      return success();
    }
    std::optional<fl::OortSelector> oort;
    if (cfg_.fl.sim.selection == sim::SelectionPolicy::oort) {
      oort.emplace(cfg_.fl.sim.oort);
      if (auto ok = oort->load_state(r, static_cast<Index>(cfg_.fl.clients)); !ok) return bad(ok.error().message);
    }
    if (auto ok = bundle_.strategy->load_state(r, model_.param_count()); !ok) return bad(ok.error().message);
    if (oort) oort_ = std::move(oort);
    return success();
  }

  // ------------------------------------------------------------ helpers
  Result<std::int64_t> finish(Result<void> r) {
    const auto now = unix_ms_now();
    if (!r) {
      if (run_ > 0) {
        (void)store_->set_run_status(run_, RunStatus::failed, now);
        event("run_failed", r.error().message);
      }
      return std::move(r).error();
    }
    for (const auto d : shard_device_)
      (void)server_->send(d, wire::Bye{}, wire::Binding{0, static_cast<std::uint64_t>(run_), 0, 0});
    (void)store_->set_run_status(run_, RunStatus::finished, now);
    event("run_finished", "run " + std::to_string(run_) + " finished");
    server_->forget_run(static_cast<std::uint64_t>(run_));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the byes go out
    return run_;
  }

  const FleetConfig& cfg_;
  FleetRunOptions o_;
  data::Dataset<float> test_;
  nn::Model<float> model_;
  sim::StrategyBundle<float> bundle_;
  std::optional<ThreadPool> pool_;
  partition::ModuleDemand demand_;
  std::optional<fl::OortSelector> oort_;
  std::optional<fl::FedBuff<float>> fedbuff_;  ///< the strategy, when it is FedBuff (asynchronous)
  fl::HeteroFL<float>* hetero_ = nullptr;  ///< the strategy, when it is HeteroFL
  std::vector<Width> widths_;              ///< HeteroFL: widest first
  std::vector<double> shard_width_;        ///< HeteroFL: per shard
  std::map<Index, Vector<float>> sub_global_;  ///< HeteroFL: what each shard was sent this round
  std::vector<std::uint8_t> module_;
  std::vector<std::int64_t> shard_device_;
};

/// `fleet infer`: modules out to devices, batches of test images through
/// them, the answers combined here.
class InferEngine : public FleetHost {
 public:
  explicit InferEngine(const FleetInferOptions& o) : FleetHost(o.fleet, o.db_path, o.ca_dir, o.log), o_(o) {}

  Result<FleetInferResult> start(const std::string& config_json) {
    FLEETDL_TRY(prepare());
    FLEETDL_TRY(gather());
    auto run = store_->create_run(RunKind::infer, config_json, 0, unix_ms_now());
    if (!run) return std::move(run).error();
    run_ = *run;
    log("run " + std::to_string(run_) + ": inference of " + std::to_string(test_.size()) + " images on " +
        std::to_string(mods_.size()) + (nonn_ ? " NoNN students" : " replicas of " + mods_[0].name));
    event("run_started", "inference run " + std::to_string(run_) + " started");
    const auto t0 = Clock::now();
    auto r = record_assignments();
    if (r) r = assign();
    if (r) r = nonn_ ? infer_nonn() : infer_replicas();
    if (r) r = combine_and_record(t0);
    const auto now = unix_ms_now();
    if (!r) {
      (void)store_->set_run_status(run_, RunStatus::failed, now);
      event("run_failed", r.error().message);
      return std::move(r).error();
    }
    for (const auto& m : mods_)
      (void)server_->send(m.device, wire::Bye{}, wire::Binding{0, static_cast<std::uint64_t>(run_), 0, 0});
    (void)store_->set_run_status(run_, RunStatus::finished, now);
    event("run_finished", "inference run " + std::to_string(run_) + " finished");
    server_->forget_run(static_cast<std::uint64_t>(run_));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the byes go out
    result_.run = run_;
    return result_;
  }

 private:
  struct Module {
    std::string name;                  ///< file name (student) or the model's
    nn::Model<float> model;            ///< empty for a micro blob
    std::vector<std::uint8_t> bytes;   ///< the .fdl file or micro blob as sent
    Index features = 0;                ///< outputs per image
    Index row = 0;                     ///< NoNN: first row of its features in the combiner's input
    partition::ModuleDemand demand;
    std::int64_t device = 0;
    FleetInferDevice cost;
  };

  Result<void> prepare() {
    std::error_code ec;
    if (o_.batch < 1 || o_.batch > 65536) return make_error(Errc::invalid_argument, "batch must be in [1, 65536]");
    if (o_.replicas < 1 || o_.replicas > 4096) return make_error(Errc::invalid_argument, "replicas must be in [1, 4096]");
    if (std::filesystem::is_directory(o_.modules, ec)) {
      auto set = partition::load_modules(o_.modules);
      if (!set) return std::move(set).error();
      nonn_ = true;
      Index row = 0;
      for (auto& st : set->students) {
        Module m;
        m.name = std::filesystem::path(st.file).filename().string();
        m.features = st.features;
        m.row = row;
        row += st.features;
        m.model = std::move(st.model);
        mods_.push_back(std::move(m));
      }
      combiner_ = std::move(set->combiner);
      reference_ = std::move(set->unified);
      classes_ = set->classes;
    } else if (auto blob = read_micro_blob(o_.modules); blob.ok() && !blob->bytes.empty()) {
      FLEETDL_TRY(prepare_micro(std::move(blob->bytes), blob->arena_bytes));
    } else if (!blob) {
      return std::move(blob).error();
    } else {
      auto f = io::load_model<float>(o_.modules);
      if (!f) return std::move(f).error();
      classes_ = f->model.output_shape().size();
      for (long i = 0; i < o_.replicas; ++i) {
        Module m;
        m.name = std::filesystem::path(o_.modules).filename().string();
        m.model = f->model;
        m.features = classes_;
        mods_.push_back(std::move(m));
      }
      reference_ = std::move(f->model);
    }
    const std::string dir = o_.data_dir.empty() ? std::string(FLEETDL_FASHION_MNIST_DIR) : o_.data_dir;
    auto test = data::load_fashion_mnist<float>(dir, false, o_.test_limit);
    if (!test) return std::move(test).error();
    test_ = std::move(*test);
    if (test_.size() < 1) return make_error(Errc::invalid_argument, dir + ": no test images");
    const Shape in_shape = micro_ ? micro_->model().input_shape : mods_[0].model.input_shape();
    const Index in = in_shape.size();
    if (test_.images.rows() != in)
      return make_error(Errc::shape_mismatch, o_.modules + ": the modules take " + in_shape.str() +
                                                  " inputs, the dataset has " + std::to_string(test_.images.rows()) +
                                                  " values per image");
    const Index batch = std::min<Index>(o_.batch, test_.size());
    for (auto& m : mods_) {
      if (micro_) continue;  // bytes and demand set by prepare_micro
      m.bytes = io::encode_model(m.model);
      m.demand = partition::inference_demand<float>(m.name, m.model);
      double peak = 0;
      for (const auto& r : m.model.cost_report())
        peak = std::max(peak, static_cast<double>(r.act_in_bytes + r.act_out_bytes));
      m.demand.memory_bytes += static_cast<double>(batch - 1) * peak;  // a batch's activations, not one image's
      m.demand.macs *= static_cast<double>(batch);
    }
    // a request carries a batch of images; a response a batch of outputs
    Index widest = 1;
    for (const auto& m : mods_) widest = std::max(widest, m.features);
    const std::size_t values = static_cast<std::size_t>(batch) * static_cast<std::size_t>(std::max(in, widest));
    limits_.max_activations = static_cast<std::uint32_t>(std::max<std::size_t>(values, 1));
    limits_.max_frame_payload = static_cast<std::uint32_t>(std::max<std::size_t>(values * sizeof(float) + 64 * 1024, 256 * 1024));
    FLEETDL_TRY(open_store());
    pool_.emplace(std::max(1, o_.threads));
    return listen();
  }

  struct MicroFile {
    std::vector<std::uint8_t> bytes;  ///< empty: not a micro blob
    std::uint64_t arena_bytes = 0;    ///< micro::plan_arena_bytes(bytes).plan.total
  };
  /// The file's bytes when it is an int8 micro blob (micro::plan_arena_bytes,
  /// which verifies it, accepts it); empty when it is not one (a .fdl model,
  /// say); an error when it cannot be read.
  static Result<MicroFile> read_micro_blob(const std::string& path) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) return make_error(Errc::io_error, path + ": " + ec.message());
    if (size > wire::Limits{}.max_module_bytes)
      return make_error(Errc::limit_exceeded, path + ": " + std::to_string(size) + " bytes, more than a module may have (" +
                                                  std::to_string(wire::Limits{}.max_module_bytes) + ")");
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return make_error(Errc::io_error, path + ": cannot open: " + std::strerror(errno));
    const std::size_t got = bytes.empty() ? 0 : std::fread(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
    if (got != bytes.size()) return make_error(Errc::io_error, path + ": short read");
    const micro::PlanResult plan = micro::plan_arena_bytes(bytes.data(), bytes.size());
    if (!plan) return MicroFile{};
    return MicroFile{std::move(bytes), plan.plan.total};
  }

  /// An int8 micro blob on `replicas` devices: its float shapes and
  /// quantization read from the blob as the agent reads them; the local
  /// reference is compress::QuantizedRunner over the same bytes.
  Result<void> prepare_micro(std::vector<std::uint8_t> blob, std::uint64_t arena_bytes) {
    const micro::ModelView v(blob.data(), blob.size());
    if (v.input_count() != 1 || v.output_count() != 1)
      return make_error(Errc::unsupported, o_.modules + ": a micro blob with one input and one output is needed (it has " +
                                               std::to_string(v.input_count()) + " and " + std::to_string(v.output_count()) + ")");
    const micro::TensorDesc ti = v.tensor(v.input_id(0)), to = v.tensor(v.output_id(0));
    compress::QuantizedModel qm;
    qm.blob = blob;
    qm.input_shape = Shape{ti.shape.c, ti.shape.h, ti.shape.w};
    qm.output_shape = Shape{to.shape.c, to.shape.h, to.shape.w};
    qm.output_layout = qm.output_shape;
    qm.input = compress::QuantParams{ti.scale, ti.zero_point};
    qm.output = compress::QuantParams{to.scale, to.zero_point};
    qm.arena_bytes = arena_bytes;
    auto runner = compress::QuantizedRunner::create(qm);
    if (!runner) return std::move(runner).error();
    micro_.emplace(std::move(*runner));
    classes_ = qm.output_shape.size();
    for (long i = 0; i < o_.replicas; ++i) {
      Module m;
      m.name = std::filesystem::path(o_.modules).filename().string();
      m.bytes = blob;
      m.features = classes_;
      m.demand.name = m.name;
      m.demand.memory_bytes = static_cast<double>(blob.size()) + static_cast<double>(arena_bytes);  // the agent's rule
      m.demand.macs = 1.0;  // not known from the blob; placement then balances by count
      m.demand.bytes_in = static_cast<double>(qm.input_shape.size()) * sizeof(float);
      m.demand.bytes_out = static_cast<double>(classes_) * sizeof(float);
      mods_.push_back(std::move(m));
    }
    return success();
  }

  /// Wait until the connected devices can hold the modules (one module per
  /// device), then place them.
  Result<void> gather() {
    const auto until = after(Clock::now(), o_.fleet.wait_seconds);
    std::vector<partition::ModuleDemand> demands;
    for (const auto& m : mods_) demands.push_back(m.demand);
    log("waiting up to " + num(o_.fleet.wait_seconds) + " s for " + std::to_string(mods_.size()) + " devices");
    for (;;) {
      std::vector<std::int64_t> ids;
      std::vector<partition::DeviceCapacity> caps;
      for (const auto d : server_->connected()) {
        auto h = server_->hello_of(d);
        if (!h || !(h->features & (micro_ ? wire::feature::micro_inference : wire::feature::float_inference))) continue;
        ids.push_back(d);
        caps.push_back({h->agent_name, static_cast<double>(std::max<std::uint64_t>(h->memory_budget_bytes, 1)),
                        h->mac_per_s > 0 ? h->mac_per_s : 1e9, h->link_bytes_per_s > 0 ? h->link_bytes_per_s : 1.25e6});
      }
      Result<partition::Placement> p = make_error(Errc::not_found, "no device connected");
      if (ids.size() >= mods_.size()) p = partition::place_modules(demands, caps);
      if (p) {
        for (std::size_t i = 0; i < mods_.size(); ++i) {
          mods_[i].device = ids[static_cast<std::size_t>(p->device[i])];
          mods_[i].cost.device = mods_[i].device;
          mods_[i].cost.name = caps[static_cast<std::size_t>(p->device[i])].name;
          mods_[i].cost.module = mods_[i].name;
          mods_[i].cost.features = static_cast<long>(mods_[i].features);
          mods_[i].cost.budget_bytes = budget(mods_[i].device);
          mods_[i].cost.module_bytes = static_cast<std::int64_t>(mods_[i].bytes.size());
          predicted_ms_.push_back(1000.0 * p->module_seconds[i]);
        }
        return success();
      }
      if (Clock::now() >= until) {
        if (ids.size() >= mods_.size()) return make_error(p.error().code, p.error().message);
        return make_error(Errc::not_found, "only " + std::to_string(ids.size()) + " of " + std::to_string(mods_.size()) +
                                               " devices connected within " + num(o_.fleet.wait_seconds) +
                                               " s (--wait); each module needs its own device");
      }
      (void)server_->next(std::min(until, Clock::now() + std::chrono::milliseconds(200)));
    }
  }

  Result<void> record_assignments() {
    const auto now = unix_ms_now();
    for (std::size_t i = 0; i < mods_.size(); ++i) {
      Assignment a;
      a.run = run_;
      a.device = mods_[i].device;
      a.module_name = nonn_ ? mods_[i].name : mods_[i].name + "/replica-" + std::to_string(i);
      a.module_kind = nonn_ ? ModuleKind::student : ModuleKind::whole;
      a.module_bytes = static_cast<std::int64_t>(mods_[i].bytes.size());
      a.peak_memory_bytes = static_cast<std::int64_t>(mods_[i].demand.memory_bytes);
      a.predicted_latency_ms = predicted_ms_[i];
      a.assigned_at = now;
      auto id = store_->add_assignment(a);
      if (!id) return std::move(id).error();
    }
    return success();
  }

  Result<void> assign() {
    std::map<std::int64_t, std::size_t> waiting;  // device -> module
    for (std::size_t i = 0; i < mods_.size(); ++i) {
      const std::uint64_t id = (static_cast<std::uint64_t>(run_) << 16) | i;
      auto sent = send_module(mods_[i].device, id, micro_ ? wire::ModuleKind::micro_blob : wire::ModuleKind::fdl_model,
                              mods_[i].bytes);
      if (!sent) return make_error(sent.error().code, "assigning " + mods_[i].name + ": " + sent.error().message);
      mods_[i].cost.bytes_down += static_cast<std::int64_t>(*sent);
      waiting[mods_[i].device] = i;
    }
    const auto until = after(Clock::now(), o_.fleet.wait_seconds);
    while (!waiting.empty()) {
      auto ev = server_->next(until);
      if (!ev) break;
      auto w = waiting.find(ev->device);
      if (w == waiting.end()) continue;
      if (ev->kind == Inbound::Kind::closed)
        return make_error(Errc::io_error, "device " + name(ev->device) + " disconnected while receiving " +
                                              mods_[w->second].name + " (" + ev->reason + ")");
      if (ev->kind != Inbound::Kind::message || !std::holds_alternative<wire::AssignResult>(ev->message)) continue;
      const auto& r = std::get<wire::AssignResult>(ev->message);
      auto& m = mods_[w->second];
      if (r.module_id != ((static_cast<std::uint64_t>(run_) << 16) | w->second)) continue;
      m.cost.bytes_up += static_cast<std::int64_t>(ev->frame_bytes);
      if (!r.accepted)
        return make_error(Errc::limit_exceeded, "device " + name(ev->device) + " refused " + m.name + ": " + r.reason_text);
      m.cost.peak_memory_bytes = static_cast<std::int64_t>(r.peak_memory_bytes);
      waiting.erase(w);
    }
    if (!waiting.empty())
      return make_error(Errc::not_found, "device " + name(waiting.begin()->first) + " did not acknowledge " +
                                             mods_[waiting.begin()->second].name + " within " +
                                             num(o_.fleet.wait_seconds) + " s");
    log(std::to_string(mods_.size()) + " modules accepted");
    return success();
  }

  /// Send images [first, first + n) to module i.
  Result<void> request(std::size_t i, Index first, Index n, std::uint64_t request_id) {
    wire::InferRequest q;
    q.request_id = request_id;
    const Index in = test_.images.rows();
    q.dims = {static_cast<std::uint32_t>(n), static_cast<std::uint32_t>(in)};
    q.values.assign(test_.images.col(first).data(), test_.images.col(first).data() + in * n);
    auto sent = server_->send(mods_[i].device, q, wire::Binding{0, static_cast<std::uint64_t>(run_), 1, 0});
    if (!sent) return make_error(sent.error().code, "sending a batch to " + name(mods_[i].device) + ": " + sent.error().message);
    mods_[i].cost.bytes_down += static_cast<std::int64_t>(*sent);
    mods_[i].cost.request_bytes_down += static_cast<std::int64_t>(*sent);
    return success();
  }

  /// What receive() got: module i answered (values stored), or module i was
  /// lost (disconnected or reported a failure; `why` says which).
  struct Received {
    std::size_t i = 0;
    bool lost = false;
    std::string why;
  };

  /// Wait for an outstanding module's answer and store its values.
  Result<Received> receive(const std::map<std::int64_t, std::pair<std::size_t, std::uint64_t>>& outstanding,
                           Clock::time_point until) {
    for (;;) {
      auto ev = server_->next(until);
      if (!ev) return make_error(Errc::io_error, "no answer within " + num(o_.request_timeout_seconds) +
                                                    " s (--timeout) from " + name(outstanding.begin()->first));
      auto it = outstanding.find(ev->device);
      if (it == outstanding.end()) continue;
      const auto [i, id] = it->second;
      auto& m = mods_[i];
      if (ev->kind == Inbound::Kind::closed)
        return Received{i, true, "device " + name(ev->device) + " (" + m.name + ") disconnected during inference (" +
                                     ev->reason + ")"};
      if (ev->kind != Inbound::Kind::message) continue;
      if (const auto* e = std::get_if<wire::ErrorNotice>(&ev->message))
        return Received{i, true, "device " + name(ev->device) + " (" + m.name + ") failed: " + e->message};
      const auto* r = std::get_if<wire::InferResponse>(&ev->message);
      if (!r || r->request_id != id) continue;
      m.cost.bytes_up += static_cast<std::int64_t>(ev->frame_bytes);
      const Index first = static_cast<Index>(id & 0xFFFFFFFFu);
      const Index n = std::min<Index>(static_cast<Index>(o_.batch), test_.size() - first);
      if (r->dims.size() != 2 || r->dims[0] != static_cast<std::uint32_t>(n) ||
          r->dims[1] != static_cast<std::uint32_t>(m.features) ||
          r->values.size() != static_cast<std::size_t>(n * m.features))
        return make_error(Errc::shape_mismatch, "device " + name(ev->device) + " (" + m.name + ") answered " +
                                                    std::to_string(r->values.size()) + " values for " +
                                                    std::to_string(n) + " images of " + std::to_string(m.features));
      m.cost.compute_ms += r->compute_ms;
      m.cost.images += static_cast<long>(n);
      // value j * features + f is feature f of image first + j
      for (Index j = 0; j < n; ++j)
        for (Index f = 0; f < m.features; ++f)
          out_(m.row + f, first + j) = r->values[static_cast<std::size_t>(j * m.features + f)];
      return Received{i, false, {}};
    }
  }

  /// Every batch to every student; the next batch once all have answered.
  Result<void> infer_nonn() {
    out_.setZero(combiner_.input_shape().size(), test_.size());
    const Index n_all = test_.size();
    for (Index first = 0; first < n_all; first += o_.batch) {
      const Index n = std::min<Index>(o_.batch, n_all - first);
      std::map<std::int64_t, std::pair<std::size_t, std::uint64_t>> outstanding;
      const std::uint64_t id = static_cast<std::uint64_t>(first);
      for (std::size_t i = 0; i < mods_.size(); ++i) {
        FLEETDL_TRY(request(i, first, n, id));
        outstanding[mods_[i].device] = {i, id};
      }
      const auto until = after(Clock::now(), o_.request_timeout_seconds);
      while (!outstanding.empty()) {
        auto got = receive(outstanding, until);
        if (!got) return std::move(got).error();
        // every student's features are needed: a lost one ends the run
        if (got->lost) return make_error(Errc::io_error, got->why);
        outstanding.erase(mods_[got->i].device);
      }
      progress(first + n);
    }
    return success();
  }

  /// Batches shared out: each device one at a time, the next as it answers.
  /// A replica that disconnects or fails is dropped (an event, and `lost` in
  /// its cost); its batch goes to the next free replica. The run fails only
  /// when no replica is left.
  Result<void> infer_replicas() {
    out_.setZero(classes_, test_.size());
    const Index n_all = test_.size();
    Index next = 0, done = 0;
    std::deque<Index> retry;  // first images of batches a lost replica held
    std::map<std::int64_t, std::pair<std::size_t, std::uint64_t>> outstanding;
    std::string last_loss;
    // a batch to replica i: a lost replica's first, then the next new one
    auto feed = [&](std::size_t i) -> Result<void> {
      Index first = 0;
      if (!retry.empty()) {
        first = retry.front();
        retry.pop_front();
      } else if (next < n_all) {
        first = next;
        next += std::min<Index>(o_.batch, n_all - next);
      } else {
        return success();
      }
      const Index n = std::min<Index>(o_.batch, n_all - first);
      auto sent = request(i, first, n, static_cast<std::uint64_t>(first));
      if (!sent) {  // lost while sending: the batch waits for another replica
        retry.push_front(first);
        mods_[i].cost.lost = true;
        last_loss = sent.error().message;
        event("dropped", last_loss, mods_[i].device);
        return success();
      }
      outstanding[mods_[i].device] = {i, static_cast<std::uint64_t>(first)};
      return success();
    };
    auto feed_idle = [&]() -> Result<void> {
      for (std::size_t i = 0; i < mods_.size(); ++i)
        if (!mods_[i].cost.lost && !outstanding.count(mods_[i].device)) FLEETDL_TRY(feed(i));
      return success();
    };
    FLEETDL_TRY(feed_idle());
    while (!outstanding.empty()) {
      auto got = receive(outstanding, after(Clock::now(), o_.request_timeout_seconds));
      if (!got) return std::move(got).error();
      const std::size_t i = got->i;
      const auto first = static_cast<Index>(outstanding[mods_[i].device].second);
      outstanding.erase(mods_[i].device);
      if (got->lost) {
        mods_[i].cost.lost = true;
        last_loss = got->why;
        retry.push_back(first);
        event("dropped", got->why + "; its batch goes to another replica", mods_[i].device);
        log(got->why + "; its batch goes to another replica");
      } else {
        done += std::min<Index>(o_.batch, n_all - first);
        progress(done);
      }
      FLEETDL_TRY(feed_idle());
      if (outstanding.empty() && done < n_all)
        return make_error(Errc::io_error, "every replica was lost with " + std::to_string(n_all - done) +
                                              " images left; the last: " + last_loss);
    }
    return success();
  }

  void progress(Index done) {
    const Index n = test_.size();
    const Index step = std::max<Index>(n / 4, 1);
    if (done == n || done / step != last_progress_ / step) log("inference: " + std::to_string(done) + "/" + std::to_string(n) + " images");
    last_progress_ = done;
  }

  /// The model run here on a whole image set, batch by batch.
  Matrix<float> forward_local(nn::Model<float>& m, const Matrix<float>& x) {
    return partition::forward_all(m, x, static_cast<Index>(o_.batch), pool_ ? &*pool_ : nullptr);
  }

  Result<void> combine_and_record(Clock::time_point t0) {
    const Matrix<float> logits = nonn_ ? forward_local(combiner_, out_) : out_;
    Index correct = 0;
    for (Index j = 0; j < test_.size(); ++j) {
      Index arg = 0;
      logits.col(j).maxCoeff(&arg);
      correct += arg == static_cast<Index>(test_.labels[static_cast<std::size_t>(j)]) ? 1 : 0;
    }
    result_.images = static_cast<long>(test_.size());
    result_.accuracy = static_cast<double>(correct) / static_cast<double>(test_.size());
    result_.wall_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (reference_) {
      const Matrix<float> u = forward_local(*reference_, test_.images);
      result_.matches_local = u.rows() == logits.rows() && (u.array() == logits.array()).all();
    } else if (micro_) {
      auto u = micro_->run(test_.images);
      if (!u) return std::move(u).error();
      result_.matches_local = u->rows() == logits.rows() && (u->array() == logits.array()).all();
    }
    RoundRecord rec;
    rec.run = run_;
    rec.round = 1;
    rec.started_at = unix_ms_now() - static_cast<UnixMs>(result_.wall_seconds * 1000.0);
    rec.finished_at = unix_ms_now();
    rec.selected = static_cast<std::int64_t>(mods_.size());
    rec.completed = rec.selected;
    rec.test_accuracy = result_.accuracy;
    rec.round_seconds = result_.wall_seconds;
    std::vector<DeviceCost> costs;
    for (const auto& m : mods_) {
      DeviceCost c;
      c.device = m.device;
      c.bytes_up = m.cost.bytes_up;
      c.bytes_down = m.cost.bytes_down;
      c.compute_ms = m.cost.compute_ms;
      c.peak_memory_bytes = m.cost.peak_memory_bytes;
      c.budget_bytes = m.cost.budget_bytes;
      c.examples = m.cost.images;
      c.status = m.cost.lost ? CostStatus::dropped : CostStatus::ok;
      rec.bytes_up += c.bytes_up;
      rec.bytes_down += c.bytes_down;
      costs.push_back(c);
      result_.devices.push_back(m.cost);
    }
    FLEETDL_TRY(store_->commit_round(rec, costs, Checkpoint{}));
    log("inference: accuracy " + num(result_.accuracy) + " on " + std::to_string(test_.size()) + " images in " +
        num(result_.wall_seconds) + " s" +
        (result_.matches_local ? (*result_.matches_local ? "; equal to the local run" : "; DIFFERS from the local run") : ""));
    return success();
  }

  FleetInferOptions o_;
  bool nonn_ = false;
  std::vector<Module> mods_;
  nn::Model<float> combiner_;
  std::optional<nn::Model<float>> reference_;
  std::optional<compress::QuantizedRunner> micro_;  ///< an int8 micro blob, run here for the reference
  Index classes_ = 0;
  data::Dataset<float> test_;
  Matrix<float> out_;
  std::optional<ThreadPool> pool_;
  std::vector<double> predicted_ms_;
  Index last_progress_ = 0;
  FleetInferResult result_;
};

}  // namespace

Result<FleetConfig> parse_fleet_config(std::string_view text, const std::string& path) {
  auto doc = json::parse(text);
  if (!doc) return fail_cfg(path, doc.error());
  if (!doc->is_object()) return make_error(Errc::invalid_argument, path + ": config: must be a JSON object");
  json::Value::Object rest;
  const json::Value* fleet = nullptr;
  for (const auto& m : doc->members()) {
    if (m.first == "fleet") fleet = &m.second;
    else rest.push_back(m);
  }
  auto fl_cfg = sim::parse_config(json::Value::make_object(std::move(rest)));
  if (!fl_cfg) return fail_cfg(path, fl_cfg.error());
  FleetConfig c;
  c.fl = std::move(*fl_cfg);
  auto unsupported = [&](const std::string& key, const std::string& why) {
    return make_error(Errc::unsupported, path + ": " + key + ": " + why);
  };
  const auto& s = c.fl.strategy.name;
  if (s == "fedbuff" && c.fl.dp.mode != "none")
    return unsupported("dp.mode", "DP is not supported with fedbuff on a fleet (a device may release several updates "
                                  "in one round, which the per-round accounting does not count)");
  if (c.fl.sim.attack.kind != sim::AttackKind::none) return unsupported("attack", "attacks exist only in `fl simulate`");
  if (!c.fl.profiles.empty())
    return unsupported("profiles", "a fleet's devices report their own capabilities (give profiles to `fleet up`)");
  if (c.fl.clients > 4096) return unsupported("clients", "at most 4096 devices per run");

  namespace cfg = sim::detail::cfg;
  static const json::Value empty = json::Value::make_object({});
  auto obj = cfg::Obj::open(fleet ? *fleet : empty, "fleet");
  if (!obj) return fail_cfg(path, obj.error());
  auto& o = *obj;
  auto positive = [](double v) -> const char* { return std::isfinite(v) && v > 0.0 ? nullptr : "must be a finite number > 0"; };
  auto get_num = [&](const char* k, double def, double& out) -> Result<void> {
    auto v = o.number(k, def, false, positive);
    if (!v) return fail_cfg(path, v.error());
    out = *v;
    return success();
  };
  FLEETDL_TRY(get_num("wait_seconds", c.fleet.wait_seconds, c.fleet.wait_seconds));
  FLEETDL_TRY(get_num("round_deadline_seconds", c.fleet.round_deadline_seconds, c.fleet.round_deadline_seconds));
  if (c.fleet.wait_seconds > 1e6 || c.fleet.round_deadline_seconds > 1e6)
    return make_error(Errc::invalid_argument, path + ": " +
                                                  (c.fleet.wait_seconds > 1e6 ? "fleet.wait_seconds" : "fleet.round_deadline_seconds") +
                                                  ": must be at most 1e6 s (11.6 days)");
  auto port = [&](const char* k, std::uint16_t def, std::uint16_t& out) -> Result<void> {
    auto v = o.integer(k, def, false, 0, 65535);
    if (!v) return fail_cfg(path, v.error());
    out = static_cast<std::uint16_t>(*v);
    return success();
  };
  FLEETDL_TRY(port("enroll_port", c.fleet.enroll_port, c.fleet.enroll_port));
  FLEETDL_TRY(port("fleet_port", c.fleet.fleet_port, c.fleet.fleet_port));
  FLEETDL_TRY(port("discovery_port", c.fleet.discovery_port, c.fleet.discovery_port));
  {
    auto v = o.boolean("discovery", c.fleet.discovery);
    if (!v) return fail_cfg(path, v.error());
    c.fleet.discovery = *v;
  }
  if (const json::Value* w = o.get("heterofl_widths")) {
    const std::string key = "fleet.heterofl_widths";
    if (!w->is_array() || w->items().empty() || w->items().size() > 8)
      return make_error(Errc::invalid_argument, path + ": " + key + ": must be an array of 1 to 8 widths");
    c.fleet.heterofl_widths.clear();
    for (const auto& x : w->items()) {
      if (!x.is_number() || !(x.as_double() > 0.0 && x.as_double() <= 1.0))
        return make_error(Errc::invalid_argument, path + ": " + key + ": every width must be a number in (0, 1]");
      if (!c.fleet.heterofl_widths.empty() && !(x.as_double() < c.fleet.heterofl_widths.back()))
        return make_error(Errc::invalid_argument, path + ": " + key + ": widths must be strictly decreasing");
      c.fleet.heterofl_widths.push_back(x.as_double());
    }
    if (c.fl.strategy.name != "heterofl")
      return make_error(Errc::invalid_argument, path + ": " + key + ": applies to strategy heterofl only");
  }
  {
    auto v = o.integer("heartbeat_ms", c.fleet.heartbeat_ms, false, 10, 600000);
    if (!v) return fail_cfg(path, v.error());
    c.fleet.heartbeat_ms = static_cast<std::uint32_t>(*v);
  }
  {
    auto v = o.string("bind", c.fleet.bind_address, false);
    if (!v) return fail_cfg(path, v.error());
    std::error_code ec;
    (void)asio::ip::make_address_v4(*v, ec);
    if (ec) return make_error(Errc::invalid_argument, path + ": fleet.bind: '" + *v + "' is not an IPv4 address");
    c.fleet.bind_address = *v;
  }
  if (auto f = o.finish(); !f) return fail_cfg(path, f.error());
  return c;
}

Result<std::int64_t> fleet_run(const FleetConfig& config, const std::string& config_text, const FleetRunOptions& o) {
  Engine e(config, o);
  return e.start(config_text);
}

Result<std::int64_t> fleet_resume(std::int64_t run, const FleetRunOptions& o) {
  std::string text;
  {
    auto st = Store::open(o.db_path);
    if (!st) return std::move(st).error();
    auto rec = st->run(run);
    if (!rec) return std::move(rec).error();
    text = rec->config_json;
  }
  auto cfg = parse_fleet_config(text, "run " + std::to_string(run) + "'s config");
  if (!cfg) return std::move(cfg).error();
  Engine e(*cfg, o);
  return e.resume(run);
}

Result<FleetInferResult> fleet_infer(const FleetInferOptions& o, const std::string& config_json) {
  InferEngine e(o);
  return e.start(config_json);
}

}  // namespace fleetdl::core
