#!/usr/bin/env bash
# strait's load benchmark: strait against direct, HAProxy and nginx on loopback.
#
#   benches/load/run.sh [--quick] [--cases "http mesh tcp idle"] [--runs N] [--duration S]
#                       [--idle-conns N] [--proxy 'NAME=COMMAND' ...]
#
# Cases (see BENCHMARKS.md for what each measures):
#   http  cases 1-3: HTTP/1.1 closed loop (wrk), fixed rate (oha, skipped with a
#         message when oha is missing), HTTP/2 multiplexed (h2load); run by peers.sh
#   tcp   case 5: opaque TCP throughput (iperf3) direct / strait / HAProxy mode tcp
#   idle  case 6: RSS per idle keep-alive connection (10,000 by default)
#   mesh  case 4: client -> proxy -> mTLS HTTP/2 -> proxy -> upstream, strait pair vs
#         HAProxy pair (TLS 1.3, both ends verified, h2 between them)
#
# Everything binds to 127.0.0.1; every load run is bounded in time; every process
# started is torn down by PID. Installs wrk, nginx, haproxy, h2load and iperf3
# from Debian when missing. oha: `cargo install oha --locked` (slow; cached in
# ~/.cargo/bin). Extra --proxy arguments are passed to peers.sh (http case).
# strait is the binary as it ships, built by deploy/pgo.sh (profile-guided
# optimisation), unless STRAIT_BIN names another.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"
CASES=${CASES:-"http mesh tcp idle"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
IDLE_CONNS=${IDLE_CONNS:-10000}
BASE_PORT=${BASE_PORT:-19600}
declare -a PASS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) RUNS=1; DURATION=5; shift;;
    --cases) CASES=$2; shift 2;;
    --runs) RUNS=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --idle-conns) IDLE_CONNS=$2; shift 2;;
    -h|--help) sed -n '2,22p' "$0"; exit 0;;
    *) PASS+=("$1"); shift;;
  esac
done
export RUNS DURATION

# ------------------------------------------------------------------ tools
missing=()
for tool in wrk:wrk nginx:nginx-light haproxy:haproxy h2load:nghttp2-client iperf3:iperf3 python3:python3 taskset:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$PATH:$HOME/.cargo/bin"
command -v oha >/dev/null || echo "oha not found: the fixed-rate case is skipped (cargo install oha --locked)" >&2
if [[ -z "${STRAIT_BIN:-}" ]]; then
  # The binary as it ships: profile-guided optimisation, as the image.
  (cd "$ROOT" && deploy/pgo.sh 2>&1 | tail -1) >&2
  export STRAIT_BIN="$ROOT/target/pgo/strait"
fi

echo "# strait load benchmark $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "# peers: $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3); $(nginx -v 2>&1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(h2load --version 2>/dev/null | head -1); $(iperf3 --version 2>/dev/null | head -1 | cut -d' ' -f1-2); oha $(oha --version 2>/dev/null | cut -d' ' -f2)"
echo "# runs=$RUNS duration=${DURATION}s per measured run"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/strait-bench.XXXXXX")
declare -a PIDS=()
teardown() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap teardown EXIT
trap 'exit 130' INT TERM

start_logged() { # logname cmd...
  local name=$1; shift
  ( exec "$@" ) > "$TMP/$name.log" 2>&1 &
  LAST_PID=$!; PIDS+=("$LAST_PID")
}
wait_port() { local i; for i in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print 0; exit} print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
spread() { sort -g | awk '{a[NR]=$1} END{if(NR<2){print "-"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f%%", (m>0)?100*(a[NR]-a[1])/m:0}'; }
HZ=$(getconf CLK_TCK)

haproxy_cfg() { # mode listen_port upstream_port maxconn
  local fds; fds=$(ulimit -Hn)
  cat <<CFG
global
  nbthread 1
  maxconn $4
  ulimit-n $(( $4 * 2 + 100 < fds ? $4 * 2 + 100 : fds ))
defaults
  mode $1
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  http-reuse always
frontend fe
  bind 127.0.0.1:$2
  default_backend be
backend be
  server s1 127.0.0.1:$3
CFG
}

# ------------------------------------------------------------------ case 1-3
case_http() {
  echo; echo "## cases 1-3: HTTP (peers.sh)"
  bash "$HERE/peers.sh" --peers "haproxy nginx" --runs "$RUNS" --duration "$DURATION" --base-port "$((BASE_PORT + 100))" \
    --proxy "strait=$HERE/strait-proxy.sh {LISTEN} {UPSTREAM} {WORKERS} {TMP}" "${PASS[@]}"
}

# ------------------------------------------------------------------ case 5
case_tcp() {
  echo; echo "## case 5: opaque TCP throughput (iperf3, 1 stream, ${DURATION}s), medians of $RUNS runs"
  local up=$((BASE_PORT + 1)) sp=$((BASE_PORT + 2)) hp=$((BASE_PORT + 3))
  start_logged iperf3 iperf3 -s -B 127.0.0.1 -p "$up"; wait_port "$up" || { echo "iperf3 server failed"; return; }
  start_logged strait-tcp "$HERE/strait-proxy.sh" "127.0.0.1:$sp" "127.0.0.1:$up" 1 "$TMP/strait-tcp" opaque
  local strait_pid=$LAST_PID
  haproxy_cfg tcp "$hp" "$up" 4096 > "$TMP/haproxy-tcp.cfg"
  start_logged haproxy-tcp haproxy -db -f "$TMP/haproxy-tcp.cfg"; local haproxy_pid=$LAST_PID
  wait_port "$sp" && wait_port "$hp" || { echo "proxies failed to start"; return; }
  declare -A GBPS=() CPU=()
  local run name port pid c0 c1 out gbps
  for run in $(seq 1 "$RUNS"); do
    for name in direct strait haproxy; do
      case $name in direct) port=$up; pid=;; strait) port=$sp; pid=$(pgrep -P "$strait_pid" strait || echo "$strait_pid");; haproxy) port=$hp; pid=$haproxy_pid;; esac
      c0=0; [[ -n "$pid" ]] && c0=$(cpu_ticks "$pid")
      out=$(timeout $((DURATION + 20)) iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -J 2>/dev/null)
      c1=0; [[ -n "$pid" ]] && c1=$(cpu_ticks "$pid")
      gbps=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' <<<"$out" 2>/dev/null || echo 0)
      GBPS[$name]+="$gbps "
      # proxy CPU seconds per GiB moved
      CPU[$name]+=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v g="$gbps" -v d="$DURATION" 'BEGIN{gib=g*1e9*d/8/1073741824; printf "%.3f ", (gib>0)?t/hz/gib:0}')
    done
  done
  local direct; direct=$(tr ' ' '\n' <<<"${GBPS[direct]}" | grep . | median)
  local hap; hap=$(tr ' ' '\n' <<<"${GBPS[haproxy]}" | grep . | median)
  printf "%-9s %9s %7s %9s %10s %12s\n" config Gbit/s spread vs_direct vs_haproxy cpu_s/GiB
  for name in direct strait haproxy; do
    local g s c
    g=$(tr ' ' '\n' <<<"${GBPS[$name]}" | grep . | median)
    s=$(tr ' ' '\n' <<<"${GBPS[$name]}" | grep . | spread)
    c=$(tr ' ' '\n' <<<"${CPU[$name]}" | grep . | median)
    printf "%-9s %9.2f %7s %9.3f %10.3f %12s\n" "$name" "$g" "$s" "$(awk -v a="$g" -v b="$direct" 'BEGIN{print (b>0)?a/b:0}')" \
      "$(awk -v a="$g" -v b="$hap" 'BEGIN{print (b>0)?a/b:0}')" "$([[ $name == direct ]] && echo - || echo "$c")"
  done
}

# ------------------------------------------------------------------ case 6
case_idle() {
  echo; echo "## case 6: $IDLE_CONNS idle keep-alive connections (one request each, then held)"
  local up=$((BASE_PORT + 11)) sp=$((BASE_PORT + 12)) hp=$((BASE_PORT + 13))
  ok_upstream "$TMP/nginx" "$up" 60000 100000
  ulimit -n "$(ulimit -Hn)" 2>/dev/null
  # HAProxy wants two descriptors per maxconn and refuses to start without
  # them; where the hard limit is lower it holds fewer connections (the
  # per-connection figure is what compares).
  local hap_conns=$(( IDLE_CONNS < ($(ulimit -Hn) - 300) / 2 ? IDLE_CONNS : ($(ulimit -Hn) - 300) / 2 ))
  start_logged nginx-idle nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf"
  start_logged strait-idle "$HERE/strait-proxy.sh" "127.0.0.1:$sp" "127.0.0.1:$up" 1 "$TMP/strait-idle" http1
  local strait_pid=$LAST_PID
  haproxy_cfg http "$hp" "$up" $((hap_conns + 50)) > "$TMP/haproxy-idle.cfg"
  start_logged haproxy-idle haproxy -db -f "$TMP/haproxy-idle.cfg"; local haproxy_pid=$LAST_PID
  wait_port "$up" && wait_port "$sp" && wait_port "$hp" || { echo "servers failed to start:"; tail -3 "$TMP"/nginx-idle.log "$TMP"/strait-idle.log "$TMP"/haproxy-idle.log "$TMP"/nginx/error.log 2>/dev/null; return; }
  printf "%-9s %10s %10s %12s %14s\n" config idle_KiB held_KiB KiB/conn conns_ok
  local name port pid before after ready n
  for name in strait haproxy; do
    case $name in
      strait) port=$sp; n=$IDLE_CONNS; pid=$(pgrep -P "$strait_pid" strait || echo "$strait_pid");;
      haproxy) port=$hp; n=$hap_conns; pid=$haproxy_pid;;
    esac
    before=$(rss_kb "$pid")
    coproc HOLD { python3 "$HERE/idle_conns.py" 127.0.0.1 "$port" "$n" --deadline 120; }
    read -r -t 150 ready <&"${HOLD[0]}" || ready="READY 0 (timed out)"
    # Idle means settled: strait parks an HTTP/1 connection after 1 s
    # without bytes, and its allocator returns the freed pages after
    # another second (idle-conns.sh holds as long).
    sleep 3
    after=$(rss_kb "$pid")
    exec {HOLD[1]}>&-
    wait "$HOLD_PID" 2>/dev/null
    printf "%-9s %10d %10d %12.2f %14s\n" "$name" "$before" "$after" \
      "$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN{print (a-b)/n}')" "$(cut -d' ' -f2 <<<"$ready")/$n"
    sleep 1
  done
}

# ------------------------------------------------------------------ case 4
case_mesh() {
  echo; echo "## case 4: mesh hop, client -> proxy -> TLS 1.3 mutual auth, HTTP/2 -> proxy -> upstream (wrk, 50 conns, ${DURATION}s), medians of $RUNS runs"
  local up=$((BASE_PORT + 21)) s1=$((BASE_PORT + 22)) s2=$((BASE_PORT + 23)) h1=$((BASE_PORT + 24)) h2=$((BASE_PORT + 25))
  local d="$TMP/mesh"; mesh_pki "$d"; ok_upstream "$d/nginx" "$up"
  start_logged nginx-mesh nginx -p "$d/nginx" -c "$d/nginx/nginx.conf"
  # strait pair: the client side's outbound meshes to the server side's inbound.
  cat > "$d/strait-server.yaml" <<YAML
log: {level: warn}
runtime: {worker_threads: 1}
identity: {certificate: $d/server.crt, private_key: $d/server.p8, trust_bundle: $d/ca.pem}
listeners:
  outbound: {address: 127.0.0.1, port: 0}
  inbound: {address: 127.0.0.1, port: $s2, default_cluster: app}
  admin: {address: 127.0.0.1, port: 0}
clusters:
  - name: app
    protocol: http1
    endpoints: [{address: "127.0.0.1:$up"}]
YAML
  cat > "$d/strait-client.yaml" <<YAML
log: {level: warn}
runtime: {worker_threads: 1}
identity: {certificate: $d/client.crt, private_key: $d/client.p8, trust_bundle: $d/ca.pem}
listeners:
  outbound: {address: 127.0.0.1, port: $s1, default_cluster: server}
  inbound: {address: 127.0.0.1, port: 0}
  admin: {address: 127.0.0.1, port: 0}
clusters:
  - name: server
    tls: {identity: "spiffe://bench/server"}
    endpoints: [{address: "127.0.0.1:$s2"}]
YAML
  start_logged strait-mesh-server "$STRAIT_BIN" run --config "$d/strait-server.yaml"; local ss_pid=$LAST_PID
  start_logged strait-mesh-client "$STRAIT_BIN" run --config "$d/strait-client.yaml"; local sc_pid=$LAST_PID
  # HAProxy pair doing the same hop: TLS 1.3, both sides verified, HTTP/2 between them.
  cat > "$d/haproxy-server.cfg" <<CFG
global
  nbthread 1
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$h2 ssl crt $d/server.pem ca-file $d/ca.pem verify required alpn h2
  default_backend be
backend be
  server app 127.0.0.1:$up
CFG
  cat > "$d/haproxy-client.cfg" <<CFG
global
  nbthread 1
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$h1
  default_backend be
backend be
  server peer 127.0.0.1:$h2 ssl crt $d/client.pem ca-file $d/ca.pem verify required verifyhost server.bench alpn h2
CFG
  start_logged haproxy-mesh-server haproxy -db -f "$d/haproxy-server.cfg"; local hs_pid=$LAST_PID
  start_logged haproxy-mesh-client haproxy -db -f "$d/haproxy-client.cfg"; local hc_pid=$LAST_PID
  wait_port "$up" && wait_port "$s1" && wait_port "$s2" && wait_port "$h1" && wait_port "$h2" || {
    echo "mesh case failed to start:"; tail -3 "$TMP"/strait-mesh-*.log "$TMP"/haproxy-mesh-*.log; return; }
  local body; body=$(curl -s --max-time 3 "http://127.0.0.1:$s1/"); [[ "$body" == ok ]] || echo "WARNING: strait mesh answered '$body'"
  body=$(curl -s --max-time 3 "http://127.0.0.1:$h1/"); [[ "$body" == ok ]] || echo "WARNING: haproxy mesh answered '$body'"
  declare -A RPS=() US=()
  local run name port pids c0 c1 out rps reqs p
  for run in $(seq 1 "$RUNS"); do
    for name in direct strait haproxy; do
      case $name in direct) port=$up; pids="";; strait) port=$s1; pids="$sc_pid $ss_pid";; haproxy) port=$h1; pids="$hc_pid $hs_pid";; esac
      wrk -t2 -c50 -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1
      c0=0; for p in $pids; do c0=$((c0 + $(cpu_ticks "$p"))); done
      out=$(wrk -t2 -c50 -d"${DURATION}s" "http://127.0.0.1:$port/" 2>&1)
      c1=0; for p in $pids; do c1=$((c1 + $(cpu_ticks "$p"))); done
      rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out"); reqs=$(awk '/requests in/{print $1}' <<<"$out")
      RPS[$name]+="${rps:-0} "
      US[$name]+=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="${reqs:-0}" 'BEGIN{printf "%.2f ", (n>0)?t/hz*1e6/n:0}')
    done
  done
  local direct hap; direct=$(tr ' ' '\n' <<<"${RPS[direct]}" | grep . | median); hap=$(tr ' ' '\n' <<<"${RPS[haproxy]}" | grep . | median)
  printf "%-9s %9s %7s %9s %10s %22s\n" config rps spread vs_direct vs_haproxy "both proxies us/req"
  for name in direct strait haproxy; do
    local r sp u
    r=$(tr ' ' '\n' <<<"${RPS[$name]}" | grep . | median); sp=$(tr ' ' '\n' <<<"${RPS[$name]}" | grep . | spread)
    u=$(tr ' ' '\n' <<<"${US[$name]}" | grep . | median)
    printf "%-9s %9.0f %7s %9.3f %10.3f %22s\n" "$name" "$r" "$sp" "$(awk -v a="$r" -v b="$direct" 'BEGIN{print (b>0)?a/b:0}')" \
      "$(awk -v a="$r" -v b="$hap" 'BEGIN{print (b>0)?a/b:0}')" "$([[ $name == direct ]] && echo - || echo "$u")"
  done
}

for c in $CASES; do
  case $c in
    http) case_http;;
    tcp) case_tcp;;
    idle) case_idle;;
    mesh) case_mesh;;
    *) echo "unknown case $c" >&2;;
  esac
done
