#!/bin/bash
# Diagnostic: does the journal's fsync pay for the alias files' metadata on the same file system?
# Same aliasd build twice: journal on the store's disk vs journal on tmpfs (/dev/shm); store on disk for both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/profiling/aliasd}
W=$PWD/target/coupling; S=/dev/shm/aliasd-coupling
. benches/settle.sh
remove_and_settle "$W" "$S"; mkdir -p "$W" "$S"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$S"' EXIT
start() { # NAME JOURNAL PORT
  local m=$W/$1/models/manifests/registry.ollama.ai/library/m
  mkdir -p "$m" "$W/$1/models/blobs"
  printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":1},"layers":[]}' > "$m/latest"
  "$BIN" serve --models "$W/$1/models" --journal "$2" --listen 127.0.0.1:$3 2> "$W/$1.log" & PIDS+=($!)
}
start disk "$W/disk/journal" 19881; DISK=$!
start shm "$S/journal" 19882; SHM=$!
sleep 2
ticks() { awk '{print $14+$15+$16+$17}' /proc/$1/stat; }
run() { # PID PORT C
  local c0 c1 out rps p99
  c0=$(ticks $1)
  out=$(wrk -t2 -c$3 -d10s --latency -s benches/wrk/aliasd_put.lua http://127.0.0.1:$2)
  c1=$(ticks $1)
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  cpu=$(python3 -c "print(f'{($c1-$c0)*1e6/$(getconf CLK_TCK)/($rps*10):.0f}')")
  echo "$rps $p50 $p99 $cpu"
}
echo "| round | clients | journal on disk: req/s, p50, p99, CPU µs | journal on tmpfs: req/s, p50, p99, CPU µs |"
echo "|---:|---:|---|---|"
for r in 1 2 3; do for c in 16 64; do
  a=$(run $DISK 19881 $c); b=$(run $SHM 19882 $c)
  echo "| $r | $c | $a | $b |"
done; done
