// fleetdl/wire/session.hpp — per-connection and per-run bookkeeping the
// frame layer cannot do alone:
//
//   ReplayGuard     refuses a frame whose sequence number is not above the
//                   last one accepted for its (device, run) (`replay`), and a
//                   second update for the same (device, run, round) even with
//                   a fresh sequence number (`duplicate`), so a replayed or
//                   duplicated update is never counted twice. Bounded memory.
//   ChunkAssembler  joins the assign_chunk messages of one module: declared
//                   size checked against Limits at the first chunk, chunks in
//                   order, totals consistent, CRC-32 of the whole checked.
//
// Both answer with a Verdict (ok, or a CloseReason and a one-line message)
// and change nothing when they refuse. No printing, no global state.
#pragma once

#include "fleetdl/core/crc32.hpp"
#include "fleetdl/wire/frame.hpp"
#include "fleetdl/wire/messages.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace fleetdl::wire {

/// Replay and duplicate detection for the frames one side receives.
///
/// State per stream (device, run): the last accepted sequence number, the
/// highest round with an accepted update and a 64-bit bitmap of the 64
/// rounds up to it that already have one (the anti-replay window of IPsec,
/// RFC 4303 section 3.4.3, applied to rounds). An update more than
/// kUpdateWindow - 1 rounds behind the newest cannot be told from a
/// duplicate and is refused as one. At most `capacity` streams are tracked
/// (about 64 bytes each plus the map node); a frame that would open one more
/// is refused with `oversized` rather than forgetting an old stream, which
/// would reopen it to replays. forget_run() drops a finished run's streams.
///
/// Device id 0 (a device not yet assigned one: hello, enroll) is not tracked;
/// an update from device 0 is `unexpected_message`.
class ReplayGuard {
 public:
  static constexpr std::size_t kDefaultCapacity = 4096;
  static constexpr std::uint32_t kUpdateWindow = 64;

  explicit ReplayGuard(std::size_t capacity = kDefaultCapacity) : capacity_(capacity) {}

  /// Would accept() take this frame? Records nothing.
  Verdict check(const FrameHeader& h) const { return judge(h, nullptr); }

  /// Check the frame and, when it passes, record its sequence number (and
  /// its round, for an update). A refused frame changes nothing.
  Verdict accept(const FrameHeader& h) {
    Stream next;
    Verdict v = judge(h, &next);
    if (v.ok() && h.binding.device != 0) streams_[{h.binding.device, h.binding.run}] = next;
    return v;
  }

  /// Forget every stream of a run (it finished).
  void forget_run(std::uint64_t run) {
    for (auto it = streams_.begin(); it != streams_.end();)
      it = it->first.second == run ? streams_.erase(it) : std::next(it);
  }
  void forget(std::uint64_t device, std::uint64_t run) { streams_.erase({device, run}); }
  void clear() { streams_.clear(); }

  std::size_t size() const noexcept { return streams_.size(); }
  std::size_t capacity() const noexcept { return capacity_; }
  std::optional<std::uint64_t> last_seq(std::uint64_t device, std::uint64_t run) const {
    const auto it = streams_.find({device, run});
    if (it == streams_.end()) return std::nullopt;
    return it->second.last_seq;
  }

 private:
  struct Stream {
    std::uint64_t last_seq = 0;
    bool any_update = false;
    std::uint32_t top_round = 0;  // highest round with an accepted update
    std::uint64_t rounds = 0;     // bit d: round top_round - d has one
  };

  Verdict judge(const FrameHeader& h, Stream* next) const {
    Verdict v;
    const Binding& b = h.binding;
    const bool is_update = h.type == MessageType::update;
    if (b.device == 0) {
      if (is_update) {
        detail::VerdictText(v) << "update (run " << b.run << ", round " << b.round << ", seq " << b.seq
                               << ") from device 0, which has no id yet";
        v.reason = CloseReason::unexpected_message;
      }
      return v;
    }
    Stream s;
    const auto it = streams_.find({b.device, b.run});
    if (it != streams_.end()) {
      s = it->second;
      if (b.seq <= s.last_seq) {
        detail::VerdictText(v) << message_type_name(h.type) << " from device " << b.device << " run " << b.run
                               << ": seq " << b.seq << " is not above the last accepted seq " << s.last_seq;
        v.reason = CloseReason::replay;
        return v;
      }
    } else if (streams_.size() >= capacity_) {
      detail::VerdictText(v) << "replay guard: device " << b.device << " run " << b.run << " would be stream "
                             << static_cast<std::uint64_t>(capacity_ + 1) << ", capacity "
                             << static_cast<std::uint64_t>(capacity_) << " (forget_run() finished runs)";
      v.reason = CloseReason::oversized;
      return v;
    }
    s.last_seq = b.seq;
    if (is_update) {
      if (!s.any_update) {
        s.any_update = true;
        s.top_round = b.round;
        s.rounds = 1;
      } else if (b.round > s.top_round) {
        const std::uint32_t shift = b.round - s.top_round;
        s.rounds = shift >= kUpdateWindow ? 0 : (s.rounds << shift);
        s.rounds |= 1;
        s.top_round = b.round;
      } else {
        const std::uint32_t back = s.top_round - b.round;
        if (back >= kUpdateWindow || (s.rounds >> back) & 1U) {
          detail::VerdictText t(v);
          t << "update from device " << b.device << " run " << b.run << " round " << b.round << " (seq " << b.seq
            << "): ";
          if (back >= kUpdateWindow)
            t << "round is " << back << " rounds behind the newest update (round " << s.top_round
              << "), too old to tell from a duplicate";
          else
            t << "this round already has an accepted update";
          v.reason = CloseReason::duplicate;
          return v;
        }
        s.rounds |= std::uint64_t{1} << back;
      }
    }
    if (next != nullptr) *next = s;
    return v;
  }

  std::size_t capacity_;
  std::map<std::pair<std::uint64_t, std::uint64_t>, Stream> streams_;
};

/// Joins the assign_chunk messages of one module.
///
/// The first chunk (index 0) fixes the module id, kind, chunk count, total
/// size and CRC; its total is checked against Limits::max_module_bytes (and
/// the buffer, when one is given) before anything is stored: `oversized`.
/// Each later chunk must carry the next index (`bad_chunk_order` for a gap,
/// a repeat, or a chunk after completion) and the same module fields
/// (`chunk_mismatch`); data beyond the declared total, a last chunk that
/// leaves bytes missing, or a CRC-32 of the whole that differs are
/// `chunk_mismatch`. A refused chunk changes nothing; the program closes the
/// connection anyway.
///
/// Storage: with no buffer the bytes go into a std::vector that grows with
/// the chunks actually received (a declared total alone allocates nothing);
/// with a caller buffer (a microcontroller's flash staging area, say) nothing
/// is allocated and the module must fit it.
class ChunkAssembler {
 public:
  explicit ChunkAssembler(const Limits& limits = {}) : max_module_(limits.max_module_bytes) {}
  /// No-heap: chunks are copied into `buffer`.
  ChunkAssembler(std::span<std::uint8_t> buffer, const Limits& limits = {})
      : max_module_(limits.max_module_bytes), ext_(buffer), external_(true) {}

  Verdict add(const AssignChunk& c) { return add(c.view()); }

  Verdict add(const AssignChunkView& c) {
    Verdict v;
    if (done_) {
      detail::VerdictText(v) << "assign_chunk: module " << module_id_ << " is complete, chunk " << c.chunk_index
                             << " of module " << c.module_id << " arrived after it (reset() first)";
      v.reason = CloseReason::bad_chunk_order;
      return v;
    }
    if (c.chunk_index != next_) {
      detail::VerdictText t(v);
      t << "assign_chunk: module " << c.module_id << " chunk " << c.chunk_index << " arrived, expected chunk "
        << next_;
      if (c.chunk_index < next_) t << " (a repeat)";
      v.reason = CloseReason::bad_chunk_order;
      return v;
    }
    if (next_ == 0) {
      const std::uint64_t room = external_ ? ext_.size() : max_module_;
      if (c.total_bytes > max_module_ || c.total_bytes > room) {
        detail::VerdictText t(v);
        t << "assign_chunk: module " << c.module_id << " declares " << c.total_bytes << " bytes, ";
        if (c.total_bytes > max_module_)
          t << "limit max_module_bytes " << max_module_;
        else
          t << "the buffer holds " << static_cast<std::uint64_t>(ext_.size());
        v.reason = CloseReason::oversized;
        return v;
      }
    } else {
      const char* field = c.module_id != module_id_     ? "module_id"
                          : c.kind != kind_             ? "kind"
                          : c.chunk_count != count_     ? "chunk_count"
                          : c.total_bytes != total_     ? "total_bytes"
                          : c.module_crc != crc_        ? "module_crc"
                                                        : nullptr;
      if (field != nullptr) {
        detail::VerdictText(v) << "assign_chunk: chunk " << c.chunk_index << " of module " << module_id_
                               << " disagrees with chunk 0 on " << field;
        v.reason = CloseReason::chunk_mismatch;
        return v;
      }
    }
    const std::uint64_t total = c.total_bytes;
    if (c.data.size() > total - received_) {
      detail::VerdictText(v) << "assign_chunk: module " << c.module_id << " chunk " << c.chunk_index << " brings "
                             << static_cast<std::uint64_t>(c.data.size()) << " bytes to " << received_ << " received, past total_bytes "
                             << total;
      v.reason = CloseReason::chunk_mismatch;
      return v;
    }
    const bool last = c.chunk_index + 1 == c.chunk_count;
    const std::uint64_t after = received_ + c.data.size();
    if (last && after != total) {
      detail::VerdictText(v) << "assign_chunk: module " << c.module_id << " last chunk " << c.chunk_index
                             << " ends at " << after << " bytes, total_bytes is " << total;
      v.reason = CloseReason::chunk_mismatch;
      return v;
    }
    const std::uint32_t running = crc32_update(running_crc_, c.data.data(), c.data.size());
    if (last && running != c.module_crc) {
      detail::VerdictText(v) << "assign_chunk: module " << c.module_id << " CRC-32 of the " << total
                             << " bytes is " << running << ", module_crc says " << c.module_crc;
      v.reason = CloseReason::chunk_mismatch;
      return v;
    }
    // Accepted: record.
    if (next_ == 0) {
      module_id_ = c.module_id;
      kind_ = c.kind;
      count_ = c.chunk_count;
      total_ = c.total_bytes;
      crc_ = c.module_crc;
    }
    if (external_) {
      if (!c.data.empty()) std::memcpy(ext_.data() + received_, c.data.data(), c.data.size());
    } else {
      own_.insert(own_.end(), c.data.begin(), c.data.end());
    }
    received_ = after;
    running_crc_ = running;
    ++next_;
    done_ = last;
    return v;
  }

  bool done() const noexcept { return done_; }
  /// Chunks accepted so far.
  std::uint32_t chunks() const noexcept { return next_; }
  std::uint64_t received_bytes() const noexcept { return received_; }
  std::uint64_t module_id() const noexcept { return module_id_; }
  ModuleKind kind() const noexcept { return kind_; }
  std::uint64_t total_bytes() const noexcept { return total_; }
  /// The module once done() (the bytes so far before).
  std::span<const std::uint8_t> bytes() const noexcept {
    if (external_) return std::span<const std::uint8_t>(ext_.data(), static_cast<std::size_t>(received_));
    return own_;
  }
  /// Move the module out (vector storage only) and reset.
  std::vector<std::uint8_t> take() {
    std::vector<std::uint8_t> out = external_ ? std::vector<std::uint8_t>(bytes().begin(), bytes().end())
                                              : std::move(own_);
    reset();
    return out;
  }
  /// Ready for the next module.
  void reset() noexcept {
    own_.clear();
    next_ = 0;
    received_ = 0;
    running_crc_ = 0;
    done_ = false;
    module_id_ = 0;
    kind_ = ModuleKind::fdl_model;
    count_ = 0;
    total_ = 0;
    crc_ = 0;
  }

 private:
  std::uint64_t max_module_;
  std::span<std::uint8_t> ext_;
  bool external_ = false;
  std::vector<std::uint8_t> own_;
  std::uint32_t next_ = 0;
  std::uint64_t received_ = 0;
  std::uint32_t running_crc_ = 0;
  bool done_ = false;
  std::uint64_t module_id_ = 0;
  ModuleKind kind_ = ModuleKind::fdl_model;
  std::uint32_t count_ = 0;
  std::uint64_t total_ = 0;
  std::uint32_t crc_ = 0;
};

}  // namespace fleetdl::wire
