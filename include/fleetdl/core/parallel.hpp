// fleetdl/core/parallel.hpp — a fixed-size thread pool with static chunking.
//
// Determinism rule: work is always cut into the same chunks for the same
// thread count, and partial results are combined in chunk order, so a given
// seed and thread count always give the same bits. With FLEETDL_THREADS=0
// (bare metal) every chunk runs on the calling thread, in order.
#pragma once

#include "fleetdl/core/config.hpp"
#include "fleetdl/core/error.hpp"

#include <algorithm>
#include <cstddef>
#include <functional>
#include <vector>

#if FLEETDL_THREADS
#  include <atomic>
#  include <chrono>
#  include <condition_variable>
#  include <mutex>
#  include <thread>
#endif

namespace fleetdl {

class ThreadPool {
 public:
  /// threads >= 1: total workers including the caller.
  explicit ThreadPool(int threads = 1) : n_(threads < 1 ? 1 : threads) {
    FLEETDL_ASSERT(n_ <= FLEETDL_MAX_THREADS, "ThreadPool: thread count above FLEETDL_MAX_THREADS");
#if FLEETDL_THREADS
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this] { worker(); });
#endif
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
#if FLEETDL_THREADS
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
#endif
  }

  int size() const { return n_; }

  /// Run f(chunk) for chunk in [0, chunks), spread over the workers. Blocks
  /// until all chunks finish. Chunk i always runs entirely on one thread.
  /// Not reentrant: f must not call run() on the same pool.
  void run(int chunks, const std::function<void(int)>& f) {
    if (chunks <= 0) return;
#if FLEETDL_THREADS
    if (n_ == 1 || chunks == 1 || workers_.empty()) {
      for (int i = 0; i < chunks; ++i) f(i);
      return;
    }
    job_ = &f;
    chunks_ = chunks;
    next_.store(0, std::memory_order_relaxed);
    pending_.store(n_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    drain();
    // Workers usually finish within microseconds: spin briefly, then sleep.
    if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    job_ = nullptr;
#else
    for (int i = 0; i < chunks; ++i) f(i);
#endif
  }

  /// Split [0, n) into size() contiguous ranges and call f(begin, end, chunk).
  void for_range(std::ptrdiff_t n, const std::function<void(std::ptrdiff_t, std::ptrdiff_t, int)>& f) {
    const int chunks = static_cast<int>(std::min<std::ptrdiff_t>(n, n_));
    run(chunks, [&](int c) {
      const std::ptrdiff_t b = n * c / chunks, e = n * (c + 1) / chunks;
      f(b, e, c);
    });
  }

 private:
#if FLEETDL_THREADS
  /// Spin for up to ~50 microseconds waiting for pred.
  template <class Pred>
  static bool spin_until(Pred pred) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
    for (int i = 0;; ++i) {
      if (pred()) return true;
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return false;
      std::this_thread::yield();
    }
  }
  void drain() {
    for (;;) {
      const int i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= chunks_) return;
      (*job_)(i);
    }
  }
  void worker() {
    std::size_t seen = 0;
    for (;;) {
      if (!spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      seen = generation_.load(std::memory_order_acquire);
      if (stop_.load(std::memory_order_relaxed)) return;
      drain();
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_one();
      }
    }
  }
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  int chunks_ = 0;
  std::atomic<int> next_{0}, pending_{0};
  std::atomic<std::size_t> generation_{0};
  std::atomic<bool> stop_{false};
#endif
  int n_;
};

}  // namespace fleetdl
