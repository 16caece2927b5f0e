#!/bin/sh
# tests/fuzz/run_fuzz.sh FUZZER SEEDGEN WORKDIR SECONDS
# Writes the seed corpus with SEEDGEN into WORKDIR/seeds, then runs the
# libFuzzer binary FUZZER for SECONDS over WORKDIR/corpus (new inputs) and
# the seeds. Exits non-zero when the fuzzer finds a crash, a sanitizer report
# or a timeout; the reproducer is left as WORKDIR/crash-* (or timeout-*).
set -eu
fuzzer=$1
seedgen=$2
work=$3
secs=${4:-20}
mkdir -p "$work/corpus" "$work/seeds"
"$seedgen" "$work/seeds"
exec "$fuzzer" -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" "$work/seeds"
