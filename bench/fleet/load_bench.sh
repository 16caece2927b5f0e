#!/usr/bin/env bash
# bench/fleet/load_bench.sh — issue 6's load figure: N local agents (default
# 100) on this machine train lenet300_100 for 5 FedAvg rounds over TLS on
# loopback. Records each round's wall time (p50/p95 over the rounds), the
# bytes per round, and the orchestrator's peak RSS (/usr/bin/time -v), into
# bench/results/fleet/load-N.json and .txt.
#
# usage: bench/fleet/load_bench.sh [--devices N] [--rounds R] [--bin DIR]
#   --bin DIR   directory holding fleetdl (default build-release/orchestrator/cli;
#               fleetdl-agent is found next to it or in the build tree)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
n=100 rounds=5 bin=build-release/orchestrator/cli
while [ $# -gt 0 ]; do
  case "$1" in
    --devices) n="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "load_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
F=$bin/fleetdl
[ -x "$F" ] || { echo "load_bench.sh: $F not built (ninja -C build-release orchestrator/cli/fleetdl device_ports/posix/fleetdl-agent)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "load_bench.sh: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }
R=bench/results/fleet; mkdir -p "$R"
work=$(mktemp -d /tmp/fleetdl-load-XXXXXX)
db=$work/fleet.db
trap '"$F" fleet down --db "$db" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
cat > "$work/load.json" <<JSON
{
  "seed": 1, "rounds": $rounds, "clients": $n, "model": "lenet300_100",
  "dataset": {"name": "fashion-mnist", "train_limit": $((n * 100)), "test_limit": 2000},
  "partition": {"kind": "iid"},
  "client": {"lr": 0.05, "momentum": 0.9, "epochs": 1, "batch": 32},
  "strategy": {"name": "fedavg"},
  "codec": {"kind": "q8"},
  "fleet": {"wait_seconds": 600, "round_deadline_seconds": 600, "heartbeat_ms": 2000, "discovery": false}
}
JSON
cat > "$work/profiles.json" <<JSON
[{"name": "dev", "budget_bytes": 67108864}]
JSON
"$F" fleet up --devices "$n" --db "$db" --profiles "$work/profiles.json" > "$work/up.txt"
/usr/bin/time -v "$F" fleet run --config "$work/load.json" --db "$db" --json > "$work/run.jsonl" 2> "$work/run.err"
python3 - "$work" "$n" "$rounds" "$R" <<'PY'
import json, re, sqlite3, statistics, sys
work, n, rounds, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
err = open(work + "/run.err").read()
rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
con = sqlite3.connect(work + "/fleet.db")
rows = con.execute("SELECT round, status, selected, completed, round_seconds, bytes_up, bytes_down, test_accuracy "
                   "FROM rounds WHERE run = 1 ORDER BY round").fetchall()
secs = sorted(r[4] for r in rows)
def pct(p):
    k = max(0, min(len(secs) - 1, round(p / 100 * (len(secs) - 1))))
    return secs[k]
res = {"devices": n, "rounds": [dict(zip(["round", "status", "selected", "completed", "round_seconds", "bytes_up",
                                          "bytes_down", "test_accuracy"], r)) for r in rows],
       "round_seconds_p50": statistics.median(secs), "round_seconds_p95": pct(95),
       "orchestrator_peak_rss_bytes": rss_kb * 1024}
json.dump(res, open("%s/load-%d.json" % (out, n), "w"), indent=1)
lines = ["devices %d, rounds %d" % (n, len(rows)),
         "round seconds: p50 %.2f, p95 %.2f (max %.2f)" % (res["round_seconds_p50"], res["round_seconds_p95"], secs[-1]),
         "orchestrator peak RSS: %.1f MiB" % (rss_kb / 1024)]
for r in rows:
    lines.append("round %d %s: %d/%d updates, %.2f s, up %d B, down %d B, accuracy %s" % (r[0], r[1], r[3], r[2], r[4], r[5], r[6], r[7]))
open("%s/load-%d.txt" % (out, n), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
