#!/usr/bin/env bash
# Memory per idle connection, and idle RSS right after start.
#
#   benches/load/idle-conns.sh [--ns "1000 3000 10000"] [--workers "1 0"] [--kinds "http1 mtls"]
#                              [--bin NAME=PATH ...] [--no-haproxy] [--hold S]
#
# For every kind, worker count (0 = strait's default, one per CPU), N and
# binary, a fresh strait is started and measured:
#   idle     RSS once it answers on its port (nothing served yet)
#   held     RSS with N connections open and idle, each having done one
#            request through the proxy to an nginx upstream
#   KiB/conn (held - idle) / N, from VmRSS and from smaps_rollup's Anonymous
#   ok/held  connections whose request got a 200 / still open after the hold
#   closed   RSS --hold seconds after the client closed them all, with no
#            traffic since: whether the burst's memory goes back while quiet
# Kinds: http1 = plaintext HTTP/1.1 keep-alive to the outbound listener;
# mtls = mesh clients (TLS 1.3, client certificate, ALPN h2 + strait.mesh,
# one HTTP/2 GET) to the inbound listener. HAProxy (nbthread 1) is measured
# the same way in the same run (mtls: `ssl verify required alpn h2`), unless
# --no-haproxy. HAProxy needs two descriptors per connection, so under the
# hard RLIMIT_NOFILE it holds fewer; its per-connection figure is what
# compares. Several --bin give a same-run A/B (default: target/release/strait);
# a --bin command may start with `env VAR=VALUE ...` (e.g. allocator settings).
# Bounded: each hold gives up after 150 s; every process is killed by PID.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"
NS="1000 3000 10000" WORKERS="1 0" KINDS="http1 mtls" HAPROXY=1 HOLD=2
BASE_PORT=${BASE_PORT:-19700}
declare -a BINS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ns) NS=$2; shift 2;;
    --workers) WORKERS=$2; shift 2;;
    --kinds) KINDS=$2; shift 2;;
    --bin) BINS+=("$2"); shift 2;;
    --no-haproxy) HAPROXY=0; shift;;
    --hold) HOLD=$2; shift 2;;
    -h|--help) sed -n '2,22p' "$0"; exit 0;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
((${#BINS[@]})) || BINS=("strait=$ROOT/target/release/strait")
for b in "${BINS[@]}"; do
  read -ra cmd <<<"${b#*=}"
  [[ -x "${cmd[-1]}" ]] || { echo "no strait binary at ${cmd[-1]} (cargo build --release --bin strait)" >&2; exit 1; }
done
for tool in nginx haproxy openssl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx-light haproxy openssl python3)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/strait-idle.XXXXXX")
declare -a PIDS=()
teardown() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap teardown EXIT
trap 'exit 130' INT TERM

start() { # logname cmd... ; sets LAST_PID
  local name=$1; shift
  ( exec "$@" ) > "$TMP/$name.log" 2>&1 &
  LAST_PID=$!; PIDS+=("$LAST_PID")
}
stop() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
wait_port() { local i; for i in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
anon_kb() { awk '/^Anonymous/{print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }

echo "# strait idle-connection memory $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), nofile $(ulimit -n)"
echo "# peers: $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3); $(nginx -v 2>&1)"
echo "# binaries: ${BINS[*]}"

# The upstream: nginx answering 200 on keep-alive connections.
up=$BASE_PORT sp=$((BASE_PORT + 1)) hp=$((BASE_PORT + 2))
ok_upstream "$TMP/nginx" "$up" 10000 20000
start nginx nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf"
wait_port "$up" || { echo "nginx did not start"; cat "$TMP/nginx/error.log"; exit 1; }

# Mesh PKI: a CA, the server's and the client's certificates (EC P-256, SPIFFE URI SANs).
pki=$TMP/pki; mesh_pki "$pki"

strait_yaml() { # kind workers
  local listener identity=""
  if [[ $1 == mtls ]]; then
    identity="identity: {certificate: $pki/server.crt, private_key: $pki/server.p8, trust_bundle: $pki/ca.pem}"
    listener="  outbound: {address: 127.0.0.1, port: 0}
  inbound: {address: 127.0.0.1, port: $sp, default_cluster: app}"
  else
    listener="  outbound: {address: 127.0.0.1, port: $sp, default_cluster: app}
  inbound: {address: 127.0.0.1, port: 0}"
  fi
  cat <<YAML
log: {level: warn}
runtime: {worker_threads: $2}
$identity
listeners:
$listener
  admin: {address: 127.0.0.1, port: 0}
clusters:
  - name: app
    protocol: http1
    endpoints: [{address: "127.0.0.1:$up"}]
YAML
}

haproxy_cfg() { # kind maxconn
  local bind="bind 127.0.0.1:$hp"
  [[ $1 == mtls ]] && bind="$bind ssl crt $pki/server.pem ca-file $pki/ca.pem verify required alpn h2 ssl-min-ver TLSv1.3"
  cat <<CFG
global
  nbthread 1
  maxconn $2
  ulimit-n $(( $2 * 2 + 100 ))
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  http-reuse always
frontend fe
  $bind
  default_backend be
backend be
  server s1 127.0.0.1:$up
CFG
}

# measure NAME KIND WORKERS N PID PORT : one hold against a started process.
measure() {
  local name=$1 kind=$2 workers=$3 n=$4 pid=$5 port=$6 idle idle_anon held held_anon closed ready done_line mesh=()
  [[ $kind == mtls ]] && mesh=(--mesh --cert "$pki/client.crt" --key "$pki/client.key" --ca "$pki/ca.pem")
  idle=$(rss_kb "$pid") idle_anon=$(anon_kb "$pid")
  coproc HOLDER { python3 "$HERE/idle_conns.py" 127.0.0.1 "$port" "$n" --deadline 150 "${mesh[@]}" 2>&1; }
  read -r -t 160 ready <&"${HOLDER[0]}" || ready="READY 0 (timed out)"
  sleep "$HOLD" # let the proxy settle with the connections idle
  held=$(rss_kb "$pid") held_anon=$(anon_kb "$pid")
  exec {HOLDER[1]}>&-
  read -r -t 30 done_line <&"${HOLDER[0]}" || done_line="HELD ?"
  wait "$HOLDER_PID" 2>/dev/null
  sleep "$HOLD"
  closed=$(rss_kb "$pid")
  printf "%-12s %-5s %7s %6d %9d %9d %9.2f %9.2f %7s/%-6s %10d %s\n" "$name" "$kind" "$workers" "$n" "$idle" "$held" \
    "$(awk -v a="$held" -v b="$idle" -v n="$n" 'BEGIN{print (a-b)/n}')" \
    "$(awk -v a="$held_anon" -v b="$idle_anon" -v n="$n" 'BEGIN{print (a-b)/n}')" \
    "$(cut -d' ' -f2 <<<"$ready")" "$(cut -d' ' -f2 <<<"$done_line")" "$closed" "$(cut -s -d' ' -f3- <<<"$ready" | grep -v '^errors=0 ' | head -c 80)"
}

printf "%-12s %-5s %7s %6s %9s %9s %9s %9s %14s %10s\n" config kind workers conns idle_KiB held_KiB KiB/conn anonKiB/c ok/held closed_KiB
for kind in $KINDS; do
  for n in $NS; do
    for workers in $WORKERS; do
      for b in "${BINS[@]}"; do
        strait_yaml "$kind" "$workers" > "$TMP/strait.yaml"
        read -ra cmd <<<"${b#*=}"
        start "strait-$kind" "${cmd[@]}" run --config "$TMP/strait.yaml"; pid=$LAST_PID
        wait_port "$sp" || { echo "strait did not start:"; tail -5 "$TMP/strait-$kind.log"; exit 1; }
        measure "${b%%=*}" "$kind" "$([[ $workers == 0 ]] && echo "default" || echo "$workers")" "$n" "$pid" "$sp"
        stop "$pid"
      done
    done
    if ((HAPROXY)); then
      hn=$(( n < ($(ulimit -Hn) - 300) / 2 ? n : ($(ulimit -Hn) - 300) / 2 ))
      haproxy_cfg "$kind" $((hn + 50)) > "$TMP/haproxy.cfg"
      start haproxy haproxy -db -f "$TMP/haproxy.cfg"; pid=$LAST_PID
      wait_port "$hp" || { echo "haproxy did not start:"; tail -5 "$TMP/haproxy.log"; exit 1; }
      measure haproxy "$kind" 1 "$hn" "$pid" "$hp"
      stop "$pid"
    fi
  done
done
