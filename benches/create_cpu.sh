#!/usr/bin/env bash
# Where a durable create's CPU goes, thread by thread, for two aliasd builds side by side:
#   benches/create_cpu.sh BIN_A BIN_B      # e.g. an older build's aliasd, then target/profiling/aliasd
#   benches/create_cpu.sh BIN etcd         # aliasd against etcd's durable puts (Debian's etcd-server),
#                                          # each on a fresh data dir, in the same state
# Each build serves a fresh store of its own (never deleted here: on ext4 without a journal a
# deletion slows the next run's inode allocation, see benches/settle.sh) and takes CLIENTS=64
# clients creating one alias per request (benches/wrk/aliasd_put.lua) for DURATION=8 seconds, in PAIRS=3
# pairs alternating A, B, A, B, ... For each load it prints creates/s, p99, and, per thread name
# (threads of the same name summed, exited ones in TOTAL only), the CPU (user + system) and the
# user time per create, from /proc/<pid>/task/*/stat read before and after the load.
# As root, the kernel's caches are dropped before each load (DROP_CACHES=0 not to): on this VM the
# kernel memory a run's aliases take (inodes, dentries, pages) makes every later file dearer,
# and each load should start where the other did. The stores are left under STORES (default
# target/tmp/create-cpu) for `benches/settle.sh` to remove with the next compare.sh run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { sed -n '2,3p' "$0"; exit 2; }
A=$1 B=$2
CLIENTS=${CLIENTS:-64} DURATION=${DURATION:-8} PAIRS=${PAIRS:-3} PORT=${PORT:-19981}
STORES=${STORES:-$PWD/target/tmp/create-cpu}
DROP_CACHES=${DROP_CACHES:-1}
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
if [ "$A" = etcd ] || [ "$B" = etcd ]; then
  command -v etcd >/dev/null || { echo "etcd is needed (apt-get install etcd-server)" >&2; exit 1; }
fi
HZ=$(getconf CLK_TCK)

# snapshot PID -> "name total_ticks user_ticks" per thread, then TOTAL for the whole process
snapshot() {
  local t name stat
  for t in /proc/"$1"/task/*; do
    name=$(tr ' ' _ < "$t/comm" 2>/dev/null) || continue
    stat=$(cat "$t/stat" 2>/dev/null) || continue
    # Fields after the ")" that closes the name: utime is the 12th, stime the 13th.
    awk -v n="$name" '{ sub(/^.*\) /, ""); print n, $12 + $13, $12 }' <<< "$stat"
  done
  awk '{ sub(/^.*\) /, ""); print "TOTAL", $12 + $13, $12 }' "/proc/$1/stat"
}

one_load() { # BIN (or etcd)
  local bin=$1 store pid out n script=benches/wrk/aliasd_put.lua
  store=$STORES/$(date +%s%N)
  mkdir -p "$store/models/manifests/registry.ollama.ai/library/m" "$store/models/blobs"
  printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":1},"layers":[]}' \
    > "$store/models/manifests/registry.ollama.ai/library/m/latest"
  if [ "$DROP_CACHES" = 1 ] && [ "$(id -u)" = 0 ]; then
    sync; echo 3 > /proc/sys/vm/drop_caches; sleep 3
  fi
  if [ "$bin" = etcd ]; then
    script=benches/wrk/etcd_put.lua
    etcd --name bench --data-dir "$store/etcd" \
      --listen-client-urls http://127.0.0.1:"$PORT" --advertise-client-urls http://127.0.0.1:"$PORT" \
      --listen-peer-urls http://127.0.0.1:"$((PORT + 1))" --initial-advertise-peer-urls http://127.0.0.1:"$((PORT + 1))" \
      --initial-cluster bench=http://127.0.0.1:"$((PORT + 1))" > "$store/etcd.log" 2>&1 &
  else
    "$bin" serve --models "$store/models" --journal "$store/journal" \
      --listen 127.0.0.1:"$PORT" 2> "$store/aliasd.log" &
  fi
  pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  snapshot "$pid" > "$store/before"
  out=$(wrk -t2 -c"$CLIENTS" -d"${DURATION}s" --latency -s "$script" "http://127.0.0.1:$PORT")
  snapshot "$pid" > "$store/after"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  n=$(awk '/requests in/ { print $1 }' <<< "$out")
  echo "== $bin: $(awk '/Requests\/sec/ { print $2 }' <<< "$out") creates/s, p99 $(awk '$1 == "99%" { print $2 }' <<< "$out")"
  python3 - "$store/before" "$store/after" "$n" "$HZ" <<'PY'
import collections, sys
def read(path):
    threads = collections.defaultdict(lambda: [0, 0])
    for line in open(path):
        name, total, user = line.split()
        threads[name][0] += int(total)
        threads[name][1] += int(user)
    return threads
before, after = read(sys.argv[1]), read(sys.argv[2])
n, hz = int(sys.argv[3]), int(sys.argv[4])
for name in sorted(after, key=lambda k: -(after[k][0] - before[k][0])):
    total = (after[name][0] - before[name][0]) * 1e6 / hz / n
    user = (after[name][1] - before[name][1]) * 1e6 / hz / n
    if total >= 0.05:
        print(f"  {name:18s} {total:6.1f} us per create (user {user:5.1f})")
PY
}

for _ in $(seq "$PAIRS"); do
  one_load "$A"
  one_load "$B"
done
