#!/usr/bin/env python3
"""bench/compress/compress_report.py DIR — the tables of docs/benchmarks.md
("Compression and int8") from compress_bench.sh's results, with each target
checked. Missing results are listed as such."""
import json
import os
import sys

R = sys.argv[1] if len(sys.argv) > 1 else "bench/results/compress"


def load(name):
    p = os.path.join(R, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def stages(name):
    c = load(f"{name}.compress.json")
    if c is None:
        print(f"{name}: no compress result yet\n")
        return None, None
    print(f"{name}: float32 weight bytes {c['float32_weight_bytes']:,}, "
          f"{c['train_images']:,} training / {c['test_images']:,} test images, "
          f"{c['finetune_epochs']} fine-tuning epochs per stage")
    print("| stage | detail | params | stored bytes | ratio | accuracy | MACs | arena |")
    print("|---|---|---|---|---|---|---|---|")
    for s in c["stages"]:
        arena = f"{s['arena_bytes']:,}" if s["arena_bytes"] is not None else "-"
        print(f"| {s['stage']} | {s['detail']} | {s['params']:,} | {s['stored_bytes']:,} | "
              f"{s['ratio']:.2f}x | {100 * s['accuracy']:.2f} | {s['macs']:,} | {arena} |")
    print()
    return c, {s["stage"]: s for s in c["stages"]}


def verdict(ok):
    return "met" if ok else "**missed**"


cnn1, st = stages("cnn1")
if st:
    base, q = st["float"]["accuracy"], st["int8"]
    print(f"CNN1 targets: int8 {100 * q['accuracy']:.2f} vs float {100 * base:.2f} - 0.3 -> "
          f"{verdict(q['accuracy'] >= base - 0.003)}; ratio {q['ratio']:.2f}x vs 12.06x -> "
          f"{verdict(q['ratio'] >= 12.06)}\n")

l3, st = stages("lenet300")
if st:
    base = st["float"]["accuracy"]
    for name in ("cluster", "int8"):
        if name in st:
            s = st[name]
            print(f"LeNet-300-100 {name}: {s['ratio']:.2f}x vs 40x -> {verdict(s['ratio'] >= 40)}; "
                  f"{100 * (base - s['accuracy']):.2f} points lost vs 0.5 -> "
                  f"{verdict(base - s['accuracy'] <= 0.005)}")
    print()

fl, q8 = load("lenet5.float.eval.json"), load("lenet5.int8.eval.json")
c5 = load("lenet5.compress.json")
if fl and q8 and c5:
    blob = c5["out_bytes"]
    print("| lenet5 | accuracy | weights stored | arena | batch-1 latency |")
    print("|---|---|---|---|---|")
    print(f"| float32 | {100 * fl['test_accuracy']:.2f} | {c5['float32_weight_bytes']:,} B | - | "
          f"{1000 * fl['latency_b1_ms']:.0f} us ({fl['threads']} thread) |")
    print(f"| int8 (micro runtime) | {100 * q8['test_accuracy']:.2f} | {blob:,} B (blob) | "
          f"{q8['arena_bytes']:,} B | {q8['latency_us']:.0f} us |")
else:
    print("lenet5: no int8 result yet")
