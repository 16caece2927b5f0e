#!/usr/bin/env python3
"""bench/fl/niid_report.py — summarize bench/results/niid-*.jsonl (written by
bench/fl/niid_bench.sh) as the markdown table of docs/benchmarks.md: best-round
and last-round test accuracy per run against Flower niid_bench's published
best-round accuracy (REFERENCES §5), target = published - 0.5 points.

usage: bench/fl/niid_report.py [RESULTS_DIR]   (default bench/results)
A run still in progress (no summary line) is reported with the rounds it has.
"""
import json
import pathlib
import sys

PUBLISHED = {  # best-round accuracy, Flower niid_bench on Fashion-MNIST
    "niid_dir05_fedavg": ("FedAvg", "Dir(0.5)", 88.09),
    "niid_dir05_fedprox": ("FedProx (mu 0.01)", "Dir(0.5)", 88.15),
    "niid_dir05_scaffold": ("SCAFFOLD", "Dir(0.5)", 88.44),
    "niid_dir05_fednova": ("FedNova", "Dir(0.5)", 88.22),
    "niid_iid_fedavg": ("FedAvg", "IID", 89.23),
}


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    print("| strategy | partition | rounds run | best (round) | last | published best | target (−0.5) | met |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (label, part, pub) in PUBLISHED.items():
        path = root / f"niid-{name}.jsonl"
        if not path.exists():
            print(f"| {label} | {part} | not run | | | {pub:.2f} | {pub - 0.5:.2f} | |")
            continue
        by_round = {}  # a resumed run may repeat a round: keep the last record
        commits = []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("meta") and rec.get("commit") not in commits:
                commits.append(rec.get("commit"))
            if "round" in rec and rec.get("accuracy") is not None:
                by_round[rec["round"]] = rec
        rounds = [(r, 100.0 * by_round[r]["accuracy"]) for r in sorted(by_round)]
        wall = [by_round[r]["wall_seconds"] for r in sorted(by_round)]
        if not rounds:
            print(f"| {label} | {part} | 0 | | | {pub:.2f} | {pub - 0.5:.2f} | |")
            continue
        best_round, best = max(rounds, key=lambda r: (r[1], -r[0]))
        last = rounds[-1][1]
        met = "yes" if best >= pub - 0.5 else f"no (short by {pub - 0.5 - best:.2f})"
        n = rounds[-1][0]
        note = "" if n >= 50 else " (partial)"
        print(f"| {label} | {part} | {n}{note} | {best:.2f} ({best_round}) | {last:.2f} | {pub:.2f} | "
              f"{pub - 0.5:.2f} | {met} |")
        print(f"<!-- {name}: median wall time per round {sorted(wall)[len(wall) // 2]:.1f} s; "
              f"started at commit(s) {', '.join(str(c) for c in commits)} -->")


if __name__ == "__main__":
    main()
