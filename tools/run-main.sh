#!/usr/bin/env bash
# tools/run-main.sh — build fleetdl (release) and run the main job: train LeNet-5
# on Fashion-MNIST for 3 epochs, print the test accuracy and write the model to
# fleetdl-lenet5.fdl in the repository root.
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

exec build-release/orchestrator/cli/fleetdl train \
  --dataset fashion-mnist --model lenet5 --epochs 3 --batch 64 \
  --optimizer adam --lr 0.001 --threads "$(nproc)" --seed 1 \
  --out fleetdl-lenet5.fdl
