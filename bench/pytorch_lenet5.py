#!/usr/bin/python3
"""bench/pytorch_lenet5.py — the PyTorch side of bench/lenet5_vs_pytorch.sh.

Trains the foundation's lenet5 on Fashion-MNIST exactly as
`fleetdl train --model lenet5 --batch 64 --optimizer adam --lr 0.001` does,
then measures test accuracy and batch-1 inference latency exactly as
`fleetdl eval --latency-runs N` does, and prints ONE JSON object whose keys
match fleetdl's (test_accuracy, train_seconds, train_images_per_second,
latency_b1_ms, params, threads) plus torch_version and details.

Run it with the system interpreter (Debian's python3-torch lives there):

    /usr/bin/python3 bench/pytorch_lenet5.py --threads 2 --seed 1 [--epochs 1]
        [--train-limit N] [--latency-runs 1000] [--data-dir DIR]

Model: conv 5x5 1->16 pad 2, ReLU, maxpool 2; conv 5x5 16->32 pad 2, ReLU,
maxpool 2; dense 1568->128, ReLU; dense 128->10; PyTorch default init.
Inputs are pixels/255, no normalisation (as in fleetdl).

What is timed (mirrors fleetdl's nn::train_classifier):
  train_seconds = wall time of the epoch loop only: per epoch the shuffle
  (torch.randperm with a seeded generator), batch gather, forward,
  cross-entropy, running loss/accuracy, zero_grad, backward and Adam step.
  Data loading (gzip + IDX parsing) and evaluation are outside the timer.
  Tensors are pre-loaded; no DataLoader (the fastest plain PyTorch loop).
  train_images_per_second = train images * epochs / train_seconds.
Batch-1 latency: model.eval(); 20 warm-up forwards; then the mean over N
single-image forwards cycling through the test images, each forward timed on
its own (the input slice is prepared outside the timer, as fleetdl copies the
column outside its timer). Measured under torch.no_grad() and under
torch.inference_mode(); latency_b1_ms is the faster of the two (fairness
favours the peer); both are reported.
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"


def load_idx_gz(path):
    """Read a gzip-compressed IDX file (big-endian header) into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    if data[2] != 0x08:
        raise ValueError(f"{path}: element type 0x{data[2]:02x}, expected 0x08 (ubyte)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise ValueError(f"{path}: {len(data) - offset} data bytes, header says {count}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_split(data_dir, train, limit=None):
    prefix = "train" if train else "t10k"
    x = load_idx_gz(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    y = load_idx_gz(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{prefix}: {x.shape[0]} images but {y.shape[0]} labels")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    # pixels / 255, no normalisation; N x 1 x 28 x 28 float32, contiguous
    xt = torch.from_numpy(x.astype(np.float32) / np.float32(255.0)).unsqueeze(1).contiguous()
    yt = torch.from_numpy(y.astype(np.int64))
    return xt, yt


class LeNet5(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def train(model, opt, x, y, epochs, batch, seed):
    """The timed loop. Returns (seconds, epoch_log)."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    n = x.shape[0]
    model.train()
    log = []
    t0 = time.perf_counter()
    for ep in range(epochs):
        te = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        for b in range(0, n, batch):
            idx = order[b:b + batch]
            xb = x.index_select(0, idx)
            yb = y.index_select(0, idx)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                loss_sum += loss.detach().double() * yb.shape[0]
                correct += (logits.argmax(1) == yb).sum()
        log.append({"epoch": ep + 1, "loss": loss_sum.item() / n, "train_accuracy": correct.item() / n,
                    "seconds": time.perf_counter() - te})
    return time.perf_counter() - t0, log


def evaluate(model, x, y, batch=256):
    model.eval()
    correct = 0
    loss_sum = 0.0
    with torch.no_grad():
        for b in range(0, x.shape[0], batch):
            logits = model(x[b:b + batch])
            loss_sum += F.cross_entropy(logits, y[b:b + batch], reduction="sum").item()
            correct += (logits.argmax(1) == y[b:b + batch]).sum().item()
    return correct / x.shape[0], loss_sum / x.shape[0]


def latency_b1(model, x, runs, mode):
    """Mean ms of `runs` single-image forwards after 20 warm-ups, like fleetdl eval."""
    model.eval()
    n = x.shape[0]
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with ctx():
        for i in range(20):
            j = i % n
            model(x[j:j + 1])
        total_ns = 0
        for i in range(runs):
            j = i % n
            x1 = x[j:j + 1]
            t0 = time.perf_counter_ns()
            model(x1)
            total_ns += time.perf_counter_ns() - t0
    return total_ns / runs / 1e6


def loaded_library(stem):
    """Real path of the shared library `stem` (e.g. libblas.so) this process loaded, or None."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if os.path.basename(path).startswith(stem):
                    return os.path.realpath(path)
    except OSError:
        pass
    return None


def cpu_capability():
    for line in torch.__config__.show().splitlines():
        if "CPU capability usage" in line:
            return line.split(":", 1)[1].strip()
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-limit", type=int, default=None, help="use the first N training images")
    ap.add_argument("--latency-runs", type=int, default=200)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    a = ap.parse_args()
    if a.threads < 1 or a.epochs < 1 or a.batch < 1 or a.latency_runs < 1:
        ap.error("--threads, --epochs, --batch and --latency-runs must be >= 1")
    if a.train_limit is not None and a.train_limit < 1:
        ap.error("--train-limit must be >= 1")

    # Threads first: set_num_interop_threads must precede any parallel work.
    torch.set_num_interop_threads(1)
    torch.set_num_threads(a.threads)

    x_train, y_train = load_split(a.data_dir, True, a.train_limit)
    x_test, y_test = load_split(a.data_dir, False)

    torch.manual_seed(a.seed)  # PyTorch default init (kaiming_uniform, a=sqrt(5))
    model = LeNet5(classes=10)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)  # betas (0.9, 0.999), eps 1e-8, as fleetdl

    seconds, log = train(model, opt, x_train, y_train, a.epochs, a.batch, a.seed)
    acc, test_loss = evaluate(model, x_test, y_test)
    lat_ng = latency_b1(model, x_test, a.latency_runs, "no_grad")
    lat_im = latency_b1(model, x_test, a.latency_runs, "inference_mode")

    out = {
        "command": "pytorch-train", "model": "lenet5", "dataset": "fashion-mnist",
        "epochs": a.epochs, "batch": a.batch, "optimizer": "adam", "lr": a.lr,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "seed": a.seed, "train_images": int(x_train.shape[0]), "test_images": int(x_test.shape[0]),
        "params": params, "test_accuracy": acc, "test_loss": test_loss,
        "train_seconds": seconds, "train_images_per_second": x_train.shape[0] * a.epochs / seconds,
        "epoch_log": log,
        "latency_b1_ms": min(lat_ng, lat_im),
        "latency_b1_mode": "no_grad" if lat_ng <= lat_im else "inference_mode",
        "latency_b1_no_grad_ms": lat_ng, "latency_b1_inference_mode_ms": lat_im,
        "latency_runs": a.latency_runs,
        "torch_version": torch.__version__, "numpy_version": np.__version__,
        "python": sys.version.split()[0],
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": cpu_capability(),
        # Which BLAS the Linear layers' GEMMs ran on: Debian's default
        # alternative is the netlib reference BLAS (.../blas/libblas.so.3).
        "blas": loaded_library("libblas.so") or loaded_library("libopenblas"),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
