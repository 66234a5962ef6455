#!/usr/bin/env bash
# Proxy CPU per request over a fixed count of requests, for an A/B of
# strait binaries: steadier than a timed closed loop for a small change,
# because each binary is measured on the same work (user + system time
# from /proc/PID/stat, 10 ms ticks) rather than on what it managed to do
# in a time window shared with the load generator.
#
#   benches/load/cpu-ab.sh [--mode h1|h2] [--rounds R] [--requests N] BIN...
#
# Every BIN runs at once (one worker each) in front of one nginx; each
# round sends N requests through each binary in turn (h1: h2load --h1,
# 50 connections, one request in flight each; h2: h2c, 10 connections x
# 10 streams) and prints microseconds of proxy CPU per request, one
# column per binary. Run it twice with the binaries in both orders to
# cancel the order's bias; compare columns within a round. Bounded: R
# rounds of N requests; every process is killed by PID on exit.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
MODE=h1 ROUNDS=4 N=200000
while [[ $# -gt 0 ]]; do
  case "$1" in
    --mode) MODE=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    --requests) N=$2; shift 2;;
    -h|--help) sed -n '2,16p' "$0"; exit 0;;
    -*) echo "unknown argument $1" >&2; exit 2;;
    *) break;;
  esac
done
[[ $# -ge 1 ]] || { echo "give at least one strait binary" >&2; exit 2; }
for tool in nginx h2load python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
TMP=$(mktemp -d "${TMPDIR:-/tmp}/strait-cpuab.XXXXXX")
declare -a PIDS=() PORTS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port)
ok_upstream "$TMP/nginx" "$up" 1024
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" & PIDS+=("$!")
i=0
for bin in "$@"; do
  port=$(free_port)
  printf 'log: {level: warn}\nruntime: {worker_threads: 1}\nlisteners:\n  outbound: {address: 127.0.0.1, port: %s, default_cluster: app}\n  inbound: {address: 127.0.0.1, port: 0}\n  admin: {address: 127.0.0.1, port: 0}\nclusters:\n  - name: app\n    protocol: http1\n    endpoints: [{address: "127.0.0.1:%s"}]\n' \
    "$port" "$up" > "$TMP/strait$i.yaml"
  "$bin" run --config "$TMP/strait$i.yaml" > "$TMP/strait$i.log" 2>&1 & PIDS+=("$!")
  PORTS+=("$port"); i=$((i + 1))
done
sleep 1.5
load() { # N PORT
  if [[ $MODE == h1 ]]; then h2load --h1 -c 50 -m 1 -n "$1" "http://127.0.0.1:$2/"
  else h2load -c 10 -m 10 -n "$1" "http://127.0.0.1:$2/"; fi
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "# $MODE, $N requests per binary per round; proxy CPU us/request: $*"
for j in $(seq 0 $((i - 1))); do load 20000 "${PORTS[$j]}" > /dev/null; done  # warm-up
for r in $(seq "$ROUNDS"); do
  line="round $r:"
  for j in $(seq 0 $((i - 1))); do
    pid=${PIDS[$((j + 1))]}
    before=$(cpu_ticks "$pid")
    load "$N" "${PORTS[$j]}" | grep -q "status codes: $N 2xx" || line="$line (errors)"
    after=$(cpu_ticks "$pid")
    line="$line $(awk -v a="$before" -v b="$after" -v n="$N" 'BEGIN { printf "%.2f", (b - a) * 1e4 / n }')"
  done
  echo "$line"
done
