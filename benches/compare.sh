#!/usr/bin/env bash
# Whole-system benchmarks of aliasd beside its anchors, in one run on this machine:
#   - creates: durable creates over HTTP (wrk), aliasd vs etcd 3.4 (Debian's etcd-server,
#     POST /v3/kv/put on its JSON gateway, data dir on the same disk): 1 client once, then
#     ROUNDS interleaved rounds at 16 and at 64 clients (aliasd, etcd, aliasd, etcd, ...; the
#     ratio is the median of the rounds), each load with the server's CPU per request (user +
#     system of the whole process, /proc/<pid>/stat), beside a create's floor measured in the
#     same run (skipped with FLOOR=0): one alias file (`cargo bench --bench floor --
#     --files-only`, at the start of every round), one journal record in groups of the size aliasd committed at that many
#     clients (`-- --journal-only <group>`, the group size from aliasd's /metrics: events /
#     commits over its loads) and one HTTP request of a create's shape to a trivial axum
#     handler at the same concurrency (`-- --http-only <clients>`), and their sum.
#     BEFORE_BIN=<an older aliasd> adds that build to every round, on a store of its own, for a
#     before/after in one run;
#   - resolve: GET /api/resolve vs an axum hello-world route (examples/hello.rs), same machine, same
#     load, in ROUNDS rounds of hello, resolve, resolve, hello (the machine drifts within a run, and
#     one pair of runs can differ by half); the ratio is the median of the rounds;
#   - mixed: GET /api/resolve at 32 connections alone, then while 16 clients create aliases
#     (benches/wrk/aliasd_put.lua), then alone again; resolve's p99 under writes vs alone.
# Prints a markdown table per part. Installs wrk (and etcd-server, for creates) from Debian if
# missing, starts every server on loopback, and stops only what it started.
#
#   benches/compare.sh            # every part; DURATION=10 seconds per load, ROUNDS=3
#   DURATION=5 ROUNDS=5 benches/compare.sh
#   PARTS=resolve benches/compare.sh                       # only the resolve vs hello-world part
#   PARTS="resolve mixed" ALIASD_BIN=/tmp/old/aliasd benches/compare.sh   # another aliasd build
#   HELLO_BIN=/tmp/old/hello benches/compare.sh            # another hello-world build (the anchor)
#   PARTS=creates BEFORE_BIN=/tmp/old/aliasd benches/compare.sh   # creates, before vs after vs etcd
#   CARGO_PROFILE=profiling ...    # the floor bench built with that cargo profile (not `bench`)
#   FRESH_ROUNDS=1 ...             # every round of creates on fresh data, caches dropped (below)
#   AL_PORT=, HELLO_PORT=, BEFORE_PORT=, ETCD_PORT=, ETCD_PEER=    # other ports
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
PARTS=${PARTS:-creates resolve mixed}
ALIASD_BIN=${ALIASD_BIN:-}
HELLO_BIN=${HELLO_BIN:-}
BEFORE_BIN=${BEFORE_BIN:-}
FLOOR=${FLOOR:-1}
WORK=$ROOT/target/compare
AL_PORT=${AL_PORT:-19600} HELLO_PORT=${HELLO_PORT:-19601} BEFORE_PORT=${BEFORE_PORT:-19602}
ETCD_PORT=${ETCD_PORT:-23790} ETCD_PEER=${ETCD_PEER:-23800}

part() { [[ " $PARTS " == *" $1 "* ]]; }
need() { command -v "$1" >/dev/null 2>&1; }
PACKAGES=()
need wrk || PACKAGES+=(wrk)
if part creates && ! need etcd; then PACKAGES+=(etcd-server); fi
if [ ${#PACKAGES[@]} -gt 0 ]; then
  echo "installing ${PACKAGES[*]} from Debian's packages..." >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
fi

if [ -z "$ALIASD_BIN" ] || [ -z "$HELLO_BIN" ]; then
  echo "building release binaries..." >&2
  cargo build --release --quiet --bin aliasd --example hello
fi
ALIASD_BIN=${ALIASD_BIN:-$ROOT/target/release/aliasd}
HELLO_BIN=${HELLO_BIN:-$ROOT/target/release/examples/hello}

# The previous run's store (100k+ alias directories) is deleted before this run, and the
# deletion settled (benches/settle.sh says why), so that no round measures the last run's cleanup.
. benches/settle.sh
remove_and_settle "$WORK" "$WORK".old.* "$ROOT"/target/tmp/aliasd-floor* "$ROOT"/target/tmp/create-cpu
PIDS=()
# Each alias directory holds an inotify watch, and the limit on watches is per user: the
# servers of a run (aliasd, and the before build) make several hundred thousand aliases between
# them, past the usual limit, after which aliasd warns and polls the whole store instead, and the
# later rounds would measure those polls, not creates. As root the limit is raised for the run
# (to WATCHES, as an operator of a store this size would) and put back at exit; otherwise, and
# whenever a server's log says the limit was reached, the report says so.
WATCHES_FILE=/proc/sys/fs/inotify/max_user_watches
WATCHES_BEFORE=$(cat "$WATCHES_FILE" 2>/dev/null || echo 0)
WATCHES=${WATCHES:-4194304}
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$(cat "$WATCHES_FILE" 2>/dev/null || echo 0)" != "$WATCHES_BEFORE" ]; then
    echo "$WATCHES_BEFORE" > "$WATCHES_FILE" || true
  fi
}
trap cleanup EXIT
if part creates && [ "$WATCHES_BEFORE" -lt "$WATCHES" ]; then
  if [ "$(id -u)" = 0 ] && echo "$WATCHES" > "$WATCHES_FILE" 2>/dev/null; then
    echo "fs.inotify.max_user_watches raised from $WATCHES_BEFORE to $WATCHES for this run" >&2
  else
    echo "warning: fs.inotify.max_user_watches is $WATCHES_BEFORE; once the aliases of this run pass it, aliasd polls its store (run as root to raise it for the run)" >&2
  fi
fi

mkdir -p "$WORK"
MANIFEST='{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":1},"layers":[]}'
# new_store DIR -> a store at DIR/models holding the model `m`
new_store() {
  mkdir -p "$1/models/manifests/registry.ollama.ai/library/m" "$1/models/blobs"
  printf '%s' "$MANIFEST" > "$1/models/manifests/registry.ollama.ai/library/m/latest"
}
wait_for() { for _ in $(seq 100); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }
# start_servers DIR: aliasd (and the before build, and etcd, for creates) on fresh data under DIR
start_servers() {
  local dir=$1
  new_store "$dir"
  "$ALIASD_BIN" serve --models "$dir/models" --journal "$dir/journal" \
    --listen 127.0.0.1:$AL_PORT 2>> "$WORK/aliasd.log" & PIDS+=($!)
  AL_PID=$!
  if part creates && [ -n "$BEFORE_BIN" ]; then
    new_store "$dir/before"
    "$BEFORE_BIN" serve --models "$dir/before/models" --journal "$dir/before/journal" \
      --listen 127.0.0.1:$BEFORE_PORT 2>> "$WORK/aliasd-before.log" & PIDS+=($!)
    BEFORE_PID=$!
  fi
  if part creates; then
    etcd --name bench --data-dir "$dir/etcd" \
      --listen-client-urls http://127.0.0.1:$ETCD_PORT --advertise-client-urls http://127.0.0.1:$ETCD_PORT \
      --listen-peer-urls http://127.0.0.1:$ETCD_PEER --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER \
      --initial-cluster bench=http://127.0.0.1:$ETCD_PEER >> "$WORK/etcd.log" 2>&1 & PIDS+=($!)
    ETCD_PID=$!
  fi
  wait_for http://127.0.0.1:$AL_PORT/healthz
  if part creates; then wait_for http://127.0.0.1:$ETCD_PORT/health; fi
  if [ -n "${BEFORE_PID:-}" ]; then wait_for http://127.0.0.1:$BEFORE_PORT/healthz; fi
  curl -sf -X PUT http://127.0.0.1:$AL_PORT/api/aliases/coder -d '{"target":"m"}' >/dev/null
}
# With FRESH_ROUNDS=1, each round of creates starts every server again on fresh data, after
# `sync` and dropping the kernel's caches (as root): every round then starts where the first
# did, instead of on the hundreds of thousands of aliases of the rounds before it (whose kernel
# memory, on this VM, makes each later file dearer: benches/README.md, "Fourth pass"). The
# earlier rounds' data is left on disk (settle.sh says why).
FRESH_ROUNDS=${FRESH_ROUNDS:-0}
fresh_round() { # ROUND
  [ "$FRESH_ROUNDS" = 1 ] || return 0
  local pid
  local stopped=" $AL_PID ${BEFORE_PID:-} ${ETCD_PID:-} " kept=()
  for pid in $stopped; do
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
  # Only the servers still running stay in PIDS, so that cleanup never kills a reused pid.
  for pid in "${PIDS[@]}"; do [[ "$stopped" == *" $pid "* ]] || kept+=("$pid"); done
  PIDS=("${kept[@]}")
  if [ "$(id -u)" = 0 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; sleep 3; fi
  start_servers "$WORK/round-$1"
}

start_servers "$WORK"
"$HELLO_BIN" 127.0.0.1:$HELLO_PORT & PIDS+=($!)
wait_for http://127.0.0.1:$HELLO_PORT/

# parse_wrk WRK_OUTPUT -> "req/s p50_ms p99_ms errors"
parse_wrk() {
  python3 - "$1" <<'PY'
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

# run_wrk CONNECTIONS URL [LUA] -> "req/s p50_ms p99_ms errors"
run_wrk() {
  local c=$1 url=$2 script=${3:-} threads=2
  [ "$c" -lt 2 ] && threads=1
  local out
  out=$(wrk -t$threads -c"$c" -d"${DURATION}s" --latency ${script:+-s "$script"} "$url")
  echo "$out" >> "$WORK/wrk.log"
  parse_wrk "$out"
}

# cpu_ticks PID -> user + system clock ticks of the whole process so far
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run_wrk_cpu PID CONNECTIONS URL LUA -> "req/s p50_ms p99_ms errors cpu_us_per_request"
# The server's CPU over the load (every thread, exited ones included), per request.
run_wrk_cpu() {
  local pid=$1 c0 c1 rps p50 p99 err
  c0=$(cpu_ticks "$pid")
  read -r rps p50 p99 err < <(run_wrk "$2" "$3" "$4")
  c1=$(cpu_ticks "$pid")
  echo "$rps $p50 $p99 $err $(python3 -c "print(f'{($c1 - $c0) * 1e6 / $(getconf CLK_TCK) / ($rps * $DURATION):.0f}')")"
}

median() { python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }

if part creates; then
echo
echo "## Durable creates over HTTP (${DURATION}s each; every response after fsync)"
echo
# floor ARGS... -> the floor bench's output (also kept in floor.log)
floor() { cargo bench --quiet --bench floor ${CARGO_PROFILE:+--profile "$CARGO_PROFILE"} -- "$@" 2>/dev/null | tee -a "$WORK/floor.log"; }
# The floor of one alias file (mkdir, temp file, write, rename; one thread, no aliasd) is
# measured at the start of every round, beside the servers' CPU per create in it: the kernel's
# cost of a new inode and page grows as a run fills the disk and memory (on this VM, memory the
# host took back costs more to touch), and the floor must pay what aliasd pays in the same
# round. The journal's and HTTP's parts follow the rounds (the journal's needs the group size
# aliasd committed). The floor's files are kept until the next run (see benches/settle.sh).
declare -A FILE_AT_ROUND
file_floor() { # ROUND
  [ "$FLOOR" = 1 ] || return 0
  FILE_AT_ROUND[$1]=$(floor --files-only | sed -n 's/^  median \([0-9.]*\) us CPU.*/\1/p')
}
# commit_counts PORT -> "events commits" so far (aliasd's /metrics)
commit_counts() {
  curl -sf "http://127.0.0.1:$1/metrics" | awk '
    /^aliasd_events_total/ { events += $NF }
    /^aliasd_journal_commit_seconds_count/ { commits += $NF }
    END { print events + 0, commits + 0 }'
}
echo "CPU = the server's CPU (user + system, every thread) per request, in µs."
if [ "$FRESH_ROUNDS" = 1 ]; then
  echo "Each round of creates on fresh data for every server, the kernel's caches dropped before it (FRESH_ROUNDS=1)."
else
  echo "Every server keeps its data through all rounds."
fi
echo
echo "| round | clients | aliasd req/s | p50 ms | p99 ms | CPU | etcd req/s | p50 ms | p99 ms | CPU | aliasd/etcd | errors (aliasd, etcd) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
declare -A RATIOS_AT CPU_AT P99_AT BRATIOS_AT BCPU_AT BP99_AT GROUP_AT FLOOR_RATIOS_AT
BEFORE_ROWS=""
create_round() { # ROUND CLIENTS
  local round=$1 c=$2 b_rps b_p50 b_p99 b_err b_cpu
  # The before build goes first in odd rounds and after aliasd in even ones: the file system
  # grows slower over a run, and neither build should always meet it first.
  before_load() {
    [ -n "${BEFORE_PID:-}" ] || return 0
    read -r b_rps b_p50 b_p99 b_err b_cpu < <(run_wrk_cpu "$BEFORE_PID" "$c" http://127.0.0.1:$BEFORE_PORT benches/wrk/aliasd_put.lua)
  }
  [ $((round % 2)) = 0 ] || before_load
  read -r ev0 co0 < <(commit_counts "$AL_PORT")
  read -r a_rps a_p50 a_p99 a_err a_cpu < <(run_wrk_cpu "$AL_PID" "$c" http://127.0.0.1:$AL_PORT benches/wrk/aliasd_put.lua)
  read -r ev1 co1 < <(commit_counts "$AL_PORT")
  [ $((round % 2)) = 1 ] || before_load
  GROUP_AT[$c]+="$(python3 -c "print(f'{($ev1 - $ev0) / max(1, $co1 - $co0):.1f}')") "
  read -r e_rps e_p50 e_p99 e_err e_cpu < <(run_wrk_cpu "$ETCD_PID" "$c" http://127.0.0.1:$ETCD_PORT benches/wrk/etcd_put.lua)
  ratio=$(python3 -c "print(f'{$a_rps/$e_rps:.2f}')")
  echo "| $round | $c | $a_rps | $a_p50 | $a_p99 | $a_cpu | $e_rps | $e_p50 | $e_p99 | $e_cpu | ${ratio}x | $a_err, $e_err |"
  RATIOS_AT[$c]+="$ratio "; CPU_AT[$c]+="$a_cpu "; P99_AT[$c]+="$a_p99 "
  if [ -n "${BEFORE_PID:-}" ]; then
    bratio=$(python3 -c "print(f'{$b_rps/$e_rps:.2f}')")
    BRATIOS_AT[$c]+="$bratio "; BCPU_AT[$c]+="$b_cpu "; BP99_AT[$c]+="$b_p99 "
    BEFORE_ROWS+="| $round | $c | $b_rps | $b_p50 | $b_p99 | $b_cpu | $e_rps | ${bratio}x | $b_err |"$'\n'
  fi
}
# first_touch -> µs per page of the first touch of new memory (see the floor bench's part 5)
first_touch() { floor --touch-only | sed -n 's/^part 5: .* \([0-9.]*\) us per page$/\1/p'; }
TOUCH_BEFORE=""; TOUCH_AFTER=""
[ "$FLOOR" = 1 ] && TOUCH_BEFORE=$(first_touch)
file_floor 0
create_round 1 1
for round in $(seq "$ROUNDS"); do
  # Round 1 goes on from the 1-client load, whose few aliases change nothing.
  [ "$round" = 1 ] || fresh_round "$round"
  file_floor "$round"
  for c in 16 64; do create_round "$round" "$c"; done
done
[ "$FLOOR" = 1 ] && TOUCH_AFTER=$(first_touch)
if [ -n "$BEFORE_ROWS" ]; then
  echo
  echo "Before ($BEFORE_BIN), run just before aliasd in odd rounds and just after it in even ones, against the same etcd load:"
  echo
  echo "| round | clients | before req/s | p50 ms | p99 ms | CPU | etcd req/s | before/etcd | errors |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  printf '%s' "$BEFORE_ROWS"
fi
echo
if [ "$FLOOR" = 1 ]; then
  echo "A create's floor (same run; µs of CPU): the alias file at the start of each round (\`--files-only\`, median of its 3 rounds of 10,000), one journal record in groups of aliasd's median group size at that concurrency (\`--journal-only\`), one HTTP request to a trivial axum handler (\`--http-only\`):"
  echo
  echo "file, per round (0: before the 1-client load): $(for r in $(seq 0 "$ROUNDS"); do printf '%s ' "${FILE_AT_ROUND[$r]:-?}"; done)"
  echo
  echo "first touch of a new 4 KiB page (\`--touch-only\`; an alias file needs new kernel memory): ${TOUCH_BEFORE:-?} µs before the rounds, ${TOUCH_AFTER:-?} µs after them"
  echo
  echo "| clients | aliasd's group size, per round | journal record | HTTP request | floor per round (file + journal + HTTP) | aliasd's CPU / floor, per round |"
  echo "|---:|---|---:|---:|---|---|"
  for c in 16 64; do
    # shellcheck disable=SC2086
    group=$(python3 -c "import statistics, sys; print(max(1, round(statistics.median(map(float, sys.argv[1:])))))" ${GROUP_AT[$c]})
    journal_us=$(floor --journal-only "$group" | sed -n 's/.*: \([0-9.]*\) us CPU per record.*/\1/p')
    http_us=$(floor --http-only "$c" | sed -n 's/.*: \([0-9.]*\) us CPU per request.*/\1/p')
    read -r -a cpus <<< "${CPU_AT[$c]}"
    floors="" ratios=""
    for r in $(seq "$ROUNDS"); do
      f=$(python3 -c "print(f'{${FILE_AT_ROUND[$r]:-nan} + ${journal_us:-nan} + ${http_us:-nan}:.1f}')")
      floors+="$f "; ratios+="$(python3 -c "print(f'{${cpus[$((r - 1))]} / $f:.2f}')") "
    done
    FLOOR_RATIOS_AT[$c]=$ratios
    echo "| $c | ${GROUP_AT[$c]}(used: $group) | ${journal_us:-?} | ${http_us:-?} | $floors| $ratios|"
  done
  echo
fi
for c in 16 64; do
  # shellcheck disable=SC2086
  echo "$c clients, median of $ROUNDS rounds: aliasd/etcd $(median ${RATIOS_AT[$c]})x, aliasd p99 $(median ${P99_AT[$c]}) ms, CPU per create $(median ${CPU_AT[$c]}) µs${FLOOR_RATIOS_AT[$c]:+, $(median ${FLOOR_RATIOS_AT[$c]})x the floor of its round}"
  if [ -n "${BEFORE_PID:-}" ]; then
    # shellcheck disable=SC2086
    echo "$c clients, before: before/etcd $(median ${BRATIOS_AT[$c]})x, p99 $(median ${BP99_AT[$c]}) ms, CPU per create $(median ${BCPU_AT[$c]}) µs"
  fi
done
fi

if part resolve; then
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
fi

if part mixed; then
echo
echo "## Resolve under writes (32 resolve connections, ${DURATION}s each: alone, beside 16 clients creating aliases, alone)"
echo
# The creates start a second before the resolves and end a second after, so that every
# resolve of the mixed run meets them.
read -r s1_rps _ s1_p99 s1_err < <(run_wrk 32 http://127.0.0.1:$AL_PORT/api/resolve/coder)
wrk -t1 -c16 -d"$((DURATION + 2))s" --latency -s benches/wrk/aliasd_put.lua \
  http://127.0.0.1:$AL_PORT > "$WORK/mixed-creates.txt" & CREATES=$!
sleep 1
read -r m_rps _ m_p99 m_err < <(run_wrk 32 http://127.0.0.1:$AL_PORT/api/resolve/coder)
wait "$CREATES"
cat "$WORK/mixed-creates.txt" >> "$WORK/wrk.log"
read -r c_rps _ c_p99 c_err < <(parse_wrk "$(cat "$WORK/mixed-creates.txt")")
read -r s2_rps _ s2_p99 s2_err < <(run_wrk 32 http://127.0.0.1:$AL_PORT/api/resolve/coder)
echo "| run | resolve req/s | resolve p99 ms | creates/s (16 clients) | create p99 ms |"
echo "|---|---:|---:|---:|---:|"
echo "| alone | $s1_rps | $s1_p99 | | |"
echo "| beside creates | $m_rps | $m_p99 | $c_rps | $c_p99 |"
echo "| alone, after | $s2_rps | $s2_p99 | | |"
echo
echo "resolve p99 beside creates / alone (mean of the two) = $(python3 -c "print(f'{$m_p99 / (($s1_p99 + $s2_p99) / 2):.2f}x')")"
[ "$s1_err$m_err$s2_err$c_err" = 0000 ] || echo "errors: resolve $s1_err, $m_err, $s2_err; creates $c_err" >&2
fi
echo
echo "aliasd at the end of the run (the last round's server with FRESH_ROUNDS=1): $(curl -s http://127.0.0.1:$AL_PORT/healthz)"
for log in "$WORK/aliasd.log" "$WORK/aliasd-before.log"; do
  if [ -f "$log" ] && grep -q "limit on file watches is reached" "$log"; then
    echo "**warning**: $(basename "$log") says the limit on inotify watches was reached: from then on that server polled its store, and its later rounds measure that too"
  fi
done
echo "fs.inotify.max_user_watches during the run: $(cat "$WATCHES_FILE" 2>/dev/null || echo unknown)"
