#!/usr/bin/env bash
# bench/nonn/nonn_bench.sh — the NoNN reproduction on Fashion-MNIST (issue 4,
# REFERENCES §1): a vgg_fmnist teacher (128 channels in its last conv), NoNN
# students for N = 2, 4, 8, and the baselines:
#   teacher               the teacher itself
#   kd1                   one KD student of a device's size (N = 1, beta 0)
#   nN-reference          NoNN, the public code's post-processing (--allow-shrink:
#                         the effective N is recorded when the communities allow fewer)
#   nN-balanced           NoNN, every filter, balanced sizes
#   nN-random             N students on a random equal filter partition
#   nN-beta0              balanced, without activation matching (beta = 0 ablation)
# Every module set is then run through `fleetdl infer` (one process per
# student) for accuracy, per-device costs and bytes per image.
#
# usage: bench/nonn/nonn_bench.sh [--threads T] [--teacher-epochs E] [--epochs E]
#                                 [--width W] [--only NAME...] [--no-build] [--quick]
#                                 [--results DIR] [--teacher FILE]
# Students: width 32 (23,296 parameters each, 12.4x below the teacher), SGD
# with momentum 0.9, lr 0.05 on a cosine schedule, 10 epochs. The first runs
# (width 16, constant lr 0.01) are kept in bench/results/nonn-w16-sgd-constant/.
#   --quick   a smoke run of the whole script (1,000 training and 300 test
#             images, 1 epoch each) into bench/results/nonn-quick/
# Results: bench/results/nonn/NAME.partition.json (modules.json) and
# NAME.infer.json, the teacher in bench/results/nonn/teacher.fdl (reused when
# present), module sets in bench/results/nonn/NAME/ (gitignored .fdl files).
# A finished NAME is skipped when run again, so an interrupted bench resumes.
# bench/nonn/nonn_report.py prints the table of docs/benchmarks.md.
# Time on 2 cores: the teacher ~5 min per epoch; each student run about
# N x 40 s per epoch plus one teacher pass (~3 min) for its targets.
# FLEETDL_BIN=path runs another fleetdl binary (the default is build-release's).
#   --results DIR   write into DIR instead of bench/results/nonn (another recipe)
#   --teacher FILE  copy FILE in as DIR/teacher.fdl instead of training one
#                   (a teacher already in DIR is kept)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
threads=2 teacher_epochs=15 epochs=10 width=32 build=1 only=() limits=() R=bench/results/nonn teacher=
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --teacher-epochs) teacher_epochs="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --width) width="$2"; shift 2 ;;
    --only) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do only+=("$1"); shift; done ;;
    --no-build) build=0; shift ;;
    --quick) limits=(--train-limit 1000 --test-limit 300); teacher_epochs=1; epochs=1; R=bench/results/nonn-quick; shift ;;
    --results) R="$2"; shift 2 ;;
    --teacher) teacher="$2"; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "nonn_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -n "$teacher" ] && [ ! -f "$teacher" ]; then echo "nonn_bench.sh: --teacher $teacher: no such file" >&2; exit 2; fi
if [ "$build" = 1 ]; then
  [ -d build-release ] || meson setup build-release --buildtype=release -Dtests=false >/dev/null
  ninja -C build-release -j2 orchestrator/cli/fleetdl >/dev/null
fi
F=${FLEETDL_BIN:-./build-release/orchestrator/cli/fleetdl}
mkdir -p "$R"
if [ -n "$teacher" ] && [ ! -f "$R/teacher.fdl" ]; then
  cp "$teacher" "$R/teacher.fdl.tmp" && mv "$R/teacher.fdl.tmp" "$R/teacher.fdl"
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

if [ ! -f "$R/teacher.fdl" ]; then
  echo "teacher: vgg_fmnist, $teacher_epochs epochs"
  $F train --model vgg_fmnist --epochs "$teacher_epochs" --optimizer adam --lr 0.001 --schedule cosine \
     --threads "$threads" --seed 1 --out "$R/teacher.fdl.tmp" --json --no-progress "${limits[@]}" > "$R/teacher.train.json"
  mv "$R/teacher.fdl.tmp" "$R/teacher.fdl"
fi
tl=(); [ ${#limits[@]} -gt 0 ] && tl=(--test-limit 300)
[ -f "$R/teacher.eval.json" ] || $F eval "$R/teacher.fdl" --threads "$threads" --latency-runs 50 --json "${tl[@]}" > "$R/teacher.eval.json"

run() {  # NAME then partition flags
  local name="$1"; shift
  if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " == *" $name "* ]]; then return 0; fi
  if [ -f "$R/$name.infer.json" ]; then echo "$name: done already"; return 0; fi
  rm -rf "$R/$name"
  echo "$name: partition nonn $* (commit $commit)"
  if ! $F partition nonn --teacher "$R/teacher.fdl" --out "$R/$name" --epochs "$epochs" --threads "$threads" \
       --width "$width" --optimizer sgd --lr 0.05 --schedule cosine --seed 1 --json --no-progress "${limits[@]}" "$@" > "$R/$name.partition.json" 2> "$R/$name.err"; then
    echo "$name: failed: $(cat "$R/$name.err")"; return 0
  fi
  $F infer --modules "$R/$name" --threads "$threads" --json "${tl[@]}" > "$R/$name.infer.json"
  echo "$name: $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('accuracy', d['test_accuracy'], 'identical to unified:', d['matches_unified'])" "$R/$name.infer.json")"
}

run kd1 --students 1 --mode random --beta 0
for n in 2 4 8; do
  run "n$n-reference" --students "$n" --mode reference --allow-shrink
  run "n$n-balanced" --students "$n" --mode balanced
  run "n$n-random" --students "$n" --mode random
  run "n$n-beta0" --students "$n" --mode balanced --beta 0
done
bench/nonn/nonn_report.py "$R"
