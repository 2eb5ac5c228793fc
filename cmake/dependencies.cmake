# Third-party libraries. On a Debian machine they come from the -dev packages that
# scripts/setup.sh installs. On the GPU machine (no apt) the header-only ones come from a
# folder holding a copy of the Debian packages' installed headers, passed as -DMOBA_EXTRA_INCLUDE=DIR.
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

# Eigen (header-only): least squares of the scaling fits, Levenberg-Marquardt from its
# unsupported modules.
find_package(Eigen3 3.3 CONFIG QUIET)
if(NOT TARGET Eigen3::Eigen)
  find_path(MOBA_EIGEN_INCLUDE Eigen/Core HINTS ${MOBA_EXTRA_INCLUDE} PATH_SUFFIXES eigen3)
  if(NOT MOBA_EIGEN_INCLUDE)
    message(FATAL_ERROR "Eigen not found: apt-get install libeigen3-dev "
                        "(or pass -DMOBA_EXTRA_INCLUDE=DIR holding eigen3/Eigen/Core)")
  endif()
  add_library(Eigen3::Eigen INTERFACE IMPORTED)
  target_include_directories(Eigen3::Eigen INTERFACE ${MOBA_EIGEN_INCLUDE})
endif()

# cairo (optional): the PNG and SVG figures of `moba plot` and `moba report`. Without it
# (the GPU machine has no apt) `moba plot` is not built and reports carry no figures.
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(CAIRO QUIET IMPORTED_TARGET cairo cairo-png cairo-svg)
endif()
if(CAIRO_FOUND)
  set(MOBA_WITH_CAIRO ON)
else()
  set(MOBA_WITH_CAIRO OFF)
endif()
message(STATUS "moba: figures (cairo) ${MOBA_WITH_CAIRO}")
# toml++ (header-only mode): the trainer's configuration files. Debian's package also
# ships a shared library, but the header-only mode needs nothing on the GPU machine but
# the headers (collect-headers libtomlplusplus-dev). Only src/train/config.cpp includes it.
find_path(MOBA_TOML_INCLUDE toml++/toml.h HINTS ${MOBA_EXTRA_INCLUDE})
if(NOT MOBA_TOML_INCLUDE)
  message(FATAL_ERROR "toml++ not found: apt-get install libtomlplusplus-dev "
                      "(or pass -DMOBA_EXTRA_INCLUDE=DIR holding toml++/toml.h)")
endif()
add_library(moba_tomlplusplus INTERFACE)
target_include_directories(moba_tomlplusplus SYSTEM INTERFACE ${MOBA_TOML_INCLUDE})
target_compile_definitions(moba_tomlplusplus INTERFACE TOML_HEADER_ONLY=1 TOML_EXCEPTIONS=1)

# A CBLAS (OpenBLAS from Debian's libopenblas-dev): the CPU trainer's matmuls. Without one
# (MOBA_BLAS=OFF, or none found with AUTO) src/model/gemm.cpp falls back to plain loops,
# correct but slow: fine for a GPU machine that only runs the CUDA path.
set(MOBA_BLAS AUTO CACHE STRING "CPU matmuls through OpenBLAS: AUTO, ON or OFF")
set_property(CACHE MOBA_BLAS PROPERTY STRINGS AUTO ON OFF)
set(MOBA_WITH_BLAS OFF)
if(NOT MOBA_BLAS STREQUAL "OFF")
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(MOBA_OPENBLAS QUIET IMPORTED_TARGET openblas)
  endif()
  if(MOBA_OPENBLAS_FOUND)
    add_library(moba_blas INTERFACE)
    target_link_libraries(moba_blas INTERFACE PkgConfig::MOBA_OPENBLAS)
    target_compile_definitions(moba_blas INTERFACE MOBA_WITH_BLAS=1)
    set(MOBA_WITH_BLAS ON)
  elseif(MOBA_BLAS STREQUAL "ON")
    message(FATAL_ERROR "MOBA_BLAS=ON but OpenBLAS was not found: apt-get install libopenblas-dev")
  endif()
endif()
if(NOT MOBA_WITH_BLAS)
  add_library(moba_blas INTERFACE)
endif()
message(STATUS "moba: CPU matmuls through OpenBLAS ${MOBA_WITH_BLAS}")
