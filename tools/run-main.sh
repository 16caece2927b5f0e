#!/usr/bin/env bash
# tools/run-main.sh — build fleetdl (release) and run the main job on the
# embedded defaults: a local fleet of 8 device agents (fast, mid and weak
# profiles) on loopback, enrolled with one-time tokens over TLS, trains
# lenet300_100 on Fashion-MNIST for 5 federated rounds (examples/fleet/demo.json);
# every round's costs go to fleet-demo/fleet.db, and the run's HTML report is
# written to fleet-demo/report.html, whose path is the last line printed.
#
#   FLEETDL_DEMO_DIR=DIR   where the database, agents and report go (default fleet-demo)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./tools/deps.sh
./tools/meson-setup.sh build-release --buildtype=release -Dtests=false
meson compile -C build-release -j2

dataset=/usr/share/datasets/fashion-mnist
if [ ! -f "$dataset/train-images-idx3-ubyte.gz" ]; then
  echo "run-main: Fashion-MNIST not found in $dataset (Debian package dataset-fashion-mnist)" >&2
  exit 1
fi

F=build-release/orchestrator/cli/fleetdl
dir=${FLEETDL_DEMO_DIR:-fleet-demo}
db=$dir/fleet.db
mkdir -p "$dir"
"$F" fleet down --db "$db" >/dev/null 2>&1 || true   # agents left by an interrupted demo
"$F" fleet up --devices 8 --db "$db"
trap '"$F" fleet down --db "$db" >/dev/null 2>&1 || true' EXIT
"$F" fleet run --config examples/fleet/demo.json --db "$db" --threads "$(nproc)" | tee "$dir/run.log"
run=$(sed -n 's/^run \([0-9][0-9]*\) finished.*/\1/p' "$dir/run.log" | tail -n 1)
"$F" report --db "$db" --run "$run" --out "$dir/report.html" >&2
echo "report: $(realpath "$dir/report.html")"
