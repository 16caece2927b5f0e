#!/usr/bin/env bash
# bench/compress/compress_bench.sh — the compression reproductions of issue 5
# (REFERENCES §3-4) on Fashion-MNIST, recorded in docs/benchmarks.md:
#   cnn1      the seed sequence's CNN1 (Conv 12x3x3 -> MaxPool 2 -> Dense 10):
#             float baseline (15 epochs), then gradual pruning 30% -> 70% with
#             one global threshold, 32-way clustering, int8 with encoded
#             weights; 5 fine-tuning epochs per stage, distilled from the float
#             model. Targets: int8 accuracy >= float - 0.3 points; ratio >=
#             12.06x against float32 weight bytes.
#   lenet300  LeNet-300-100: float baseline, gradual pruning 50% -> 95%
#             (global), 16-way clustering, int8; 8 fine-tuning epochs per
#             stage, distilled. Target: >= 40x with <= 0.5 points lost.
#   lenet5    lenet5 as int8 (post-training quantization only): accuracy,
#             arena bytes and batch-1 latency against its float version.
# Every ratio is the compress report's: float32 weight bytes of the input
# model over the bytes of the stored artifact (.fdlz or micro blob).
#
# usage: bench/compress/compress_bench.sh [--only NAME...] [--threads T]
#                                         [--build-dir DIR] [--no-build] [--quick]
#   --quick   smoke run (2,000 training and 500 test images, 1 epoch) into
#             bench/results/compress-quick/
# Results in bench/results/compress/: NAME.train.json, NAME.compress.json,
# NAME.float.eval.json, NAME.int8.eval.json (a finished step is skipped when
# run again). bench/compress/compress_report.py prints the tables.
# Time on 2 cores: about 25 min for all three (training 15 epochs each is most of it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
threads=2 build=1 bdir=build-release only=() limits=() R=bench/results/compress epochs=15 quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --build-dir) bdir="$2"; shift 2 ;;
    --only) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do only+=("$1"); shift; done ;;
    --no-build) build=0; shift ;;
    --quick) limits=(--train-limit 2000 --test-limit 500); epochs=1; quick=1; R=bench/results/compress-quick; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "compress_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$build" = 1 ]; then
  [ -d "$bdir" ] || meson setup "$bdir" --buildtype=release -Dtests=false >/dev/null
  ninja -C "$bdir" -j2 orchestrator/cli/fleetdl >/dev/null
fi
F=./$bdir/orchestrator/cli/fleetdl
mkdir -p "$R"
want() { [ ${#only[@]} -eq 0 ] || [[ " ${only[*]} " == *" $1 "* ]]; }
tl=(); [ ${#limits[@]} -gt 0 ] && tl=(--test-limit 500)

train() {  # NAME MODEL
  [ -f "$R/$1.fdl" ] && return 0
  echo "$1: train $2, $epochs epochs"
  $F train --model "$2" --epochs "$epochs" --optimizer adam --lr 0.001 --schedule cosine --threads "$threads" \
     --seed 1 --out "$R/$1.fdl.tmp" --json --no-progress "${limits[@]}" > "$R/$1.train.json"
  mv "$R/$1.fdl.tmp" "$R/$1.fdl"
}
evaluate() {  # NAME MODEL-FILE TAG
  [ -f "$R/$1.$3.eval.json" ] && return 0
  $F eval "$2" --threads 1 --latency-runs 200 --json "${tl[@]}" > "$R/$1.$3.eval.json"
}
compress() {  # NAME OUT FINETUNE-EPOCHS then flags
  local name="$1" out="$2" ft="$3"; shift 3
  [ "$quick" = 1 ] && ft=1
  [ -f "$R/$name.compress.json" ] && return 0
  echo "$name: compress $*"
  rm -f "$R/$out"
  $F compress --model "$R/$name.fdl" --threads "$threads" --seed 1 --finetune-epochs "$ft" --out "$R/$out" \
     --json --no-progress "${limits[@]}" "$@" > "$R/$name.compress.json.tmp"
  mv "$R/$name.compress.json.tmp" "$R/$name.compress.json"
}

if want cnn1; then
  train cnn1 cnn1
  evaluate cnn1 "$R/cnn1.fdl" float
  compress cnn1 cnn1.q.bin 5 --prune 0.7 --prune-initial 0.3 --prune-scope global --cluster 32 --quantize int8 \
    --distill "$R/cnn1.fdl"
  evaluate cnn1 "$R/cnn1.q.bin" int8
fi
if want lenet300; then
  train lenet300 lenet300_100
  evaluate lenet300 "$R/lenet300.fdl" float
  compress lenet300 lenet300.q.bin 8 --prune 0.95 --prune-initial 0.5 --prune-scope global --cluster 16 \
    --quantize int8 --distill "$R/lenet300.fdl"
  evaluate lenet300 "$R/lenet300.q.bin" int8
fi
if want lenet5; then
  train lenet5 lenet5
  evaluate lenet5 "$R/lenet5.fdl" float
  compress lenet5 lenet5.q.bin 1 --quantize int8
  evaluate lenet5 "$R/lenet5.q.bin" int8
fi
bench/compress/compress_report.py "$R"
