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
  void all_reduce_sum(std::span<float> d) override { in_place(Op::all_reduce, Type::f32, d, 0); }
  void all_reduce_sum(std::span<double> d) override {
    in_place(Op::all_reduce, Type::f64, d, 0);
  }
  void broadcast(std::span<float> d, int root) override {
    in_place(Op::broadcast, Type::f32, d, root);
  }
  void broadcast(std::span<double> d, int root) override {
    in_place(Op::broadcast, Type::f64, d, root);
  }
  void barrier() override { in_place(Op::barrier, Type::none, std::span<float>(), 0); }
  void all_gather(std::span<const float> s, std::span<float> r) override {
    gather(Type::f32, s, r);
  }
  void all_gather(std::span<const double> s, std::span<double> r) override {
    gather(Type::f64, s, r);
  }
  void all_gather(std::span<const int32_t> s, std::span<int32_t> r) override {
    gather(Type::i32, s, r);
  }
  void all_to_all_v(std::span<const float> s, std::span<const size_t> sc, std::span<float> r,
                    std::span<const size_t> rc) override {
    exchange(Type::f32, s, sc, r, rc);
  }
  void all_to_all_v(std::span<const double> s, std::span<const size_t> sc,
                    std::span<double> r, std::span<const size_t> rc) override {
    exchange(Type::f64, s, sc, r, rc);
  }
  void all_to_all_v(std::span<const int32_t> s, std::span<const size_t> sc,
                    std::span<int32_t> r, std::span<const size_t> rc) override {
    exchange(Type::i32, s, sc, r, rc);
  }
  // Host memory is all this group knows.
  void all_reduce_sum_host(std::span<double> d) override { all_reduce_sum(d); }
  void all_gather_host(std::span<const int32_t> s, std::span<int32_t> r) override {
    gather(Type::i32, s, r);
  }

 private:
  template <typename T>
  void in_place(Op op, Type type, std::span<T> d, int root) {
    Arrival a;
    a.op = op;
    a.type = type;
    a.data = d.data();
    a.count = d.size();
    a.root = root;
    group_.collective(rank_, a);
  }
  template <typename T>
  void gather(Type type, std::span<const T> send, std::span<T> recv) {
    Arrival a;
    a.op = Op::all_gather;
    a.type = type;
    a.data = recv.data();
    a.count = send.size();
    a.send = send.data();
    a.recv_count = recv.size();
    group_.collective(rank_, a);
  }
  template <typename T>
  void exchange(Type type, std::span<const T> send, std::span<const size_t> send_counts,
                std::span<T> recv, std::span<const size_t> recv_counts) {
    Arrival a;
    a.op = Op::all_to_all_v;
    a.type = type;
    a.data = recv.data();
    a.count = send.size();
    a.send = send.data();
    a.send_counts = send_counts.data();
    a.recv_counts = recv_counts.data();
    a.send_counts_len = send_counts.size();
    a.recv_counts_len = recv_counts.size();
    a.recv_count = recv.size();
    group_.collective(rank_, a);
  }

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
  const char* type = a.type == Type::f32 ? "float" : a.type == Type::f64 ? "double" : "int32";
  switch (a.op) {
    case Op::all_reduce: os << "all_reduce_sum of " << a.count << ' ' << type; break;
    case Op::broadcast:
      os << "broadcast of " << a.count << ' ' << type << " from rank " << a.root;
      break;
    case Op::barrier: os << "barrier"; break;
    case Op::all_gather: os << "all_gather of " << a.count << ' ' << type; break;
    case Op::all_to_all_v: os << "all_to_all_v of " << type; break;
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

size_t FakeGroup::element_bytes(Type type) {
  return type == Type::f64 ? sizeof(double) : type == Type::none ? 0 : 4;  // f32, i32
}

std::string FakeGroup::check_arguments(int rank, const Arrival& a) const {
  const std::string who = "fake communicator: rank " + std::to_string(rank) + " called ";
  const size_t R = static_cast<size_t>(size_);
  if (a.op == Op::broadcast && (a.root < 0 || a.root >= size_))
    return who + describe(a) + ", but the group has " + std::to_string(size_) + " ranks";
  if (a.op == Op::all_gather && a.recv_count != R * a.count)
    return who + describe(a) + " with a receive buffer of " + std::to_string(a.recv_count) +
           " elements; it needs " + std::to_string(R * a.count) + " (" +
           std::to_string(size_) + " ranks x " + std::to_string(a.count) + ")";
  if (a.op == Op::all_to_all_v) {
    if (a.send_counts_len != R || a.recv_counts_len != R)
      return who + describe(a) + " with " + std::to_string(a.send_counts_len) +
             " send counts and " + std::to_string(a.recv_counts_len) +
             " receive counts; it needs one of each per rank (" + std::to_string(size_) + ")";
    size_t sent = 0, received = 0;
    for (size_t p = 0; p < R; ++p) {
      sent += a.send_counts[p];
      received += a.recv_counts[p];
    }
    if (sent != a.count || received != a.recv_count)
      return who + describe(a) + " with send counts summing to " + std::to_string(sent) +
             " for " + std::to_string(a.count) + " elements and receive counts summing to " +
             std::to_string(received) + " for " + std::to_string(a.recv_count);
  }
  return {};
}

std::string FakeGroup::check_agreement(int64_t call) const {
  const Arrival& a0 = arrivals_[0];
  const std::string at = "fake communicator: the ranks disagree at call " + std::to_string(call);
  for (int r = 1; r < size_; ++r) {
    const Arrival& a = arrivals_[static_cast<size_t>(r)];
    // An exchange's counts differ between ranks by design: they are checked pair by pair.
    const bool counts_differ = a0.op != Op::all_to_all_v && a.count != a0.count;
    if (a.op != a0.op || a.type != a0.type || counts_differ || a.root != a0.root)
      return at + ": rank 0 called " + describe(a0) + ", rank " + std::to_string(r) +
             " called " + describe(a);
  }
  if (a0.op == Op::all_to_all_v)
    for (int src = 0; src < size_; ++src)
      for (int dst = 0; dst < size_; ++dst) {
        const size_t sent = arrivals_[static_cast<size_t>(src)].send_counts[dst];
        const size_t expected = arrivals_[static_cast<size_t>(dst)].recv_counts[src];
        if (sent != expected)
          return at + " (" + describe(a0) + "): rank " + std::to_string(src) + " sends " +
                 std::to_string(sent) + " elements to rank " + std::to_string(dst) +
                 ", which expects " + std::to_string(expected) + " from it";
      }
  return {};
}

void FakeGroup::complete() {
  const Arrival& a0 = arrivals_[0];
  const size_t es = element_bytes(a0.type);
  const size_t R = static_cast<size_t>(size_);
  if (a0.op == Op::all_reduce) {
    if (a0.type == Type::f32) reduce_in_rank_order<float>();
    else reduce_in_rank_order<double>();
  } else if (a0.op == Op::broadcast) {
    const Arrival& root = arrivals_[static_cast<size_t>(a0.root)];
    for (const Arrival& a : arrivals_)
      if (a.data != root.data && a0.count > 0) std::memcpy(a.data, root.data, a0.count * es);
  } else if (a0.op == Op::all_gather) {
    // Staged through one buffer, every send read before any receive buffer is written, so
    // that ranks whose buffers overlap (against the interface's rule) still get the data.
    const size_t chunk = a0.count * es;
    std::vector<unsigned char> all(R * chunk);
    for (size_t r = 0; r < R; ++r)
      if (chunk > 0) std::memcpy(all.data() + r * chunk, arrivals_[r].send, chunk);
    for (const Arrival& a : arrivals_)
      if (!all.empty()) std::memcpy(a.data, all.data(), all.size());
  } else if (a0.op == Op::all_to_all_v) {
    std::vector<std::vector<unsigned char>> sent(R);  // staged as above
    for (size_t r = 0; r < R; ++r) {
      const Arrival& a = arrivals_[r];
      sent[r].resize(a.count * es);
      if (!sent[r].empty()) std::memcpy(sent[r].data(), a.send, sent[r].size());
    }
    for (size_t dst = 0; dst < R; ++dst) {
      const Arrival& d = arrivals_[dst];
      size_t at = 0;  // elements into dst's receive buffer
      for (size_t src = 0; src < R; ++src) {
        const Arrival& s = arrivals_[src];
        size_t from = 0;  // elements into src's send buffer: the runs for ranks before dst
        for (size_t p = 0; p < dst; ++p) from += s.send_counts[p];
        const size_t n = d.recv_counts[src];
        if (n > 0)
          std::memcpy(static_cast<unsigned char*>(d.data) + at * es,
                      sent[src].data() + from * es, n * es);
        at += n;
      }
    }
  }
}

void FakeGroup::fail(const std::string& why) {
  broken_ = why;
  cv_.notify_all();
  throw Error(broken_);
}

void FakeGroup::collective(int rank, const Arrival& arrival) {
  std::unique_lock lk(mu_);
  if (!broken_.empty()) throw Error(broken_);
  const int64_t call = generation_ + 1;  // 1-based number of this collective in the group
  Arrival& me = arrivals_[static_cast<size_t>(rank)];
  me = arrival;
  me.here = true;
  if (const std::string bad = check_arguments(rank, me); !bad.empty())
    fail(bad + " (call " + std::to_string(call) + ")");
  if (++arrived_ == size_) {
    // The last to arrive checks that everyone called the same thing, then does the work
    // for all: the others are blocked below, their buffers are not in use.
    if (const std::string bad = check_agreement(call); !bad.empty()) fail(bad);
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
  fail("fake communicator: rank(s) " + missing + " did not arrive at call " +
       std::to_string(call) + " (" + describe(me) + ") within " +
       std::to_string(timeout_.count()) + " ms; rank " + std::to_string(rank) + " waited");
}

}  // namespace moba::dist
