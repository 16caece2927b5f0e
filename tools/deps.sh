#!/usr/bin/env bash
# tools/deps.sh — make sure the Debian packages fleetdl builds and runs with are
# installed. Everything comes from Debian (apt); nothing is downloaded from
# anywhere else, and Meson never fetches wraps (--wrap-mode=nodownload).
#
#   tools/deps.sh          check; as root, install what is missing
#   FLEETDL_SKIP_DEPS=1    skip the check (e.g. a non-Debian system you set up yourself)
#
# Exit 0 when everything is present (or was installed), 1 otherwise.
set -euo pipefail

packages=(
  build-essential        # g++, make, libc headers
  g++
  meson
  ninja-build
  pkg-config
  python3                # configure/build helper scripts
  libeigen3-dev          # the library's only numeric dependency
  zlib1g-dev             # gzip-compressed IDX datasets
  catch2                 # unit tests (Catch2 2.13)
  libgemmlowp-dev        # unit tests: int8 softmax and fixed-point checks against gemmlowp itself
  clang                  # the libFuzzer harnesses of the 'fuzz' suite (tests/fuzz/)
  libclang-rt-14-dev     # libFuzzer and the sanitizer runtimes for clang 14
  libsqlite3-dev         # the orchestrator's record (orchestrator/core)
  libasio-dev            # device <-> orchestrator transport (orchestrator/core, device agent)
  libssl-dev             # mutual TLS 1.3 and the fleet CA (orchestrator/core)
  iproute2               # ip netns / veth: the discovery test between network namespaces
  cmake                  # CMake consumer test of the installed package
  dataset-fashion-mnist  # the main job's data set (/usr/share/datasets/fashion-mnist)
)

if [ "${FLEETDL_SKIP_DEPS:-0}" = 1 ]; then
  exit 0
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "deps: not a Debian system (no dpkg-query); make sure these are installed:" >&2
  echo "  ${packages[*]}" >&2
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "deps: missing Debian packages: ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
  echo "deps: run this, then try again:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
