#!/usr/bin/env bash
# bench/fl/scale_bench.sh — wall time per round of `fleetdl fl simulate` with
# 10, 100 and 1,000 clients (bench/fl/scale_N.json: cnn_niid, IID, every
# client in every round, 1 local epoch, batch 64, FedAvg, 3 rounds), so the
# whole training set is one epoch per round whatever N is and the difference
# is the per-client overhead. Prints a markdown table: median wall seconds
# per round, the simulator's bytes per client, and peak RSS of the process.
#
# usage: bench/fl/scale_bench.sh [--threads T] [--no-build]   (default T = 1)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
threads=1 build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "scale_bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ "$build" = 1 ]; then
  [ -d build-release ] || meson setup build-release --buildtype=release -Dtests=false >/dev/null
  ninja -C build-release -j2 orchestrator/cli/fleetdl >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg), threads $threads"
echo "| clients | samples per client | wall s per round (median of 3) | bytes per client | peak RSS MiB |"
echo "|---|---|---|---|---|"
for n in 10 100 1000; do
  /usr/bin/time -f "%M" -o "$tmp/rss" ./build-release/orchestrator/cli/fleetdl fl simulate \
      --config "bench/fl/scale_$n.json" --threads "$threads" --json --no-progress > "$tmp/out.jsonl"
  python3 - "$tmp/out.jsonl" "$tmp/rss" "$n" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
rounds = [r for r in recs if "round" in r]
summary = recs[-1]
walls = sorted(r["wall_seconds"] for r in rounds)
rss = int(open(sys.argv[2]).read().split()[-1]) / 1024
n = int(sys.argv[3])
print(f"| {n} | {60000 // n} | {walls[len(walls) // 2]:.2f} | {summary['bytes_per_client']:.0f} | {rss:.0f} |")
PY
done
