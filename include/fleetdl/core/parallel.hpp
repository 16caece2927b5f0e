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
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this, i] { worker(i); });
#endif
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
#if FLEETDL_THREADS
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
#endif
  }

  int size() const { return n_; }

  /// Run f(chunk) for chunk in [0, chunks), spread over the workers. Blocks
  /// until all chunks finish. Chunk i always runs entirely on one thread.
  void run(int chunks, const std::function<void(int)>& f) {
    if (chunks <= 0) return;
#if FLEETDL_THREADS
    if (n_ == 1 || chunks == 1 || workers_.empty()) {
      for (int i = 0; i < chunks; ++i) f(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &f;
      chunks_ = chunks;
      next_ = 0;
      pending_ = n_ - 1;
      ++generation_;
    }
    cv_.notify_all();
    drain();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
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
  void drain() {
    for (;;) {
      int i = 0;
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (next_ >= chunks_) return;
        i = next_++;
      }
      (*job_)(i);
    }
  }
  void worker(int) {
    std::size_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
      }
      drain();
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  int chunks_ = 0, next_ = 0, pending_ = 0;
  std::size_t generation_ = 0;
  bool stop_ = false;
#endif
  int n_;
};

}  // namespace fleetdl
