#!/usr/bin/env bash
# bench/lenet5_vs_pytorch.sh — the foundation benchmark: fleetdl vs PyTorch,
# side by side, in one run, with the same thread count.
#
# Trains lenet5 on Fashion-MNIST (batch 64, Adam, lr 1e-3) with fleetdl and
# with PyTorch (Debian python3-torch, system interpreter /usr/bin/python3),
# alternately (fleetdl, pytorch, fleetdl, pytorch, ...: one pair per seed),
# measures batch-1 inference latency for both, and prints the medians and the
# ratios against the targets:
#   training throughput  fleetdl/pytorch >= 1.0x (aim 1.5x)
#   batch-1 latency      fleetdl/pytorch <= 0.5x
#   test accuracy        |fleetdl - pytorch| <= 1 point after E epochs (E = 1)
#   with --long: fleetdl test accuracy >= 91% after 15 epochs
# Timings are reported, never asserted: this is not a pass/fail test.
#
# usage: bench/lenet5_vs_pytorch.sh [options]
#   --threads T          threads for both (default: nproc)
#   --epochs E           epochs per training run (default 1)
#   --seeds S1,S2,...    one fleetdl/pytorch pair per seed (default 1,2)
#   --long               also train fleetdl for 15 epochs (first seed)
#   --long-epochs N      epochs of the --long run (default 15)
#   --latency-runs N     single-image forwards averaged (default 1000)
#   --train-limit N      dry run: use the first N training images (both sides);
#                        the results file gets a -dryrun suffix
#   --peer-blas WHICH    BLAS for PyTorch's Linear layers: system (default: the
#                        libblas.so.3 alternative, on stock Debian the netlib
#                        reference BLAS), reference, or openblas
#                        (libopenblas0-pthread, OPENBLAS_NUM_THREADS=T)
#   --peer-env 'K=V ...' extra environment for the PyTorch runs only
#   --no-build           use the existing build-release/ as is
#   --out FILE           results file (default bench/results/lenet5_vs_pytorch-DATE-tT[-dryrun].jsonl)
#
# Output: a table on stdout, a ready-to-paste markdown block for
# docs/benchmarks.md, and the raw JSON lines (one per run plus a "meta" line
# describing the machine) in the results file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=/usr/bin/python3  # Debian's torch is for the system interpreter, not pyenv's python3
DATA_DIR=/usr/share/datasets/fashion-mnist
FLEETDL="build-release/orchestrator/cli/fleetdl"

threads=$(nproc)
epochs=1
seeds=1,2
long=0
long_epochs=15
latency_runs=1000
train_limit=
peer_blas=system
peer_env_str=
build=1
out=

die() { echo "lenet5_vs_pytorch: $*" >&2; exit 2; }
need_value() { [ $# -ge 2 ] || die "option '$1' needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --threads) need_value "$@"; threads=$2; shift 2 ;;
    --epochs) need_value "$@"; epochs=$2; shift 2 ;;
    --seeds) need_value "$@"; seeds=$2; shift 2 ;;
    --long) long=1; shift ;;
    --long-epochs) need_value "$@"; long_epochs=$2; shift 2 ;;
    --latency-runs) need_value "$@"; latency_runs=$2; shift 2 ;;
    --train-limit) need_value "$@"; train_limit=$2; shift 2 ;;
    --peer-blas) need_value "$@"; peer_blas=$2; shift 2 ;;
    --peer-env) need_value "$@"; peer_env_str=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --out) need_value "$@"; out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
is_uint() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ]; }
is_uint "$threads" || die "--threads must be a positive integer"
is_uint "$epochs" || die "--epochs must be a positive integer"
is_uint "$long_epochs" || die "--long-epochs must be a positive integer"
is_uint "$latency_runs" || die "--latency-runs must be a positive integer"
[ -z "$train_limit" ] || is_uint "$train_limit" || die "--train-limit must be a positive integer"
IFS=, read -ra seed_list <<< "$seeds"
[ ${#seed_list[@]} -ge 1 ] || die "--seeds needs at least one seed"
for s in "${seed_list[@]}"; do [[ $s =~ ^[0-9]+$ ]] || die "--seeds: '$s' is not a seed"; done
case $peer_blas in system|reference|openblas) ;; *) die "--peer-blas: system, reference or openblas" ;; esac
read -ra peer_env <<< "$peer_env_str"
for kv in "${peer_env[@]}"; do [[ $kv == *=* ]] || die "--peer-env: '$kv' is not K=V"; done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
is_root() { [ "$(id -u)" -eq 0 ]; }
have_pkg() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]; }

# --- dependencies ------------------------------------------------------------
if [ -x tools/deps.sh ]; then
  tools/deps.sh
fi
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in python3-torch python3-numpy; do have_pkg "$p" || missing+=("$p"); done
elif ! "$PY" -c 'import torch, numpy' 2>/dev/null; then
  echo "lenet5_vs_pytorch: $PY cannot import torch and numpy (and this is not Debian)" >&2
  exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
  if is_root; then
    log "installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
  else
    echo "lenet5_vs_pytorch: missing Debian packages: ${missing[*]}; run this, then try again:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
"$PY" -c 'import torch, numpy' || { echo "lenet5_vs_pytorch: $PY cannot import torch" >&2; exit 1; }

multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
peer_prefix=()  # environment for the PyTorch runs
case $peer_blas in
  reference)
    peer_prefix+=("LD_LIBRARY_PATH=/usr/lib/$multiarch/blas:/usr/lib/$multiarch/lapack${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}") ;;
  openblas)
    obdir=/usr/lib/$multiarch/openblas-pthread
    if [ ! -e "$obdir/libblas.so.3" ]; then
      if is_root; then
        log "installing libopenblas0-pthread (note: it becomes the system's default libblas.so.3)"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y libopenblas0-pthread
      else
        echo "lenet5_vs_pytorch: --peer-blas openblas needs libopenblas0-pthread; run this, then try again:" >&2
        echo "  sudo apt-get install -y libopenblas0-pthread" >&2
        exit 1
      fi
    fi
    peer_prefix+=("LD_LIBRARY_PATH=$obdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "OPENBLAS_NUM_THREADS=$threads") ;;
esac
peer_prefix+=("${peer_env[@]}")

for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -f "$DATA_DIR/$f" ] || { echo "lenet5_vs_pytorch: $DATA_DIR/$f not found (Debian package dataset-fashion-mnist)" >&2; exit 1; }
done

# --- release build -----------------------------------------------------------
if [ "$build" = 1 ]; then
  if [ ! -f build-release/meson-private/coredata.dat ]; then
    log "configuring build-release (release)"
    if [ -x tools/meson-setup.sh ]; then
      tools/meson-setup.sh build-release --buildtype=release -Dtests=false
    else
      meson setup build-release --buildtype=release --wrap-mode=nodownload -Dtests=false
    fi
  fi
  log "building build-release (-j2)"
  meson compile -C build-release -j2 >&2
fi
[ -x "$FLEETDL" ] || { echo "lenet5_vs_pytorch: $FLEETDL not built" >&2; exit 1; }
buildtype=$(meson introspect build-release --buildoptions 2>/dev/null |
  "$PY" -c 'import json,sys; print({o["name"]: o["value"] for o in json.load(sys.stdin)}.get("buildtype", "?"))' || echo '?')
[ "$buildtype" = release ] || log "WARNING: build-release has buildtype '$buildtype', not release: fleetdl figures are not representative"

# --- results file and machine description -------------------------------------
stamp=$(date +%Y%m%d-%H%M%S)
suffix=${train_limit:+-dryrun}
mkdir -p bench/results
[ -n "$out" ] || out=bench/results/lenet5_vs_pytorch-$stamp-t$threads$suffix.jsonl
: > "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

compiler=$(grep -m1 'C++ compiler for the host machine' build-release/meson-logs/meson-log.txt 2>/dev/null |
  sed 's/^C++ compiler for the host machine: //' || true)
[ -n "$compiler" ] || compiler=$(c++ --version 2>/dev/null | head -n1 || echo '?')
march=$(grep -o -m1 -- '-march=[^ "]*' build-release/compile_commands.json 2>/dev/null || true)
B_CPU=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: *//')
B_NPROC=$(nproc)
B_MEM_KB=$(awk '/^MemTotal/ {print $2}' /proc/meminfo)
B_KERNEL=$(uname -sr)
export B_COMPILER="$compiler ${march:-} buildtype=$buildtype"
B_COMMIT=$(git describe --always --dirty 2>/dev/null || echo '?')
B_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
B_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
B_ISA=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_tile)$' | tr '\n' ' ' | sed 's/ $//' || true)
cmdline="bench/lenet5_vs_pytorch.sh --threads $threads --epochs $epochs --seeds $seeds"
[ "$long" = 0 ] || cmdline+=" --long"
[ "$long_epochs" = 15 ] || cmdline+=" --long-epochs $long_epochs"
[ "$latency_runs" = 1000 ] || cmdline+=" --latency-runs $latency_runs"
[ -z "$train_limit" ] || cmdline+=" --train-limit $train_limit"
[ "$peer_blas" = system ] || cmdline+=" --peer-blas $peer_blas"
# shellcheck disable=SC2089,SC2090  # a display string, never executed
[ -z "$peer_env_str" ] || cmdline+=" --peer-env '$peer_env_str'"
B_COMMAND=$cmdline
# shellcheck disable=SC2090
export B_CPU B_NPROC B_MEM_KB B_KERNEL B_COMMIT B_DATE B_LOAD B_ISA B_COMMAND
export B_THREADS=$threads B_EPOCHS=$epochs B_SEEDS=$seeds B_TRAIN_LIMIT=${train_limit:-} B_PEER_BLAS=$peer_blas
export B_PEER_ENV="${peer_prefix[*]}"
"$PY" -c '
import json, os
e = os.environ
print(json.dumps({"impl": "meta", "command": e["B_COMMAND"], "date": e["B_DATE"], "cpu": e["B_CPU"],
  "isa": e["B_ISA"], "nproc": int(e["B_NPROC"]), "mem_gib": round(int(e["B_MEM_KB"]) / 1048576, 1),
  "kernel": e["B_KERNEL"], "compiler": e["B_COMPILER"], "fleetdl_commit": e["B_COMMIT"],
  "loadavg_start": e["B_LOAD"], "threads": int(e["B_THREADS"]), "epochs": int(e["B_EPOCHS"]),
  "seeds": e["B_SEEDS"], "train_limit": e["B_TRAIN_LIMIT"] or None, "peer_blas": e["B_PEER_BLAS"],
  "peer_env": e["B_PEER_ENV"]}))' >> "$out"

# record RAW-JSON: tag one JSON object (one line) and append it to the results file
record() {
  local impl=$1 phase=$2 rep=$3 json=$4
  [[ $json == \{*\} ]] || { echo "lenet5_vs_pytorch: $impl $phase: no JSON object in output" >&2; exit 1; }
  printf '{"impl":"%s","phase":"%s","rep":%d,"data":%s}\n' "$impl" "$phase" "$rep" "$json" >> "$out"
}

limit_args=()
[ -z "$train_limit" ] || limit_args=(--train-limit "$train_limit")

n=${#seed_list[@]}
log "machine: $B_CPU, $B_NPROC cores, $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), load $B_LOAD"
log "plan: $n x (fleetdl train+eval, pytorch train+latency), $epochs epoch(s), $threads thread(s)$( [ $long = 1 ] && echo ", then fleetdl $long_epochs epochs")"
log "rough time on 2 cores: ~30 s per fleetdl epoch, 1-2 min per PyTorch epoch"

# --- the side-by-side runs: fleetdl, pytorch, fleetdl, pytorch, ... ------------
rep=0
for seed in "${seed_list[@]}"; do
  rep=$((rep + 1))
  log "[$rep/$n] fleetdl train (seed $seed)"
  j=$("$FLEETDL" train --dataset fashion-mnist --data-dir "$DATA_DIR" --model lenet5 --epochs "$epochs" --batch 64 \
        --optimizer adam --lr 0.001 --threads "$threads" --seed "$seed" "${limit_args[@]}" \
        --out "$tmp/lenet5-$seed.fdl" --json --no-progress)
  record fleetdl train "$rep" "$j"
  log "[$rep/$n] fleetdl eval (batch-1 latency, $latency_runs runs)"
  j=$("$FLEETDL" eval "$tmp/lenet5-$seed.fdl" --dataset fashion-mnist --data-dir "$DATA_DIR" --threads "$threads" \
        --json --latency-runs "$latency_runs")
  record fleetdl eval "$rep" "$j"
  log "[$rep/$n] pytorch train + batch-1 latency (seed $seed)"
  j=$(env "${peer_prefix[@]}" "$PY" bench/pytorch_lenet5.py --threads "$threads" --seed "$seed" --epochs "$epochs" \
        --latency-runs "$latency_runs" --data-dir "$DATA_DIR" "${limit_args[@]}")
  record pytorch train "$rep" "$j"
done

if [ "$long" = 1 ]; then
  log "fleetdl train, $long_epochs epochs (seed ${seed_list[0]}) — about $((long_epochs * 30 / 60 + 1)) min on 2 cores"
  j=$("$FLEETDL" train --dataset fashion-mnist --data-dir "$DATA_DIR" --model lenet5 --epochs "$long_epochs" --batch 64 \
        --optimizer adam --lr 0.001 --threads "$threads" --seed "${seed_list[0]}" "${limit_args[@]}" \
        --out "$tmp/lenet5-long.fdl" --json --no-progress)
  record fleetdl long 1 "$j"
fi
echo "{\"impl\":\"meta-end\",\"loadavg_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"date\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}" >> "$out"

# --- summary -----------------------------------------------------------------
"$PY" - "$out" <<'PY'
import json, statistics, sys

path = sys.argv[1]
rows = [json.loads(l) for l in open(path) if l.strip()]
meta = next(r for r in rows if r["impl"] == "meta")
end = next((r for r in rows if r["impl"] == "meta-end"), {})
def pick(impl, phase):
    return [r["data"] for r in rows if r["impl"] == impl and r.get("phase") == phase]
ft, fe, pt, fl = pick("fleetdl", "train"), pick("fleetdl", "eval"), pick("pytorch", "train"), pick("fleetdl", "long")
med = lambda xs: statistics.median(xs)
def col(xs, k): return [x[k] for x in xs]

f_ips, p_ips = med(col(ft, "train_images_per_second")), med(col(pt, "train_images_per_second"))
f_sec, p_sec = med(col(ft, "train_seconds")), med(col(pt, "train_seconds"))
f_lat, p_lat = med(col(fe, "latency_b1_ms")), med(col(pt, "latency_b1_ms"))
f_acc, p_acc = med(col(ft, "test_accuracy")) * 100, med(col(pt, "test_accuracy")) * 100
tput, lat, dacc = f_ips / p_ips, f_lat / p_lat, f_acc - p_acc
mark = lambda ok: "yes" if ok else "NO"
dry = meta.get("train_limit")
E = meta["epochs"]
blas = pt[0].get("blas") or "?"

warn = []
if dry:
    warn.append(f"DRY RUN: --train-limit {dry}; the figures are NOT comparable with the targets")
if {x["threads"] for x in ft + fe} != {x["threads"] for x in pt} or len({x["threads"] for x in ft + fe + pt}) != 1:
    warn.append("thread counts differ between fleetdl and PyTorch")
if {x["params"] for x in ft} != {x["params"] for x in pt}:
    warn.append(f"parameter counts differ: fleetdl {ft[0]['params']}, pytorch {pt[0]['params']}")
load1 = float(meta["loadavg_start"].split()[0])
if load1 >= 0.5:
    warn.append(f"the machine was busy before the benchmark started (1-min load {load1:.2f} on {meta['nproc']} cores): "
                "timings are unreliable, and OpenMP (PyTorch) collapses under oversubscription far more than "
                "fleetdl's pool; rerun on a quiet machine")
if "/blas/" in blas:
    warn.append(f"PyTorch's Linear layers ran on the netlib reference BLAS ({blas}); "
                "see --peer-blas openblas")

print()
print(f"lenet5 vs PyTorch — {meta['date']}")
print(f"  machine : {meta['cpu']} ({meta['isa']}), nproc {meta['nproc']}, {meta['mem_gib']} GiB, {meta['kernel']}")
print(f"  load    : {meta['loadavg_start']} at start, {end.get('loadavg_end', '?')} at end (1/5/15 min)")
print(f"  fleetdl : {meta['fleetdl_commit']}, {meta['compiler']}")
print(f"  pytorch : torch {pt[0]['torch_version']}, python {pt[0]['python']}, {pt[0].get('cpu_capability')}, "
      f"BLAS {blas}{', env ' + meta['peer_env'] if meta['peer_env'] else ''}")
print(f"  runs    : {len(ft)} x (fleetdl, pytorch) alternately, seeds {meta['seeds']}, {meta['threads']} thread(s), "
      f"{E} epoch(s), {ft[0]['train_images']} train / {ft[0]['test_images']} test images, medians below")
print(f"  command : {meta['command']}")
print()
fmt = "{:<34} {:>12} {:>12} {:>14}  {}"
print(fmt.format("metric", "fleetdl", "pytorch", "ratio/diff", "target"))
print(fmt.format("train images/s", f"{f_ips:.0f}", f"{p_ips:.0f}", f"{tput:.2f}x",
                 f">= 1.0x (aim 1.5x): {mark(tput >= 1.0)}"))
print(fmt.format(f"train seconds ({E} epoch)", f"{f_sec:.1f}", f"{p_sec:.1f}", f"{f_sec / p_sec:.2f}x", ""))
print(fmt.format("batch-1 latency ms", f"{f_lat:.3f}", f"{p_lat:.3f}", f"{lat:.2f}x", f"<= 0.5x: {mark(lat <= 0.5)}"))
print(fmt.format(f"test accuracy % ({E} epoch)", f"{f_acc:.2f}", f"{p_acc:.2f}", f"{dacc:+.2f} pt",
                 f"|diff| <= 1 pt: {mark(abs(dacc) <= 1.0)}"))
if fl:
    la = fl[0]["test_accuracy"] * 100
    print(fmt.format(f"fleetdl test accuracy % ({fl[0]['epochs']} ep)", f"{la:.2f}", "", "",
                     f">= 91%: {mark(la >= 91.0)} ({fl[0]['train_seconds']:.0f} s)"))
print()
print("per run:")
for i, (a, b, c) in enumerate(zip(ft, fe, pt)):
    print(f"  seed {a['seed']}: fleetdl {a['train_images_per_second']:.0f} img/s, {b['latency_b1_ms']:.3f} ms, "
          f"{a['test_accuracy'] * 100:.2f}% | pytorch {c['train_images_per_second']:.0f} img/s, "
          f"{c['latency_b1_ms']:.3f} ms ({c['latency_b1_mode']}; no_grad {c['latency_b1_no_grad_ms']:.3f}, "
          f"inference_mode {c['latency_b1_inference_mode_ms']:.3f}), {c['test_accuracy'] * 100:.2f}%")
for w in warn:
    print(f"WARNING: {w}")
print()
print("markdown for docs/benchmarks.md:")
print()
print(f"Command: `{meta['command']}`  ")
print(f"Machine: {meta['cpu']}, {meta['nproc']} cores ({meta['isa']}), {meta['mem_gib']} GiB, {meta['kernel']}; "
      f"load {meta['loadavg_start']} → {end.get('loadavg_end', '?')}  ")
print(f"fleetdl {meta['fleetdl_commit']}, {meta['compiler']}; PyTorch {pt[0]['torch_version']} (Debian python3-torch, "
      f"{pt[0].get('cpu_capability')}, BLAS `{blas}`), Python {pt[0]['python']}  ")
print(f"Date: {meta['date']}; {meta['threads']} thread(s) each; medians of {len(ft)} alternating runs per side"
      f"{' (DRY RUN, train-limit ' + str(dry) + ')' if dry else ''}")
print()
print("| Metric | fleetdl | PyTorch | fleetdl vs PyTorch | Target | Met |")
print("|---|---:|---:|---:|---|:-:|")
print(f"| Training throughput, {E} epoch (images/s) | {f_ips:.0f} | {p_ips:.0f} | {tput:.2f}x | ≥ 1.0x (aim 1.5x) | {mark(tput >= 1.0)} |")
print(f"| Training time, {E} epoch (s) | {f_sec:.1f} | {p_sec:.1f} | {f_sec / p_sec:.2f}x | — | — |")
print(f"| Batch-1 inference latency (ms) | {f_lat:.3f} | {p_lat:.3f} | {lat:.2f}x | ≤ 0.5x | {mark(lat <= 0.5)} |")
print(f"| Test accuracy after {E} epoch (%) | {f_acc:.2f} | {p_acc:.2f} | {dacc:+.2f} pt | within ±1 pt | {mark(abs(dacc) <= 1.0)} |")
if fl:
    la = fl[0]["test_accuracy"] * 100
    print(f"| Test accuracy after {fl[0]['epochs']} epochs (%) | {la:.2f} | — | — | ≥ 91% | {mark(la >= 91.0)} |")
print()
print(f"raw results: {path}")
PY
