#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine needs to build and test moba.
# Run as root, or as a user with sudo. Safe to run again.
set -euo pipefail

packages=(
  build-essential cmake ninja-build git pkg-config ca-certificates
  libgtest-dev libgmock-dev libbenchmark-dev  # tests and micro-benchmarks
  libcli11-dev                                # the CLI
  nlohmann-json3-dev                          # JSON output
  libtomlplusplus-dev                         # TOML configs
  libopenblas-dev                             # CPU matmuls of the trainer
  libsentencepiece-dev sentencepiece          # BPE tokenizer
  libeigen3-dev                               # least squares of the scaling fits
  python3.11-doc                              # default training text (docs/data.md)
  libcairo2-dev                               # figures of moba plot / moba report (PNG, SVG)
  python3-venv python3-dev python3-pip        # the Python package and its tests (.venv)
)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup.sh: run as root or install sudo" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"

# The Python package's test environment: .venv at the repository root (ignored by git),
# with the pinned versions of python/requirements-ci.txt. Safe to run again: pip only
# installs what is missing or pinned differently.
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q -r python/requirements-ci.txt
echo "setup.sh: dependencies installed, Python test environment in .venv."
echo "setup.sh: CUDA kernels build when nvcc (CUDA 12+) is on PATH."
