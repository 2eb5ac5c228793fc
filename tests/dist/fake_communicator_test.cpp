// The fake group of N in-process ranks: all-reduce (rank-order sums, float and double),
// broadcast, barrier with 1..4 ranks; a rank that does not come, ranks that disagree, a
// rank that throws: errors naming the rank, never a hang.
#include "dist/fake_communicator.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
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
