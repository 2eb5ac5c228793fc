#include "dist/fake_communicator.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <sstream>
#include <thread>

#include "core/error.h"

namespace moba::dist {

class FakeGroup::Rank final : public Communicator {
 public:
  Rank(FakeGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_.size_; }
  void all_reduce_sum(std::span<float> d) override {
    group_.collective(rank_, Op::all_reduce, Type::f32, d.data(), d.size(), 0);
  }
  void all_reduce_sum(std::span<double> d) override {
    group_.collective(rank_, Op::all_reduce, Type::f64, d.data(), d.size(), 0);
  }
  void broadcast(std::span<float> d, int root) override {
    group_.collective(rank_, Op::broadcast, Type::f32, d.data(), d.size(), root);
  }
  void broadcast(std::span<double> d, int root) override {
    group_.collective(rank_, Op::broadcast, Type::f64, d.data(), d.size(), root);
  }
  void barrier() override { group_.collective(rank_, Op::barrier, Type::none, nullptr, 0, 0); }

 private:
  FakeGroup& group_;
  int rank_;
};

FakeGroup::FakeGroup(int size, std::chrono::milliseconds timeout)
    : size_(size), timeout_(timeout) {
  MOBA_CHECK(size >= 1, "fake communicator: the group needs at least one rank, got ", size);
  MOBA_CHECK(timeout.count() > 0, "fake communicator: the timeout must be > 0 ms, got ",
             timeout.count());
  arrivals_.resize(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) ranks_.push_back(std::make_unique<Rank>(*this, r));
}

FakeGroup::~FakeGroup() = default;

Communicator& FakeGroup::comm(int rank) {
  MOBA_CHECK(rank >= 0 && rank < size_, "fake communicator: rank ", rank, " outside [0, ",
             size_, ")");
  return *ranks_[static_cast<size_t>(rank)];
}

void FakeGroup::abort(const std::string& why) {
  std::lock_guard lk(mu_);
  if (broken_.empty()) broken_ = why;  // the first cause; later failures follow from it
  cv_.notify_all();
}

void FakeGroup::run(const std::function<void(Communicator&)>& fn) {
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(size_));
  for (int r = 0; r < size_; ++r)
    threads.emplace_back([this, r, &fn] {
      try {
        fn(comm(r));
      } catch (const std::exception& e) {
        abort("rank " + std::to_string(r) + " failed: " + e.what());
      } catch (...) {
        abort("rank " + std::to_string(r) + " failed with an unknown exception");
      }
    });
  for (std::thread& t : threads) t.join();
  std::lock_guard lk(mu_);
  if (!broken_.empty()) throw Error(broken_);
}

std::string FakeGroup::describe(const Arrival& a) const {
  std::ostringstream os;
  const char* type = a.type == Type::f32 ? "float" : "double";
  switch (a.op) {
    case Op::all_reduce: os << "all_reduce_sum of " << a.count << ' ' << type; break;
    case Op::broadcast:
      os << "broadcast of " << a.count << ' ' << type << " from rank " << a.root;
      break;
    case Op::barrier: os << "barrier"; break;
  }
  return os.str();
}

template <typename Real>
void FakeGroup::reduce_in_rank_order() {
  const size_t n = arrivals_[0].count;
  const Real* first = static_cast<const Real*>(arrivals_[0].data);
  std::vector<Real> sum(first, first + n);
  for (int r = 1; r < size_; ++r) {
    const Real* d = static_cast<const Real*>(arrivals_[static_cast<size_t>(r)].data);
    for (size_t i = 0; i < n; ++i) sum[i] += d[i];
  }
  for (const Arrival& a : arrivals_) std::copy(sum.begin(), sum.end(), static_cast<Real*>(a.data));
}

void FakeGroup::complete() {
  const Arrival& a0 = arrivals_[0];
  const size_t bytes = a0.count * (a0.type == Type::f32 ? sizeof(float) : sizeof(double));
  if (a0.op == Op::all_reduce) {
    if (a0.type == Type::f32) reduce_in_rank_order<float>();
    else reduce_in_rank_order<double>();
  } else if (a0.op == Op::broadcast) {
    const Arrival& root = arrivals_[static_cast<size_t>(a0.root)];
    for (const Arrival& a : arrivals_)
      if (a.data != root.data && bytes > 0) std::memcpy(a.data, root.data, bytes);
  }
}

void FakeGroup::collective(int rank, Op op, Type type, void* data, size_t count, int root) {
  std::unique_lock lk(mu_);
  if (!broken_.empty()) throw Error(broken_);
  const int64_t call = generation_ + 1;  // 1-based number of this collective in the group
  Arrival& me = arrivals_[static_cast<size_t>(rank)];
  me = Arrival{true, op, type, data, count, root};
  if (op == Op::broadcast && (root < 0 || root >= size_)) {
    broken_ = "fake communicator: rank " + std::to_string(rank) + " called " + describe(me) +
              " (call " + std::to_string(call) + "), but the group has " +
              std::to_string(size_) + " ranks";
    cv_.notify_all();
    throw Error(broken_);
  }
  if (++arrived_ == size_) {
    // The last to arrive checks that everyone called the same thing, then does the work
    // for all: the others are blocked below, their buffers are not in use.
    for (int r = 1; r < size_; ++r) {
      const Arrival& a = arrivals_[static_cast<size_t>(r)];
      if (a.op != arrivals_[0].op || a.type != arrivals_[0].type ||
          a.count != arrivals_[0].count || a.root != arrivals_[0].root) {
        broken_ = "fake communicator: the ranks disagree at call " + std::to_string(call) +
                  ": rank 0 called " + describe(arrivals_[0]) + ", rank " + std::to_string(r) +
                  " called " + describe(a);
        cv_.notify_all();
        throw Error(broken_);
      }
    }
    complete();
    for (Arrival& a : arrivals_) a = Arrival{};
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  cv_.wait_for(lk, timeout_, [&] { return generation_ >= call || !broken_.empty(); });
  if (generation_ >= call) return;  // done, even if the group broke later
  if (!broken_.empty()) throw Error(broken_);
  std::string missing;
  for (int r = 0; r < size_; ++r)
    if (!arrivals_[static_cast<size_t>(r)].here)
      missing += (missing.empty() ? "" : ", ") + std::to_string(r);
  broken_ = "fake communicator: rank(s) " + missing + " did not arrive at call " +
            std::to_string(call) + " (" + describe(me) + ") within " +
            std::to_string(timeout_.count()) + " ms; rank " + std::to_string(rank) +
            " waited";
  cv_.notify_all();
  throw Error(broken_);
}

}  // namespace moba::dist
