#!/usr/bin/env bash
# tests/core/netns_discovery.sh — fleet discovery between two network
# namespaces joined by a veth pair (issue 6).
#
#   netns_discovery.sh PATH/TO/discovery_probe
#
# Creates namespaces fdl-disc-<pid>-l (the orchestrator's listener) and
# fdl-disc-<pid>-a (three agents), joined by veth fdl<pid>l <-> fdl<pid>a
# carrying 10.77.X.1/24 and 10.77.X.2/24 (X from the pid). Agents nsagent-1
# and nsagent-2 announce to the subnet broadcast 10.77.X.255 and to the peer
# address 10.77.X.1; nsagent-b to the broadcast only, so the test shows that a
# subnet broadcast crosses the link. Passes when the listener discovered and
# invited all three, every agent was invited, and every invite pointed at the
# listener's address in its namespace (10.77.X.1).
#
# Needs root and iproute2's `ip` (with `ip netns`); nothing else is created on
# the host. Exit 77 (skipped) with one line saying why when namespaces cannot
# be created here; exit 1 on a failure. The namespaces and the veth pair are
# removed on every exit (trap EXIT), and every command that could wait runs
# under timeout(1), so the script cannot hang.
set -u

me=netns_discovery
skip() {
  echo "$me: cannot create network namespaces ($1); skipped"
  exit 77
}
fail() {
  echo "$me: FAIL: $1" >&2
  exit 1
}

[ $# -eq 1 ] || fail "usage: $0 PATH/TO/discovery_probe"
probe=$(realpath -- "$1" 2>/dev/null) || fail "no probe at '$1'"
[ -x "$probe" ] || fail "probe '$probe' is not executable"

[ "$(id -u)" = 0 ] || skip "not running as root"
command -v ip >/dev/null 2>&1 || skip "the 'ip' command is missing; install the iproute2 package"
command -v timeout >/dev/null 2>&1 || skip "timeout(1) is missing; install coreutils"

ns_l="fdl-disc-$$-l"
ns_a="fdl-disc-$$-a"
veth_l="fdl$$l"  # interface names are at most 15 bytes; a pid has at most 7 digits
veth_a="fdl$$a"
x=$(($$ % 250 + 1))
addr_l="10.77.$x.1"
addr_a="10.77.$x.2"
bcast="10.77.$x.255"
port=47800
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fdl-netns.XXXXXX") || fail "mktemp"
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  timeout 10 ip netns del "$ns_l" 2>/dev/null
  timeout 10 ip netns del "$ns_a" 2>/dev/null
  # Only there if it was created but never moved into its namespace.
  timeout 10 ip link del "$veth_l" 2>/dev/null
  rm -rf -- "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

one_line() { tr '\n' ' ' <"$1" | sed 's/ *$//'; }

# ---- can this machine make namespaces at all?
if ! timeout 10 ip netns add "$ns_l" 2>"$tmp/err"; then
  skip "ip netns add: $(one_line "$tmp/err")"
fi
if ! timeout 10 ip netns add "$ns_a" 2>"$tmp/err"; then
  skip "ip netns add: $(one_line "$tmp/err")"
fi
if ! timeout 10 ip netns exec "$ns_l" ip link set lo up 2>"$tmp/err"; then
  skip "ip netns exec: $(one_line "$tmp/err")"
fi
if ! timeout 10 ip link add "$veth_l" type veth peer name "$veth_a" 2>"$tmp/err"; then
  skip "veth pair: $(one_line "$tmp/err")"
fi

# ---- from here on, a failure is a real failure
run() { timeout 10 "$@" 2>"$tmp/err" || fail "$* : $(one_line "$tmp/err")"; }
run ip link set "$veth_l" netns "$ns_l"
run ip link set "$veth_a" netns "$ns_a"
run ip netns exec "$ns_l" ip addr add "$addr_l/24" broadcast "$bcast" dev "$veth_l"
run ip netns exec "$ns_l" ip link set "$veth_l" up
run ip netns exec "$ns_a" ip link set lo up
run ip netns exec "$ns_a" ip addr add "$addr_a/24" broadcast "$bcast" dev "$veth_a"
run ip netns exec "$ns_a" ip link set "$veth_a" up

echo "$me: $ns_l ($veth_l $addr_l) <-> $ns_a ($veth_a $addr_a), UDP port $port"

ip netns exec "$ns_l" timeout 40 "$probe" listen --port "$port" --expect 3 --timeout-ms 30000 \
  >"$tmp/listen.out" 2>"$tmp/listen.err" &
pid_l=$!
pids+=("$pid_l")

agents=(nsagent-1 nsagent-2 nsagent-b)
declare -A pid_of
for n in "${agents[@]}"; do
  targets=(--target "$bcast:$port")
  [ "$n" = nsagent-b ] || targets+=(--target "$addr_l:$port")
  ip netns exec "$ns_a" timeout 40 "$probe" announce --name "$n" "${targets[@]}" --interval-ms 100 \
    --timeout-ms 30000 >"$tmp/$n.out" 2>"$tmp/$n.err" &
  pid_of[$n]=$!
  pids+=("$!")
done

status=0
problems=()
wait "$pid_l"
rc=$?
[ "$rc" -eq 0 ] || { status=1; problems+=("listener exited with $rc: $(one_line "$tmp/listen.err")"); }
for n in "${agents[@]}"; do
  wait "${pid_of[$n]}"
  rc=$?
  [ "$rc" -eq 0 ] || { status=1; problems+=("$n exited with $rc: $(one_line "$tmp/$n.err")"); }
done
pids=()

for n in "${agents[@]}"; do
  grep -q "^discovered name=$n nonce=[0-9a-f]* from=$addr_a:[0-9]*\$" "$tmp/listen.out" ||
    { status=1; problems+=("listener did not discover $n from $addr_a"); }
  grep -q "^invited name=$n orchestrator=$addr_l enroll_port=47801 fleet_port=47802 .* via=$addr_l:$port\$" "$tmp/$n.out" ||
    { status=1; problems+=("$n was not invited to $addr_l: '$(one_line "$tmp/$n.out")'"); }
done
grep -q "^invited 3 agents\$" "$tmp/listen.out" || { status=1; problems+=("listener did not invite 3 agents"); }

echo "--- listener ($ns_l)"
cat "$tmp/listen.out"
for n in "${agents[@]}"; do
  echo "--- $n ($ns_a)"
  cat "$tmp/$n.out"
done
if [ "$status" -ne 0 ]; then
  for p in "${problems[@]}"; do echo "$me: FAIL: $p" >&2; done
  exit 1
fi
echo "$me: ok: 3 agents in $ns_a discovered by the listener in $ns_l and invited to $addr_l"
exit 0
