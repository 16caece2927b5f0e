#!/usr/bin/env bash
# bench/fl/niid_bench.sh — the Flower niid_bench protocol on Fashion-MNIST
# (REFERENCES §5): 10 clients, all in every round, 50 rounds, 10 local
# epochs, batch 64, SGD lr 0.01 momentum 0.9, the 6/16-channel CNN
# (cnn_niid); Dirichlet(0.5) for FedAvg, FedProx (mu 0.01), SCAFFOLD and
# FedNova, and an IID FedAvg run. The configs are bench/fl/niid_*.json.
#
# usage: bench/fl/niid_bench.sh [--jobs J] [--threads T] [--no-build] [NAME...]
#   NAME        config names without .json (default: all five)
#   --jobs J    runs at the same time (default 2)
#   --threads T threads per run (default 1)
# Each run appends one JSON line per round (and a summary line) to
# bench/results/niid-NAME.jsonl as it goes and checkpoints its state after
# every round to bench/results/niid-NAME.ckpt: run the script again and an
# interrupted run resumes after its last completed round, with the same bits
# as an uninterrupted run (a resumed round may appear twice in the JSONL; the
# report keeps the last). A finished run's checkpoint is removed. bench/fl/niid_report.py turns the files into the table of
# docs/benchmarks.md. A run takes about 25-30 minutes on one core of the
# reference machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
jobs=2 threads=1 build=1 names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "niid_bench.sh: unknown option $1" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=(niid_dir05_fedavg niid_dir05_fedprox niid_dir05_scaffold niid_dir05_fednova niid_iid_fedavg)
if [ "$build" = 1 ]; then
  [ -d build-release ] || meson setup build-release --buildtype=release -Dtests=false >/dev/null
  ninja -C build-release -j2 orchestrator/cli/fleetdl >/dev/null
fi
mkdir -p bench/results
run() {
  local name="$1" out="bench/results/niid-$1.jsonl" ckpt="bench/results/niid-$1.ckpt" resumed=false
  if [ -f "$ckpt" ] && [ -f "$out" ]; then resumed=true; else : > "$out"; fi
  echo "{\"meta\":true,\"resumed\":$resumed,\"config\":\"bench/fl/$name.json\",\"threads\":$threads,\"date\":\"$(date -u +%FT%TZ)\",\"commit\":\"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\",\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\"}" >> "$out"
  ./build-release/orchestrator/cli/fleetdl fl simulate --config "bench/fl/$name.json" --threads "$threads" --json \
      --no-progress --checkpoint "$ckpt" --resume >> "$out"
  rm -f "$ckpt"
  echo "$name: done ($(tail -1 "$out" | cut -c1-160))"
}
for n in "${names[@]}"; do
  [ -f "bench/fl/$n.json" ] || { echo "niid_bench.sh: no config bench/fl/$n.json" >&2; exit 2; }
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 5; done
  run "$n" &
done
wait
