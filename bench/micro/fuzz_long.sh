#!/bin/sh
# bench/micro/fuzz_long.sh [SECONDS] [WORKDIR] — a long libFuzzer run of the
# micro runtime's verifier, planner and interpreter
# (tests/fuzz/fuzz_micro_verifier.cpp) with ASan and UBSan. The test suite
# runs the same harness for 20 s (meson test --suite fuzz); this one defaults
# to one hour, keeps its corpus in WORKDIR between runs and uses every core.
#
#   bench/micro/fuzz_long.sh            # 3600 s in build-fuzz/micro
#   bench/micro/fuzz_long.sh 600 /tmp/f # 10 minutes
#
# Needs clang++ with libFuzzer (Debian: clang). A crash leaves its input as
# WORKDIR/crash-*; replay it with: WORKDIR/fuzz_micro_verifier WORKDIR/crash-*
set -eu
secs=${1:-3600}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${2:-$root/build-fuzz/micro}
cxx=${CLANGXX:-clang++}
jobs=${JOBS:-$(nproc)}
mkdir -p "$work/corpus" "$work/seeds"
"$cxx" -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I "$root/include" "$root/tests/fuzz/fuzz_micro_verifier.cpp" -o "$work/fuzz_micro_verifier"
"$cxx" -std=c++20 -O1 -I "$root/include" "$root/tests/fuzz/gen_micro_seeds.cpp" -o "$work/gen_micro_seeds"
"$work/gen_micro_seeds" "$work/seeds"
cd "$work"
exec ./fuzz_micro_verifier -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
  -jobs="$jobs" -workers="$jobs" -print_final_stats=1 -artifact_prefix="$work/" corpus seeds
