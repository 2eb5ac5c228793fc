// The fake group of N in-process ranks: all-reduce (rank-order sums, float and double),
// broadcast, barrier, all-gather and all-to-all-v (float, double, int32) with 1..4 ranks; a
// rank that does not come, ranks that disagree, a rank that throws or passes inconsistent
// arguments: errors naming the rank, never a hang.
#include "dist/fake_communicator.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"

namespace moba::dist {
namespace {

using namespace std::chrono_literals;

// Values whose sum depends on the order of the additions, so that a reduction in another
// order than rank 0 + rank 1 + ... shows.
template <typename Real>
std::vector<Real> rank_data(int rank, size_t n) {
  std::vector<Real> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<Real>((rank % 2 ? 1e8 : 1.0) * (1.0 + 0.1 * static_cast<double>(i)) /
                             (3.0 + rank));
  return v;
}

template <typename Real>
void check_all_reduce(int N) {
  const size_t n = 37;
  std::vector<std::vector<Real>> out(static_cast<size_t>(N));
  FakeGroup group(N);
  group.run([&](Communicator& c) {
    EXPECT_EQ(c.size(), N);
    std::vector<Real> v = rank_data<Real>(c.rank(), n);
    c.all_reduce_sum(v);
    out[static_cast<size_t>(c.rank())] = v;
  });
  std::vector<Real> want = rank_data<Real>(0, n);
  for (int r = 1; r < N; ++r) {
    const std::vector<Real> d = rank_data<Real>(r, n);
    for (size_t i = 0; i < n; ++i) want[i] += d[i];
  }
  for (int r = 0; r < N; ++r)
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(out[static_cast<size_t>(r)][i], want[i]) << "rank " << r << " element " << i;
}

TEST(FakeCommunicator, AllReduceSumInRankOrder) {
  for (int N = 1; N <= 4; ++N) {
    SCOPED_TRACE(N);
    check_all_reduce<float>(N);
    check_all_reduce<double>(N);
  }
}

TEST(FakeCommunicator, BroadcastFromEveryRoot) {
  for (int N = 1; N <= 4; ++N)
    for (int root = 0; root < N; ++root) {
      std::vector<std::vector<double>> out(static_cast<size_t>(N));
      FakeGroup group(N);
      group.run([&](Communicator& c) {
        std::vector<double> v = rank_data<double>(c.rank(), 9);
        std::vector<float> f(3, static_cast<float>(c.rank()));
        c.broadcast(v, root);
        c.broadcast(f, root);
        for (float x : f) EXPECT_EQ(x, static_cast<float>(root));
        out[static_cast<size_t>(c.rank())] = v;
      });
      for (int r = 0; r < N; ++r) EXPECT_EQ(out[static_cast<size_t>(r)], rank_data<double>(root, 9));
    }
}

TEST(FakeCommunicator, BarrierHoldsEveryoneUntilTheLastArrives) {
  for (int N = 1; N <= 4; ++N) {
    std::atomic<int> before{0};
    std::atomic<bool> early{false};
    FakeGroup group(N);
    group.run([&](Communicator& c) {
      // The last rank comes late: nobody may leave the barrier before it arrived.
      if (c.rank() == N - 1) std::this_thread::sleep_for(20ms);
      ++before;
      c.barrier();
      if (before.load() != N) early = true;
    });
    EXPECT_FALSE(early) << N << " ranks";
  }
}

TEST(FakeCommunicator, MissingRankIsAnErrorNamingIt) {
  FakeGroup group(3, 100ms);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    group.run([&](Communicator& c) {
      std::vector<double> v(4, 1.0);
      if (c.rank() != 2) c.all_reduce_sum(v);  // rank 2 never calls
    });
    FAIL() << "expected moba::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("rank(s) 2 did not arrive"), std::string::npos) << msg;
    EXPECT_NE(msg.find("all_reduce_sum of 4 double"), std::string::npos) << msg;
    EXPECT_NE(msg.find("100 ms"), std::string::npos) << msg;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  // Broken for good: a later call fails at once instead of waiting.
  EXPECT_THROW(group.comm(0).barrier(), Error);
}

TEST(FakeCommunicator, RanksThatDisagreeAreAnError) {
  FakeGroup group(2, 5000ms);
  try {
    group.run([&](Communicator& c) {
      std::vector<double> v(c.rank() == 0 ? 4 : 5, 1.0);
      c.all_reduce_sum(v);
    });
    FAIL() << "expected moba::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("rank 0 called all_reduce_sum of 4 double, rank 1 called all_reduce_sum "
                       "of 5 double"),
              std::string::npos)
        << msg;
  }
}

TEST(FakeCommunicator, RankThatThrowsStopsTheOthersQuickly) {
  // A long timeout: the others must be released by the failure, not by the timeout.
  FakeGroup group(3, 60000ms);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    group.run([&](Communicator& c) {
      if (c.rank() == 1) throw Error("out of memory");
      c.barrier();
    });
    FAIL() << "expected moba::Error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "rank 1 failed: out of memory");
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
}

template <typename T>
void check_all_gather(int N) {
  const size_t n = 5;
  std::vector<std::vector<T>> out(static_cast<size_t>(N));
  FakeGroup group(N);
  group.run([&](Communicator& c) {
    std::vector<T> mine(n), all(n * static_cast<size_t>(N), T(-1));
    for (size_t i = 0; i < n; ++i) mine[i] = static_cast<T>(100 * c.rank() + static_cast<int>(i));
    c.all_gather(std::span<const T>(mine), std::span<T>(all));
    out[static_cast<size_t>(c.rank())] = all;
  });
  for (int r = 0; r < N; ++r)
    for (int src = 0; src < N; ++src)
      for (size_t i = 0; i < n; ++i)
        ASSERT_EQ(out[static_cast<size_t>(r)][static_cast<size_t>(src) * n + i],
                  static_cast<T>(100 * src + static_cast<int>(i)))
            << "rank " << r << " chunk " << src << " element " << i;
}

TEST(FakeCommunicator, AllGatherInRankOrder) {
  for (int N = 1; N <= 4; ++N) {
    SCOPED_TRACE(N);
    check_all_gather<float>(N);
    check_all_gather<double>(N);
    check_all_gather<int32_t>(N);
  }
}

// Rank s sends rank d (s + 2 d) % 3 elements (zero for some pairs, itself included), each
// 1000 s + 10 d + i.
size_t pair_count(int s, int d) { return static_cast<size_t>((s + 2 * d) % 3); }

template <typename T>
void check_all_to_all_v(int N) {
  std::vector<std::vector<T>> out(static_cast<size_t>(N));
  FakeGroup group(N);
  group.run([&](Communicator& c) {
    const int me = c.rank();
    std::vector<size_t> sc(static_cast<size_t>(N)), rc(static_cast<size_t>(N));
    std::vector<T> send;
    for (int d = 0; d < N; ++d) {
      sc[static_cast<size_t>(d)] = pair_count(me, d);
      rc[static_cast<size_t>(d)] = pair_count(d, me);
      for (size_t i = 0; i < pair_count(me, d); ++i)
        send.push_back(static_cast<T>(1000 * me + 10 * d + static_cast<int>(i)));
    }
    std::vector<T> recv(std::accumulate(rc.begin(), rc.end(), size_t{0}), T(-1));
    c.all_to_all_v(std::span<const T>(send), sc, std::span<T>(recv), rc);
    out[static_cast<size_t>(me)] = recv;
  });
  for (int d = 0; d < N; ++d) {
    std::vector<T> want;
    for (int s = 0; s < N; ++s)
      for (size_t i = 0; i < pair_count(s, d); ++i)
        want.push_back(static_cast<T>(1000 * s + 10 * d + static_cast<int>(i)));
    EXPECT_EQ(out[static_cast<size_t>(d)], want) << "rank " << d;
  }
}

TEST(FakeCommunicator, AllToAllVDeliversEachRunToItsRank) {
  for (int N = 1; N <= 4; ++N) {
    SCOPED_TRACE(N);
    check_all_to_all_v<float>(N);
    check_all_to_all_v<double>(N);
    check_all_to_all_v<int32_t>(N);
  }
}

// Runs fn on N ranks of a group with a long timeout; returns run()'s message, and fails the
// test if the ranks were not released within 10 s (by the failure, not the timeout).
std::string failure_of(int N, const std::function<void(Communicator&)>& fn) {
  FakeGroup group(N, 60000ms);
  const auto t0 = std::chrono::steady_clock::now();
  std::string msg;
  try {
    group.run(fn);
    ADD_FAILURE() << "expected moba::Error";
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  EXPECT_THROW(group.comm(0).barrier(), Error);  // broken for good
  return msg;
}

TEST(FakeCommunicator, GatherAndExchangeDisagreementsAreErrors) {
  std::string msg = failure_of(2, [](Communicator& c) {
    std::vector<float> mine(c.rank() == 0 ? 3 : 4), all(2 * mine.size());
    c.all_gather(std::span<const float>(mine), std::span<float>(all));
  });
  EXPECT_NE(msg.find("rank 0 called all_gather of 3 float, rank 1 called all_gather of 4 float"),
            std::string::npos)
      << msg;

  msg = failure_of(2, [](Communicator& c) {
    std::vector<int32_t> i(2), all(4);
    std::vector<float> f(2), fall(4);
    if (c.rank() == 0) c.all_gather(std::span<const int32_t>(i), std::span<int32_t>(all));
    else c.all_gather(std::span<const float>(f), std::span<float>(fall));
  });
  EXPECT_NE(msg.find("rank 0 called all_gather of 2 int32, rank 1 called all_gather of 2 float"),
            std::string::npos)
      << msg;

  // Rank 0 sends rank 1 two elements; rank 1 expects three.
  msg = failure_of(2, [](Communicator& c) {
    const std::vector<size_t> sc{0, 2}, rc = c.rank() == 0 ? std::vector<size_t>{0, 2}
                                                            : std::vector<size_t>{3, 0};
    std::vector<double> send(2), recv(std::accumulate(rc.begin(), rc.end(), size_t{0}));
    c.all_to_all_v(std::span<const double>(send), sc, std::span<double>(recv), rc);
  });
  EXPECT_NE(msg.find("rank 0 sends 2 elements to rank 1, which expects 3 from it"),
            std::string::npos)
      << msg;
}

TEST(FakeCommunicator, InconsistentArgumentsAreAnErrorNamingTheRank) {
  // Rank 1's receive buffer is one element short; rank 0 waits and must be released.
  std::string msg = failure_of(2, [](Communicator& c) {
    std::vector<double> mine(3), all(c.rank() == 1 ? 5 : 6);
    c.all_gather(std::span<const double>(mine), std::span<double>(all));
  });
  EXPECT_NE(msg.find("rank 1 called all_gather of 3 double with a receive buffer of 5 "
                     "elements; it needs 6"),
            std::string::npos)
      << msg;

  msg = failure_of(3, [](Communicator& c) {
    std::vector<size_t> counts(c.rank() == 2 ? 2 : 3, 0);
    std::vector<int32_t> none;
    c.all_to_all_v(std::span<const int32_t>(none), counts, std::span<int32_t>(none), counts);
  });
  EXPECT_NE(msg.find("rank 2 called all_to_all_v of int32 with 2 send counts and 2 receive "
                     "counts; it needs one of each per rank (3)"),
            std::string::npos)
      << msg;

  msg = failure_of(2, [](Communicator& c) {
    const std::vector<size_t> counts{1, 1};
    std::vector<float> send(c.rank() == 0 ? 3 : 2), recv(2);
    c.all_to_all_v(std::span<const float>(send), counts, std::span<float>(recv), counts);
  });
  EXPECT_NE(msg.find("rank 0 called all_to_all_v of float with send counts summing to 2 for 3 "
                     "elements"),
            std::string::npos)
      << msg;
}

TEST(FakeCommunicator, MissingRankAtAGatherIsAnError) {
  FakeGroup group(2, 100ms);
  try {
    group.run([&](Communicator& c) {
      std::vector<int32_t> mine(2), all(4);
      if (c.rank() == 0) c.all_gather(std::span<const int32_t>(mine), std::span<int32_t>(all));
    });
    FAIL() << "expected moba::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("rank(s) 1 did not arrive at call 1 (all_gather of 2 int32) within 100 ms"),
              std::string::npos)
        << msg;
  }
}

TEST(FakeCommunicator, BadArguments) {
  EXPECT_THROW(FakeGroup(0), Error);
  EXPECT_THROW(FakeGroup(2, 0ms), Error);
  FakeGroup group(2, 1000ms);
  EXPECT_THROW(group.comm(2), Error);
  EXPECT_THROW(group.run([](Communicator& c) {
    std::vector<double> v(1);
    c.broadcast(v, 2);
  }),
               Error);
}

}  // namespace
}  // namespace moba::dist
