#!/usr/bin/env bash
# Configures, builds and runs every test. The README's test command.
# BUILD_DIR (default build) and JOBS (default: all cores) can be set. Then the Python
# package: installed into .venv (scripts/setup.sh made it; PYTHON=/path/to/python picks
# another environment, MOBA_CUDA=AUTO|ON|OFF is honoured) and its tests run with pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" -j "$jobs" --output-on-failure --timeout 1800

# The Python package (pyproject.toml: only the ops library is compiled; its CMake build is
# kept in build-pip/), then its tests; MOBA_BIN is the CLI for tests that call it.
python=${PYTHON:-.venv/bin/python}
if [ ! -x "$python" ] && ! command -v "$python" >/dev/null; then
  echo "test.sh: no Python environment at $python: run scripts/setup.sh (or set PYTHON)" >&2
  exit 1
fi
CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$python" -m pip install -q --no-build-isolation ./
MOBA_BIN="$PWD/$build/src/cli/moba" "$python" -m pytest -q python/tests
