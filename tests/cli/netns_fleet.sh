#!/usr/bin/env bash
# tests/cli/netns_fleet.sh — a fleet across network namespaces (issue 6):
# agents in their own namespaces, joined by veth pairs to a bridge in the
# orchestrator's namespace, are discovered over UDP, enrolled with one-time
# tokens, and trained by `fleetdl fleet run` over mutual TLS.
#
#   netns_fleet.sh PATH/TO/fleetdl PATH/TO/fleetdl-agent
#
# Namespaces fdl-fl-<pid>-o (the orchestrator: bridge fdlb<pid> with
# 10.78.X.1/24, X from the pid) and fdl-fl-<pid>-1..3 (one agent each, on
# 10.78.X.11..13, veth fdl<pid>a<i> whose peer fdl<pid>o<i> is on the bridge).
#   agent nsdev-1 and nsdev-2 announce to the subnet broadcast 10.78.X.255;
#   agent nsdev-3 uses the agent's default targets (the limited broadcast
#   255.255.255.255 and 127.0.0.1) through a default route via 10.78.X.1.
# fleet run binds 0.0.0.0 with discovery on: its invites carry no address,
# so each agent connects to the invite's source, 10.78.X.1, and checks it
# against the server certificate's SANs (every local IPv4 address).
# Passes when the run finishes its 2 rounds with all 3 devices committed in
# each, the database records the 3 devices with their costs, and every
# agent's log shows the invite and the enrollment.
#
# Needs root, iproute2's `ip` with `ip netns`, veth and bridge links, and
# Fashion-MNIST at /usr/share/datasets/fashion-mnist. Exit 77 (skipped) with
# one line saying why when one is missing; exit 1 on a failure. Everything is
# removed on every exit (trap EXIT); every command that could wait runs under
# timeout(1).
set -u

me=netns_fleet
skip() {
  echo "$me: $1; skipped"
  exit 77
}
fail() {
  echo "$me: FAIL: $1" >&2
  exit 1
}

[ $# -eq 2 ] || fail "usage: $0 PATH/TO/fleetdl PATH/TO/fleetdl-agent"
fleetdl=$(realpath -- "$1" 2>/dev/null) || fail "no fleetdl at '$1'"
agent=$(realpath -- "$2" 2>/dev/null) || fail "no fleetdl-agent at '$2'"
[ -x "$fleetdl" ] && [ -x "$agent" ] || fail "'$fleetdl' or '$agent' is not executable"

[ "$(id -u)" = 0 ] || skip "cannot create network namespaces (not running as root)"
command -v ip >/dev/null 2>&1 || skip "cannot create network namespaces (the 'ip' command is missing; install iproute2)"
command -v timeout >/dev/null 2>&1 || skip "timeout(1) is missing; install coreutils"
command -v python3 >/dev/null 2>&1 || skip "python3 is missing"
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] ||
  skip "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"

ns_o="fdl-fl-$$-o"
br="fdlb$$"
x=$(($$ % 250 + 1))
net="10.78.$x"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fdl-netns-fleet.XXXXXX") || fail "mktemp"
pids=()
made=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for n in "${made[@]}"; do timeout 10 ip netns del "$n" 2>/dev/null; done
  for i in 1 2 3; do timeout 10 ip link del "fdl$$o$i" 2>/dev/null; done  # only if never moved
  rm -rf -- "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

one_line() { tr '\n' ' ' <"$1" | sed 's/ *$//'; }

# ---- can this machine make namespaces, veth pairs and bridges at all?
timeout 10 ip netns add "$ns_o" 2>"$tmp/err" || skip "cannot create network namespaces (ip netns add: $(one_line "$tmp/err"))"
made+=("$ns_o")
timeout 10 ip netns exec "$ns_o" ip link set lo up 2>"$tmp/err" ||
  skip "cannot enter network namespaces (ip netns exec: $(one_line "$tmp/err"))"
timeout 10 ip netns exec "$ns_o" ip link add "$br" type bridge 2>"$tmp/err" ||
  skip "cannot create a bridge (ip link add type bridge: $(one_line "$tmp/err"))"
timeout 10 ip link add "fdl$$o1" type veth peer name "fdl$$a1" 2>"$tmp/err" ||
  skip "cannot create veth pairs ($(one_line "$tmp/err"))"

# ---- from here on, a failure is a real failure
run() { timeout 10 "$@" 2>"$tmp/err" || fail "$* : $(one_line "$tmp/err")"; }
run ip netns exec "$ns_o" ip addr add "$net.1/24" broadcast "$net.255" dev "$br"
run ip netns exec "$ns_o" ip link set "$br" up
for i in 1 2 3; do
  ns="fdl-fl-$$-$i"
  run ip netns add "$ns"
  made+=("$ns")
  [ "$i" = 1 ] || run ip link add "fdl$$o$i" type veth peer name "fdl$$a$i"
  run ip link set "fdl$$o$i" netns "$ns_o"
  run ip link set "fdl$$a$i" netns "$ns"
  run ip netns exec "$ns_o" ip link set "fdl$$o$i" master "$br"
  run ip netns exec "$ns_o" ip link set "fdl$$o$i" up
  run ip netns exec "$ns" ip link set lo up
  run ip netns exec "$ns" ip addr add "$net.1$i/24" broadcast "$net.255" dev "fdl$$a$i"
  run ip netns exec "$ns" ip link set "fdl$$a$i" up
done
run ip netns exec "fdl-fl-$$-3" ip route add default via "$net.1"
echo "$me: $ns_o ($br $net.1) bridged to fdl-fl-$$-1..3 ($net.11..13)"

db="$tmp/fleet.db"
timeout 30 "$fleetdl" fleet token --db "$db" --count 3 >"$tmp/tokens" 2>"$tmp/err" ||
  fail "fleet token: $(one_line "$tmp/err")"
mapfile -t tokens <"$tmp/tokens"
[ "${#tokens[@]}" = 3 ] || fail "fleet token printed ${#tokens[@]} tokens, not 3"

cat >"$tmp/run.json" <<EOF
{"seed": 5, "rounds": 2, "clients": 3, "model": "lenet300_100",
 "dataset": {"train_limit": 1500, "test_limit": 300},
 "partition": {"kind": "iid"},
 "client": {"lr": 0.05, "momentum": 0.9, "epochs": 1, "batch": 32},
 "strategy": {"name": "fedavg"}, "codec": {"kind": "q8"},
 "fleet": {"bind": "0.0.0.0", "discovery": true, "discovery_port": 47800, "enroll_port": 47801,
           "fleet_port": 47802, "wait_seconds": 60, "round_deadline_seconds": 60, "heartbeat_ms": 500}}
EOF

ip netns exec "$ns_o" timeout 150 "$fleetdl" fleet run --config "$tmp/run.json" --db "$db" --json \
  >"$tmp/run.out" 2>"$tmp/run.err" &
pid_run=$!
pids+=("$pid_run")

declare -A pid_of
for i in 1 2 3; do
  targets=(--announce-to "$net.255:47800")
  [ "$i" = 3 ] && targets=(--discovery-port 47800)
  ip netns exec "fdl-fl-$$-$i" timeout 150 "$agent" --name "nsdev-$i" --state-dir "$tmp/agent-$i" --budget 64M \
    --token "${tokens[$((i - 1))]}" "${targets[@]}" --announce-interval-ms 200 --seed "$i" --exit-after-runs 1 \
    --log "$tmp/agent-$i.log" >"$tmp/agent-$i.out" 2>&1 &
  pid_of[$i]=$!
  pids+=("$!")
done

status=0
problems=()
wait "$pid_run"
rc=$?
[ "$rc" -eq 0 ] || { status=1; problems+=("fleet run exited with $rc: $(one_line "$tmp/run.err")"); }
for i in 1 2 3; do
  wait "${pid_of[$i]}"
  rc=$?
  [ "$rc" -eq 0 ] || { status=1; problems+=("agent nsdev-$i exited with $rc: $(one_line "$tmp/agent-$i.out")"); }
done
pids=()

for i in 1 2 3; do
  log="$tmp/agent-$i.log"
  grep -q "invited by $net.1:47800: orchestrator $net.1, enrollment port 47801, fleet port 47802" "$log" 2>/dev/null ||
    { status=1; problems+=("nsdev-$i was not invited to $net.1"); }
  grep -q "enrolled as device [0-9]*" "$log" 2>/dev/null || { status=1; problems+=("nsdev-$i did not enroll"); }
  grep -q "connected as device [0-9]*" "$log" 2>/dev/null ||
    { status=1; problems+=("nsdev-$i did not join the fleet port over mutual TLS"); }
done
grep -q "announcing (not enrolled) to 255.255.255.255:47800, 127.0.0.1:47800" "$tmp/agent-3.log" 2>/dev/null ||
  { status=1; problems+=("nsdev-3 did not use the default announce targets"); }

python3 - "$db" "$tmp/run.out" >"$tmp/check.out" 2>&1 <<'EOF' || { status=1; problems+=("$(one_line "$tmp/check.out")"); }
import json, sqlite3, sys
db, out = sys.argv[1], sys.argv[2]
lines = [json.loads(l) for l in open(out) if l.strip()]
rounds = [l for l in lines if "round" in l]
assert [(r["round"], r["status"], r["selected"], r["completed"]) for r in rounds] == \
    [(1, "committed", 3, 3), (2, "committed", 3, 3)], "rounds: %r" % rounds
con = sqlite3.connect(db)
assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
assert con.execute("SELECT status FROM runs WHERE id = 1").fetchone()[0] == "finished"
names = [r[0] for r in con.execute("SELECT name FROM devices WHERE cert_fingerprint IS NOT NULL ORDER BY name")]
assert names == ["nsdev-1", "nsdev-2", "nsdev-3"], "devices: %r" % names
rows = con.execute("SELECT d.name, c.round, c.status, c.bytes_up, c.bytes_down FROM device_round_costs c "
                   "JOIN devices d ON d.id = c.device WHERE c.run = 1 ORDER BY c.round, d.name").fetchall()
assert len(rows) == 6 and all(r[2] == "ok" and r[3] > 0 and r[4] > 0 for r in rows), "costs: %r" % rows
print("rounds %r; devices %s; 6 cost rows ok" % ([r["accuracy"] for r in rounds], ", ".join(names)))
EOF

echo "--- fleet run ($ns_o)"
cat "$tmp/run.out"
tail -n 5 "$tmp/run.err"
for i in 1 2 3; do
  echo "--- nsdev-$i (fdl-fl-$$-$i)"
  grep -E "announcing|invited|enrolled|connected|bye" "$tmp/agent-$i.log" 2>/dev/null | head -n 8
done
cat "$tmp/check.out"
if [ "$status" -ne 0 ]; then
  for p in "${problems[@]}"; do echo "$me: FAIL: $p" >&2; done
  exit 1
fi
echo "$me: ok: 3 agents in 3 namespaces discovered, enrolled and trained for 2 rounds by fleet run in $ns_o"
exit 0
