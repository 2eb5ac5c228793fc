#include "core/env_choice.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

namespace moba {
namespace {

constexpr const char* kVar = "MOBA_ENV_CHOICE_TEST";

TEST(EnvChoice, UnsetOrEmptyIsTheDefaultElseTheValuesIndex) {
  unsetenv(kVar);
  EXPECT_EQ(env_choice(kVar, {"128", "256"}), 0u);
  setenv(kVar, "", 1);
  EXPECT_EQ(env_choice(kVar, {"128", "256"}), 0u);
  setenv(kVar, "128", 1);
  EXPECT_EQ(env_choice(kVar, {"128", "256"}), 0u);
  setenv(kVar, "256", 1);
  EXPECT_EQ(env_choice(kVar, {"128", "256"}), 1u);
  setenv(kVar, "512", 1);
  EXPECT_EQ(env_choice(kVar, {"2048", "auto", "256", "512", "1024"}), 3u);
  unsetenv(kVar);
}

TEST(EnvChoice, AnyOtherValueIsAnErrorNamingItAndTheAcceptedOnes) {
  setenv(kVar, "yes", 1);
  try {
    env_choice(kVar, {"0", "1"});
    ADD_FAILURE() << "yes accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), std::string(kVar) + "=yes: expected 0 or 1");
  }
  try {
    env_choice(kVar, {"2048", "auto", "256"});
    ADD_FAILURE() << "yes accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), std::string(kVar) + "=yes: expected 2048, auto or 256");
  }
  unsetenv(kVar);
}

}  // namespace
}  // namespace moba
