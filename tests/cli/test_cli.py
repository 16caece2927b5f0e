#!/usr/bin/env python3
"""Integration tests of the `fleetdl` command-line front end.

    test_cli.py FLEETDL GROUP [NAME...]

FLEETDL is the built executable (build/orchestrator/cli/fleetdl); GROUP picks
the test cases, one meson test each (tests/cli/meson.build):

  usage       usage errors (exit 2) on train/eval/info; --help; info --model.
              Runs on a small crafted Fashion-MNIST-format dataset, so a flag
              the CLI wrongly accepted would train and write --out, and fail.
  bad-data    runtime errors (exit 1): missing dataset, bad IDX magic,
              image/label count mismatch, truncated gzip, .fdl of another
              version, truncated or corrupt .fdl; and a valid crafted dataset
              that does train. Needs no real dataset.
  output      JSON stays valid when training diverges (NaN loss -> null), and
              a write error on stdout (/dev/full) fails the command. Crafted
              dataset only.
  train-eval  train / eval / info on the real Fashion-MNIST
              (FLEETDL_FASHION_MNIST_DIR, default /usr/share/datasets/fashion-mnist),
              accuracy floor, JSON fields, determinism. Exits 77 (skipped) when
              the dataset is not installed.
  fl-bad-config
              `fl simulate` on invalid configs, each the valid FL_BASE with one
              edit (bad values, cross-key rules such as Krum's n > 2f + 2,
              missing required keys, unknown keys, wrong types, malformed and
              oversized JSON, missing / directory / unreadable config files),
              usage errors, unreadable datasets and --out. Exit 2 for the
              config and usage errors, 1 for runtime ones; the line names the
              config, the key and the rule. Crafted dataset only.
  fl-simulate `fl simulate` on the real Fashion-MNIST (skipped, 77, without it):
              JSON records and their invariants, determinism across runs and
              thread counts, the seed, DP epsilon, abandoned rounds, --out read
              back by eval / info, text output, the progress bar only on a
              terminal, partitions the data cannot give.

Every failing command must: exit with the expected code, print nothing on
stdout, print exactly one line on stderr that starts with "fleetdl <cmd>: "
and names the offending file or flag and the problem, and write nothing: a
fresh --out does not appear, a pre-existing --out keeps its bytes, and no
file in the test's temp directory is created, changed or removed.

Python 3 standard library only. Each test case uses its own temp directory.
"""

import copy
import gzip
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

SKIP = 77  # meson: the test is reported as skipped

FLEETDL = None  # set in main()

DATA_DIR = os.environ.get("FLEETDL_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
DATA_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]

# Per-command time limit; the slowest command here trains 6000 images (~10 s).
TIMEOUT = 300

# lenet5 on 1x28x28, node by node (fleetdl info): conv 16@5x5 same, relu,
# pool 2x2, conv 32@5x5 same, relu, pool, flatten, dense 128, relu, dense 10.
LENET5_TYPES = ["conv2d", "relu", "maxpool2d", "conv2d", "relu", "maxpool2d", "flatten", "dense", "relu", "dense"]
LENET5_PARAMS = [416, 0, 0, 12832, 0, 0, 0, 200832, 0, 1290]
LENET5_MACS = [16 * 28 * 28 * 1 * 25, 0, 0, 32 * 14 * 14 * 16 * 25, 0, 0, 0, 1568 * 128, 0, 128 * 10]
LENET5_TOTAL_PARAMS = 215370

# test_accuracy of the reference run (lenet5, 1 epoch, 6000 train / 2000 test
# images, adam 0.001, batch 64, seed 7, 2 threads) was 0.729; training is
# deterministic for a given seed and thread count, so the floor sits a few
# points below to allow for compiler / SIMD rounding differences only.
ACCURACY_FLOOR = 0.69


# ----------------------------------------------------------------- helpers

def run(args, cwd=None):
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run([FLEETDL] + [str(a) for a in args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)


def describe(args, p):
    return "\n  fleetdl %s\n  exit %s\n  stdout: %r\n  stderr: %r" % (
        " ".join(str(a) for a in args), p.returncode, (p.stdout or "")[:2000], (p.stderr or "")[:2000])


def snapshot(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def idx_bytes(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + bytes(payload)


def write_gz(path, data):
    with open(path, "wb") as fh:
        fh.write(gzip.compress(data, mtime=0))


def write_dataset(d, n_train=100, n_train_labels=None, n_test=50, images_magic=0x00000803, seed=1):
    """Fashion-MNIST-format gzip IDX files in d: random 28x28 images, labels 0..9."""
    os.makedirs(d, exist_ok=True)
    rng = random.Random(seed)
    if n_train_labels is None:
        n_train_labels = n_train
    for split, n_img, n_lab, magic in (("train", n_train, n_train_labels, images_magic),
                                       ("t10k", n_test, n_test, 0x00000803)):
        pixels = bytes(rng.getrandbits(8) for _ in range(n_img * 28 * 28))
        labels = bytes(rng.randrange(10) for _ in range(n_lab))
        write_gz(os.path.join(d, split + "-images-idx3-ubyte.gz"), idx_bytes(magic, [n_img, 28, 28], pixels))
        write_gz(os.path.join(d, split + "-labels-idx1-ubyte.gz"), idx_bytes(0x00000801, [n_lab], labels))
    return d


def fdl_crc_fix(data):
    """Recompute the trailing CRC-32 of an .fdl image (over all bytes but the last 4)."""
    body = bytes(data[:-4])
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def _reject_constant(name):
    raise ValueError("%s is not valid JSON" % name)


def strict_json(text):
    """json.loads, minus the NaN / Infinity / -Infinity that Python accepts and JSON does not."""
    return json.loads(text, parse_constant=_reject_constant)


def real_dataset_present():
    return all(os.path.isfile(os.path.join(DATA_DIR, f)) for f in DATA_FILES)


class CliTestCase(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="fleetdl-cli-")
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def check_ok(self, args, cwd=None):
        p = run(args, cwd=cwd)
        self.assertEqual(p.returncode, 0, "command failed:" + describe(args, p))
        return p

    def check_json(self, args):
        p = self.check_ok(args)
        try:
            obj = strict_json(p.stdout)
        except ValueError as e:
            self.fail("stdout is not one JSON object (%s):%s" % (e, describe(args, p)))
        self.assertIsInstance(obj, dict, describe(args, p))
        self.assertEqual(p.stdout.count("\n"), 1, "JSON output is not one line:" + describe(args, p))
        return obj

    def check_error(self, args, code, cmd, needles, out=None, prefix=None):
        """Run a command that must fail, once per --out state (absent, then
        pre-existing with sentinel bytes when `out` is given). `needles` must
        all occur in the one stderr line (words compared case-insensitively,
        anything containing '/' exactly). The line starts with `prefix`, by
        default "fleetdl <cmd>: "."""
        states = [False, True] if out else [False]
        for preexisting in states:
            with self.subTest(out_preexisting=preexisting):
                if out:
                    if os.path.exists(out):
                        os.remove(out)
                    if preexisting:
                        with open(out, "wb") as fh:
                            fh.write(b"pre-existing output, must survive a failed command\n" + bytes(range(256)))
                before = snapshot(self.tmp)
                p = run(args)
                what = describe(args, p)
                self.assertEqual(p.returncode, code, "wrong exit code:" + what)
                self.assertEqual(p.stdout, "", "stdout not empty:" + what)
                self.assertTrue(p.stderr.endswith("\n") and p.stderr.count("\n") == 1,
                                "stderr is not exactly one line:" + what)
                line = p.stderr.rstrip("\n")
                if prefix is None:
                    prefix = "fleetdl %s: " % cmd if cmd else "fleetdl: "
                self.assertTrue(line.startswith(prefix), "stderr does not start with %r:%s" % (prefix, what))
                for n in needles:
                    if "/" in n:
                        self.assertIn(n, line, "stderr does not name %r:%s" % (n, what))
                    else:
                        self.assertIn(n.lower(), line.lower(), "stderr does not say %r:%s" % (n, what))
                if out and not preexisting:
                    self.assertFalse(os.path.exists(out), "failed command created --out:" + what)
                # Nothing created, changed or removed (this also covers a
                # pre-existing --out keeping its bytes, and no "<out>.tmp").
                self.assertEqual(snapshot(self.tmp), before, "failed command wrote files:" + what)


# ------------------------------------------------------------- usage errors

class UsageErrors(CliTestCase):
    """Exit 2, one line, nothing written. The dataset is a valid crafted one:
    if the CLI accepted a bad flag it would train (quickly) and write --out."""

    def setUp(self):
        super().setUp()
        self.data = write_dataset(self.path("data"))
        self.out = self.path("m.fdl")

    def train(self, *extra):
        return ["train", "--data-dir", self.data, "--no-progress", "--out", self.out] + list(extra)

    def check_train_usage(self, extra, needles):
        self.check_error(self.train(*extra), 2, "train", needles, out=self.out)

    def test_unknown_model(self):
        self.check_train_usage(["--model", "nosuch"], ["--model", "'nosuch'", "unknown model"])

    def test_unknown_flag(self):
        self.check_train_usage(["--frobnicate"], ["--frobnicate", "unknown flag"])

    def test_missing_flag_value(self):
        self.check_train_usage(["--epochs"], ["--epochs", "needs a value"])

    def test_non_numeric_value(self):
        self.check_train_usage(["--epochs", "abc"], ["--epochs", "'abc'", "not an integer"])
        self.check_train_usage(["--lr", "fast"], ["--lr", "'fast'", "not a number"])
        self.check_train_usage(["--epochs", "2x"], ["--epochs", "'2x'", "not an integer"])
        self.check_train_usage(["--epochs", "99999999999999999999999"], ["--epochs", "not an integer"])

    def test_out_of_range(self):
        self.check_train_usage(["--threads", "0"], ["--threads", "0", "out of range"])
        self.check_train_usage(["--threads=0"], ["--threads", "0", "out of range"])
        self.check_train_usage(["--epochs", "0"], ["--epochs", "out of range"])
        self.check_train_usage(["--batch", "-1"], ["--batch", "out of range"])
        self.check_train_usage(["--lr", "-0.5"], ["--lr", "out of range"])
        self.check_train_usage(["--train-limit", "0"], ["--train-limit", "out of range"])

    def test_unknown_optimizer(self):
        self.check_train_usage(["--optimizer", "rmsprop"], ["--optimizer", "'rmsprop'", "unknown optimizer"])

    def test_unknown_schedule(self):
        self.check_train_usage(["--schedule", "linear"], ["--schedule", "'linear'", "unknown schedule"])

    def test_unknown_dataset(self):
        self.check_train_usage(["--dataset", "cifar10"], ["--dataset", "'cifar10'", "unknown dataset"])

    def test_flag_given_twice(self):
        self.check_train_usage(["--epochs", "1", "--epochs", "2"], ["--epochs", "given twice"])

    def test_switch_with_value(self):
        self.check_train_usage(["--json=1"], ["--json", "takes no value"])

    def test_unexpected_positional(self):
        self.check_train_usage(["extra.fdl"], ["'extra.fdl'", "unexpected argument"])

    def test_missing_out(self):
        args = ["train", "--data-dir", self.data, "--threads", "1", "--no-progress"]
        self.check_error(args, 2, "train", ["--out", "required"])

    def test_eval_without_model(self):
        self.check_error(["eval", "--data-dir", self.data], 2, "eval", ["model file"])

    def test_eval_two_models(self):
        self.check_error(["eval", self.path("a.fdl"), self.path("b.fdl"), "--data-dir", self.data], 2, "eval",
                         ["model file"])

    def test_eval_bad_flags(self):
        m = self.path("nonexistent.fdl")
        self.check_error(["eval", m, "--threads", "0"], 2, "eval", ["--threads", "out of range"])
        self.check_error(["eval", m, "--out", self.out], 2, "eval", ["--out", "unknown flag"])
        self.check_error(["eval", m, "--dataset", "mnist"], 2, "eval", ["--dataset", "'mnist'", "unknown dataset"])
        self.check_error(["eval", m, "--latency-runs"], 2, "eval", ["--latency-runs", "needs a value"])

    def test_info_usage(self):
        self.check_error(["info"], 2, "info", ["model file", "--model"])
        self.check_error(["info", "--model", "nosuch"], 2, "info", ["--model", "'nosuch'", "unknown model"])
        self.check_error(["info", "--model", "lenet5", self.path("m.fdl")], 2, "info", ["--model", "not both"])
        self.check_error(["info", "--frobnicate"], 2, "info", ["--frobnicate", "unknown flag"])

    def test_unknown_command(self):
        self.check_error(["frobnicate", "--out", self.out], 2, None, ["'frobnicate'", "unknown command"],
                         out=self.out)

    def test_no_command(self):
        # Usage on stderr (several lines by design), nothing on stdout.
        p = run([])
        self.assertEqual(p.returncode, 2, describe([], p))
        self.assertEqual(p.stdout, "")
        self.assertIn("usage: fleetdl", p.stderr)

    def test_help(self):
        for h in ("--help", "-h", "help"):
            p = run([h])
            self.assertEqual(p.returncode, 0, describe([h], p))
            self.assertIn("usage: fleetdl", p.stdout)
            for cmd in ("train", "eval", "info"):
                self.assertIn(cmd, p.stdout)
            self.assertEqual(p.stderr, "")

    def test_info_model_name(self):
        """info --model NAME needs no file and no dataset."""
        obj = self.check_json(["info", "--model", "lenet5", "--json"])
        self.assertEqual([n["params"] for n in obj["nodes"]], LENET5_PARAMS)
        self.assertEqual([n["macs"] for n in obj["nodes"]], LENET5_MACS)
        self.assertEqual(obj["params"], LENET5_TOTAL_PARAMS)
        self.assertEqual(obj["input"], "1x28x28")


# ------------------------------------------------------------ runtime errors

class DataAndModelErrors(CliTestCase):
    """Exit 1 for bad datasets and model files; crafted inputs only."""

    def setUp(self):
        super().setUp()
        self.out = self.path("m.fdl")

    def train(self, data, *extra):
        return ["train", "--data-dir", data, "--epochs", "1", "--threads", "1", "--no-progress", "--seed", "3",
                "--out", self.out] + list(extra)

    def good_model(self):
        """A valid .fdl from a quick training run on a crafted dataset."""
        data = write_dataset(self.path("good"))
        model = self.path("good.fdl")
        self.check_ok(["train", "--data-dir", data, "--epochs", "1", "--threads", "1", "--no-progress",
                       "--train-limit", "256", "--test-limit", "256", "--out", model])
        with open(model, "rb") as fh:
            blob = fh.read()
        self.assertEqual(blob[:8], b"FLEETDL\x1a")
        self.assertEqual(struct.unpack_from("<I", blob, 8)[0], 1)
        self.assertEqual(zlib.crc32(blob[:-4]) & 0xFFFFFFFF, struct.unpack_from("<I", blob, len(blob) - 4)[0])
        return data, model, blob

    def write(self, name, blob):
        p = self.path(name)
        with open(p, "wb") as fh:
            fh.write(blob)
        return p

    def test_valid_crafted_dataset_trains(self):
        data = write_dataset(self.path("data"))
        obj = self.check_json(self.train(data, "--json"))
        self.assertEqual(obj["train_images"], 100)
        self.assertEqual(obj["test_images"], 50)
        self.assertEqual(obj["params"], LENET5_TOTAL_PARAMS)
        self.assertTrue(os.path.isfile(self.out))
        self.assertFalse(os.path.exists(self.out + ".tmp"))
        ev = self.check_json(["eval", self.out, "--data-dir", data, "--latency-runs", "5", "--json"])
        self.assertEqual(ev["test_images"], 50)
        self.assertEqual(ev["test_accuracy"], obj["test_accuracy"])
        # The uncompressed files are read too (fallback when no .gz).
        plain = self.path("plain")
        os.makedirs(plain)
        for f in DATA_FILES:
            with gzip.open(os.path.join(data, f), "rb") as src, open(os.path.join(plain, f[:-3]), "wb") as dst:
                dst.write(src.read())
        ev2 = self.check_json(["eval", self.out, "--data-dir", plain, "--latency-runs", "5", "--json"])
        self.assertEqual(ev2["test_accuracy"], ev["test_accuracy"])

    def test_missing_dataset(self):
        empty = self.path("empty")
        os.makedirs(empty)
        want = os.path.join(empty, "train-images-idx3-ubyte.gz")
        self.check_error(self.train(empty), 1, "train", [want, "not found"], out=self.out)
        nodir = self.path("no-such-dir")
        self.check_error(self.train(nodir), 1, "train",
                         [os.path.join(nodir, "train-images-idx3-ubyte.gz"), "not found"], out=self.out)

    def test_missing_test_split(self):
        data = write_dataset(self.path("data"))
        os.remove(os.path.join(data, "t10k-labels-idx1-ubyte.gz"))
        self.check_error(self.train(data), 1, "train",
                         [os.path.join(data, "t10k-labels-idx1-ubyte.gz"), "not found"], out=self.out)

    def test_wrong_idx_magic(self):
        data = write_dataset(self.path("data"), images_magic=0x00000802)
        self.check_error(self.train(data), 1, "train",
                         [os.path.join(data, "train-images-idx3-ubyte.gz"), "magic", "0x00000802"], out=self.out)

    def test_labels_file_as_images(self):
        data = write_dataset(self.path("data"))
        # Swap: a valid IDX labels file where the images file belongs.
        os.replace(os.path.join(data, "train-labels-idx1-ubyte.gz"), os.path.join(data, "train-images-idx3-ubyte.gz"))
        write_gz(os.path.join(data, "train-labels-idx1-ubyte.gz"), idx_bytes(0x801, [100], bytes(100)))
        self.check_error(self.train(data), 1, "train",
                         [os.path.join(data, "train-images-idx3-ubyte.gz"), "images"], out=self.out)

    def test_count_mismatch(self):
        data = write_dataset(self.path("data"), n_train=100, n_train_labels=90)
        self.check_error(self.train(data), 1, "train",
                         [os.path.join(data, "train-images-idx3-ubyte.gz"),
                          os.path.join(data, "train-labels-idx1-ubyte.gz"), "100", "90"], out=self.out)

    def test_label_out_of_range(self):
        data = write_dataset(self.path("data"))
        write_gz(os.path.join(data, "train-labels-idx1-ubyte.gz"), idx_bytes(0x801, [100], [3] * 50 + [10] + [0] * 49))
        self.check_error(self.train(data), 1, "train",
                         [os.path.join(data, "train-labels-idx1-ubyte.gz"), "label 10", "index 50"], out=self.out)

    def test_truncated_gzip(self):
        data = write_dataset(self.path("data"))
        f = os.path.join(data, "train-images-idx3-ubyte.gz")
        with open(f, "rb") as fh:
            blob = fh.read()
        with open(f, "wb") as fh:
            fh.write(blob[: len(blob) // 2])
        self.check_error(self.train(data), 1, "train", [f, "truncated"], out=self.out)

    def test_truncated_idx_payload(self):
        data = write_dataset(self.path("data"))
        f = os.path.join(data, "t10k-images-idx3-ubyte.gz")
        write_gz(f, idx_bytes(0x803, [50, 28, 28], bytes(49 * 28 * 28)))  # one image short
        self.check_error(self.train(data), 1, "train", [f, "truncated"], out=self.out)

    def test_model_other_version(self):
        data, _, blob = self.good_model()
        bumped = bytearray(blob)
        struct.pack_into("<I", bumped, 8, 2)
        bumped = fdl_crc_fix(bumped)
        model = self.write("v2.fdl", bumped)
        # Only the version (and so the CRC-32) differs from the valid file.
        diff = [i for i in range(len(blob)) if blob[i] != bumped[i]]
        self.assertEqual(diff[0], 8)
        self.assertTrue(all(i == 8 or i >= len(blob) - 4 for i in diff), diff)
        self.check_error(["eval", model, "--data-dir", data], 1, "eval", [model, "version"])
        self.check_error(["info", model], 1, "info", [model, "version"])
        self.check_error(["info", model, "--json"], 1, "info", [model, "version"])

    def test_truncated_model(self):
        data, _, blob = self.good_model()
        for name, cut in (("half.fdl", len(blob) // 2), ("header.fdl", 12), ("short.fdl", len(blob) - 1),
                          ("empty.fdl", 0)):
            with self.subTest(file=name):
                model = self.write(name, blob[:cut])
                self.check_error(["eval", model, "--data-dir", data], 1, "eval", [model])
                self.check_error(["info", model], 1, "info", [model])

    def test_corrupt_model(self):
        data, _, blob = self.good_model()
        flipped = bytearray(blob)
        flipped[len(blob) // 2] ^= 0x40
        model = self.write("flipped.fdl", bytes(flipped))
        self.check_error(["eval", model, "--data-dir", data], 1, "eval", [model, "CRC-32"])
        trailing = self.write("trailing.fdl", blob + b"\0")
        self.check_error(["info", trailing], 1, "info", [trailing, "trailing"])
        notfdl = self.write("gz.fdl", gzip.compress(b"not a model", mtime=0))
        self.check_error(["info", notfdl], 1, "info", [notfdl])

    def test_missing_model(self):
        data = write_dataset(self.path("data"))
        model = self.path("nosuch.fdl")
        self.check_error(["eval", model, "--data-dir", data], 1, "eval", [model, "cannot open"])
        self.check_error(["info", model], 1, "info", [model, "cannot open"])

    def test_eval_missing_dataset(self):
        _, model, _ = self.good_model()
        empty = self.path("empty")
        os.makedirs(empty)
        self.check_error(["eval", model, "--data-dir", empty], 1, "eval",
                         [os.path.join(empty, "t10k-images-idx3-ubyte.gz"), "not found"])

    def test_out_directory_missing(self):
        data = write_dataset(self.path("data"))
        out = self.path("nodir", "m.fdl")
        args = ["train", "--data-dir", data, "--threads", "1", "--no-progress", "--out", out]
        self.check_error(args, 1, "train", [out, self.path("nodir"), "does not exist"])

    def test_out_is_directory(self):
        data = write_dataset(self.path("data"))
        out = self.path("adir")
        os.makedirs(out)
        args = ["train", "--data-dir", data, "--threads", "1", "--no-progress", "--out", out]
        self.check_error(args, 1, "train", [out, "is a directory"])


class OutputRobustness(CliTestCase):
    """Machine-readable output stays valid, and failing to write it is an error.

    Both fail against orchestrator/cli/fleetdl.cpp as of commit b9af772: num()
    prints NaN as "nan"/"-nan" inside the JSON, and nothing checks that stdout
    was written (fflush/ferror) before exiting 0."""

    def test_json_valid_when_training_diverges(self):
        # SGD at lr 1e6 overflows the logits: the test loss is NaN. JSON has
        # no NaN, so a non-finite number must come out as null, not "nan".
        data = write_dataset(self.path("data"))
        model = self.path("m.fdl")
        t = self.check_json(["train", "--data-dir", data, "--optimizer", "sgd", "--lr", "1e6", "--seed", "1",
                             "--no-progress", "--out", model, "--json"])
        for k in ("test_loss", "test_accuracy"):
            self.assertTrue(t[k] is None or isinstance(t[k], (int, float)), (k, t[k]))
        for e in t["epoch_log"]:
            self.assertTrue(e["loss"] is None or isinstance(e["loss"], (int, float)), e)
        e = self.check_json(["eval", model, "--data-dir", data, "--latency-runs", "3", "--json"])
        self.assertTrue(e["test_loss"] is None or isinstance(e["test_loss"], (int, float)), e)

    def check_stdout_full(self, args, cmd):
        """stdout on /dev/full (ENOSPC): the lost output must not pass as success."""
        with open("/dev/full", "w") as full:
            p = subprocess.run([FLEETDL] + args, stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE,
                               text=True, timeout=TIMEOUT, env=dict(os.environ, LC_ALL="C"))
        what = describe(args, p)
        self.assertEqual(p.returncode, 1, "write error on stdout not reported:" + what)
        self.assertTrue(p.stderr.startswith("fleetdl %s: " % cmd) and p.stderr.count("\n") == 1, what)
        self.assertIn("standard output", p.stderr, what)

    @unittest.skipUnless(os.path.exists("/dev/full"), "needs /dev/full")
    def test_stdout_write_error(self):
        data = write_dataset(self.path("data"))
        model = self.path("m.fdl")
        self.check_ok(["train", "--data-dir", data, "--no-progress", "--out", model])
        self.check_stdout_full(["info", model, "--json"], "info")
        self.check_stdout_full(["info", "--model", "lenet5"], "info")
        self.check_stdout_full(["eval", model, "--data-dir", data, "--latency-runs", "3", "--json"], "eval")
        self.check_stdout_full(["train", "--data-dir", data, "--no-progress", "--out", self.path("n.fdl"),
                                "--json"], "train")


# ------------------------------------------------------ train / eval / info

class TrainEval(CliTestCase):
    """The real Fashion-MNIST: one reference training run shared by the tests."""

    TRAIN = ["train", "--dataset", "fashion-mnist", "--model", "lenet5", "--epochs", "1", "--batch", "64",
             "--optimizer", "adam", "--lr", "0.001", "--threads", "2", "--seed", "7", "--train-limit", "6000",
             "--test-limit", "2000"]

    @classmethod
    def setUpClass(cls):
        cls._cls_tmp = tempfile.TemporaryDirectory(prefix="fleetdl-cli-ref-")
        cls.model = os.path.join(cls._cls_tmp.name, "m.fdl")
        args = cls.TRAIN + ["--out", "m.fdl", "--json"] + cls.data_args()
        p = run(args, cwd=cls._cls_tmp.name)
        if p.returncode != 0:
            raise AssertionError("reference training failed:" + describe(args, p))
        cls.train_stdout, cls.train_stderr = p.stdout, p.stderr
        cls.train_json = strict_json(p.stdout)

    @classmethod
    def tearDownClass(cls):
        cls._cls_tmp.cleanup()

    @staticmethod
    def data_args():
        # Default directory unless FLEETDL_FASHION_MNIST_DIR points elsewhere.
        return [] if "FLEETDL_FASHION_MNIST_DIR" not in os.environ else ["--data-dir", DATA_DIR]

    def test_train_json(self):
        t = self.train_json
        self.assertEqual(self.train_stdout.count("\n"), 1, self.train_stdout)
        self.assertEqual(self.train_stderr, "", "train --json wrote to stderr")
        for k in ("test_accuracy", "train_seconds", "train_images_per_second", "params", "test_loss", "epoch_log"):
            self.assertIn(k, t)
        self.assertEqual(t["command"], "train")
        self.assertEqual(t["model"], "lenet5")
        self.assertEqual(t["params"], LENET5_TOTAL_PARAMS)
        self.assertEqual(t["train_images"], 6000)
        self.assertEqual(t["test_images"], 2000)
        self.assertEqual((t["epochs"], t["batch"], t["threads"], t["seed"]), (1, 64, 2, 7))
        self.assertEqual(t["out"], "m.fdl")
        self.assertGreater(t["train_seconds"], 0)
        self.assertGreater(t["train_images_per_second"], 0)
        self.assertEqual(len(t["epoch_log"]), 1)
        self.assertGreaterEqual(t["test_accuracy"], ACCURACY_FLOOR,
                                "test accuracy %.4f below the floor %.2f" % (t["test_accuracy"], ACCURACY_FLOOR))
        self.assertLessEqual(t["test_accuracy"], 1.0)
        self.assertTrue(os.path.isfile(self.model))
        self.assertFalse(os.path.exists(self.model + ".tmp"))

    def test_eval_json(self):
        e = self.check_json(["eval", self.model, "--dataset", "fashion-mnist", "--threads", "2", "--test-limit", "2000",
                             "--json"] + self.data_args())
        self.assertEqual(e["command"], "eval")
        self.assertEqual(e["test_images"], 2000)
        self.assertEqual(e["params"], LENET5_TOTAL_PARAMS)
        self.assertEqual(e["test_accuracy"], self.train_json["test_accuracy"])  # same images, same weights
        self.assertEqual(e["test_loss"], self.train_json["test_loss"])
        self.assertGreater(e["latency_b1_ms"], 0)
        self.assertEqual(e["latency_runs"], 200)

    def test_eval_text(self):
        p = self.check_ok(["eval", self.model, "--threads", "1", "--test-limit", "500", "--latency-runs", "10"]
                          + self.data_args())
        self.assertIn("test accuracy:", p.stdout)
        self.assertIn("(500 images)", p.stdout)
        self.assertIn("batch-1 latency:", p.stdout)

    def test_info_json(self):
        i = self.check_json(["info", self.model, "--json"])
        self.assertEqual(i["command"], "info")
        self.assertEqual(i["input"], "1x28x28")
        self.assertEqual(len(i["nodes"]), 10)
        self.assertEqual([n["type"] for n in i["nodes"]], LENET5_TYPES)
        self.assertEqual([n["params"] for n in i["nodes"]], LENET5_PARAMS)
        self.assertEqual([n["macs"] for n in i["nodes"]], LENET5_MACS)
        self.assertEqual(i["params"], LENET5_TOTAL_PARAMS)
        self.assertEqual(i["macs"], sum(LENET5_MACS))
        self.assertEqual(i["weight_bytes"], 4 * LENET5_TOTAL_PARAMS)
        self.assertEqual(i["metadata"].get("model"), "lenet5")
        self.assertEqual(i["metadata"].get("seed"), "7")
        self.assertEqual(float(i["metadata"].get("test_accuracy")), self.train_json["test_accuracy"])

    def test_info_text(self):
        p = self.check_ok(["info", self.model])
        lines = p.stdout.splitlines()
        header = [k for k, l in enumerate(lines) if l.split()[:1] == ["node"]]
        self.assertEqual(len(header), 1, p.stdout)
        h = header[0]
        for col in ("type", "params", "MACs"):
            self.assertIn(col, lines[h])
        rows = lines[h + 1:h + 11]
        self.assertEqual([r.split()[0] for r in rows], [str(k) for k in range(10)], p.stdout)
        self.assertEqual([int(r.split()[3]) for r in rows], LENET5_PARAMS, p.stdout)
        self.assertEqual([int(r.split()[5]) for r in rows], LENET5_MACS, p.stdout)
        total = lines[h + 11].split()
        self.assertEqual(total[0], "total", p.stdout)
        self.assertEqual(int(total[1]), LENET5_TOTAL_PARAMS, p.stdout)
        self.assertIn("model = lenet5", p.stdout)

    def test_determinism_and_text_output(self):
        """Same seed and threads: byte-identical .fdl (also with or without
        --json); another seed: a different file. Text mode prints the result."""
        small = ["train", "--model", "lenet5", "--epochs", "1", "--batch", "64", "--optimizer", "adam", "--lr",
                 "0.001", "--threads", "2", "--train-limit", "1000", "--test-limit", "200"] + self.data_args()
        a, b, c = self.path("a.fdl"), self.path("b.fdl"), self.path("c.fdl")
        self.check_json(small + ["--seed", "7", "--out", a, "--json"])
        p = self.check_ok(small + ["--seed", "7", "--out", b])
        self.check_json(small + ["--seed", "8", "--out", c, "--json"])
        self.assertIn("test accuracy:", p.stdout)
        self.assertIn("(200 images)", p.stdout)
        self.assertIn("saved to " + b, p.stdout)
        self.assertIn("epoch 1/1:", p.stderr)
        with open(a, "rb") as fa, open(b, "rb") as fb, open(c, "rb") as fc:
            da, db, dc = fa.read(), fb.read(), fc.read()
        self.assertEqual(da, db, "same seed and threads gave different .fdl files")
        self.assertNotEqual(da, dc, "seeds 7 and 8 gave the same .fdl file")
        self.assertEqual(len(da), len(dc))


# ------------------------------------------------------------ fl simulate

# The fields of a round record (sim::RoundRecord, docs/fl-simulate.md).
FL_RECORD_KEYS = {"round", "status", "accuracy", "loss", "train_loss", "available", "selected", "participated",
                  "dropped", "stragglers", "required", "bytes_up", "bytes_down", "round_seconds", "clock_seconds",
                  "energy_joules", "epsilon", "wall_seconds"}

DELETE = object()  # an edit that removes the key


def edited(base, edits):
    """A deep copy of config `base` with `edits` applied: (dotted key, value)
    sets the key, creating missing objects on the way; (dotted key, DELETE)
    removes it."""
    cfg = copy.deepcopy(base)
    for key, value in edits:
        *parents, last = key.split(".")
        node = cfg
        for k in parents:
            node = node.setdefault(k, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return cfg


def fl_records(p):
    """The JSON lines of `fl simulate --json`: (round records, summary)."""
    lines = [strict_json(line) for line in p.stdout.splitlines()]
    return lines[:-1], lines[-1]


def without(obj, *keys):
    return {k: v for k, v in obj.items() if k not in keys}


# A valid config (checked by test_base_config_runs): every bad-config case
# differs from it by one edit, so each error is that edit's. setUp points
# dataset.dir at a small crafted dataset: a case the CLI wrongly accepted
# would run (in about a second), exit 0 and write --out, and fail.
FL_BASE = {
    "seed": 1,
    "rounds": 2,
    "clients": 10,
    "model": "cnn1",
    "partition": {"kind": "iid"},
    "client": {"lr": 0.05, "epochs": 1, "batch": 32},
    "strategy": {"name": "fedavg"},
}

# (case, edits, key named first in the error, needles of the rule)
FL_BAD_VALUES = [
    ("lr_negative", [("client.lr", -0.1)], "client.lr", ["must be a finite number > 0", "(got -0.1)"]),
    ("lr_zero", [("client.lr", 0)], "client.lr", ["must be a finite number > 0", "(got 0)"]),
    ("rounds_zero", [("rounds", 0)], "rounds", ["must be an integer in [1, 1000000]", "(got 0)"]),
    ("clients_zero", [("clients", 0)], "clients", ["must be an integer in [1, 1000000]", "(got 0)"]),
    ("seed_negative", [("seed", -1)], "seed", ["must be an integer in [0, ", "(got -1)"]),
    ("threads_too_many", [("threads", 100000)], "threads", ["must be an integer in [0, ", "(got 100000)"]),
    ("eval_every_zero", [("eval_every", 0)], "eval_every", ["must be an integer in [1, ", "(got 0)"]),
    ("epochs_zero", [("client.epochs", 0)], "client.epochs", ["must be an integer in [1, ", "(got 0)"]),
    ("batch_negative", [("client.batch", -32)], "client.batch", ["must be an integer in [1, ", "(got -32)"]),
    ("momentum_one", [("client.momentum", 1.0)], "client.momentum", ["must be in [0, 1)", "(got 1)"]),
    ("momentum_negative", [("client.momentum", -0.5)], "client.momentum", ["must be in [0, 1)", "(got -0.5)"]),
    ("weight_decay_one", [("client.weight_decay", 1.0)], "client.weight_decay", ["must be in [0, 1)", "(got 1)"]),
    ("weight_decay_negative", [("client.weight_decay", -0.25)], "client.weight_decay", ["must be in [0, 1)", "(got -0.25)"]),
    ("weight_decay_string", [("client.weight_decay", "1e-5")], "client.weight_decay", ["must be a number"]),
    ("unknown_model", [("model", "resnet50")], "model", ["unknown value 'resnet50'", "known:", "cnn1"]),
    ("unknown_strategy", [("strategy.name", "fedsgd")], "strategy.name",
     ["unknown value 'fedsgd'", "known:", "fedavg", "bulyan"]),
    ("fedbuff_in_the_simulator", [("strategy", {"name": "fedbuff"})], "strategy.name",
     ["fedbuff is asynchronous", "fleetdl fleet run"]),
    ("unknown_partition", [("partition.kind", "random")], "partition.kind", ["unknown value 'random'", "dirichlet"]),
    ("dirichlet_alpha_zero", [("partition", {"kind": "dirichlet", "alpha": 0})], "partition.alpha",
     ["must be a finite number > 0", "(got 0)"]),
    ("dirichlet_alpha_negative", [("partition", {"kind": "dirichlet", "alpha": -1})], "partition.alpha",
     ["must be a finite number > 0", "(got -1)"]),
    ("dirichlet_without_alpha", [("partition", {"kind": "dirichlet"})], "partition.alpha",
     ["required key is missing"]),
    ("dirichlet_min_size_negative", [("partition", {"kind": "dirichlet", "alpha": 0.5, "min_size": -1})],
     "partition.min_size", ["must be an integer in [0, ", "(got -1)"]),
    ("shards_per_client_zero", [("partition", {"kind": "shards", "shards_per_client": 0})],
     "partition.shards_per_client", ["must be an integer in [1, ", "(got 0)"]),
    ("fedprox_mu_negative", [("strategy", {"name": "fedprox", "proximal_mu": -0.01})], "strategy.proximal_mu",
     ["must be a finite number >= 0", "(got -0.01)"]),
    ("fedtrimmedavg_beta_half", [("strategy", {"name": "fedtrimmedavg", "beta": 0.5})], "strategy.beta",
     ["must be in (0, 0.5)", "(got 0.5)"]),
    ("unknown_dataset", [("dataset.name", "mnist")], "dataset.name", ["unknown value 'mnist'", "fashion-mnist"]),
    # profiles
    ("profile_dropout_above_one", [("profiles", [{"dropout": 1.5}])], "profiles[0].dropout",
     ["must be in [0, 1]", "(got 1.5)"]),
    ("profile_availability_negative", [("profiles", [{"availability": -0.1}])], "profiles[0].availability",
     ["must be in [0, 1]", "(got -0.1)"]),
    ("profile_speed_jitter_one", [("profiles", [{"speed_jitter": 1}])], "profiles[0].speed_jitter",
     ["must be in [0, 1)", "(got 1)"]),
    ("profile_straggler_slowdown_half", [("profiles", [{"straggler_slowdown": 0.5}])],
     "profiles[0].straggler_slowdown", ["must be a finite number >= 1", "(got 0.5)"]),
    ("profile_macs_per_second_negative", [("profiles", [{"macs_per_second": -5}])], "profiles[0].macs_per_second",
     ["must be a finite number > 0", "(got -5)"]),
    ("profile_weight_zero", [("profiles", [{"weight": 0}])], "profiles[0].weight",
     ["must be a number in (0, 1e12]", "(got 0)"]),
    ("profile_weight_huge", [("profiles", [{"weight": 1e300}, {}])], "profiles[0].weight",
     ["must be a number in (0, 1e12]", "(got 1e+300)"]),
    ("second_profile_bad", [("profiles", [{"name": "fast"}, {"name": "slow", "straggler_probability": 2}])],
     "profiles[1].straggler_probability", ["must be in [0, 1]", "(got 2)"]),
    ("profiles_empty", [("profiles", [])], "profiles", ["at least one"]),
    ("profiles_too_many", [("profiles", [{}] * 257)], "profiles", ["at most 256"]),
    # selection
    ("clients_per_round_above_clients", [("selection", {"clients_per_round": 11})], "selection.clients_per_round",
     ["must be at most clients (10)", "(got 11)"]),
    ("min_clients_above_per_round", [("selection", {"clients_per_round": 5, "min_clients": 6})],
     "selection.min_clients", ["must be at most the clients per round (5)", "(got 6)"]),
    ("min_clients_above_clients", [("selection", {"min_clients": 11})], "selection.min_clients",
     ["must be at most the clients per round (10)", "(got 11)"]),
    ("min_clients_zero", [("selection", {"min_clients": 0})], "selection.min_clients",
     ["must be an integer in [1, ", "(got 0)"]),
    ("deadline_policy_without_deadline", [("selection", {"policy": "deadline"})], "selection.deadline_seconds",
     ["deadline policy needs a deadline > 0"]),
    ("deadline_negative", [("selection", {"deadline_seconds": -1})], "selection.deadline_seconds",
     ["must be a finite number >= 0", "(got -1)"]),
    ("overcommit_below_one", [("selection", {"policy": "overcommit", "overcommit": 0.9})], "selection.overcommit",
     ["must be a number in [1, 100]", "(got 0.9)"]),
    ("overcommit_huge", [("selection", {"policy": "overcommit", "overcommit": 1e9})], "selection.overcommit",
     ["must be a number in [1, 100]", "(got 1e+09)"]),
    ("unknown_selection_policy", [("selection", {"policy": "random"})], "selection.policy",
     ["unknown value 'random'", "uniform"]),
    # dp
    ("dp_fixed_without_noise_multiplier", [("dp", {"mode": "fixed", "clipping_norm": 1.0})], "dp.noise_multiplier",
     ["required key is missing"]),
    ("dp_fixed_without_clipping_norm", [("dp", {"mode": "fixed", "noise_multiplier": 1.0})], "dp.clipping_norm",
     ["required key is missing"]),
    ("dp_delta_one", [("dp", {"mode": "fixed", "noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": 1})],
     "dp.delta", ["must be in (0, 1)", "(got 1)"]),
    ("dp_noise_negative", [("dp", {"mode": "local", "noise_multiplier": -1, "clipping_norm": 1.0})],
     "dp.noise_multiplier", ["must be a finite number >= 0", "(got -1)"]),
    ("dp_unknown_mode", [("dp", {"mode": "central"})], "dp.mode", ["unknown value 'central'", "fixed"]),
    # attack, codec
    ("attack_fraction_one", [("attack", {"kind": "sign_flip", "fraction": 1.0})], "attack.fraction",
     ["must be in [0, 1)", "(got 1)"]),
    ("attack_without_fraction", [("attack", {"kind": "gaussian"})], "attack.fraction", ["required key is missing"]),
    ("unknown_attack", [("attack", {"kind": "backdoor", "fraction": 0.1})], "attack.kind",
     ["unknown value 'backdoor'"]),
    ("topk_fraction_zero", [("codec", {"kind": "topk", "topk_fraction": 0})], "codec.topk_fraction",
     ["must be in (0, 1]", "(got 0)"]),
    ("topk_fraction_above_one", [("codec", {"kind": "topk", "topk_fraction": 1.5})], "codec.topk_fraction",
     ["must be in (0, 1]", "(got 1.5)"]),
    ("unknown_codec", [("codec", {"kind": "zstd"})], "codec.kind", ["unknown value 'zstd'", "known:", "topk"]),
]

# Rules across keys; n is the clients per round (selection.clients_per_round, or clients).
FL_BAD_CROSS_KEY = [
    ("krum_f_too_large", [("strategy", {"name": "krum", "f": 4})], "strategy.f",
     ["4 Byzantine clients is too many for krum with 10 clients per round", "n > 2f + 2"]),
    ("krum_f_too_large_per_round", [("strategy", {"name": "krum", "f": 2}), ("selection.clients_per_round", 6)],
     "strategy.f", ["too many for krum with 6 clients per round", "n > 2f + 2"]),
    ("multikrum_f_too_large", [("strategy", {"name": "multikrum", "f": 4})], "strategy.f",
     ["too many for multikrum with 10 clients per round", "n > 2f + 2"]),
    ("multikrum_m_too_large", [("strategy", {"name": "multikrum", "f": 3, "m": 8})], "strategy.m",
     ["must be at most n - f = 7", "(got 8)"]),
    ("bulyan_f_too_large", [("strategy", {"name": "bulyan", "f": 2})], "strategy.f",
     ["2 Byzantine clients is too many for bulyan with 10 clients per round", "n >= 4f + 3"]),
    ("fedmedian_f_too_large", [("strategy", {"name": "fedmedian", "f": 5})], "strategy.f",
     ["5 Byzantine clients is too many for fedmedian", "f < n/2"]),
    ("fedtrimmedavg_f_too_large", [("strategy", {"name": "fedtrimmedavg", "beta": 0.2, "f": 3})], "strategy.f",
     ["too many for fedtrimmedavg", "floor(beta n) >= f"]),
    ("central_dp_around_scaffold",
     [("strategy", {"name": "scaffold"}), ("dp", {"mode": "fixed", "noise_multiplier": 1.0, "clipping_norm": 1.0})],
     "dp.mode", ["not supported around scaffold"]),
    ("local_dp_with_scaffold",
     [("strategy", {"name": "scaffold"}), ("dp", {"mode": "local", "noise_multiplier": 1.0, "clipping_norm": 1.0})],
     "dp.mode", ["local DP is not supported with scaffold", "unprivatized update"]),
]

# Each required key, removed.
FL_REQUIRED_KEYS = ["rounds", "clients", "model", "partition", "partition.kind", "client", "client.lr",
                    "client.epochs", "client.batch", "strategy", "strategy.name"]

FL_UNKNOWN_KEYS = [
    ("unknown_top_level_key", [("roundz", 3)], "roundz", ["unknown key", "known:", "rounds"]),
    ("unknown_nested_key", [("client.lrr", 0.1)], "client.lrr", ["unknown key", "known:", "lr"]),
    ("typo_in_strategy", [("strategy.nmae", "fedavg")], "strategy.nmae", ["unknown key", "known:", "name"]),
    ("typo_in_profile", [("profiles", [{"dropuot": 0.1}])], "profiles[0].dropuot", ["unknown key", "dropout"]),
    ("typo_in_dataset", [("dataset.train_limt", 100)], "dataset.train_limt", ["unknown key", "train_limit"]),
    # a key read only for other strategies / modes is unknown here
    ("key_of_another_strategy", [("strategy.proximal_mu", 0.1)], "strategy.proximal_mu", ["unknown key"]),
    ("f_for_fedavg", [("strategy.f", 1)], "strategy.f", ["unknown key"]),
    ("dp_key_without_mode", [("dp", {"noise_multiplier": 1.0})], "dp.noise_multiplier", ["unknown key"]),
    ("alpha_for_iid", [("partition.alpha", 0.5)], "partition.alpha", ["unknown key"]),
]

FL_BAD_TYPES = [
    ("string_for_integer", [("rounds", "3")], "rounds", ["must be an integer"]),
    ("float_for_integer", [("rounds", 2.5)], "rounds", ["must be an integer"]),
    ("float_for_integer_nested", [("client.batch", 32.5)], "client.batch", ["must be an integer"]),
    ("huge_integer", [("clients", 10 ** 20)], "clients", ["must be an integer"]),
    ("string_for_number", [("client.lr", "0.1")], "client.lr", ["must be a number"]),
    ("null_for_number", [("client.lr", None)], "client.lr", ["must be a number"]),
    ("bool_for_number", [("client.lr", True)], "client.lr", ["must be a number"]),
    ("number_for_string", [("model", 5)], "model", ["must be a string"]),
    ("string_for_bool", [("client_parallel", "yes")], "client_parallel", ["must be true or false"]),
    ("array_for_object", [("client", [0.05, 1, 32])], "client", ["must be a JSON object"]),
    ("string_for_object", [("strategy", "fedavg")], "strategy", ["must be a JSON object"]),
    ("null_for_object", [("partition", None)], "partition", ["must be a JSON object"]),
    ("object_for_array", [("profiles", {"dropout": 0.1})], "profiles", ["must be an array"]),
    ("number_in_profiles", [("profiles", [1])], "profiles[0]", ["must be a JSON object"]),
]

# dataset.train_limit / test_limit: -1 means all; 0 images cannot run, and
# must be refused as a config error naming the key, as --train-limit 0 is
# for `fleetdl train` (regression: 0 was once accepted and the run failed
# later with a message naming no key).
FL_BAD_LIMITS = [
    ("train_limit_zero", [("dataset.train_limit", 0)], "dataset.train_limit", ["(got 0)"]),
    ("test_limit_zero", [("dataset.test_limit", 0)], "dataset.test_limit", ["(got 0)"]),
    ("train_limit_minus_two", [("dataset.train_limit", -2)], "dataset.train_limit", ["(got -2)"]),
]


class FlTestCase(CliTestCase):
    def write_config(self, cfg, name="config.json"):
        """cfg: a dict (written as JSON), str or bytes (written as is)."""
        if isinstance(cfg, dict):
            cfg = json.dumps(cfg, indent=2)
        if isinstance(cfg, str):
            cfg = cfg.encode("utf-8")
        path = self.path(name)
        with open(path, "wb") as fh:
            fh.write(cfg)
        return path

    def check_fl_error(self, config, key, needles, code=2, extra=(), out=True, prefix=None):
        """`fl simulate --config config` fails with `code`, one stderr line
        "fleetdl fl simulate: CONFIG: KEY: ..." holding `needles`, and writes
        nothing (--out absent, then pre-existing). key None: any message
        after the config path. `prefix` replaces "fleetdl fl simulate: CONFIG: ..."."""
        args = ["fl", "simulate", "--config", config, "--no-progress"] + list(extra)
        out_path = None
        if out:
            out_path = self.path("out.fdl")
            args += ["--out", out_path]
        if prefix is None:
            prefix = "fleetdl fl simulate: %s: %s" % (config, key + ": " if key else "")
        self.check_error(args, code, "fl simulate", needles, out=out_path, prefix=prefix)


class FlBadConfig(FlTestCase):
    """`fleetdl fl simulate` on invalid configs: exit 2, nothing on stdout,
    one stderr line naming the config, the key and the rule, no --out. The
    config is validated before the dataset is read, so most cases need no
    data; the dataset is a small crafted one (the base config runs on it)."""

    def setUp(self):
        super().setUp()
        self.data = write_dataset(self.path("data"))
        self.base = edited(FL_BASE, [("dataset.dir", self.data)])

    def check_table(self, table):
        for name, edits, key, needles in table:
            with self.subTest(case=name):
                cfg = self.write_config(edited(self.base, edits), name + ".json")
                self.check_fl_error(cfg, key, needles)

    def test_base_config_runs(self):
        """The base of every case is valid: it runs and writes --out. A UTF-8
        byte order mark is allowed (docs/fl-simulate.md)."""
        for name, text in (("base", json.dumps(self.base)), ("bom", "\ufeff" + json.dumps(self.base))):
            with self.subTest(config=name):
                cfg = self.write_config(text, name + ".json")
                out = self.path(name + ".fdl")
                args = ["fl", "simulate", "--config", cfg, "--json", "--no-progress", "--threads", "1", "--out", out]
                p = self.check_ok(args)
                records, summary = fl_records(p)
                self.assertEqual([r["round"] for r in records], [1, 2], describe(args, p))
                self.assertIs(summary.get("summary"), True)
                self.assertEqual(summary["clients"], 10)
                self.assertTrue(os.path.isfile(out))
                self.assertEqual(p.stderr, "")

    def test_bad_values(self):
        self.check_table(FL_BAD_VALUES)

    def test_cross_key_rules(self):
        self.check_table(FL_BAD_CROSS_KEY)

    def test_required_keys(self):
        self.check_table([("missing_" + k, [(k, DELETE)], k, ["required key is missing"]) for k in FL_REQUIRED_KEYS])

    def test_unknown_keys(self):
        self.check_table(FL_UNKNOWN_KEYS)

    def test_wrong_types(self):
        self.check_table(FL_BAD_TYPES)
        cfg = self.write_config("[]", "array.json")
        self.check_fl_error(cfg, "config", ["must be a JSON object"])

    def test_dataset_limits(self):
        """0 images is refused as a config error (see FL_BAD_LIMITS)."""
        self.check_table(FL_BAD_LIMITS)

    def test_malformed_json(self):
        text = json.dumps(self.base, indent=2)
        assert text.endswith("\n}") and '"lr": 0.05' in text and '"model": "cnn1"' in text
        cases = [
            ("trailing_comma", text[:-2] + ",\n}", ["line", "column", "trailing comma"]),
            ("trailing_comma_array", text[:-2] + ',\n  "profiles": [{},]\n}', ["trailing comma before ']'"]),
            ("line_comment", "// fleet config\n" + text, ["line 1, column 1", "comments are not allowed"]),
            ("block_comment", "{ /* fleet */" + text[1:], ["line 1, column 3", "comments are not allowed"]),
            ("truncated", text[: len(text) // 2], ["line", "column"]),
            ("truncated_after_brace", "{", ["line 1, column 2"]),
            ("empty", "", ["empty input"]),
            ("whitespace_only", " \n\t\r\n", ["empty input"]),
            ("binary_garbage", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
             ["line 1, column 1", "invalid UTF-8 byte 0x89"]),
            ("nul_bytes", bytes(64), ["line 1, column 1", "U+0000"]),
            ("invalid_utf8_in_string", text.encode().replace(b'"cnn1"', b'"cnn1\xff"'), ["invalid UTF-8"]),
            ("duplicate_key", '{"rounds": 5,' + text[1:], ["duplicate key", "rounds"]),
            ("nan", text.replace('"lr": 0.05', '"lr": NaN'), ["line", "column", "NaN"]),
            ("single_quotes", "{'rounds': 2}", ["line 1, column 2", "double quotes"]),
            ("two_documents", text + "\n" + text, ["trailing data"]),
            ("deep_nesting", "[" * 100000, ["nesting deeper than 64"]),
        ]
        for name, blob, needles in cases:
            with self.subTest(case=name):
                cfg = self.write_config(blob, name + ".json")
                self.check_fl_error(cfg, None, needles)

    def test_oversized_config(self):
        """A 30 MB file is refused by its size (16 MiB limit) before it is
        read, and an endless stream once 16 MiB have been read; neither
        hangs."""
        big = self.path("big.json")
        with open(big, "wb") as fh:
            fh.write(b"{" + b" " * (30 * 10 ** 6 - 2) + b"}")
        for cfg, needles in ((big, ["file is 30000000 bytes", "above the limit 16777216"]),
                             ("/dev/zero", ["above the limit 16777216"])):
            if not os.path.exists(cfg):
                continue
            with self.subTest(config=cfg):
                t0 = time.monotonic()
                self.check_fl_error(cfg, None, needles, out=False)
                self.assertLess(time.monotonic() - t0, 30, "the size limit took too long")

    def test_config_file_errors(self):
        """A missing, a directory or an unreadable config: exit 2, like any config error."""
        missing = self.path("nosuch.json")
        self.check_fl_error(missing, None, ["cannot open", "No such file"])
        adir = self.path("adir")
        os.makedirs(adir)
        self.check_fl_error(adir, None, ["is a directory"])
        if os.geteuid() != 0:  # root reads a mode-000 file anyway
            locked = self.write_config(self.base, "locked.json")
            os.chmod(locked, 0)
            try:
                self.check_fl_error(locked, None, ["cannot open", "Permission denied"])
            finally:
                os.chmod(locked, 0o600)

    def test_usage_subcommand(self):
        cfg = self.write_config(self.base)
        out = self.path("m.fdl")
        self.check_error(["fl"], 2, "fl", ["missing subcommand", "simulate"])
        self.check_error(["fl", "foo", "--config", cfg, "--out", out], 2, "fl",
                         ["unknown subcommand 'foo'", "simulate"], out=out)
        self.check_error(["fl", "--config", cfg, "--out", out], 2, "fl", ["subcommand '--config'", "simulate"],
                         out=out)

    def test_usage_flags(self):
        """Usage errors after `fl simulate` are "fleetdl fl simulate: ..." like
        its config errors (regression: they once said "fleetdl fl: ...")."""
        cfg = self.write_config(self.base)
        out = self.path("m.fdl")
        sim = ["fl", "simulate"]
        cases = [
            (["--no-progress", "--out", out], ["--config", "required"]),
            (["--json", "--out", out], ["--config", "required"]),
            (["--config", cfg, "--out", out, "--frobnicate"], ["unknown flag '--frobnicate'"]),
            (["--config", cfg, "--out", out, "--threads", "0"], ["--threads", "out of range"]),
            (["--config", cfg, "--out", out, "--threads", "two"], ["--threads", "'two'", "not an integer"]),
            (["--config", cfg, "--out", out, "--json=1"], ["--json", "takes no value"]),
            (["--config", cfg, "--out", out, "--config", cfg], ["--config", "given twice"]),
            (["--config", cfg, "--out", out, "extra.json"], ["unexpected argument 'extra.json'"]),
            (["--out", out, "--config"], ["--config", "needs a value"]),
        ]
        for extra, needles in cases:
            with self.subTest(args=" ".join(extra)):
                self.check_error(sim + extra, 2, "fl simulate", needles, out=out)

    def test_data_dir_errors(self):
        """A valid config whose dataset cannot be read: exit 1 (a runtime
        failure), one line that starts with the dataset file, no --out."""
        nodir = self.path("no-such-dir")
        cfg = self.write_config(self.base)
        want = os.path.join(nodir, "train-images-idx3-ubyte.gz")

        def check(config, f, needles, extra=()):
            self.check_fl_error(config, None, needles, code=1, extra=extra,
                                prefix="fleetdl fl simulate: %s: " % f)

        check(cfg, want, ["not found"], extra=["--data-dir", nodir])
        bad_dir = self.write_config(edited(self.base, [("dataset.dir", nodir)]), "bad-dir.json")
        check(bad_dir, want, ["not found"])
        empty = self.path("empty")
        os.makedirs(empty)
        check(cfg, os.path.join(empty, "train-images-idx3-ubyte.gz"), ["not found"], extra=["--data-dir", empty])
        broken = write_dataset(self.path("broken"))
        f = os.path.join(broken, "t10k-images-idx3-ubyte.gz")
        write_gz(f, idx_bytes(0x803, [50, 28, 28], bytes(49 * 28 * 28)))  # one image short
        check(cfg, f, ["truncated"], extra=["--data-dir", broken])
        if os.geteuid() != 0:  # root reads a mode-000 directory anyway
            locked = write_dataset(self.path("locked"))
            os.chmod(locked, 0)
            try:
                check(cfg, os.path.join(locked, "train-images-idx3-ubyte.gz"), ["cannot open"],
                      extra=["--data-dir", locked])
            finally:
                os.chmod(locked, 0o700)

    def test_data_dir_flag_overrides_config(self):
        cfg = self.write_config(edited(self.base, [("dataset.dir", self.path("no-such-dir"))]))
        p = self.check_ok(["fl", "simulate", "--config", cfg, "--data-dir", self.data, "--json", "--no-progress"])
        records, summary = fl_records(p)
        self.assertEqual(len(records), 2)

    def test_runtime_config_errors(self):
        """Errors found once the data is loaded (crafted set: 100 training
        images): a partition that cannot be made and a fleet with no device
        that can hold the model are config errors (exit 2)."""
        cases = [
            ("dirichlet_min_size", [("partition", {"kind": "dirichlet", "alpha": 0.5, "min_size": 50})], 2,
             ["partition", "at least 50 samples", "100 samples"]),
            ("more_clients_than_samples", [("clients", 200)], 2, ["partition", "200 clients", "only 100 samples"]),
            ("no_device_fits", [("profiles", [{"memory_bytes": 1000}])], 2,
             ["no device can train cnn1", "memory_bytes"]),
        ]
        for name, edits, code, needles in cases:
            with self.subTest(case=name):
                cfg = self.write_config(edited(self.base, edits), name + ".json")
                self.check_fl_error(cfg, None, needles, code=code)

    def test_out_unwritable(self):
        """--out that cannot be written is reported before the simulation
        runs, as `fleetdl train` does: exit 1, one line, nothing on stdout
        (regression: the whole simulation once ran before saving failed)."""
        cfg = self.write_config(self.base)
        out = self.path("nodir", "m.fdl")
        self.check_error(["fl", "simulate", "--config", cfg, "--json", "--no-progress", "--out", out], 1,
                         "fl simulate", [out, self.path("nodir"), "does not exist"])
        adir = self.path("adir")
        os.makedirs(adir)
        self.check_error(["fl", "simulate", "--config", cfg, "--json", "--no-progress", "--out", adir], 1,
                         "fl simulate", [adir, "is a directory"])

    def test_checkpoint_unwritable(self):
        """--checkpoint whose directory is missing, or that names a directory,
        is reported before the first round: exit 1, one line, nothing on
        stdout, nothing created."""
        cfg = self.write_config(self.base)
        ckpt = self.path("nodir", "run.ckpt")
        self.check_error(["fl", "simulate", "--config", cfg, "--json", "--no-progress", "--checkpoint", ckpt], 1,
                         "fl simulate", [ckpt, self.path("nodir"), "does not exist"])
        self.assertFalse(os.path.exists(self.path("nodir")))
        adir = self.path("cdir")
        os.makedirs(adir)
        self.check_error(["fl", "simulate", "--config", cfg, "--json", "--no-progress", "--checkpoint", adir,
                          "--resume"], 1, "fl simulate", [adir, "is a directory"])
        self.assertEqual(os.listdir(adir), [])


# The real-data experiment: 10 clients, 3 rounds of FedAvg, cnn1 on 3000
# training and 1000 test images, 1 local epoch. About 1.5 s of CPU per run.
FL_REAL = {
    "seed": 1,
    "rounds": 3,
    "clients": 10,
    "model": "cnn1",
    "dataset": {"train_limit": 3000, "test_limit": 1000},
    "partition": {"kind": "iid"},
    "client": {"lr": 0.05, "epochs": 1, "batch": 32},
    "strategy": {"name": "fedavg"},
}

# The reference run (seed 1, 2 threads) reaches 0.604 after 3 rounds; the
# floor allows for compiler / SIMD rounding differences only.
FL_ACCURACY_FLOOR = 0.45


def run_with_tty_stderr(args):
    """Run fleetdl with stderr on a pseudo-terminal: (process, what it wrote there)."""
    import pty
    import threading
    master, slave = pty.openpty()
    chunks = []

    def reader():
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO once the child is gone and the slave closed
                return
            if not b:
                return
            chunks.append(b)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        p = subprocess.run([FLEETDL] + [str(a) for a in args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=slave, text=True, timeout=TIMEOUT, env=dict(os.environ, LC_ALL="C"))
    finally:
        os.close(slave)
    t.join(10)
    os.close(master)
    return p, b"".join(chunks).decode("utf-8", "replace")


class FlSimulate(FlTestCase):
    """`fleetdl fl simulate` on the real Fashion-MNIST: one reference run
    (FL_REAL, --json, 2 threads, --out) shared by the tests."""

    @classmethod
    def setUpClass(cls):
        cls._cls_tmp = tempfile.TemporaryDirectory(prefix="fleetdl-fl-ref-")
        cls.config = cls.real_config()
        cls.config_path = os.path.join(cls._cls_tmp.name, "ref.json")
        with open(cls.config_path, "w") as fh:
            json.dump(cls.config, fh)
        cls.model = os.path.join(cls._cls_tmp.name, "ref.fdl")
        # No --no-progress: stderr is a pipe, so no bar may be drawn.
        cls.args = ["fl", "simulate", "--config", cls.config_path, "--json", "--threads", "2", "--out", cls.model]
        p = run(cls.args)
        if p.returncode != 0:
            raise AssertionError("reference simulation failed:" + describe(cls.args, p))
        cls.ref = p
        cls.records, cls.summary = fl_records(p)

    @classmethod
    def tearDownClass(cls):
        cls._cls_tmp.cleanup()

    @staticmethod
    def real_config(edits=()):
        cfg = copy.deepcopy(FL_REAL)
        if "FLEETDL_FASHION_MNIST_DIR" in os.environ:  # else the config's default directory
            cfg["dataset"]["dir"] = DATA_DIR
        return edited(cfg, edits)

    @staticmethod
    def data_args():
        return [] if "FLEETDL_FASHION_MNIST_DIR" not in os.environ else ["--data-dir", DATA_DIR]

    def simulate(self, cfg, *extra, name="config.json"):
        """Run a config with --json; (process, records, summary)."""
        path = self.write_config(cfg, name)
        args = ["fl", "simulate", "--config", path, "--json", "--no-progress"] + list(extra)
        p = self.check_ok(args)
        self.assertEqual(p.stderr, "", describe(args, p))
        records, summary = fl_records(p)
        self.assertEqual(len(records), cfg["rounds"], describe(args, p))
        return p, records, summary

    def check_records(self, records, summary, rounds, clients):
        """The invariants every run's records keep."""
        self.assertEqual([r["round"] for r in records], list(range(1, rounds + 1)))
        clock = 0.0
        for r in records:
            with self.subTest(round=r["round"]):
                self.assertEqual(set(r), FL_RECORD_KEYS)
                self.assertIn(r["status"], ("completed", "abandoned"))
                for k in ("available", "selected", "participated", "dropped", "stragglers", "required"):
                    self.assertIsInstance(r[k], int, k)
                    self.assertGreaterEqual(r[k], 0, k)
                self.assertLessEqual(r["available"], clients)
                self.assertLessEqual(r["selected"], r["available"])
                self.assertLessEqual(r["participated"], r["selected"])
                self.assertEqual(r["participated"] + r["dropped"] + r["stragglers"], r["selected"])
                self.assertEqual(r["status"] == "completed", r["participated"] >= r["required"], r)
                for k in ("accuracy", "loss", "train_loss", "bytes_up", "bytes_down", "round_seconds",
                          "clock_seconds", "energy_joules", "wall_seconds"):
                    self.assertIsInstance(r[k], (int, float), k)
                    self.assertTrue(math.isfinite(r[k]), k)
                    self.assertGreaterEqual(r[k], 0, k)
                self.assertLessEqual(r["accuracy"], 1.0)
                self.assertGreater(r["round_seconds"], 0)
                self.assertGreater(r["clock_seconds"], clock, "the virtual clock does not advance")
                # printed with 6 significant digits
                self.assertAlmostEqual(r["clock_seconds"], clock + r["round_seconds"], delta=1e-5 * r["clock_seconds"])
                clock = r["clock_seconds"]
        s = summary
        self.assertIs(s.get("summary"), True)
        self.assertEqual(s["rounds"], rounds)
        self.assertEqual(s["clients"], clients)
        self.assertEqual(s["completed_rounds"], sum(r["status"] == "completed" for r in records))
        self.assertEqual(s["abandoned_rounds"], sum(r["status"] == "abandoned" for r in records))
        self.assertEqual(s["last_accuracy"], records[-1]["accuracy"])
        self.assertEqual(s["best_accuracy"], max(r["accuracy"] for r in records))
        self.assertEqual(s["clock_seconds"], records[-1]["clock_seconds"])
        for k in ("bytes_up", "bytes_down", "energy_joules"):
            self.assertAlmostEqual(s[k], sum(r[k] for r in records), delta=1e-5 * s[k] + 1e-9, msg=k)

    def test_json_records(self):
        p, records, s = self.ref, self.records, self.summary
        lines = p.stdout.splitlines()
        self.assertEqual(len(lines), 4, "not rounds + 1 lines:" + describe(self.args, p))
        self.assertTrue(p.stdout.endswith("\n"))
        self.check_records(records, s, 3, 10)
        for r in records:
            self.assertEqual(r["status"], "completed")
            self.assertEqual((r["available"], r["selected"], r["participated"]), (10, 10, 10))
            self.assertIsNone(r["epsilon"], "epsilon without DP")
            self.assertEqual(r["bytes_up"], r["bytes_down"])  # f32 up and down, no codec
        self.assertLess(records[-1]["train_loss"], records[0]["train_loss"], "training does not progress")
        self.assertGreaterEqual(records[-1]["accuracy"], FL_ACCURACY_FLOOR,
                                "accuracy %.4f below the floor %.2f" % (records[-1]["accuracy"], FL_ACCURACY_FLOOR))
        self.assertEqual((s["strategy"], s["model"], s["eligible_clients"], s["threads"]), ("fedavg", "cnn1", 10, 2))
        self.assertEqual(s["completed_rounds"], 3)

    def test_no_progress_bar_without_tty(self):
        """stderr is a pipe and --no-progress was not given: still no bar."""
        self.assertEqual(self.ref.stderr, "")
        self.assertNotIn("\x1b", self.ref.stdout)
        self.assertNotIn("\r", self.ref.stdout)

    def test_same_seed_same_records(self):
        """Same config and threads: the same records (but wall_seconds) and a
        byte-identical model."""
        out = self.path("again.fdl")
        _, records, summary = self.simulate(self.config, "--threads", "2", "--out", out)
        self.assertEqual([without(r, "wall_seconds") for r in records],
                         [without(r, "wall_seconds") for r in self.records])
        self.assertEqual(without(summary, "wall_seconds"), without(self.summary, "wall_seconds"))
        with open(out, "rb") as a, open(self.model, "rb") as b:
            self.assertEqual(a.read(), b.read(), "same config gave different .fdl files")

    def test_thread_count_does_not_matter(self):
        """Clients train single-threaded in parallel (client_parallel): the
        results do not depend on --threads."""
        _, records, summary = self.simulate(self.config, "--threads", "1")
        self.assertEqual([without(r, "wall_seconds") for r in records],
                         [without(r, "wall_seconds") for r in self.records])
        self.assertEqual(summary["threads"], 1)
        self.assertEqual(without(summary, "wall_seconds", "threads"), without(self.summary, "wall_seconds", "threads"))

    def test_seed_reaches_the_simulator(self):
        """The config's seed seeds the fleet and the selection too
        (docs/fl-simulate.md): with speed jitter and 4 of 10 clients per
        round, seeds 1 and 2 give different simulated round times
        (regression: the seed once reached only the init, partition and DP
        noise)."""
        edits = [("rounds", 2), ("dataset.train_limit", 1000), ("dataset.test_limit", 200),
                 ("profiles", [{"speed_jitter": 0.5}]), ("selection", {"clients_per_round": 4})]
        runs = {}
        for seed in (1, 2):
            cfg = self.real_config(edits + [("seed", seed)])
            _, records, _ = self.simulate(cfg, "--threads", "2", name="seed%d.json" % seed)
            runs[seed] = [r["round_seconds"] for r in records]
        self.assertNotEqual(runs[1], runs[2], "seeds 1 and 2 simulate the same fleet and selection")

    def test_dp_epsilon(self):
        """Central DP with fixed clipping: epsilon is a finite number that grows every round."""
        cfg = self.real_config([("dp", {"mode": "fixed", "noise_multiplier": 1.0, "clipping_norm": 1.0})])
        _, records, summary = self.simulate(cfg, "--threads", "2")
        self.check_records(records, summary, 3, 10)
        eps = [r["epsilon"] for r in records]
        for e in eps:
            self.assertIsInstance(e, (int, float), eps)
            self.assertTrue(math.isfinite(e) and e > 0, eps)
        self.assertTrue(all(a < b for a, b in zip(eps, eps[1:])), "epsilon does not grow: %r" % eps)
        self.assertIn("fedavg", summary["strategy"])

    def test_dropouts_abandon_rounds(self):
        """Dropout 0.3 and min_clients equal to the 5 clients per round: some
        rounds get too few updates and are abandoned (the model does not
        change), and the run still succeeds."""
        cfg = self.real_config([("rounds", 6), ("profiles", [{"dropout": 0.3}]),
                                ("selection", {"clients_per_round": 5, "min_clients": 5})])
        _, records, summary = self.simulate(cfg, "--threads", "2")
        self.check_records(records, summary, 6, 10)
        abandoned = [r for r in records if r["status"] == "abandoned"]
        self.assertGreaterEqual(len(abandoned), 1, "no round was abandoned")
        self.assertGreaterEqual(summary["abandoned_rounds"], 1)
        self.assertEqual(summary["completed_rounds"] + summary["abandoned_rounds"], 6)
        for prev, r in zip(records, records[1:]):
            self.assertEqual(r["selected"], 5)
            self.assertEqual(r["required"], 5)
            if r["status"] == "abandoned":
                self.assertLess(r["participated"], 5, r)
                self.assertGreater(r["dropped"], 0, r)
                # same global model, same test set
                self.assertEqual((r["accuracy"], r["loss"]), (prev["accuracy"], prev["loss"]), r)

    def test_out_model_evaluates(self):
        """--out writes a model that eval and info read; on the simulation's
        1000 test images it scores the last round's accuracy."""
        self.assertTrue(os.path.isfile(self.model))
        self.assertFalse(os.path.exists(self.model + ".tmp"))
        e = self.check_json(["eval", self.model, "--json", "--test-limit", "500", "--latency-runs", "5"]
                            + self.data_args())
        self.assertEqual(e["test_images"], 500)
        self.assertTrue(0.0 <= e["test_accuracy"] <= 1.0, e)
        e = self.check_json(["eval", self.model, "--json", "--test-limit", "1000", "--latency-runs", "5"]
                            + self.data_args())
        self.assertEqual(e["test_accuracy"], self.summary["last_accuracy"])
        # another batch size (256, the simulator evaluates in 1000s): the sum may round differently
        self.assertAlmostEqual(e["test_loss"], self.records[-1]["loss"], delta=1e-4 * self.records[-1]["loss"])
        i = self.check_json(["info", self.model, "--json"])
        meta = i["metadata"]
        self.assertEqual((meta.get("model"), meta.get("strategy"), meta.get("rounds"), meta.get("seed")),
                         ("cnn1", "fedavg", "3", "1"))
        self.assertEqual(float(meta["test_accuracy"]), self.summary["last_accuracy"])

    def test_text_output(self):
        """Without --json: a header, one line per round, a summary; the
        numbers are the JSON run's. No bar on a non-terminal stderr."""
        path = self.write_config(self.config)
        args = ["fl", "simulate", "--config", path, "--threads", "2"]
        p = self.check_ok(args)
        self.assertEqual(p.stderr, "", "stderr not empty (progress bar on a pipe?):" + describe(args, p))
        for ch in ("\x1b", "\r"):
            self.assertNotIn(ch, p.stdout)
        lines = p.stdout.splitlines()
        self.assertEqual(len(lines), 1 + 3 + 1, describe(args, p))
        self.assertTrue(lines[0].startswith("fedavg on cnn1: 10 clients (10 eligible), iid partition, 3 rounds, "
                                            "2 threads"), lines[0])
        for k, (line, r) in enumerate(zip(lines[1:4], self.records), 1):
            self.assertTrue(line.startswith("round %d/3 completed: accuracy %s, loss %s, 10/10 clients"
                                            % (k, format(r["accuracy"], ".6g"), format(r["loss"], ".6g"))), line)
        self.assertTrue(lines[4].startswith("best accuracy %s" % format(self.summary["best_accuracy"], ".6g")),
                        lines[4])
        self.assertIn("3 completed, 0 abandoned", lines[4])

    @unittest.skipUnless(hasattr(os, "openpty"), "needs a pseudo-terminal")
    def test_progress_bar_on_tty(self):
        """On a terminal the bar is drawn on stderr, unless --no-progress;
        stdout is unchanged either way."""
        path = self.write_config(self.real_config([("rounds", 1)]))
        args = ["fl", "simulate", "--config", path, "--json", "--threads", "2"]
        p, tty = run_with_tty_stderr(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        self.assertEqual(len(p.stdout.splitlines()), 2, p.stdout)
        self.assertIn("round 1/1", tty)
        self.assertIn("10/10 clients", tty)
        self.assertIn("\x1b[K", tty)
        p, tty = run_with_tty_stderr(args + ["--no-progress"])
        self.assertEqual(p.returncode, 0, describe(args, p))
        self.assertEqual(len(p.stdout.splitlines()), 2, p.stdout)
        self.assertEqual(tty, "", "--no-progress still drew on the terminal")

    def test_partition_errors(self):
        """Partitions the 3000 training images cannot give: exit 2, one line naming "partition", no --out."""
        cases = [
            ("dirichlet_min_size", [("partition", {"kind": "dirichlet", "alpha": 0.1, "min_size": 1000})],
             ["partition", "at least 1000 samples", "3000 samples"]),
            ("more_clients_than_samples", [("clients", 5000)], ["partition", "5000 clients", "only 3000 samples"]),
        ]
        for name, edits, needles in cases:
            with self.subTest(case=name):
                cfg = self.write_config(self.real_config(edits), name + ".json")
                self.check_fl_error(cfg, None, needles, code=2)


# --------------------------------------------------------------------- main


class FlCheckpoint(FlTestCase):
    """--checkpoint / --resume: a run killed after round 2 and resumed ends
    with the same records and a byte-identical model as an uninterrupted
    run; damaged, foreign and unsupported checkpoints are refused with one
    line and change nothing."""

    CFG = {
        "seed": 3, "rounds": 4, "clients": 8, "model": "cnn1",
        "dataset": {"train_limit": 1600, "test_limit": 400},
        "partition": {"kind": "dirichlet", "alpha": 0.5, "min_size": 10},
        "client": {"lr": 0.05, "momentum": 0.5, "epochs": 1, "batch": 32},
        "strategy": {"name": "scaffold"},
        "codec": {"kind": "topk", "topk_fraction": 0.1},
    }

    def config(self, edits=()):
        return self.write_config(self._cfg(edits))

    def _cfg(self, edits):
        cfg = copy.deepcopy(self.CFG)
        if "FLEETDL_FASHION_MNIST_DIR" in os.environ:
            cfg["dataset"]["dir"] = DATA_DIR
        return edited(cfg, list(edits))

    def strip(self, records):
        return [without(r, "wall_seconds") for r in records]

    def test_resume_matches_uninterrupted(self):
        self.resume_matches(self.config(), "scaffold")

    def test_resume_with_server_state(self):
        """Strategies that carry state between rounds resume bit for bit too:
        FedAdam's moments and step count, FedAvgM's momentum, central DP
        (fixed and adaptive clipping) with its noise stream, accountant (the
        epsilon of every round is in the records compared) and clipping norm;
        and Oort selection with its per-client statistics."""
        for name, edits in [
            ("fedadam", [("strategy", {"name": "fedadam", "eta": 0.01})]),
            ("fedavgm", [("strategy", {"name": "fedavgm", "server_momentum": 0.9})]),
            ("dp_fixed", [("strategy", {"name": "fedavg"}),
                          ("dp", {"mode": "fixed", "noise_multiplier": 0.5, "clipping_norm": 1.0})]),
            ("dp_adaptive", [("strategy", {"name": "fedavgm", "server_momentum": 0.5}),
                             ("dp", {"mode": "adaptive", "noise_multiplier": 0.5, "clipped_count_stddev": 2.0})]),
            # Oort's per-client statistics and exploration rate (simulated durations: bit for bit)
            ("oort", [("selection", {"policy": "oort", "clients_per_round": 4})]),
        ]:
            with self.subTest(strategy=name):
                self.resume_matches(self.write_config(self._cfg(edits), name + ".json"), name)

    def resume_matches(self, cfg, name):
        full_model = self.path(name + "-full.fdl")
        p = self.check_ok(["fl", "simulate", "--config", cfg, "--json", "--no-progress", "--out", full_model])
        full, full_summary = fl_records(p)
        self.assertEqual(len(full), 4)
        if "dp" in name:
            self.assertTrue(all(r["epsilon"] > 0 for r in full), "central DP reports epsilon every round")
        # interrupted: kill the process once two round records are out
        ckpt = self.path(name + ".ckpt")
        args = [FLEETDL, "fl", "simulate", "--config", cfg, "--json", "--no-progress", "--checkpoint", ckpt]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        for line in proc.stdout:
            seen.append(json.loads(line))
            if len(seen) == 2:
                # the checkpoint of round 2 is written right after its record
                deadline = time.time() + 60
                while time.time() < deadline:
                    try:
                        with open(ckpt, "rb") as fh:
                            data = fh.read()
                        # magic 8 | version u32 | fingerprint u64 | round u64
                        if len(data) >= 28 and struct.unpack_from("<Q", data, 20)[0] >= 2:
                            break
                    except FileNotFoundError:
                        pass
                    time.sleep(0.05)
                proc.kill()
                break
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        self.assertGreaterEqual(len(seen), 2)
        self.assertTrue(os.path.exists(ckpt))
        resumed_model = self.path(name + "-resumed.fdl")
        args = ["fl", "simulate", "--config", cfg, "--json", "--no-progress", "--checkpoint", ckpt, "--resume",
                "--out", resumed_model]
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        self.assertIn("resuming after round", p.stderr)
        rest, summary = fl_records(p)
        first = int(p.stderr.split("resuming after round ")[1].split()[0])
        self.assertIn(first, (2, 3, 4))
        self.assertEqual(self.strip(seen[:2]), self.strip(full[:2]))
        self.assertEqual([r["round"] for r in rest], list(range(first + 1, 5)))
        self.assertEqual(self.strip(rest), self.strip(full[first:]))
        with open(full_model, "rb") as a, open(resumed_model, "rb") as b:
            self.assertEqual(a.read(), b.read(), "resumed run's model differs from the uninterrupted one")
        # the summary covers the whole run, rounds before the resume included
        # (wall time is host time and differs)
        self.assertEqual(without(summary, "wall_seconds"), without(full_summary, "wall_seconds"))
        # resuming a finished run runs nothing and still reports the whole run
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        self.assertIn("resuming after round 4 of 4", p.stderr)
        rest, summary = fl_records(p)
        self.assertEqual(rest, [])
        self.assertEqual(without(summary, "wall_seconds"), without(full_summary, "wall_seconds"))
        with open(full_model, "rb") as a, open(resumed_model, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def _make_checkpoint(self, cfg):
        ckpt = self.path("ok.ckpt")
        self.check_ok(["fl", "simulate", "--config", cfg, "--json", "--no-progress", "--checkpoint", ckpt])
        with open(ckpt, "rb") as fh:
            return ckpt, fh.read()

    def test_bad_checkpoints(self):
        cfg = self.config([("rounds", 1)])
        ckpt, good = self._make_checkpoint(cfg)
        flipped = bytearray(good)
        flipped[len(flipped) // 2] ^= 0x01
        cases = [
            ("empty", b"", "too short"),
            ("magic", b"NOTACKPT" + good[8:], "not a fleetdl simulator checkpoint"),
            ("truncated", good[:-9], "CRC mismatch"),
            ("bit_flip", bytes(flipped), "CRC mismatch"),
        ]
        for name, data, needle in cases:
            with self.subTest(case=name):
                path = self.path(name + ".ckpt")
                with open(path, "wb") as fh:
                    fh.write(data)
                self.check_error(["fl", "simulate", "--config", cfg, "--json", "--no-progress", "--checkpoint", path,
                                  "--resume"], 1, "fl simulate", [needle], prefix="fleetdl fl simulate: " + path + ": checkpoint: ")
                with open(path, "rb") as fh:
                    self.assertEqual(fh.read(), data, "a refused checkpoint must not be touched")
        # a checkpoint of another experiment (the seed changed)
        other = self.write_config(self._cfg([("rounds", 1), ("seed", 4)]), "other.json")
        self.check_error(["fl", "simulate", "--config", other, "--no-progress", "--checkpoint", ckpt, "--resume"], 1,
                         "fl simulate", ["different experiment"], prefix="fleetdl fl simulate: " + ckpt + ": checkpoint: ")
        with open(ckpt, "rb") as fh:
            self.assertEqual(fh.read(), good)

    def test_usage(self):
        cfg = self.config()
        self.check_error(["fl", "simulate", "--config", cfg, "--resume"], 2, "fl simulate", ["--resume needs --checkpoint"])


# ------------------------------------------------------------------ NoNN

class NonnCli(CliTestCase):
    """partition nonn and infer end to end on the real Fashion-MNIST with a
    small, briefly trained vgg_fmnist teacher: the distributed result (one
    process per student) equals the unified student's bit for bit, every
    device sends |P_i| floats per image; bad teachers, bad N, an existing
    --out and damaged module directories each give one line and write
    nothing."""

    LIMITS = ["--train-limit", "600", "--test-limit", "200"]

    @classmethod
    def setUpClass(cls):
        cls._shared = tempfile.TemporaryDirectory(prefix="fleetdl-nonn-")
        d = cls._shared.name
        cls.teacher = os.path.join(d, "teacher.fdl")
        cls.dense = os.path.join(d, "dense.fdl")
        cls.mods = os.path.join(d, "mods")
        for model, out in (("vgg_fmnist", cls.teacher), ("lenet300_100", cls.dense)):
            args = ["train", "--model", model, "--epochs", "1", "--no-progress", "--threads", "2", "--out", out] + cls.LIMITS
            p = run(args)
            if p.returncode != 0:
                raise AssertionError("teacher training failed:" + describe(args, p))
        args = ["partition", "nonn", "--teacher", cls.teacher, "--students", "3", "--mode", "balanced", "--epochs", "1",
                "--schedule", "cosine", "--threads", "2", "--out", cls.mods, "--json", "--no-progress"] + cls.LIMITS
        cls.partition_run = run(args)
        cls.partition_args = args

    @classmethod
    def tearDownClass(cls):
        cls._shared.cleanup()

    def manifest(self):
        self.assertEqual(self.partition_run.returncode, 0, describe(self.partition_args, self.partition_run))
        return strict_json(self.partition_run.stdout)

    def test_partition_writes_modules(self):
        m = self.manifest()
        self.assertEqual(m["format"], "fleetdl-nonn-modules")
        with open(os.path.join(self.mods, "modules.json")) as fh:
            self.assertEqual(strict_json(fh.read()), m, "stdout and modules.json differ")
        self.assertEqual(sorted(os.listdir(self.mods)),
                         ["combiner.fdl", "modules.json", "student0.fdl", "student1.fdl", "student2.fdl", "unified.fdl"])
        sizes = [s["features"] for s in m["students"]]
        filters = [f for s in m["students"] for f in s["filters"]]
        # balanced: every one of the teacher's 128 filters, once, sizes within one
        self.assertEqual(sorted(filters), list(range(128)))
        self.assertLessEqual(max(sizes) - min(sizes), 1)
        self.assertEqual(sizes, [len(s["filters"]) for s in m["students"]])
        self.assertEqual(m["partition"]["sizes"], sizes)
        for s in m["students"]:
            self.assertEqual(s["cost"]["bytes_sent_per_image"], 4 * s["features"])
            self.assertLess(s["cost"]["params"] * 10, m["teacher"]["cost"]["params"])
        self.assertEqual(m["training"]["validation_images"], 60)
        self.assertEqual(m["training"]["schedule"], "cosine")
        self.assertEqual(m["test_images"], 200)

    def test_infer_matches_unified(self):
        m = self.manifest()
        out = self.check_json(["infer", "--modules", self.mods, "--test-limit", "200", "--json"])
        self.assertIs(out["matches_unified"], True)
        self.assertEqual(out["students"], 3)
        self.assertEqual(out["test_images"], 200)
        self.assertEqual(out["test_accuracy"], m["test_accuracy"])
        devices = out["devices"]
        self.assertEqual([d["device"] for d in devices], ["student0", "student1", "student2", "combiner"])
        for d, s in zip(devices, m["students"]):
            # measured on the pipe: exactly |P_i| float32 per image
            self.assertEqual(d["bytes_sent_per_image"], 4 * s["features"])
            self.assertEqual(d["params"], s["cost"]["params"])
            self.assertEqual(d["macs"], s["cost"]["macs"])
            self.assertLessEqual(d["bytes_sent_per_image"], 1024)
        # latency = max_i(t_i) + comm + t_FC, comm = link latency + largest vector / uplink
        slowest = max(d["compute_seconds"] for d in devices[:3])
        comm = 0.05 + max(d["bytes_sent_per_image"] for d in devices[:3]) / 125000.0
        self.assertAlmostEqual(out["latency"]["slowest_student_seconds"], slowest, places=9)
        self.assertAlmostEqual(out["latency"]["comm_seconds"], comm, places=6)
        self.assertAlmostEqual(out["latency_seconds"], slowest + comm + devices[3]["compute_seconds"], places=6)

    def test_fleet_infer_on_agents(self):
        """fleet infer over real agents (fleet up, found by discovery): each
        student goes to its own device, the combiner runs here, and the result
        equals `infer`'s (processes) and the unified student's bit for bit;
        one model on 2 replicas likewise, and its int8 micro blob with the
        accuracy `compress` measured; the database records an infer run
        with the same costs; a damaged module set fails with one line and
        records no run."""
        m = self.manifest()
        db = self.path("fleet.db")
        eport, fport = free_ports(2)
        dport = free_udp_port()
        p = run(["fleet", "up", "--devices", "4", "--db", db, "--discovery-port", str(dport)])
        self.assertEqual(p.returncode, 0, describe(["fleet", "up"], p))
        try:
            common = ["--db", db, "--discovery-port", str(dport), "--enroll-port", str(eport), "--fleet-port", str(fport),
                      "--test-limit", "200", "--json"]
            out = self.check_json(["fleet", "infer", "--modules", self.mods] + common)
            local = self.check_json(["infer", "--modules", self.mods, "--test-limit", "200", "--json"])
            self.assertIs(out["matches_local"], True)
            self.assertEqual(out["images"], 200)
            self.assertEqual(out["test_accuracy"], local["test_accuracy"])
            self.assertEqual(out["test_accuracy"], m["test_accuracy"])
            devs = out["devices"]
            self.assertEqual([d["module"] for d in devs], ["student0.fdl", "student1.fdl", "student2.fdl"])
            self.assertEqual(len({d["device"] for d in devs}), 3, "one student per device")
            for d, s in zip(devs, m["students"]):
                self.assertEqual(d["features"], s["features"])
                self.assertEqual(d["images"], 200)
                self.assertEqual(d["feature_bytes_per_image"], 4 * s["features"])
                self.assertLessEqual(d["feature_bytes_per_image"], 1024)
                # responses carry the features plus framing: 7 frames of 32 images
                self.assertGreater(d["bytes_up"], 200 * 4 * s["features"])
                self.assertLess(d["bytes_up"], 200 * 4 * s["features"] + 8 * 200)
                self.assertGreater(d["bytes_down"], d["module_bytes"] + d["request_bytes_down"] - 1)
                self.assertLessEqual(d["peak_memory_bytes"], d["budget_bytes"])
            con = sqlite3.connect(db)
            try:
                self.assertEqual(con.execute("SELECT kind, status FROM runs WHERE id = ?", (out["run"],)).fetchone(),
                                 ("infer", "finished"))
                self.assertEqual(con.execute("SELECT selected, completed, test_accuracy FROM rounds WHERE run = ?",
                                             (out["run"],)).fetchall(), [(3, 3, out["test_accuracy"])])
                rows = con.execute("SELECT device, bytes_up, bytes_down, examples, status FROM device_round_costs "
                                   "WHERE run = ? ORDER BY device", (out["run"],)).fetchall()
                self.assertEqual(rows, sorted((d["device"], d["bytes_up"], d["bytes_down"], 200, "ok") for d in devs))
                kinds = con.execute("SELECT module_kind, module_name FROM assignments WHERE run = ? ORDER BY module_name",
                                    (out["run"],)).fetchall()
                self.assertEqual(kinds, [("student", "student%d.fdl" % i) for i in range(3)])
            finally:
                con.close()

            # one model on two devices, the batches shared out
            unified = os.path.join(self.mods, "unified.fdl")
            rep = self.check_json(["fleet", "infer", "--modules", unified, "--replicas", "2", "--batch", "16"] + common)
            self.assertIs(rep["matches_local"], True)
            self.assertEqual(rep["test_accuracy"], m["test_accuracy"])
            self.assertEqual(len({d["device"] for d in rep["devices"]}), 2)
            self.assertEqual(sum(d["images"] for d in rep["devices"]), 200)

            # a replica lost mid-run: its batch goes to the others, the result is unchanged
            flaky = self.path("flaky.db")
            fdport = free_udp_port()
            pf = self.path("flaky-profiles.json")
            with open(pf, "w") as fh:  # the second agent drops its connection at its first inference request
                json.dump([{"name": "steady"}, {"name": "flaky", "dropout": 0.999}], fh)
            p = run(["fleet", "up", "--devices", "3", "--db", flaky, "--discovery-port", str(fdport), "--profiles", pf])
            self.assertEqual(p.returncode, 0, describe(["fleet", "up"], p))
            try:
                fe, ff = free_ports(2)
                lost = self.check_json(["fleet", "infer", "--modules", unified, "--replicas", "3", "--batch", "16",
                                        "--db", flaky, "--discovery-port", str(fdport), "--enroll-port", str(fe),
                                        "--fleet-port", str(ff), "--test-limit", "200", "--json"])
            finally:
                run(["fleet", "down", "--db", flaky])
            self.assertIs(lost["matches_local"], True)
            self.assertEqual(lost["test_accuracy"], m["test_accuracy"])
            self.assertEqual(sorted((d["name"].split("-")[0], d["lost"]) for d in lost["devices"]),
                             [("flaky", True), ("steady", False), ("steady", False)])
            self.assertEqual(sum(d["images"] for d in lost["devices"]), 200)
            self.assertEqual([d["images"] for d in lost["devices"] if d["lost"]], [0])
            con = sqlite3.connect(flaky)
            try:
                statuses = sorted(s for (s,) in con.execute("SELECT status FROM device_round_costs WHERE run = ?",
                                                            (lost["run"],)))
                dropped = con.execute("SELECT COUNT(*) FROM events WHERE run = ? AND kind = 'dropped'",
                                      (lost["run"],)).fetchone()[0]
            finally:
                con.close()
            self.assertEqual(statuses, ["dropped", "ok", "ok"])
            self.assertEqual(dropped, 1)

            # an int8 micro blob of it on two devices: the accuracy `compress` measured, the blob + arena as memory
            blob = self.path("unified.blob")
            c = self.check_json(["compress", "--model", unified, "--quantize", "int8", "--out", blob,
                                 "--calibration-limit", "100", "--test-limit", "200", "--json"])
            int8 = [st for st in c["stages"] if st["stage"] == "int8"][0]
            q = self.check_json(["fleet", "infer", "--modules", blob, "--replicas", "2", "--batch", "50"] + common)
            self.assertIs(q["matches_local"], True)
            self.assertEqual(q["test_accuracy"], int8["accuracy"])
            self.assertEqual(sum(d["images"] for d in q["devices"]), 200)
            for d in q["devices"]:
                self.assertEqual(d["peak_memory_bytes"], int8["stored_bytes"] + int8["arena_bytes"])
                self.assertEqual(d["module_bytes"], os.path.getsize(blob))

            # a damaged module set: one line, no run recorded
            bad = self.path("bad-mods")
            shutil.copytree(self.mods, bad)
            with open(os.path.join(bad, "student0.fdl"), "r+b") as fh:
                data = bytearray(fh.read())
                data[len(data) // 2] ^= 0x10
                fh.seek(0)
                fh.write(data)
            con = sqlite3.connect(db)
            runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            con.close()
            self.check_error(["fleet", "infer", "--modules", bad] + common, 1, "fleet infer", ["student0.fdl", "CRC-32"])
            self.check_error(["fleet", "infer", "--modules", bad, "--replicas", "2"] + common, 2, "fleet infer",
                             ["--replicas applies to one model file"])
            con = sqlite3.connect(db)
            self.assertEqual(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0], runs)
            con.close()
        finally:
            run(["fleet", "down", "--db", db])

    def test_infer_defaults_to_the_whole_test_set(self):
        """Without --test-limit every test image is used (regression: the
        default once meant zero images and a vacuous match)."""
        self.manifest()
        out = self.check_json(["infer", "--modules", self.mods, "--json"])
        self.assertEqual(out["test_images"], 10000)
        self.assertIs(out["matches_unified"], True)
        self.assertGreater(out["devices"][0]["bytes_sent_per_image"], 0)

    def test_infer_worker_failures(self):
        """A student process that fails, stalls, or sends a short, long or
        foreign stream fails the command with one line naming the student
        (failure injection through FLEETDL_TEST_INFER_FAULT); no process is
        left behind."""
        self.manifest()
        cases = [
            ("crash", ["student 0", "failed", "injected failure"]),
            ("short", ["student 0", "sent", "expected"]),
            ("long", ["student 0", "more than the", "bytes expected"]),
            ("header", ["student 0", "wrong header"]),
            ("hang", ["did not finish within 3 s"]),
        ]
        for fault, needles in cases:
            with self.subTest(fault=fault):
                os.environ["FLEETDL_TEST_INFER_FAULT"] = fault
                try:
                    start = time.time()
                    self.check_error(["infer", "--modules", self.mods, "--test-limit", "200", "--timeout", "3"], 1,
                                     "infer", needles)
                    self.assertLess(time.time() - start, 60)
                finally:
                    del os.environ["FLEETDL_TEST_INFER_FAULT"]
                leftover = subprocess.run(["pgrep", "-f", "infer-student --module " + self.mods],
                                          stdout=subprocess.PIPE, text=True).stdout.split()
                self.assertEqual(leftover, [], "student processes left running")

    def partition_error(self, extra, needles, teacher=None):
        out = self.path("mods")
        args = ["partition", "nonn", "--teacher", teacher or self.teacher, "--epochs", "1", "--no-progress",
                "--out", out] + self.LIMITS + extra
        self.check_error(args, 1, "partition nonn", needles)
        self.assertFalse(os.path.exists(out))
        self.assertEqual([f for f in os.listdir(self.tmp) if ".partial" in f], [])

    def test_partition_bad_input(self):
        self.partition_error(["--students", "2"], ["teacher has no conv layer"], teacher=self.dense)
        self.partition_error(["--students", "40"], ["N=40 is larger than the communities allow"])
        self.partition_error(["--students", "200", "--mode", "random"], ["more than the teacher's 128 filters"])
        self.partition_error(["--students", "2"], [self.path("nosuch.fdl"), "cannot open"], teacher=self.path("nosuch.fdl"))
        os.makedirs(self.path("taken"))
        args = ["partition", "nonn", "--teacher", self.teacher, "--students", "2", "--out", self.path("taken")]
        self.check_error(args, 1, "partition nonn", [self.path("taken"), "already exists"])

    def test_partition_usage(self):
        base = ["partition", "nonn", "--teacher", self.teacher, "--out", self.path("m")]
        self.check_error(base + ["--students", "2", "--mode", "louvain"], 2, "partition nonn", ["unknown mode 'louvain'"])
        self.check_error(base + ["--students", "0"], 2, "partition nonn", ["--students", "out of range"])
        self.check_error(base + ["--students", "2", "--schedule", "step"], 2, "partition nonn",
                         ["--schedule", "unknown schedule 'step'"])
        self.check_error(base, 2, "partition nonn", ["--students N is required"])
        self.check_error(["partition", "split"], 2, "partition", ["unknown method 'split'"])

    def damaged(self, damage):
        d = self.path("mods")
        shutil.copytree(self.mods, d)
        damage(d)
        return d

    def infer_error(self, damage, needles):
        d = self.damaged(damage)
        self.check_error(["infer", "--modules", d, "--test-limit", "200", "--json"], 1, "infer", needles)
        shutil.rmtree(d)

    def test_infer_bad_modules(self):
        self.manifest()

        def flip(name):
            def f(d):
                path = os.path.join(d, name)
                with open(path, "r+b") as fh:
                    data = bytearray(fh.read())
                    data[len(data) // 2] ^= 0x10
                    fh.seek(0)
                    fh.write(data)
            return f

        def edit_manifest(fn):
            def f(d):
                path = os.path.join(d, "modules.json")
                with open(path) as fh:
                    m = json.load(fh)
                fn(m)
                with open(path, "w") as fh:
                    json.dump(m, fh)
            return f

        def truncate_manifest(d):
            path = os.path.join(d, "modules.json")
            with open(path, "rb") as fh:
                data = fh.read()
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])

        cases = [
            ("missing_student", lambda d: os.remove(os.path.join(d, "student1.fdl")), ["student1.fdl", "cannot open"]),
            ("corrupt_student", flip("student0.fdl"), ["student0.fdl", "CRC-32 mismatch"]),
            ("corrupt_combiner", flip("combiner.fdl"), ["combiner.fdl", "CRC-32 mismatch"]),
            ("missing_manifest", lambda d: os.remove(os.path.join(d, "modules.json")), ["modules.json"]),
            ("truncated_manifest", truncate_manifest, ["modules.json"]),
            ("wrong_features", edit_manifest(lambda m: m["students"][2].update(features=7)),
             ["student2.fdl", "the manifest says 7 features"]),
            ("path_escape", edit_manifest(lambda m: m["students"][0].update(file="../teacher.fdl")),
             ["students[0].file", "inside the directory"]),
            ("wrong_format", edit_manifest(lambda m: m.update(format="something-else")), ["fleetdl-nonn-modules"]),
            ("no_students", edit_manifest(lambda m: m.update(students=[])), ["\"students\""]),
            ("dropped_student", edit_manifest(lambda m: m["students"].pop()), ["combiner.fdl", "takes", "features"]),
        ]
        for name, damage, needles in cases:
            with self.subTest(case=name):
                self.infer_error(damage, needles)
        self.check_error(["infer", "--modules", self.path("nosuch")], 1, "infer", [self.path("nosuch"), "no such module directory"])


# ------------------------------------------------------------------ micro

def micro_reshape_blob():
    """The smallest valid fleetdl::micro blob (micro/blob.hpp, version 2): an
    int8 {1,2,2,3} input reshaped to {1,1,1,12}. Written here byte by byte
    from the format description, independently of the C++ writer."""
    T, O, I, Q = 2, 1, 1, 1
    tensors = b""
    for shape in ((1, 2, 2, 3), (1, 1, 1, 12)):
        tensors += struct.pack("<4i f i B B H I I I", *shape, 0.05, -3, 0, 0, 0, 0, 0, 0)
    op = struct.pack("<BBBB 7i H H 8H I", 9, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, *([0xFFFF] * 7), 0)
    io = struct.pack("<II", 0, 1)
    body_len = 64 + 40 * T + 56 * O + 4 * (I + Q)
    data = (body_len + 15) // 16 * 16
    length = data + 4
    header = b"FDLMICRO" + struct.pack("<IIQIIIII5I", 2, 0, length, T, O, I, Q, data, 0, 0, 0, 0, 0)
    blob = header + tensors + op + io
    blob += b"\0" * (data - len(blob))
    return blob + struct.pack("<I", zlib.crc32(blob) & 0xFFFFFFFF)


class MicroCli(CliTestCase):
    """export-header: a verified blob becomes a header that compiles as C++
    and C and holds the same bytes; an unverifiable blob, a bad name or an
    unwritable --out gives one line and writes nothing."""

    def blob(self, data=None):
        path = self.path("model.bin")
        with open(path, "wb") as fh:
            fh.write(micro_reshape_blob() if data is None else data)
        return path

    def test_header_compiles_and_holds_the_blob(self):
        blob = micro_reshape_blob()
        out = self.path("tiny_model.h")
        p = self.check_ok(["export-header", "--blob", self.blob(), "--out", out])
        self.assertIn("tiny_model[]", p.stdout)
        with open(out) as fh:
            text = fh.read()
        self.assertIn("static const size_t tiny_model_len = %d;" % len(blob), text)
        arena = int(text.split("tiny_model_arena_bytes = ")[1].split(";")[0])
        self.assertGreater(arena, 0)
        body = text.split("tiny_model[%d] = {" % len(blob))[1].split("};")[0]
        self.assertEqual(bytes(int(x, 16) for x in body.replace(",", " ").split()), blob)
        # it compiles as C++ with the runtime, which verifies and plans it
        # again on init, and as C
        main = self.path("use.cpp")
        with open(main, "w") as fh:
            fh.write('#include "fleetdl/micro.hpp"\n#include "%s"\n'
                     'int main() { alignas(16) static std::uint8_t arena[4096];\n'
                     '  auto r = fleetdl::micro::Interpreter::init(tiny_model, tiny_model_len, arena, sizeof arena);\n'
                     '  return r.code == fleetdl::micro::ErrorCode::ok ? 0 : 1; }\n' % out)
        include = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "include")
        c = subprocess.run(["g++", "-std=c++20", "-fno-exceptions", "-fno-rtti", "-I", include, main, "-o",
                            self.path("use")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(c.returncode, 0, c.stdout)
        self.assertEqual(subprocess.run([self.path("use")]).returncode, 0)
        cfile = self.path("use.c")
        with open(cfile, "w") as fh:
            fh.write('#include "%s"\nint main(void) { return tiny_model_len == sizeof tiny_model ? 0 : 1; }\n' % out)
        c = subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", "-Wno-unused-const-variable", cfile, "-o",
                            self.path("usec")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.assertEqual(c.returncode, 0, c.stdout)
        self.assertEqual(subprocess.run([self.path("usec")]).returncode, 0)

    def test_bad_blobs_and_usage(self):
        good = micro_reshape_blob()
        flipped = bytearray(good)
        flipped[30] ^= 1
        out = self.path("m.h")
        for name, data, needles in [
            ("empty", b"", ["not a valid micro model blob"]),
            ("crc", bytes(flipped), ["not a valid micro model blob", "CRC"]),
            ("magic", b"FDLMACRO" + good[8:], ["not a valid micro model blob"]),
            ("truncated", good[:-1], ["not a valid micro model blob"]),
        ]:
            with self.subTest(case=name):
                self.check_error(["export-header", "--blob", self.blob(data), "--out", out], 1, "export-header",
                                 needles, out=out)
        self.check_error(["export-header", "--blob", self.path("nosuch.bin"), "--out", out], 1, "export-header",
                         [self.path("nosuch.bin"), "cannot open"], out=out)
        self.check_error(["export-header", "--blob", self.blob(), "--out", out, "--name", "9lives"], 2,
                         "export-header", ["'9lives' is not a C identifier"], out=out)
        self.check_error(["export-header", "--blob", self.blob(), "--out", self.path("nodir", "m.h")], 1,
                         "export-header", [self.path("nodir"), "does not exist"])
        self.check_error(["export-header", "--out", out], 2, "export-header", ["--blob FILE is required"], out=out)


class CompressCli(CliTestCase):
    """fleetdl compress on the real Fashion-MNIST with a briefly trained cnn1:
    per-stage sizes, ratios against the input's float32 weight bytes,
    accuracies, MACs and the int8 arena; the int8 blob passes export-header;
    without --quantize OUT is the .fdlz store of the last float stage;
    gradual pruning (--prune-initial) ramps up and ends at exactly the
    one-shot zero count; bad input gives one line and writes nothing."""

    LIMITS = ["--train-limit", "2000", "--test-limit", "500"]

    @classmethod
    def setUpClass(cls):
        cls._shared = tempfile.TemporaryDirectory(prefix="fleetdl-compress-")
        cls.model = os.path.join(cls._shared.name, "cnn1.fdl")
        args = ["train", "--model", "cnn1", "--epochs", "1", "--no-progress", "--out", cls.model] + cls.LIMITS
        p = run(args)
        if p.returncode != 0:
            raise AssertionError("training failed:" + describe(args, p))

    @classmethod
    def tearDownClass(cls):
        cls._shared.cleanup()

    def test_prune_cluster_int8(self):
        out = self.path("cnn1.bin")
        r = self.check_json(["compress", "--model", self.model, "--prune", "0.5", "--cluster", "16", "--quantize",
                             "int8", "--finetune-epochs", "1", "--json", "--out", out] + self.LIMITS)
        stages = r["stages"]
        self.assertEqual([s["stage"] for s in stages], ["float", "prune", "cluster", "int8"])
        self.assertEqual(r["out_format"], "micro-int8")
        self.assertEqual(r["float32_weight_bytes"], stages[0]["params"] * 4)
        for s in stages:
            self.assertAlmostEqual(s["ratio"], r["float32_weight_bytes"] / s["stored_bytes"], delta=1e-3 * s["ratio"])
            self.assertGreater(s["macs"], 0)
        # the float stages shrink the store; the int8 blob keeps what they
        # saved: its filters are encoded (zero runs and the 16 shared levels,
        # Huffman-coded) and per tensor, so it is far above dense int8's ~4x
        # and within 25% of the clustered store
        ratios = [s["ratio"] for s in stages[1:3]]
        self.assertGreater(ratios[0], 1.0)
        self.assertGreater(ratios[1], ratios[0])
        # (the dense layer is encoded with one scale; the 108-weight conv keeps
        # per-channel scales, and raw bytes, which are smaller than its encoding)
        self.assertIn("1 filters encoded, 1 per-tensor scales", stages[3]["detail"])
        self.assertGreater(stages[3]["ratio"], 0.75 * ratios[1])
        self.assertGreater(stages[3]["ratio"], 8.0)
        self.assertIsNone(stages[2]["arena_bytes"])
        self.assertGreater(stages[3]["arena_bytes"], 0)
        self.assertGreater(stages[0]["accuracy"], 0.5)
        self.assertLess(abs(stages[3]["accuracy"] - stages[2]["accuracy"]), 0.03)
        self.assertEqual(os.path.getsize(out), stages[3]["stored_bytes"])
        self.assertEqual(r["out_bytes"], stages[3]["stored_bytes"])
        p = self.check_ok(["export-header", "--blob", out, "--out", self.path("cnn1.h")])
        self.assertIn("arena %d bytes" % stages[3]["arena_bytes"], p.stdout)
        # --raw-weights: the same stages, raw int8 filters: a larger blob, an
        # arena one decode row (the dense layer's 2,028 weights) smaller, and
        # the same predictions (the encoding is lossless; the per-tensor scale
        # stays, it comes from the clustering)
        raw = self.check_json(["compress", "--model", self.model, "--prune", "0.5", "--cluster", "16", "--quantize",
                               "int8", "--raw-weights", "--finetune-epochs", "1", "--json", "--out",
                               self.path("raw.bin")] + self.LIMITS)["stages"][3]
        self.assertNotIn("encoded", raw["detail"])
        self.assertGreater(raw["stored_bytes"], stages[3]["stored_bytes"] + 10000)
        self.assertEqual(raw["arena_bytes"], stages[3]["arena_bytes"] - 2032)
        self.assertEqual(raw["accuracy"], stages[3]["accuracy"])
        # fleetdl eval runs the blob through the micro runtime: the same
        # accuracy as compress measured, and the arena the planner gave
        ev = self.check_json(["eval", out, "--test-limit", self.LIMITS[self.LIMITS.index("--test-limit") + 1], "--json"])
        self.assertEqual(ev["format"], "micro-int8")
        self.assertEqual(ev["test_accuracy"], stages[3]["accuracy"])
        self.assertEqual(ev["arena_bytes"], stages[3]["arena_bytes"])
        self.assertEqual(ev["arena_bytes"], ev["planned_arena_bytes"])
        # eval reads the file once (magic and blob in one read), so a blob
        # through a pipe works too, with the same result
        with open(out, "rb") as fh:
            blob = fh.read()
        args = [FLEETDL, "eval", "/dev/stdin", "--test-limit", self.LIMITS[self.LIMITS.index("--test-limit") + 1],
                "--json"]
        p = subprocess.run(args, input=blob, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT,
                           env=dict(os.environ, LC_ALL="C"))
        self.assertEqual(p.returncode, 0, "eval of a piped blob failed: %r" % p.stderr)
        piped = strict_json(p.stdout.decode())
        self.assertEqual(piped["format"], "micro-int8")
        self.assertEqual(piped["blob_bytes"], len(blob))
        self.assertEqual(piped["test_accuracy"], ev["test_accuracy"])
        # a damaged blob is refused by the verifier before anything runs
        with open(out, "rb") as fh:
            data = bytearray(fh.read())
        data[100] ^= 0x40
        bad = self.path("bad.bin")
        with open(bad, "wb") as fh:
            fh.write(data)
        self.check_error(["eval", bad, "--test-limit", "10"], 1, "eval", [bad, "not a valid micro model blob"])

    def test_structured_distill_store(self):
        out = self.path("cnn1.fdlz")
        r = self.check_json(["compress", "--model", self.model, "--structured", "0.25", "--prune", "0.5",
                             "--distill", self.model, "--json", "--out", out] + self.LIMITS)
        stages = r["stages"]
        self.assertEqual([s["stage"] for s in stages], ["float", "structured", "prune"])
        self.assertEqual(r["out_format"], "fdlz")
        self.assertLess(stages[1]["params"], stages[0]["params"])
        self.assertLess(stages[1]["macs"], stages[0]["macs"])
        self.assertGreater(stages[2]["ratio"], stages[1]["ratio"])
        self.assertGreater(stages[1]["ratio"], 1.0)
        self.assertEqual(os.path.getsize(out), stages[2]["stored_bytes"])

    def test_gradual_prune(self):
        def zeros(s, n):  # round(s * n), half away from zero, as the library counts
            return int(math.floor(s * n + 0.5))

        out = self.path("gradual.fdlz")
        r = self.check_json(["compress", "--model", self.model, "--prune", "0.6", "--prune-initial", "0.2",
                             "--finetune-epochs", "1", "--json", "--out", out] + self.LIMITS)
        stages = r["stages"]
        self.assertEqual([s["stage"] for s in stages], ["float", "prune"])
        self.assertIsNone(stages[0]["pruning"])
        g = stages[1]["pruning"]
        self.assertEqual(g["schedule"], "polynomial")
        self.assertEqual((g["initial"], g["final"]), (0.2, 0.6))
        # 2000 images, batch 64: 32 steps; a pruning step every 32 // 10 = 3
        # steps, at 0, 3, ..., 30 (the last one <= step 31)
        self.assertEqual(g["optimizer_steps"], 32)
        self.assertEqual(g["every"], 3)
        self.assertEqual(g["pruning_steps"], 11)
        # the stored model: exactly round(0.6 n) zeros in every prunable tensor
        self.assertGreaterEqual(len(g["layers"]), 2)
        for layer in g["layers"]:
            self.assertEqual(layer["zeros"], zeros(0.6, layer["weights"]), layer["name"])
        self.assertEqual(g["zero_weights"], sum(zeros(0.6, l["weights"]) for l in g["layers"]))
        self.assertEqual(g["prunable_weights"], sum(l["weights"] for l in g["layers"]))
        # the ramp: S0 after the first pruning step, growing, S after the last
        ramp = g["pruned_after_each_pruning_step"]
        self.assertEqual(len(ramp), g["pruning_steps"])
        self.assertEqual(ramp[0], sum(zeros(0.2, l["weights"]) for l in g["layers"]))
        self.assertEqual(ramp[-1], g["zero_weights"])
        self.assertEqual(ramp, sorted(ramp))
        self.assertGreater(ramp[len(ramp) // 2], ramp[0])
        self.assertLess(ramp[len(ramp) // 2], ramp[-1])
        self.assertIn("gradual 0.2 -> 0.6", stages[1]["detail"])
        self.assertIn("%d of %d params zero" % (g["zero_weights"], stages[1]["params"]), stages[1]["detail"])
        self.assertEqual(os.path.getsize(out), stages[1]["stored_bytes"])
        self.assertGreater(stages[1]["accuracy"], 0.5)
        # one-shot to the same sparsity: the same zero counts, one pruning step
        o = self.check_json(["compress", "--model", self.model, "--prune", "0.6", "--finetune-epochs", "1", "--json",
                             "--out", self.path("oneshot.fdlz")] + self.LIMITS)["stages"][1]["pruning"]
        self.assertEqual(o["schedule"], "one-shot")
        self.assertIsNone(o["initial"])
        self.assertEqual(o["pruned_after_each_pruning_step"], [g["zero_weights"]])
        self.assertEqual(o["layers"], g["layers"])
        self.assertEqual(o["scope"], "layer")
        # --prune-scope global: one threshold over all layers; the total is
        # exactly round(0.6 n), spread unevenly (the 108-weight conv, whose
        # weights are larger, keeps more of them than the dense layer)
        gl = self.check_json(["compress", "--model", self.model, "--prune", "0.6", "--prune-scope", "global",
                              "--finetune-epochs", "1", "--json", "--out", self.path("global.fdlz")] + self.LIMITS)
        gp = gl["stages"][1]["pruning"]
        self.assertEqual(gp["scope"], "global")
        self.assertIn("(global threshold)", gl["stages"][1]["detail"])
        self.assertEqual(gp["zero_weights"], zeros(0.6, gp["prunable_weights"]))
        fractions = [l["zeros"] / l["weights"] for l in gp["layers"]]
        self.assertGreater(max(fractions) - min(fractions), 0.05)

    def test_text_table(self):
        p = self.check_ok(["compress", "--model", self.model, "--cluster", "8", "--finetune-epochs", "0",
                           "--out", self.path("c.fdlz")] + self.LIMITS)
        self.assertIn("cluster", p.stdout)
        self.assertIn("ratio", p.stdout)

    def test_bad_input(self):
        out = self.path("out.bin")
        corrupt = self.path("corrupt.fdl")
        with open(self.model, "rb") as fh:
            data = bytearray(fh.read())
        data[40] ^= 0xFF
        with open(corrupt, "wb") as fh:
            fh.write(bytes(data))
        base = ["compress", "--out", out] + self.LIMITS
        cases = [
            (["--model", self.model, "--prune", "1"], 2, ["--prune", "range"]),
            (["--model", self.model, "--prune", "-0.1"], 2, ["--prune", "range"]),
            (["--model", self.model, "--structured", "1.5"], 2, ["--structured", "range"]),
            (["--model", self.model, "--cluster", "1"], 2, ["--cluster", "range"]),
            (["--model", self.model, "--cluster", "257"], 2, ["--cluster", "range"]),
            (["--model", self.model, "--quantize", "int4"], 2, ["--quantize", "int4"]),
            (["--model", self.model], 2, ["nothing to do"]),
            (["--prune", "0.5"], 2, ["--model", "required"]),
            (["--model", self.path("missing.fdl"), "--prune", "0.5"], 1, ["missing.fdl"]),
            (["--model", corrupt, "--prune", "0.5"], 1, ["corrupt.fdl"]),
            (["--model", self.model, "--prune", "0.5", "--distill", self.path("none.fdl")], 1, ["none.fdl"]),
            (["--model", self.model, "--quantize", "int8", "--data-dir", self.path("nodata")], 1, ["nodata"]),
            (["--model", self.model, "--prune", "0.5", "--prune-initial", "0.5"], 2, ["--prune-initial", "below"]),
            (["--model", self.model, "--prune", "0.5", "--prune-initial", "0.7"], 2, ["--prune-initial", "below"]),
            (["--model", self.model, "--prune", "0.5", "--prune-initial", "-0.1"], 2, ["--prune-initial", "range"]),
            (["--model", self.model, "--prune", "0.5", "--prune-initial", "1"], 2, ["--prune-initial", "range"]),
            (["--model", self.model, "--prune", "0.5", "--prune-initial", "x"], 2, ["--prune-initial", "not a number"]),
            (["--model", self.model, "--cluster", "8", "--prune-initial", "0.1"], 2, ["--prune-initial", "needs --prune"]),
            (["--model", self.model, "--prune", "0.5", "--prune-scope", "row"], 2, ["--prune-scope", "row"]),
            (["--model", self.model, "--prune", "0.5", "--raw-weights"], 2, ["--raw-weights", "--quantize int8"]),
            (["--model", self.model, "--cluster", "8", "--prune-scope", "global"], 2, ["--prune-scope", "needs --prune"]),
            (["--model", self.model, "--prune", "0.5", "--prune-initial", "0.1", "--finetune-epochs", "0"], 2,
             ["--prune-initial", "--finetune-epochs is 0"]),
        ]
        for extra, code, needles in cases:
            with self.subTest(args=extra):
                self.check_error(base + extra, code, "compress", needles, out=out)
        # 20 images in one batch of 64 and one epoch: one optimizer step, no ramp
        self.check_error(["compress", "--out", out, "--model", self.model, "--prune", "0.5", "--prune-initial", "0.1",
                          "--train-limit", "20", "--test-limit", "50"], 1, "compress",
                         ["--prune-initial", "1 fine-tuning step", "at least 2"], out=out)
        self.check_error(["compress", "--model", self.model, "--prune", "0.5", "--out",
                          self.path("no", "such", "dir", "x.bin")] + self.LIMITS, 1, "compress", ["does not exist"])


# ----------------------------------------------------------------- report

import csv  # noqa: E402  (the report tests' own imports, kept with them)
import io  # noqa: E402
import re  # noqa: E402
import sqlite3  # noqa: E402

REPO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FLEET_APPLICATION_ID = 0x46444C46  # 'FDLF', orchestrator/core/store.hpp


def fleet_schema():
    """db/schema.sql and the user_version it documents ("-- user_version: N")."""
    with open(os.path.join(REPO_ROOT, "db", "schema.sql")) as fh:
        sql = fh.read()
    return sql, int(re.search(r"^-- user_version: (\d+)$", sql, re.M).group(1))


REPORT_NASTY_NAME = "evil <b>\"dev\"</b> & 'x', y"
REPORT_EVENT_MESSAGE = "<script>alert(1)</script> missed, \"twice\"\nsecond line"


def write_fleet_db(path, user_version=None, wal=False):
    """A fleet database built from db/schema.sql with Python's sqlite3 (not
    the C++ store): run 1 (train, finished) with rounds 0..2, round 1
    abandoned, 3 devices (one with markup in its name, cam-3 over its budget
    in round 2), 9 cost rows, an assignment and two events; run 2 empty."""
    sql, version = fleet_schema()
    con = sqlite3.connect(path)
    con.executescript(sql)
    con.execute("PRAGMA user_version = %d" % (version if user_version is None else user_version))
    con.execute("PRAGMA application_id = %d" % FLEET_APPLICATION_ID)
    if wal:
        con.execute("PRAGMA journal_mode = WAL")
    t0 = 1700000000000
    names = ["cam-1", REPORT_NASTY_NAME, "cam-3"]
    for i, name in enumerate(names):
        con.execute("INSERT INTO devices(id, name, enrolled_at, cores, ram_bytes, storage_bytes, macs_per_second, "
                    "link_bytes_per_second, memory_budget_bytes, profile, status) "
                    "VALUES (?, ?, ?, 1, 1048576, 0, 1e9, 1e6, 262144, 'sim', 'online')", (i + 1, name, t0))
    con.execute("INSERT INTO runs(id, created_at, kind, config, seed, status, finished_at) "
                "VALUES (1, ?, 'train', ?, 42, 'finished', ?)",
                (t0, '{"strategy": "fedavg", "rounds": 3, "note": "<i>x</i>"}', t0 + 60000))
    con.execute("INSERT INTO runs(id, created_at, kind, config, seed) VALUES (2, ?, 'infer', '{}', 7)", (t0,))
    for r in range(3):
        abandoned = r == 1
        con.execute("INSERT INTO rounds(run, round, started_at, finished_at, status, selected, completed, "
                    "test_accuracy, test_loss, train_loss, round_seconds, bytes_up, bytes_down) "
                    "VALUES (1, ?, ?, ?, ?, 3, ?, ?, ?, NULL, ?, ?, ?)",
                    (r, t0 + r * 1000, t0 + r * 1000 + 800, "abandoned" if abandoned else "committed",
                     1 if abandoned else 3, None if abandoned else 0.61 + 0.1 * r,
                     None if abandoned else 1.5 / (r + 1), 0.8 + 0.1 * r, 30000 + r, 120000 + r))
        for d in range(3):
            peak = 300000 if (d == 2 and r == 2) else 100000 + d
            con.execute("INSERT INTO device_round_costs(run, round, device, bytes_up, bytes_down, compute_ms, "
                        "peak_memory_bytes, budget_bytes, energy_joules, status, examples) "
                        "VALUES (1, ?, ?, ?, ?, ?, ?, 262144, 0.5, ?, 60)",
                        (r, d + 1, 10000 * (d + 1) + r, 40000 * (d + 1) + r, 12.5 + r, peak,
                         "abandoned" if abandoned else "ok"))
        if not abandoned:
            con.execute("INSERT INTO checkpoints(run, round, parameters, parameters_crc32, state, state_crc32) "
                        "VALUES (1, ?, x'', 0, x'', 0)", (r,))
    con.execute("INSERT INTO assignments(run, device, module_name, module_kind, module_bytes, peak_memory_bytes, "
                "predicted_latency_ms, assigned_at) VALUES (1, 2, 'student-1', 'student', 5000, 90000, 3.5, ?)",
                (t0,))
    con.execute("INSERT INTO events(at, run, device, kind, message) VALUES (?, 1, 2, 'dropout', ?)",
                (t0 + 1500, REPORT_EVENT_MESSAGE))
    con.execute("INSERT INTO events(at, run, device, kind, message) VALUES (?, 1, NULL, 'finished', 'done')",
                (t0 + 60000,))
    con.commit()
    con.close()
    return path


class ReportCli(CliTestCase):
    """report: a run of a fleet database built by Python's sqlite3 from
    db/schema.sql, as HTML, CSV and JSON. The database is never written (its
    bytes, and the directory's files, stay as they were); every failure is one
    stderr line, exit 2 for usage and 1 for the rest, and writes nothing."""

    def setUp(self):
        super().setUp()
        self.db = write_fleet_db(self.path("fleet.db"))

    def report(self, fmt, out, db=None, run_id="1"):
        args = ["report", "--db", db or self.db, "--run", run_id, "--out", out]
        if fmt:
            args += ["--format", fmt]
        return self.check_ok(args)

    def check_untouched(self, before, *outs):
        after = snapshot(self.tmp)
        for o in outs:
            after.pop(os.path.relpath(o, self.tmp), None)
        self.assertEqual(after, before, "report changed the database directory")

    def test_three_formats(self):
        before = snapshot(self.tmp)
        html_out, csv_out, json_out = self.path("r.html"), self.path("r.csv"), self.path("r.json")
        p = self.report("html", html_out)
        self.assertIn("html report of run 1 (3 rounds, 3 devices", p.stdout)
        with open(html_out, encoding="utf-8") as fh:
            page = fh.read()
        self.assertTrue(page.startswith("<!DOCTYPE html>"))
        self.assertEqual(page.count("<svg"), 4)
        self.assertEqual(page.count("</svg>"), 4)
        for bad in ("<script", "http://", "https://", "<img", "<link", "url("):
            self.assertNotIn(bad, page.lower())
        self.assertNotIn(REPORT_NASTY_NAME, page)
        self.assertIn("evil &lt;b&gt;&quot;dev&quot;&lt;/b&gt; &amp; &#39;x&#39;, y", page)
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt; missed", page)
        self.assertIn("&quot;note&quot;: &quot;&lt;i&gt;x&lt;/i&gt;&quot;", page)
        self.assertEqual(page.count('class="pt"'), 2)  # rounds 0 and 2 evaluated
        self.assertEqual(page.count('class="abandoned-mark"'), 1)
        self.assertEqual(page.count('class="bar over"'), 1)
        self.assertIn("<title>cam-3: peak", page)

        self.report("csv", csv_out)
        with open(csv_out, "rb") as fh:
            raw = fh.read()
        self.assertTrue(raw.endswith(b"\r\n"))
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
        header = rows[0]
        self.assertEqual(header[0], "section")
        self.assertTrue(all(len(r) == len(header) for r in rows))
        sections = [r[0] for r in rows[1:]]
        self.assertEqual({s: sections.count(s) for s in set(sections)},
                         {"run": 1, "round": 3, "device": 3, "cost": 9, "assignment": 1, "event": 2})
        col = {name: i for i, name in enumerate(header)}
        devices = [r for r in rows if r[0] == "device"]
        self.assertEqual(devices[1][col["name"]], REPORT_NASTY_NAME)
        self.assertEqual(devices[2][col["rounds_over_budget"]], "1")
        events = [r for r in rows if r[0] == "event"]
        self.assertEqual(events[0][col["text"]], REPORT_EVENT_MESSAGE)
        costs = [r for r in rows if r[0] == "cost"]
        self.assertEqual([c[col["test_accuracy"]] for c in costs[3:6]], ["", "", ""])  # round 1 abandoned
        self.assertEqual(float(costs[6][col["test_accuracy"]]), 0.61 + 0.1 * 2)

        self.report("json", json_out)
        with open(json_out, encoding="utf-8") as fh:
            obj = strict_json(fh.read())
        self.assertEqual(obj["run"]["id"], 1)
        self.assertEqual(obj["run"]["seed"], 42)
        self.assertEqual(obj["run"]["config"], {"strategy": "fedavg", "rounds": 3, "note": "<i>x</i>"})
        self.assertEqual([r["status"] for r in obj["rounds"]], ["committed", "abandoned", "committed"])
        self.assertIsNone(obj["rounds"][1]["test_accuracy"])
        self.assertEqual(obj["rounds"][2]["test_accuracy"], 0.61 + 0.1 * 2)  # exact
        self.assertEqual(obj["rounds"][2]["round_seconds"], 0.8 + 0.1 * 2)
        self.assertEqual([d["name"] for d in obj["devices"]], ["cam-1", REPORT_NASTY_NAME, "cam-3"])
        self.assertEqual(len(obj["costs"]), 9)
        self.assertEqual(obj["events"][0]["message"], REPORT_EVENT_MESSAGE)
        self.assertEqual(obj["assignments"][0]["module_name"], "student-1")

        # the database and its directory are as they were (no -wal, -shm, -journal)
        self.check_untouched(before, html_out, csv_out, json_out)

    def test_format_from_extension_and_replacing_out(self):
        out = self.path("report.JSON")
        with open(out, "w") as fh:
            fh.write("old")
        self.report(None, out)
        with open(out) as fh:
            self.assertEqual(strict_json(fh.read())["run"]["kind"], "train")
        self.assertFalse(os.path.exists(out + ".tmp"))
        # an empty run renders too
        self.report(None, self.path("empty.csv"), run_id="2")
        with open(self.path("empty.csv"), newline="") as fh:
            self.assertEqual([r[0] for r in csv.reader(fh)], ["section", "run"])

    def test_wal_database_stays_unchanged(self):
        db = write_fleet_db(self.path("wal.db"), wal=True)
        with open(db, "rb") as fh:
            self.assertEqual(fh.read(20)[18:20], b"\x02\x02")  # WAL mode in the header
        before = snapshot(self.tmp)
        out = self.path("r.html")
        self.report("html", out, db=db)
        self.check_untouched(before, out)

    def test_errors(self):
        out = self.path("r.html")
        garbage = self.path("garbage.db")
        with open(garbage, "wb") as fh:
            fh.write(b"this is not an SQLite file at all" * 64)
        empty = self.path("empty.db")
        open(empty, "wb").close()
        _, version = fleet_schema()
        newer = write_fleet_db(self.path("newer.db"), user_version=version + 1)
        foreign = self.path("foreign.db")
        con = sqlite3.connect(foreign)
        con.execute("PRAGMA application_id = 1234")
        con.execute("CREATE TABLE t(x)")
        con.close()
        db = self.db
        cases = [
            (["--db", self.path("nosuch.db"), "--run", "1"], 1, [self.path("nosuch.db"), "no such fleet database"]),
            (["--db", garbage, "--run", "1"], 1, [garbage, "not an SQLite database"]),
            (["--db", empty, "--run", "1"], 1, [empty, "not a fleetdl database"]),
            (["--db", foreign, "--run", "1"], 1, [foreign, "not a fleetdl database"]),
            (["--db", newer, "--run", "1"], 1,
             [newer, "schema version %d is newer" % (version + 1), "use a newer fleetdl"]),
            (["--db", self.tmp, "--run", "1"], 1, [self.tmp, "not a regular file"]),
            (["--db", db, "--run", "7"], 1, [db, "no run 7"]),
            (["--db", db, "--run", "1", "--format", "xml"], 2, ["--format", "unknown format 'xml'"]),
            (["--db", db, "--run", "x"], 2, ["--run", "not an integer"]),
            (["--db", db, "--run", "0"], 2, ["--run", "out of range"]),
            (["--run", "1"], 2, ["--db", "required"]),
            (["--db", db], 2, ["--run", "required"]),
            (["--db", db, "--run", "1", "--json"], 2, ["unknown flag", "--json"]),
            (["--db", db, "--run", "1", "extra"], 2, ["unexpected argument 'extra'"]),
        ]
        for extra, code, needles in cases:
            with self.subTest(args=extra):
                self.check_error(["report", "--out", out] + extra, code, "report", needles, out=out)
        self.check_error(["report", "--db", db, "--run", "1"], 2, "report", ["--out", "required"])
        self.check_error(["report", "--db", db, "--run", "1", "--out", self.path("r.txt")], 2, "report",
                         ["--format", "required", "r.txt"])
        self.check_error(["report", "--db", db, "--run", "1", "--out", self.path("nodir", "r.html")], 1, "report",
                         [self.path("nodir"), "does not exist"])
        os.mkdir(self.path("adir"))
        self.check_error(["report", "--db", db, "--run", "1", "--format", "csv", "--out", self.path("adir")], 1,
                         "report", [self.path("adir"), "is a directory"])


def free_ports(n):
    """n TCP ports free on 127.0.0.1 right now (the kernel's choice)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def free_udp_port():
    """A UDP port free on 0.0.0.0 right now (the kernel's choice)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class FleetCli(CliTestCase):
    """fleet up / run / down on loopback with real agents (fleetdl-agent, next
    to fleetdl in the build tree), real TLS and a real SQLite file: 8 agents
    train 2 rounds; every cost row equals the frame sizes the agents logged
    on their side; bad configs, a newer database and a module larger than
    every device each give one line and leave the database as it was."""

    SMALL = {
        "seed": 3, "rounds": 2, "clients": 8, "model": "lenet300_100",
        "dataset": {"train_limit": 2400, "test_limit": 300},
        "partition": {"kind": "iid"},
        "client": {"lr": 0.05, "momentum": 0.9, "epochs": 1, "batch": 32},
        "strategy": {"name": "fedavg"},
        "codec": {"kind": "q8"},
    }

    def setUp(self):
        super().setUp()
        self.db = self.path("fleet.db")
        self.enroll_port, self.fleet_port = free_ports(2)
        self.discovery_port = free_udp_port()
        self.up = False

    def tearDown(self):
        if self.up:
            run(["fleet", "down", "--db", self.db])
        super().tearDown()

    def config(self, **fleet):
        c = json.loads(json.dumps(self.SMALL))
        f = {"enroll_port": self.enroll_port, "fleet_port": self.fleet_port, "discovery": False,
             "wait_seconds": 60, "round_deadline_seconds": 120, "heartbeat_ms": 500}
        f.update(fleet)
        c["fleet"] = f
        return c

    def write_config(self, c, name="run.json"):
        path = self.path(name)
        with open(path, "w") as fh:
            json.dump(c, fh)
        return path

    def fleet_up(self, n, profiles=None, discovery=False):
        """n agents that connect to the test's ports, or with discovery=True
        announce to 127.0.0.1 on the test's discovery port until invited."""
        args = ["fleet", "up", "--devices", str(n), "--db", self.db]
        if discovery:
            args += ["--discovery-port", str(self.discovery_port)]
        else:
            args += ["--enroll-port", str(self.enroll_port), "--fleet-port", str(self.fleet_port)]
        if profiles is not None:
            pf = self.path("profiles.json")
            with open(pf, "w") as fh:
                json.dump(profiles, fh)
            args += ["--profiles", pf]
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        self.up = True
        return p

    def agent_log_sizes(self):
        """{(agent name, round): (train_round bytes, update bytes)} from the agents' logs."""
        sizes = {}
        root = self.db + ".agents"
        for name in sorted(os.listdir(root)):
            log = os.path.join(root, name, "agent.log")
            if not os.path.isfile(log):
                continue
            with open(log) as fh:
                for line in fh:
                    m = re.search(r"round (\d+): (train_round received|update sent), (\d+) bytes", line)
                    if m:
                        key = (name, int(m.group(1)))
                        down, up = sizes.get(key, (None, None))
                        if m.group(2).startswith("train"):
                            down = int(m.group(3))
                        else:
                            up = int(m.group(3))
                        sizes[key] = (down, up)
        return sizes

    def test_eight_agents_train_and_costs_equal_the_bytes_sent(self):
        # the agents know no address: they announce on UDP, fleet run invites them
        self.fleet_up(8, [{"name": "fast", "budget_bytes": 64 << 20}, {"name": "slow", "budget_bytes": 32 << 20,
                                                                       "slowdown": 2}], discovery=True)
        cfg = self.write_config(self.config(discovery=True, discovery_port=self.discovery_port))
        args = ["fleet", "run", "--config", cfg, "--db", self.db, "--json"]
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        lines = [json.loads(l) for l in p.stdout.splitlines()]
        self.assertEqual([l.get("round") for l in lines[:-1]], [1, 2], describe(args, p))
        self.assertEqual(lines[-1]["run"], 1)
        for r in lines[:-1]:
            self.assertEqual((r["status"], r["selected"], r["completed"]), ("committed", 8, 8), describe(args, p))
            self.assertGreater(r["accuracy"], 0.3)
        con = sqlite3.connect(self.db)
        try:
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            self.assertEqual(con.execute("SELECT status FROM runs WHERE id = 1").fetchone()[0], "finished")
            rows = con.execute("SELECT d.name, c.round, c.bytes_down, c.bytes_up, c.status, c.examples "
                               "FROM device_round_costs c JOIN devices d ON d.id = c.device "
                               "WHERE c.run = 1 ORDER BY c.round, d.name").fetchall()
            totals = con.execute("SELECT round, bytes_up, bytes_down FROM rounds WHERE run = 1 ORDER BY round").fetchall()
            checkpoints = con.execute("SELECT COUNT(*) FROM checkpoints WHERE run = 1").fetchone()[0]
        finally:
            con.close()
        self.assertEqual(len(rows), 16)
        self.assertEqual(checkpoints, 2)
        logged = self.agent_log_sizes()
        for name, rnd, down, up, status, examples in rows:
            self.assertEqual(status, "ok")
            self.assertEqual(examples, 2400 // 8)
            # what the orchestrator recorded == what the agent counted on its side
            self.assertEqual(logged.get((name, rnd)), (down, up), "%s round %d" % (name, rnd))
        for rnd, up, down in totals:
            self.assertEqual(up, sum(r[3] for r in rows if r[1] == rnd))
            self.assertEqual(down, sum(r[2] for r in rows if r[1] == rnd))
        # every agent was invited to the orchestrator's ports over UDP
        root = self.db + ".agents"
        for name in sorted(os.listdir(root)):
            if os.path.isdir(os.path.join(root, name)):
                with open(os.path.join(root, name, "agent.log")) as fh:
                    text = fh.read()
                self.assertIn("announcing (not enrolled) to 127.0.0.1:%d" % self.discovery_port, text, name)
                self.assertIn("orchestrator 127.0.0.1, enrollment port %d, fleet port %d" %
                              (self.enroll_port, self.fleet_port), text, name)

    def pids(self):
        with open(self.db + ".agents/pids") as fh:
            return [int(x) for x in fh.read().split()]

    def wait_for_log(self, needle, count, timeout):
        """Until `count` agent logs contain `needle` (or the timeout)."""
        root = self.db + ".agents"
        end = time.time() + timeout
        while time.time() < end:
            hits = []
            for name in sorted(os.listdir(root)):
                log = os.path.join(root, name, "agent.log")
                if os.path.isfile(log):
                    with open(log) as fh:
                        if needle in fh.read():
                            hits.append(name)
            if len(hits) >= count:
                return hits
            time.sleep(0.05)
        self.fail("fewer than %d agents logged %r within %s s" % (count, needle, timeout))

    def test_agents_killed_mid_round(self):
        """30% of the agents SIGKILLed during round 2: every round is committed
        with the survivors or recorded as abandoned, none outlives its deadline,
        and the killed devices are recorded as dropped."""
        self.fleet_up(10, [{"name": "slow", "budget_bytes": 64 << 20, "slowdown": 4}])
        c = self.config(round_deadline_seconds=20)
        c.update({"clients": 10, "rounds": 3, "dataset": {"train_limit": 6000, "test_limit": 300}})
        cfg = self.write_config(c)
        args = ["fleet", "run", "--config", cfg, "--db", self.db, "--json"]
        proc = subprocess.Popen([FLEETDL] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            self.wait_for_log("round 2: train_round received", 10, 120)
            victims = self.pids()[:3]
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        self.assertEqual(proc.returncode, 0, "stdout %r\nstderr %r" % (out[-2000:], err[-2000:]))
        rounds = [json.loads(l) for l in out.splitlines() if '"round"' in l]
        self.assertEqual([r["round"] for r in rounds], [1, 2, 3])
        for r in rounds:
            self.assertIn(r["status"], ("committed", "abandoned"))
            self.assertLess(r["round_seconds"], 20 + 5, r)
        self.assertEqual(rounds[1]["completed"], 7, rounds[1])
        con = sqlite3.connect(self.db)
        try:
            dropped = con.execute("SELECT COUNT(*) FROM device_round_costs WHERE run = 1 AND round = 2 "
                                  "AND status = 'dropped'").fetchone()[0]
            third = con.execute("SELECT selected, completed FROM rounds WHERE run = 1 AND round = 3").fetchone()
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        finally:
            con.close()
        self.assertEqual(dropped, 3)
        self.assertEqual(third, (7, 7))  # only the survivors are online

    def final_parameters(self, run_id, rounds):
        con = sqlite3.connect(self.db)
        try:
            row = con.execute("SELECT parameters FROM checkpoints WHERE run = ? AND round = ?", (run_id, rounds)).fetchone()
        finally:
            con.close()
        self.assertIsNotNone(row, "run %d has no checkpoint of round %d" % (run_id, rounds))
        return bytes(row[0])

    def kill_after_commits(self, args, run_id, n):
        """Start `fleetdl ARGS` (a fleet run) and kill -9 it as soon as run
        `run_id` has `n` committed rounds."""
        proc = subprocess.Popen([FLEETDL] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            end = time.time() + 120
            committed = 0
            while time.time() < end and committed < n:
                con = sqlite3.connect(self.db, timeout=10)
                try:
                    committed = con.execute("SELECT COUNT(*) FROM rounds WHERE run = ? AND status = 'committed'",
                                            (run_id,)).fetchone()[0]
                except sqlite3.OperationalError:
                    committed = 0  # the schema is not there yet
                finally:
                    con.close()
                time.sleep(0.02)
            self.assertGreaterEqual(committed, n, "run %d committed fewer than %d rounds" % (run_id, n))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    def resume_finishes(self, run_id, rounds):
        """`fleet resume` after a kill: it exits 0, the database passes
        integrity_check, and run `run_id` is finished with `rounds` committed."""
        time.sleep(1.0)  # the agents notice the lost connection
        args = ["fleet", "resume", "--db", self.db, "--json"]
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        con = sqlite3.connect(self.db)
        try:
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            self.assertEqual(con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0], "finished")
            self.assertEqual(con.execute("SELECT COUNT(*) FROM rounds WHERE run = ? AND status = 'committed'",
                                         (run_id,)).fetchone()[0], rounds)
        finally:
            con.close()

    def test_kill_orchestrator_then_resume(self):
        """kill -9 of `fleet run` after round 1 is committed, then `fleet
        resume`: the database passes integrity_check and the final parameters
        equal those of an uninterrupted run with the same seed and devices."""
        self.kill_then_resume({"name": "fedavg"})

    def test_kill_then_resume_with_server_state(self):
        """The same with strategies that carry server state from round to
        round, checkpointed with each round: FedAdam's moments and step count,
        FedAvgM's momentum; central DP's noise stream, accountant and (adaptive)
        clipping norm around its inner strategy's state; and with HeteroFL,
        whose devices' widths resume reads back from the assignments."""
        for label, strategy, dp in (
                ("fedadam", {"name": "fedadam", "eta": 0.01}, None),
                ("fedavgm", {"name": "fedavgm", "server_momentum": 0.9}, None),
                ("heterofl", {"name": "heterofl"}, None),
                ("dp-fixed", {"name": "fedavg"}, {"mode": "fixed", "noise_multiplier": 0.5, "clipping_norm": 1.0}),
                ("dp-adaptive", {"name": "fedadam", "eta": 0.01},
                 {"mode": "adaptive", "noise_multiplier": 0.5, "clipped_count_stddev": 2.0})):
            with self.subTest(label):
                if self.up:
                    run(["fleet", "down", "--db", self.db])
                    self.up = False
                self.db = self.path("fleet-%s.db" % label)
                self.kill_then_resume(strategy, dp)

    def kill_then_resume(self, strategy, dp=None):
        # (HeteroFL: two devices hold only the width-0.5 sub-model, which resume reads back from the assignments)
        self.fleet_up(4, [{"name": "fast", "budget_bytes": 64 << 20}] if strategy["name"] != "heterofl" else
                      [{"name": "fast", "budget_bytes": 64 << 20}, {"name": "small", "budget_bytes": 5 << 19}])
        c = self.config(heartbeat_ms=300)
        c.update({"clients": 4, "rounds": 3, "dataset": {"train_limit": 1600, "test_limit": 200},
                  "strategy": strategy})
        if dp:
            c["dp"] = dp
        cfg = self.write_config(c)
        args = ["fleet", "run", "--config", cfg, "--db", self.db, "--json"]
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        reference = self.final_parameters(1, 3)

        self.kill_after_commits(args, 2, 1)
        con = sqlite3.connect(self.db)
        try:
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            self.assertEqual(con.execute("SELECT status FROM runs WHERE id = 2").fetchone()[0], "running")
        finally:
            con.close()
        time.sleep(1.0)  # the agents notice the lost connection
        args = ["fleet", "resume", "--db", self.db, "--json"]
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        self.assertEqual(json.loads(p.stdout.splitlines()[-1])["run"], 2)
        self.assertEqual(self.final_parameters(2, 3), reference, "resumed run differs from the uninterrupted one")
        con = sqlite3.connect(self.db)
        try:
            if dp:  # the privacy spent after the last round (resumed from the checkpointed accountant) is the same
                eps = [con.execute("SELECT message FROM events WHERE run = ? AND kind = 'privacy' ORDER BY id",
                                   (r,)).fetchall() for r in (1, 2)]
                self.assertEqual(len(eps[0]), 3)
                self.assertRegex(eps[0][-1][0], r"^round 3: central DP epsilon [0-9.e+]+ at delta .*\(3 accounted rounds\)$")
                self.assertEqual(eps[1][-1], eps[0][-1])
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            self.assertEqual(con.execute("SELECT status FROM runs WHERE id = 2").fetchone()[0], "finished")
        finally:
            con.close()

    def test_local_dp_and_topk_fraction(self):
        """Local DP and a top-k fraction other than 1% travel in train_round:
        each update is clipped and noised on the device, then 5% of its
        coordinates are sent (a bitmap of d bits plus k floats); the privacy
        spent is recorded per round and equals what `fl simulate` reports for
        the same participation."""
        self.fleet_up(4, [{"name": "fast", "budget_bytes": 64 << 20}])
        c = self.config()
        c.update({"clients": 4, "rounds": 2, "dataset": {"train_limit": 1600, "test_limit": 200},
                  "codec": {"kind": "topk", "topk_fraction": 0.05},
                  "dp": {"mode": "local", "noise_multiplier": 1.0, "clipping_norm": 1.0}})
        cfg = self.write_config(c)
        args = ["fleet", "run", "--config", cfg, "--db", self.db, "--json"]
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        sim_cfg = {k: v for k, v in c.items() if k != "fleet"}
        sim_path = self.write_config(sim_cfg, "sim.json")
        q = run(["fl", "simulate", "--config", sim_path, "--json"])
        self.assertEqual(q.returncode, 0, describe(["fl", "simulate"], q))
        sim_eps = [json.loads(l)["epsilon"] for l in q.stdout.splitlines() if '"round"' in l]
        con = sqlite3.connect(self.db)
        try:
            events = [m for (m,) in con.execute("SELECT message FROM events WHERE kind = 'privacy' ORDER BY id")]
            ups = [u for (u,) in con.execute("SELECT bytes_up FROM device_round_costs WHERE run = 1")]
        finally:
            con.close()
        self.assertEqual(len(events), 2, events)
        eps = [float(re.search(r"epsilon ([0-9.e+-]+) at delta", e).group(1)) for e in events]
        self.assertEqual(len(sim_eps), 2)
        for mine, theirs in zip(eps, sim_eps):
            self.assertAlmostEqual(mine, theirs, delta=1e-4 * theirs)
        self.assertLess(eps[0], eps[1])
        # d = 266,610 parameters, k = 13,331: a bitmap of 33,327 bytes plus 53,324 bytes of values, in one frame
        self.assertEqual(len(ups), 8)
        for u in ups:
            self.assertGreater(u, 33327 + 53324)
            self.assertLess(u, 33327 + 53324 + 400)

    def test_heterofl_sub_models_by_budget(self):
        """HeteroFL on a fleet: each device trains the widest sub-model its
        budget holds (2 devices the whole lenet300_100, 2 with 2.5 MiB the
        width-0.5 one); the assignments name the widths, the small devices
        receive less, and every round commits with all 4."""
        self.fleet_up(4, [{"name": "big", "budget_bytes": 64 << 20}, {"name": "small", "budget_bytes": 5 << 19}])
        c = self.config()
        c.update({"clients": 4, "rounds": 2, "dataset": {"train_limit": 1600, "test_limit": 200},
                  "strategy": {"name": "heterofl"}})
        c["fleet"]["heterofl_widths"] = [1, 0.5, 0.25]
        cfg = self.write_config(c)
        args = ["fleet", "run", "--config", cfg, "--db", self.db, "--json"]
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        rounds = [json.loads(l) for l in p.stdout.splitlines() if '"round"' in l]
        self.assertEqual([(r["status"], r["selected"], r["completed"]) for r in rounds], [("committed", 4, 4)] * 2)
        self.assertGreater(rounds[-1]["accuracy"], 0.3)
        con = sqlite3.connect(self.db)
        try:
            assigned = dict(con.execute("SELECT d.name, a.module_name FROM assignments a JOIN devices d ON d.id = a.device "
                                        "WHERE a.run = 1").fetchall())
            kinds = dict(con.execute("SELECT d.name, a.module_kind FROM assignments a JOIN devices d ON d.id = a.device "
                                     "WHERE a.run = 1").fetchall())
            down = dict(con.execute("SELECT d.name, c.bytes_down FROM device_round_costs c JOIN devices d ON d.id = c.device "
                                    "WHERE c.run = 1 AND c.round = 2").fetchall())
        finally:
            con.close()
        self.assertEqual(sorted(assigned), ["big-000", "big-002", "small-001", "small-003"])
        for name, module in assigned.items():
            self.assertTrue(module.endswith("@1" if name.startswith("big") else "@0.5"), (name, module))
            self.assertEqual(kinds[name], "whole" if name.startswith("big") else "segment")
        # the width-0.5 share: 784x150+150 + 150x50+50 + 50x10+10 = 125,810 of 266,610 parameters
        for name in ("small-001", "small-003"):
            self.assertGreater(down[name], 125810 * 4)
            self.assertLess(down[name], 125810 * 4 + 600)
        for name in ("big-000", "big-002"):
            self.assertGreater(down[name], 266610 * 4)
            self.assertLess(down[name], 266610 * 4 + 600)

    def test_oort_selection(self):
        """Oort on a fleet: 2 of 4 devices per round, chosen from the losses
        and wall-clock round times the devices' updates showed; every round
        commits with the 2 it chose."""
        self.fleet_up(4, [{"name": "fast", "budget_bytes": 64 << 20}, {"name": "slow", "budget_bytes": 64 << 20,
                                                                       "slowdown": 3}])
        c = self.config()
        c.update({"clients": 4, "rounds": 4, "dataset": {"train_limit": 1600, "test_limit": 200},
                  "selection": {"policy": "oort", "clients_per_round": 2}})
        cfg = self.write_config(c)
        args = ["fleet", "run", "--config", cfg, "--db", self.db, "--json"]
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        rounds = [json.loads(l) for l in p.stdout.splitlines() if '"round"' in l]
        self.assertEqual([(r["round"], r["status"], r["selected"], r["completed"]) for r in rounds],
                         [(i, "committed", 2, 2) for i in range(1, 5)], describe(args, p))
        con = sqlite3.connect(self.db)
        try:
            per_round = con.execute("SELECT round, COUNT(*), COUNT(DISTINCT device) FROM device_round_costs "
                                    "WHERE run = 1 AND status = 'ok' GROUP BY round ORDER BY round").fetchall()
        finally:
            con.close()
        self.assertEqual(per_round, [(i, 2, 2) for i in range(1, 5)])

    def test_oort_resume(self):
        """kill -9 of an Oort run after a committed round, then `fleet resume`:
        the selector's per-device statistics and exploration rate come back
        from the checkpoint, so after 4 rounds epsilon has decayed 4 times
        (a selector started afresh on resume would have decayed only for the
        rounds after it) and every device has a report. The round times are
        measured, so the parameters are not compared with another run."""
        self.fleet_up(4, [{"name": "fast", "budget_bytes": 64 << 20}])
        c = self.config(heartbeat_ms=300)
        c.update({"clients": 4, "rounds": 4, "dataset": {"train_limit": 1600, "test_limit": 200},
                  "selection": {"policy": "oort", "clients_per_round": 2}})
        cfg = self.write_config(c)
        args = ["fleet", "run", "--config", cfg, "--db", self.db, "--json"]
        self.kill_after_commits(args, 1, 2)
        self.resume_finishes(1, 4)
        con = sqlite3.connect(self.db)
        try:
            state = bytes(con.execute("SELECT state FROM checkpoints WHERE run = 1 AND round = 4").fetchone()[0])
        finally:
            con.close()
        # Oort's state: epsilon f64, n u64, then n x (shard u64, utility f64, duration f64); FedAvg adds nothing
        eps, n = struct.unpack_from("<dQ", state, 0)
        self.assertEqual(len(state), 16 + 24 * n)
        want = 0.9
        for _ in range(4):
            want = max(want * 0.98, 0.2)
        self.assertEqual(eps, want, "Oort's exploration rate was not restored on resume")
        self.assertEqual(n, 4)
        shards = [struct.unpack_from("<Q", state, 16 + 24 * i)[0] for i in range(n)]
        self.assertEqual(shards, [0, 1, 2, 3])

    def fedbuff_state(self, run_id, rnd):
        """FedBuff's checkpointed state: version, dropped, accepted, buffered (u64 each)."""
        con = sqlite3.connect(self.db)
        try:
            state = bytes(con.execute("SELECT state FROM checkpoints WHERE run = ? AND round = ?",
                                      (run_id, rnd)).fetchone()[0])
        finally:
            con.close()
        self.assertEqual(len(state), 32, "a committed FedBuff step leaves its buffer empty")
        return struct.unpack("<4Q", state)

    def fedbuff_config(self, rounds):
        c = self.config(heartbeat_ms=300)
        c.update({"clients": 4, "rounds": rounds, "dataset": {"train_limit": 1600, "test_limit": 200},
                  "strategy": {"name": "fedbuff", "buffer_size": 2, "max_staleness": 1}})
        return self.write_config(c)

    def test_fedbuff_asynchronous(self):
        """FedBuff on a fleet: 4 devices (2 of them 3x slower) train without
        rounds; every 2 accepted updates make one server step, committed as a
        round. Updates more than 1 version old are dropped as stale. Each
        device's recorded downloads equal the train_round frames it logged,
        and its recorded uploads are whole update frames it logged."""
        self.fleet_up(4, [{"name": "fast", "budget_bytes": 64 << 20},
                          {"name": "slow", "budget_bytes": 64 << 20, "slowdown": 3}])
        args = ["fleet", "run", "--config", self.fedbuff_config(5), "--db", self.db, "--json"]
        p = run(args)
        self.assertEqual(p.returncode, 0, describe(args, p))
        rounds = [json.loads(l) for l in p.stdout.splitlines() if '"round"' in l]
        self.assertEqual([(r["round"], r["status"], r["completed"]) for r in rounds],
                         [(i, "committed", 2) for i in range(1, 6)], describe(args, p))
        self.assertGreater(rounds[-1]["accuracy"], 0.3)
        version, dropped, accepted, buffered = self.fedbuff_state(1, 5)
        self.assertEqual((version, accepted, buffered), (5, 10, 0))
        con = sqlite3.connect(self.db)
        try:
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            stale = con.execute("SELECT COUNT(*) FROM events WHERE run = 1 AND kind = 'stale'").fetchone()[0]
            other = con.execute("SELECT kind, message FROM events WHERE kind IN "
                                "('duplicate', 'late', 'straggler', 'rejected', 'abandoned')").fetchall()
            rows = con.execute("SELECT d.name, c.bytes_down, c.bytes_up FROM device_round_costs c "
                               "JOIN devices d ON d.id = c.device WHERE c.run = 1").fetchall()
            totals = con.execute("SELECT SUM(bytes_up), SUM(bytes_down) FROM rounds WHERE run = 1").fetchone()
        finally:
            con.close()
        self.assertEqual(stale, dropped, "every update dropped as stale is recorded as a 'stale' event")
        self.assertEqual(other, [], "a device's second task in one round is a new task, not a duplicate")
        self.assertEqual(totals, (sum(r[2] for r in rows), sum(r[1] for r in rows)))
        root = self.db + ".agents"
        agents = [n for n in sorted(os.listdir(root)) if os.path.isfile(os.path.join(root, n, "agent.log"))]
        self.assertEqual(len(agents), 4)
        logs = {}
        end = time.time() + 30  # every agent has logged the run's bye, so every frame before it too
        while time.time() < end:
            for agent in agents:
                with open(os.path.join(root, agent, "agent.log")) as fh:
                    logs[agent] = fh.read()
            if all("bye (code" in t for t in logs.values()):
                break
            time.sleep(0.1)
        for agent in agents:
            text = logs[agent]
            self.assertIn("bye (code", text, agent)
            # every frame, however many tasks a device had in one round
            downs = [int(b) for b in re.findall(r"round \d+: train_round received, (\d+) bytes", text)]
            ups = [int(b) for b in re.findall(r"round \d+: update sent, (\d+) bytes", text)]
            recorded_down = sum(r[1] for r in rows if r[0] == agent)
            recorded_up = sum(r[2] for r in rows if r[0] == agent)
            self.assertEqual(recorded_down, sum(downs), agent)
            # (an update still in flight when the last step committed is logged but not counted)
            self.assertEqual(len(set(ups)), 1 if ups else 0, "q8 updates of one model have one size")
            if ups:
                self.assertEqual(recorded_up % ups[0], 0, agent)
                self.assertLessEqual(recorded_up // ups[0], len(ups), agent)
        self.assertTrue(any(r[2] > 0 for r in rows))

    def test_fedbuff_kill_then_resume(self):
        """kill -9 of a FedBuff run after 2 committed steps, then `fleet
        resume`: FedBuff's version and counters come back from the
        checkpoint and the run ends at version 4 with 8 accepted updates."""
        self.fleet_up(4, [{"name": "fast", "budget_bytes": 64 << 20}])
        args = ["fleet", "run", "--config", self.fedbuff_config(4), "--db", self.db, "--json"]
        self.kill_after_commits(args, 1, 2)
        self.resume_finishes(1, 4)
        version, _, accepted, buffered = self.fedbuff_state(1, 4)
        self.assertEqual((version, accepted, buffered), (4, 8, 0))

    def test_module_larger_than_every_device(self):
        self.fleet_up(2, [{"name": "tiny", "budget_bytes": 65536}])
        c = self.config(wait_seconds=3)
        c["clients"] = 2
        cfg = self.write_config(c)
        # (its progress lines go to stdout; the error is the one stderr line)
        args = ["fleet", "run", "--config", cfg, "--db", self.db]
        p = run(args)
        self.assertEqual(p.returncode, 1, describe(args, p))
        self.assertEqual(p.stderr.count("\n"), 1, describe(args, p))
        self.assertTrue(p.stderr.startswith("fleetdl fleet run: module 'lenet300_100' needs "), describe(args, p))
        self.assertIn("more than every connected device's budget (2 connected)", p.stderr)
        con = sqlite3.connect(self.db)
        try:  # no run was recorded
            self.assertEqual(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0], 0)
            kinds = [k for (k,) in con.execute("SELECT kind FROM events WHERE kind = 'too_small'")]
        finally:
            con.close()
        self.assertEqual(len(kinds), 2)

    def test_bad_configs_write_nothing(self):
        rows = [
            ("unknown top-level key", {"bogus": 1}, None, ["bogus", "unknown key"]),
            ("unknown fleet key", {}, {"wait": 3}, ["fleet.wait", "unknown key"]),
            ("impossible deadline", {}, {"round_deadline_seconds": -1}, ["fleet.round_deadline_seconds", "> 0"]),
            ("endless deadline", {}, {"round_deadline_seconds": 1e10}, ["fleet.round_deadline_seconds", "at most 1e6"]),
            ("bad port", {}, {"fleet_port": 70000}, ["fleet.fleet_port"]),
            ("bad bind", {}, {"bind": "not-an-ip"}, ["fleet.bind", "not-an-ip"]),
            ("zero rounds", {"rounds": 0}, None, ["rounds"]),
            ("fedbuff with local DP", {"strategy": {"name": "fedbuff"}, "dp": {"mode": "local", "noise_multiplier": 0.5, "clipping_norm": 1.0}},
             None, ["dp.mode", "fedbuff"]),
            ("fedbuff with central DP", {"strategy": {"name": "fedbuff"}, "dp": {"mode": "fixed", "noise_multiplier": 0.5, "clipping_norm": 1.0}},
             None, ["dp.mode", "fedbuff"]),
            ("fedbuff with oort", {"strategy": {"name": "fedbuff"}, "selection": {"policy": "oort"}}, None,
             ["selection.policy", "fedbuff"]),
            ("fedbuff buffer of 0", {"strategy": {"name": "fedbuff", "buffer_size": 0}}, None, ["strategy.buffer_size"]),
            ("fedbuff negative staleness", {"strategy": {"name": "fedbuff", "max_staleness": -1}}, None,
             ["strategy.max_staleness"]),
            ("widths without heterofl", {}, {"heterofl_widths": [1, 0.5]}, ["fleet.heterofl_widths", "heterofl only"]),
            ("widths not decreasing", {"strategy": {"name": "heterofl"}}, {"heterofl_widths": [0.5, 1]},
             ["fleet.heterofl_widths", "strictly decreasing"]),
            ("width zero", {"strategy": {"name": "heterofl"}}, {"heterofl_widths": [1, 0]},
             ["fleet.heterofl_widths", "(0, 1]"]),
        ]
        for what, top, fleet, needles in rows:
            with self.subTest(what):
                c = self.config(**(fleet or {}))
                c.update(top)
                cfg = self.write_config(c, "bad.json")
                self.check_error(["fleet", "run", "--config", cfg, "--db", self.db], 2, "fleet run", [cfg] + needles)
                self.assertFalse(os.path.exists(self.db), what + ": the database was created")

    def test_fleet_commands_reject_garbage(self):
        """Bad --profiles files, flags and databases: one line naming the culprit;
        no database, agent directory or agent process appears."""
        rows = [
            ("not an array", {"name": "x"}, ["must be a non-empty JSON array"]),
            ("empty array", [], ["must be a non-empty JSON array"]),
            ("unknown key", [{"name": "a", "ram": 1}], ["[0].ram", "unknown key"]),
            ("bad name", [{"name": "a b"}], ["[0].name"]),
            ("missing name", [{"slowdown": 2}], ["[0].name", "required"]),
            ("tiny budget", [{"name": "a", "budget_bytes": 10}], ["[0].budget_bytes", "[1024, 1e15]"]),
            ("slowdown below 1", [{"name": "a", "slowdown": 0.5}], ["[0].slowdown", "[1, 1000]"]),
            ("dropout 1", [{"name": "a", "dropout": 1}], ["[0].dropout", "[0, 1)"]),
            ("negative bandwidth", [{"name": "a", "bandwidth_bytes_per_second": -1}], ["[0].bandwidth_bytes_per_second"]),
            ("string number", [{"name": "a", "slowdown": "2"}], ["[0].slowdown", "must be a number"]),
        ]
        pf = self.path("profiles.json")
        for what, doc, needles in rows:
            with self.subTest(what):
                with open(pf, "w") as fh:
                    json.dump(doc, fh)
                self.check_error(["fleet", "up", "--devices", "2", "--db", self.db, "--profiles", pf], 2, "fleet up",
                                 [pf] + needles)
                self.assertFalse(os.path.exists(self.db), what)
                self.assertFalse(os.path.exists(self.db + ".agents"), what)
        self.check_error(["fleet", "up", "--db", self.db], 2, "fleet up", ["--devices N is required"])
        self.check_error(["fleet", "up", "--devices", "0", "--db", self.db], 2, "fleet up", ["--devices", "out of range"])
        self.check_error(["fleet", "up", "--devices", "2", "--db", self.db, "--discovery-port", "47900",
                          "--enroll-port", "47901"], 2, "fleet up", ["--discovery-port cannot be combined"])
        self.check_error(["fleet", "up", "--devices", "2", "--db", self.db, "--discovery-port", "0"], 2, "fleet up",
                         ["--discovery-port", "out of range"])
        self.check_error(["fleet", "run", "--db", self.db], 2, "fleet run", ["--config FILE is required"])
        self.check_error(["fleet", "launch"], 2, "fleet", ["unknown subcommand 'launch'"])
        self.check_error(["fleet", "resume", "--db", self.db], 1, "fleet resume", [self.db, "no such file"])
        self.assertFalse(os.path.exists(self.db))
        p = run(["fleet", "token", "--db", self.db, "--count", "2"])
        self.assertEqual(p.returncode, 0, describe(["fleet", "token"], p))
        self.assertEqual(len([l for l in p.stdout.splitlines() if re.fullmatch(r"[A-Za-z0-9._-]+:[0-9a-f]{64}", l)]), 2)
        self.check_error(["fleet", "resume", "--db", self.db], 1, "fleet resume", ["no unfinished run to resume"])

    def test_newer_database_is_refused_unchanged(self):
        con = sqlite3.connect(self.db)
        con.execute("CREATE TABLE t (x)")
        con.execute("PRAGMA application_id = %d" % 0x46444C46)
        con.execute("PRAGMA user_version = 99")
        con.commit()
        con.close()
        with open(self.db, "rb") as fh:
            before = fh.read()
        cfg = self.write_config(self.config())
        self.check_error(["fleet", "run", "--config", cfg, "--db", self.db], 1, "fleet run",
                         ["schema version 99", "newer"])
        self.check_error(["fleet", "token", "--db", self.db], 1, "fleet token", ["schema version 99"])
        with open(self.db, "rb") as fh:
            self.assertEqual(fh.read(), before)


GROUPS = {
    "usage": [UsageErrors],
    "bad-data": [DataAndModelErrors],
    "output": [OutputRobustness],
    "train-eval": [TrainEval],
    "fl-bad-config": [FlBadConfig],
    "fl-simulate": [FlSimulate, FlCheckpoint],
    "nonn": [NonnCli],
    "micro": [MicroCli],
    "compress": [CompressCli],
    "report": [ReportCli],
    "fleet": [FleetCli],
}


# Groups that need the real Fashion-MNIST (exit 77 without it).
NEEDS_DATASET = {"train-eval", "fl-simulate", "nonn", "compress", "fleet"}


def main(argv):
    global FLEETDL
    if len(argv) < 3 or argv[2] not in GROUPS:
        sys.stderr.write("usage: test_cli.py FLEETDL (%s) [NAME...]\n" % " | ".join(GROUPS))
        return 2
    FLEETDL = os.path.abspath(argv[1])
    if not os.access(FLEETDL, os.X_OK):
        sys.stderr.write("test_cli.py: %s is not an executable\n" % FLEETDL)
        return 2
    group = argv[2]
    if group in NEEDS_DATASET and not real_dataset_present():
        print("SKIP: Fashion-MNIST not found in %s (need %s); install dataset-fashion-mnist or set "
              "FLEETDL_FASHION_MNIST_DIR" % (DATA_DIR, ", ".join(DATA_FILES)))
        return SKIP
    tests = [t for c in GROUPS[group] for t in unittest.TestLoader().loadTestsFromTestCase(c)]
    if argv[3:]:  # optional name filters: run the tests whose id contains one
        tests = [t for t in tests if any(k in t.id() for k in argv[3:])]
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(unittest.TestSuite(tests))
    return 0 if result.wasSuccessful() and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
