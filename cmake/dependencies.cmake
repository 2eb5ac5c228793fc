# Third-party libraries. On a Debian machine they come from the -dev packages that
# scripts/setup.sh installs. On the GPU machine (no apt) the header-only ones come from a
# folder made by ../shared/tools/collect-headers and passed as -DMOBA_EXTRA_INCLUDE=DIR.
set(MOBA_EXTRA_INCLUDE "" CACHE PATH "Extra include folder for header-only dependencies")

# CLI11 (header-only): the CLI parser.
find_package(CLI11 CONFIG QUIET)
if(NOT TARGET CLI11::CLI11)
  find_path(MOBA_CLI11_INCLUDE CLI/CLI.hpp HINTS ${MOBA_EXTRA_INCLUDE})
  if(NOT MOBA_CLI11_INCLUDE)
    message(FATAL_ERROR "CLI11 not found: apt-get install libcli11-dev "
                        "(or pass -DMOBA_EXTRA_INCLUDE=DIR holding CLI/CLI.hpp)")
  endif()
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
  target_include_directories(CLI11::CLI11 INTERFACE ${MOBA_CLI11_INCLUDE})
endif()

# nlohmann/json (header-only): JSON output of benchmarks and tools.
find_package(nlohmann_json 3 CONFIG QUIET)
if(NOT TARGET nlohmann_json::nlohmann_json)
  find_path(MOBA_JSON_INCLUDE nlohmann/json.hpp HINTS ${MOBA_EXTRA_INCLUDE})
  if(NOT MOBA_JSON_INCLUDE)
    message(FATAL_ERROR "nlohmann/json not found: apt-get install nlohmann-json3-dev "
                        "(or pass -DMOBA_EXTRA_INCLUDE=DIR holding nlohmann/json.hpp)")
  endif()
  add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
  target_include_directories(nlohmann_json::nlohmann_json INTERFACE ${MOBA_JSON_INCLUDE})
endif()

# GoogleTest: the installed package, or its sources (Debian's libgtest-dev ships them in
# /usr/src/googletest; carry that folder to a machine without the package).
set(MOBA_GTEST_SOURCE "" CACHE PATH "GoogleTest source folder, used when no package is found")
if(MOBA_BUILD_TESTS)
  find_package(GTest QUIET)
  if(NOT TARGET GTest::gtest_main)
    if(MOBA_GTEST_SOURCE AND EXISTS "${MOBA_GTEST_SOURCE}/CMakeLists.txt")
      set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
      add_subdirectory(${MOBA_GTEST_SOURCE} ${CMAKE_BINARY_DIR}/_gtest EXCLUDE_FROM_ALL)
      add_library(GTest::gtest_main ALIAS gtest_main)
      add_library(GTest::gtest ALIAS gtest)
    else()
      message(FATAL_ERROR "GoogleTest not found: apt-get install libgtest-dev "
                          "(or pass -DMOBA_GTEST_SOURCE=DIR, or -DMOBA_BUILD_TESTS=OFF)")
    endif()
  endif()
endif()
