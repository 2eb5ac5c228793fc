// An ordered parallel map: `work(i)` runs on `threads` worker threads in any order, and
// `consume(i, result)` runs on the calling thread in order i = 0, 1, ..., n-1. At most
// `window` results wait unconsumed, which bounds memory (a result can be a whole book's
// tokens). The first exception thrown by work or consume stops everything and is
// rethrown here.
#pragma once

#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace moba::data {

template <typename R>
void ordered_parallel_map(size_t n, int threads, size_t window,
                          const std::function<R(size_t)>& work,
                          const std::function<void(size_t, R&&)>& consume) {
  std::vector<std::optional<R>> slots(n);
  std::mutex mu;
  std::condition_variable cv;
  size_t next = 0, consumed = 0;
  bool failed = false;
  std::exception_ptr error;

  auto worker = [&] {
    for (;;) {
      size_t i;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return failed || next >= n || next < consumed + window; });
        if (failed || next >= n) return;
        i = next++;
      }
      try {
        R r = work(i);
        std::lock_guard lock(mu);
        slots[i].emplace(std::move(r));
      } catch (...) {
        std::lock_guard lock(mu);
        if (!failed) error = std::current_exception();
        failed = true;
      }
      cv.notify_all();
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < std::max(1, threads); ++t) pool.emplace_back(worker);
  try {
    for (size_t i = 0; i < n; ++i) {
      std::optional<R> r;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return failed || slots[i].has_value(); });
        if (failed) break;
        r = std::move(slots[i]);
        slots[i].reset();
      }
      consume(i, std::move(*r));
      {
        std::lock_guard lock(mu);
        consumed = i + 1;
      }
      cv.notify_all();
    }
  } catch (...) {
    std::lock_guard lock(mu);
    if (!failed) error = std::current_exception();
    failed = true;
  }
  cv.notify_all();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace moba::data
