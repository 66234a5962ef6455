#!/usr/bin/env bash
# Instructions per request of one strait process, under valgrind's callgrind:
# repeatable where wall-clock CPU on this shared machine is not, so small
# per-request changes can be compared (A/B: run it once per binary).
#
#   benches/load/callgrind.sh [--bin PATH] [--case h1|h2|mesh-client|mesh-server]
#                             [--requests N] [--in-flight M] [--out DIR] [--by-crate]
#
# Cases (upstream: nginx answering `200 ok`; load: h2load, 10 connections):
#   h1           HTTP/1.1 client -> strait outbound -> HTTP/1.1 upstream
#   h2           h2c client -> strait outbound -> HTTP/1.1 upstream
#   mesh-client  HTTP/1.1 client -> strait outbound (profiled) -> mTLS HTTP/2
#                -> strait inbound -> upstream
#   mesh-server  the same hop with the inbound side profiled
# --in-flight is requests in flight per connection (HTTP/1.1 pipelined, h2
# streams); default 10 for h1/h2, 1 for the mesh cases (as wrk sends).
# Only the measured requests are counted (instrumentation is switched on
# after a warm-up of 500). Prints `Ir/request`; the profile is kept in
# --out for callgrind_annotate. --by-crate also prints each crate's own
# (self) instructions per request: generic code is counted in the crate
# whose function it was inlined into. Bounded: the load is a fixed count.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"
BIN=$ROOT/target/release/strait CASE=h1 N=20000 M="" OUT="" BY_CRATE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN=$2; shift 2;;
    --case) CASE=$2; shift 2;;
    --requests) N=$2; shift 2;;
    --in-flight) M=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --by-crate) BY_CRATE=1; shift;;
    -h|--help) sed -n '2,21p' "$0"; exit 0;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
case $CASE in h1|h2) M=${M:-10};; mesh-client|mesh-server) M=${M:-1};; *) echo "unknown case $CASE" >&2; exit 2;; esac
for tool in valgrind callgrind_annotate nginx h2load openssl curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y valgrind nginx-light nghttp2-client openssl curl)" >&2; exit 1; }
done
[[ -x $BIN ]] || { echo "no strait binary at $BIN (cargo build --release --bin strait)" >&2; exit 1; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/strait-cg.XXXXXX")
OUT=${OUT:-$TMP}; mkdir -p "$OUT"
declare -a PIDS=()
# (Under set -e, a kill of a process already gone would end the trap early
# and leave the rest running: hence the `|| true`.)
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [[ $OUT == "$TMP" || -n ${KEEP:-} ]] || rm -rf "$TMP"' EXIT
start() { ( exec "$@" ) >> "$TMP/log" 2>&1 & PIDS+=("$!"); LAST_PID=$!; }
wait_ok() { local i; for i in $(seq 150); do curl -s -m 5 "http://127.0.0.1:$1/" 2>/dev/null | grep -q ok && return 0; sleep 0.2; done; return 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port) front=$(free_port) inport=$(free_port)

ok_upstream "$TMP/nginx" "$up" 1024
start nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf"

pki=$TMP/pki; mesh_pki "$pki"
# side NAME: a strait config; `client` sends its outbound (on $front) to
# the inbound, `server` serves the inbound (on $inport) from the upstream,
# `plain` is the single hop.
side() {
  local identity="" outbound="{address: 127.0.0.1, port: 0}" inbound="{address: 127.0.0.1, port: 0}" cluster
  cluster="  - name: app
    protocol: http1
    endpoints: [{address: \"127.0.0.1:$up\"}]"
  case $1 in
    plain) outbound="{address: 127.0.0.1, port: $front, default_cluster: app}";;
    client) identity="identity: {certificate: $pki/client.crt, private_key: $pki/client.p8, trust_bundle: $pki/ca.pem}"
      outbound="{address: 127.0.0.1, port: $front, default_cluster: app}"
      cluster="  - name: app
    tls: {identity: \"spiffe://bench/server\"}
    endpoints: [{address: \"127.0.0.1:$inport\"}]";;
    server) identity="identity: {certificate: $pki/server.crt, private_key: $pki/server.p8, trust_bundle: $pki/ca.pem}"
      inbound="{address: 127.0.0.1, port: $inport, default_cluster: app}";;
  esac
  printf 'log: {level: warn}\nruntime: {worker_threads: 1}\n%s\nlisteners:\n  outbound: %s\n  inbound: %s\n  admin: {address: 127.0.0.1, port: 0}\nclusters:\n%s\n' \
    "$identity" "$outbound" "$inbound" "$cluster" > "$TMP/$1.yaml"
}
profiled() { # config name
  start valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" --instr-atstart=no \
    "$BIN" run --config "$TMP/$1.yaml"
  VG=$LAST_PID
}
case $CASE in
  h1|h2) side plain; profiled plain;;
  mesh-client) side client; side server; start "$BIN" run --config "$TMP/server.yaml"; profiled client;;
  mesh-server) side client; side server; profiled server; start "$BIN" run --config "$TMP/client.yaml";;
esac
wait_ok "$front" || { echo "the proxy did not answer:"; tail -5 "$TMP/log"; exit 1; }
load=(h2load -c 10 -m "$M"); [[ $CASE == h2 ]] || load+=(--h1)
"${load[@]}" -n 500 "http://127.0.0.1:$front/" > /dev/null
callgrind_control -i on "$VG" > /dev/null 2>&1
result=$("${load[@]}" -n "$N" "http://127.0.0.1:$front/" | grep "^status codes")
callgrind_control -i off "$VG" > /dev/null 2>&1
callgrind_control -d "$VG" > /dev/null 2>&1
kill "$VG"; wait "$VG" 2>/dev/null || true
profile=$(ls -t "$OUT"/callgrind.out.* | head -1)
ir=$(callgrind_annotate "$profile" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ {gsub(",","",$1); print $1}')
echo "# $CASE, $N requests ($M in flight per connection): $result"
echo "Ir/request $((ir / N))  (profile: $profile)"
if [[ $BY_CRATE == 1 ]]; then
  # Self cost per function -> its crate: the first path segment of the
  # symbol (trait impls `<T as Trait>` count for T's crate); symbols with
  # no path are C or assembly (jemalloc, ring's AES-GCM); libc by its file.
  callgrind_annotate --threshold=100 "$profile" 2>/dev/null | awk -v n="$N" '
    /^ *[0-9,]+ +\([ 0-9.]+%\) +[^ ]+:/ {
      ir = $1; gsub(",", "", ir)
      fn = $0; sub(/^ *[0-9,]+ +\([ 0-9.]+%\) +/, "", fn)
      if (fn ~ /libc\.so|^\.\//) crate = "libc (memcpy, ...)"
      else {
        sub(/^\?\?\?:/, "", fn); sub(/ \[[^]]*\]$/, "", fn); sub(/^<&?/, "", fn)
        if (fn !~ /::/) crate = "C, asm (jemalloc, AES)"
        else { split(fn, parts, /::|<| as /); crate = parts[1] }
        # `<E as hyper::...>`: a generic type, so count it for the trait crate.
        if (crate ~ /^[A-Z]$/ && split(fn, t, / as /) > 1) { split(t[2], q, /::/); crate = q[1] }
        if (crate ~ /^(core|alloc|std|str|u8|u16|u32|u64|usize)$/) crate = "core/alloc/std"
      }
      total[crate] += ir
    }
    END { for (c in total) printf "%d\t%s\n", total[c] / n, c }' |
    sort -t$'\t' -k1,1nr | awk -F'\t' '$1 >= 10 { printf "  %-22s %7d\n", $2, $1 } { sum += $1 }
      END { printf "  %-22s %7d  (self instructions per request, by crate)\n", "all", sum }'
fi
