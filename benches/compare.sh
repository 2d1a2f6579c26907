#!/usr/bin/env bash
# Whole-system benchmarks of aliasd beside its anchors, in one run on this machine:
#   - durable creates over HTTP at 1, 16 and 64 clients (wrk), aliasd vs etcd 3.4
#     (Debian's etcd-server, POST /v3/kv/put on its JSON gateway, data dir on the same disk);
#   - GET /api/resolve vs an axum hello-world route (examples/hello.rs), same machine, same load,
#     in ROUNDS rounds of hello, resolve, resolve, hello (the machine drifts within a run, and
#     one pair of runs can differ by half); the ratio is the median of the rounds.
# Prints a markdown table. Installs wrk and etcd-server from Debian if missing, starts every
# server on loopback, and stops only what it started.
#
#   benches/compare.sh            # DURATION=10 seconds per load
#   DURATION=5 ROUNDS=5 benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WORK=$ROOT/target/compare
AL_PORT=19600 HELLO_PORT=19601 ETCD_PORT=23790 ETCD_PEER=23800

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need etcd; then
  echo "installing wrk and etcd-server from Debian's packages..." >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq wrk etcd-server >/dev/null
fi

echo "building release binaries..." >&2
cargo build --release --quiet --bin aliasd --example hello

# The previous run's store (100k+ alias directories) is deleted only after this run has
# measured: right after deleting that many inodes, ext4 spends most of each mkdir/create
# skipping the "recently deleted" ones (find_inode_bit -> recently_deleted, for minutes),
# which would measure the last run's cleanup instead of this run.
OLD=""
if [ -e "$WORK" ]; then OLD="$WORK.old.$$"; mv "$WORK" "$OLD"; fi
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -z "$OLD" ] || rm -rf "$OLD"
}
trap cleanup EXIT

mkdir -p "$WORK"
MODEL_DIR=$WORK/models/manifests/registry.ollama.ai/library/m
mkdir -p "$MODEL_DIR" "$WORK/models/blobs"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":1},"layers":[]}' > "$MODEL_DIR/latest"

"$ROOT/target/release/aliasd" serve --models "$WORK/models" --journal "$WORK/journal" \
  --listen 127.0.0.1:$AL_PORT 2> "$WORK/aliasd.log" & PIDS+=($!)
"$ROOT/target/release/examples/hello" 127.0.0.1:$HELLO_PORT & PIDS+=($!)
etcd --name bench --data-dir "$WORK/etcd" \
  --listen-client-urls http://127.0.0.1:$ETCD_PORT --advertise-client-urls http://127.0.0.1:$ETCD_PORT \
  --listen-peer-urls http://127.0.0.1:$ETCD_PEER --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER \
  --initial-cluster bench=http://127.0.0.1:$ETCD_PEER > "$WORK/etcd.log" 2>&1 & PIDS+=($!)

wait_for() { for _ in $(seq 100); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }
wait_for http://127.0.0.1:$AL_PORT/healthz
wait_for http://127.0.0.1:$HELLO_PORT/
wait_for http://127.0.0.1:$ETCD_PORT/health
curl -sf -X PUT http://127.0.0.1:$AL_PORT/api/aliases/coder -d '{"target":"m"}' >/dev/null

# run_wrk CONNECTIONS URL [LUA] -> "req/s p50_ms p99_ms errors"
run_wrk() {
  local c=$1 url=$2 script=${3:-} threads=2
  [ "$c" -lt 2 ] && threads=1
  local out
  out=$(wrk -t$threads -c"$c" -d"${DURATION}s" --latency ${script:+-s "$script"} "$url")
  echo "$out" >> "$WORK/wrk.log"
  python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def ms(label):
    m = re.search(r"^\s*" + label + r"\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m: return float("nan")
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
errors = int(m.group(1)) if m else 0
m = re.search(r"Socket errors:.*", out)
print(f"{rps:.0f} {ms('50%'):.2f} {ms('99%'):.2f} {errors}")
PY
}

echo
echo "## Durable creates over HTTP (${DURATION}s each; every response after fsync)"
echo
echo "| clients | aliasd req/s | p50 ms | p99 ms | etcd req/s | p50 ms | p99 ms | aliasd/etcd | errors (aliasd, etcd) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for c in 1 16 64; do
  read -r a_rps a_p50 a_p99 a_err < <(run_wrk "$c" http://127.0.0.1:$AL_PORT benches/wrk/aliasd_put.lua)
  read -r e_rps e_p50 e_p99 e_err < <(run_wrk "$c" http://127.0.0.1:$ETCD_PORT benches/wrk/etcd_put.lua)
  ratio=$(python3 -c "print(f'{$a_rps/$e_rps:.2f}x')")
  echo "| $c | $a_rps | $a_p50 | $a_p99 | $e_rps | $e_p50 | $e_p99 | $ratio | $a_err, $e_err |"
done

echo
echo "## Resolve vs hello-world (32 connections, ${DURATION}s each, $ROUNDS rounds of hello, resolve, resolve, hello)"
echo
echo "| round | hello-world req/s | p99 ms | resolve req/s | p99 ms | resolve / hello-world |"
echo "|---:|---:|---:|---:|---:|---:|"
RATIOS=()
for round in $(seq "$ROUNDS"); do
  read -r h1_rps _ h1_p99 _ < <(run_wrk 32 http://127.0.0.1:$HELLO_PORT/)
  read -r r1_rps _ r1_p99 r1_err < <(run_wrk 32 http://127.0.0.1:$AL_PORT/api/resolve/coder)
  read -r r2_rps _ r2_p99 r2_err < <(run_wrk 32 http://127.0.0.1:$AL_PORT/api/resolve/coder)
  read -r h2_rps _ h2_p99 _ < <(run_wrk 32 http://127.0.0.1:$HELLO_PORT/)
  h_rps=$(( (h1_rps + h2_rps) / 2 )); r_rps=$(( (r1_rps + r2_rps) / 2 ))
  ratio=$(python3 -c "print(f'{$r_rps/$h_rps:.2f}')")
  RATIOS+=("$ratio")
  echo "| $round | $h1_rps, $h2_rps | $h1_p99, $h2_p99 | $r1_rps, $r2_rps | $r1_p99, $r2_p99 | ${ratio}x |"
  [ "$r1_err" = 0 ] && [ "$r2_err" = 0 ] || echo "resolve errors in round $round: $r1_err, $r2_err" >&2
done
echo
echo "resolve / hello-world, median of $ROUNDS rounds = $(python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}x')" "${RATIOS[@]}")"
echo
echo "aliases created in this run: $(curl -s http://127.0.0.1:$AL_PORT/healthz)"
