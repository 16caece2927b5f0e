#!/usr/bin/env python3
"""bench/nonn/nonn_report.py — the NoNN table of docs/benchmarks.md from
bench/results/nonn/ (written by bench/nonn/nonn_bench.sh): accuracy against the
teacher, the largest student's parameters against the teacher's, bytes sent per
image per device, and the simulated latency, with the issue's targets:
NoNN within 1 point of the teacher; at or above the single same-size KD student
and the random partition; per-device parameters at least 10x below the teacher;
at most 1 KB sent per image per device.

usage: bench/nonn/nonn_report.py [RESULTS_DIR]   (default bench/results/nonn)
"""
import json
import pathlib
import sys


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/nonn")
    ev = load(root / "teacher.eval.json")
    if ev is None:
        print("no teacher evaluation in %s" % root)
        return 1
    t_acc = 100.0 * ev["test_accuracy"]
    t_params = ev["params"]
    print(f"Teacher vgg_fmnist: {t_acc:.2f}% test accuracy, {t_params} params.\n")
    print("| run | students (effective) | filters per student | accuracy | vs teacher | "
          "largest student params | teacher / student | max B sent per image | simulated latency ms | identical to unified |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for inf in sorted(root.glob("*.infer.json")):
        name = inf.name[: -len(".infer.json")]
        part, res = load(root / f"{name}.partition.json"), load(inf)
        if part is None or res is None:
            continue
        acc = 100.0 * res["test_accuracy"]
        studs = [d for d in res["devices"] if d["device"] != "combiner"]
        pmax = max(d["params"] for d in studs)
        sent = max(d["bytes_sent_per_image"] for d in studs)
        sizes = " ".join(str(s["features"]) for s in part["students"])
        rows[name] = acc
        print(f"| {name} | {part['partition'].get('students_requested', len(studs))} ({len(studs)}) | {sizes} | "
              f"{acc:.2f} | {acc - t_acc:+.2f} | {pmax} | {t_params / pmax:.1f}x | {sent:.0f} | "
              f"{1000.0 * res['latency_seconds']:.2f} | {res['matches_unified']} |")
    print()
    for n in (2, 4, 8):
        for mode in ("reference", "balanced", "beta0"):
            name = f"n{n}-{mode}"
            if name not in rows:
                continue
            gap = rows[name] - (t_acc - 1.0)
            checks = [f"within 1 pt of the teacher: {'yes' if gap >= 0 else 'NO'} ({gap:+.2f})"]
            for base in ("kd1", f"n{n}-random"):
                if base in rows:
                    d = rows[name] - rows[base]
                    checks.append(f">= {base}: {'yes' if d >= 0 else 'NO'} ({d:+.2f})")
            print(f"- {name}: " + "; ".join(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
