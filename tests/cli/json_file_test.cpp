// The benchmarks' peer JSON: read, and refused when timed at another shape than ours.
#include <gtest/gtest.h>

#include <string>

#include "cli/json_file.h"
#include "core/error.h"

namespace moba::cli {
namespace {

std::string error_of(const nlohmann::json& peer, long long heads, long long dim) {
  try {
    check_peer_shape(peer, "p.json", {{"batch", 1}, {"heads", heads}, {"head_dim", dim}});
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(PeerJson, SameShapeIsAccepted) {
  const auto peer = nlohmann::json::parse(R"({"batch": 1, "heads": 16, "head_dim": 128, "rows": []})");
  EXPECT_EQ(error_of(peer, 16, 128), "");
  EXPECT_EQ(error_of(nullptr, 12, 64), "");  // no --peer
  // A peer that records fewer keys is checked on those it has.
  EXPECT_EQ(error_of(nlohmann::json::parse(R"({"rows": []})"), 12, 64), "");
}

TEST(PeerJson, AnotherShapeIsRefusedNamingIt) {
  const auto peer = nlohmann::json::parse(R"({"batch": 1, "heads": 16, "head_dim": 128, "rows": []})");
  const std::string e = error_of(peer, 12, 64);
  EXPECT_NE(e.find("peer JSON 'p.json' was timed at heads = 16, this benchmark runs heads = 12"),
            std::string::npos)
      << e;
  EXPECT_NE(error_of(peer, 16, 64).find("head_dim = 128"), std::string::npos);
  EXPECT_NE(error_of(nlohmann::json::parse(R"({"heads": "16"})"), 16, 128).find("not an integer"),
            std::string::npos);
}

}  // namespace
}  // namespace moba::cli
