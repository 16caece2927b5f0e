#!/usr/bin/env bash
# tests/consumer/run.sh BUILDDIR meson|cmake
#
# Installs the fleetdl build in BUILDDIR into a temporary staging prefix
# (meson install --destdir), then builds and runs tests/consumer against it:
#   meson  — a Meson project finding fleetdl through pkg-config (fleetdl.pc)
#   cmake  — a CMake project using find_package(fleetdl CONFIG) + fleetdl::fleetdl
# Both package files are relocatable, so the staged copy works where it lies.
# Exit 77 (skipped) when the needed tool is not installed.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BUILDDIR meson|cmake" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
kind=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

case "$kind" in
  meson) need=(meson pkg-config) ;;
  cmake) need=(cmake) ;;
  *) echo "consumer: unknown kind '$kind' (meson|cmake)" >&2; exit 2 ;;
esac
for tool in "${need[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "consumer: $tool not found, skipping the $kind consumer test"
    exit 77
  fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fleetdl-consumer-$kind.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --no-rebuild: meson test already built everything (and holds the build lock).
meson install -C "$build" --no-rebuild --quiet --destdir "$tmp/stage" >/dev/null
prefix=$(meson introspect "$build" --buildoptions |
  python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"))')
stage="$tmp/stage$prefix"

pc=$(find "$stage" -name fleetdl.pc -print -quit)
cmake_dir="$stage/lib/cmake/fleetdl"
[ -n "$pc" ] || { echo "consumer: fleetdl.pc was not installed" >&2; exit 1; }
[ -f "$cmake_dir/fleetdlConfig.cmake" ] || { echo "consumer: fleetdlConfig.cmake was not installed" >&2; exit 1; }
[ -f "$stage/include/fleetdl/core.hpp" ] || { echo "consumer: headers were not installed" >&2; exit 1; }
# -march=native is for this tree only; it must never reach consumers.
if grep -rn -- '-march' "$pc" "$cmake_dir"; then
  echo "consumer: an installed package file carries -march" >&2
  exit 1
fi

gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)

case "$kind" in
  meson)
    export PKG_CONFIG_PATH="$(dirname "$pc")"
    cflags=$(pkg-config --cflags fleetdl)
    case "$cflags" in
      *"$tmp"*) ;;
      *) echo "consumer: pkg-config did not resolve fleetdl into the staged prefix: $cflags" >&2; exit 1 ;;
    esac
    meson setup "$tmp/build" "$here" --wrap-mode=nodownload --buildtype=release
    meson compile -C "$tmp/build"
    "$tmp/build/consumer"
    ;;
  cmake)
    cmake -S "$here" -B "$tmp/build" "${gen[@]}" \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$stage"
    found=$(sed -n 's/^fleetdl_DIR:PATH=//p' "$tmp/build/CMakeCache.txt")
    if [ "$(cd "$found" && pwd)" != "$(cd "$cmake_dir" && pwd)" ]; then
      echo "consumer: CMake found fleetdl at '$found', not in the staged prefix" >&2
      exit 1
    fi
    cmake --build "$tmp/build" -j2
    "$tmp/build/consumer"
    ;;
esac
