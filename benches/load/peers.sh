#!/usr/bin/env bash
# peers.sh - side-by-side loopback benchmark: direct vs HTTP proxies (HAProxy, nginx, Caddy,
# plus any number of extra proxy binaries given on the command line). Adapted from the team's
# shared peer-bench.sh: adds each result's ratio to HAProxy measured in the same run. Called
# by run.sh for cases 1-3.
#
# Everything binds to 127.0.0.1 only. Every load run is time-bounded. Every process the script
# starts is recorded by PID and torn down by PID (never by name).
#
# Usage:
#   peers.sh [options] [--proxy 'NAME=COMMAND'] ...
#
# COMMAND placeholders (substituted before launch):
#   {LISTEN_PORT}  port the proxy must listen on (127.0.0.1)
#   {LISTEN}       127.0.0.1:{LISTEN_PORT}
#   {UPSTREAM}     127.0.0.1:<port> of the HTTP/1.1 upstream (nginx, 'return 200 "ok"')
#   {UPSTREAM_HOST} / {UPSTREAM_PORT}
#   {WORKERS}      worker/thread count the peers are given (default 1)
#   {TMP}          scratch dir for this run (configs, logs)
# Example:
#   peers.sh --proxy 'myproxy=/path/to/myproxy --listen {LISTEN} --upstream {UPSTREAM} --threads {WORKERS}'
# The extra proxy is probed with HTTP/1.1 and (if it answers) h2c prior-knowledge on the same port.
#
# Options (or environment variables of the same name in capitals):
#   --duration S      seconds per measured load run (DURATION, default 10)
#   --conns N         wrk/oha connections (CONNS, default 50)
#   --threads N       wrk/h2load client threads (THREADS, default 2)
#   --runs N          repetitions per config, interleaved (RUNS, default 3)
#   --rate R          fixed-rate open-loop latency phase in req/s via oha; 0 = skip (RATE, default 2000)
#   --no-h2           skip the h2load HTTP/2 phase (H2=0)
#   --h2-clients N    h2load clients (H2_CLIENTS, default 10); --h2-streams M (H2_STREAMS, default 10)
#   --workers N       worker processes/threads for upstream and every peer (WORKERS, default 1)
#   --pin             pin client to CPU 0, upstream+proxy to CPU 1 (2-core layout). Override with
#                     CLIENT_CPUS / UPSTREAM_CPUS / PROXY_CPUS (taskset -c lists).
#   --peers "LIST"    built-in peers to run, subset of "haproxy nginx caddy" (PEERS)
#   --base-port P     first port used (BASE_PORT, default 19400; uses P..P+60)
#   --keep            keep the temp dir (configs, raw outputs) for inspection
#   --warmup S        warm-up seconds before each measured run (WARMUP, default 2)
#   --noise-max P     runs where other processes used > P% of a core are excluded from medians (NOISE_MAX, 15)
#   SPLIT_THREAD      a thread name (e.g. strait-admin): its share of the proxy's CPU is recorded apart, as
#                     tus= (us per request) in peers-last.tsv
#   OUT_DIR           where the temp dir and peers-last.tsv go (default $TMPDIR or /tmp)
#
# Requires: wrk, nginx; optional: haproxy, caddy, h2load (nghttp2-client), oha, taskset, curl.
set -u

DURATION=${DURATION:-10}; CONNS=${CONNS:-50}; THREADS=${THREADS:-2}; RUNS=${RUNS:-3}
RATE=${RATE:-2000}; H2=${H2:-1}; H2_CLIENTS=${H2_CLIENTS:-10}; H2_STREAMS=${H2_STREAMS:-10}
WORKERS=${WORKERS:-1}; PIN=${PIN:-0}; PEERS=${PEERS:-"haproxy nginx caddy"}
BASE_PORT=${BASE_PORT:-19400}; KEEP=${KEEP:-0}; WARMUP=${WARMUP:-2}; NOISE_MAX=${NOISE_MAX:-15}
CLIENT_CPUS=${CLIENT_CPUS:-}; UPSTREAM_CPUS=${UPSTREAM_CPUS:-}; PROXY_CPUS=${PROXY_CPUS:-}
OHA=${OHA:-$(command -v oha || true)}
declare -a EXTRA_NAMES=() EXTRA_CMDS=()
if [[ -n "${EXTRA_PROXY:-}" ]]; then EXTRA_NAMES+=("${EXTRA_NAME:-extra}"); EXTRA_CMDS+=("$EXTRA_PROXY"); fi

while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION=$2; shift 2;;
    --conns) CONNS=$2; shift 2;;
    --threads) THREADS=$2; shift 2;;
    --runs) RUNS=$2; shift 2;;
    --rate) RATE=$2; shift 2;;
    --no-h2) H2=0; shift;;
    --h2-clients) H2_CLIENTS=$2; shift 2;;
    --h2-streams) H2_STREAMS=$2; shift 2;;
    --workers) WORKERS=$2; shift 2;;
    --pin) PIN=1; shift;;
    --peers) PEERS=$2; shift 2;;
    --base-port) BASE_PORT=$2; shift 2;;
    --keep) KEEP=1; shift;;
    --warmup) WARMUP=$2; shift 2;;
    --noise-max) NOISE_MAX=$2; shift 2;;
    --proxy) EXTRA_NAMES+=("${2%%=*}"); EXTRA_CMDS+=("${2#*=}"); shift 2;;
    -h|--help) sed -n '2,40p' "$0"; exit 0;;
    *) echo "unknown option: $1" >&2; exit 2;;
  esac
done

if [[ "$PIN" == 1 ]]; then
  CLIENT_CPUS=${CLIENT_CPUS:-0}; UPSTREAM_CPUS=${UPSTREAM_CPUS:-1}; PROXY_CPUS=${PROXY_CPUS:-1}
fi
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx not found (apt-get install nginx-light)" >&2; exit 1; }
[[ "$H2" == 1 ]] && ! command -v h2load >/dev/null && { echo "h2load missing: skipping HTTP/2 phase" >&2; H2=0; }
[[ "$RATE" != 0 && -z "$OHA" ]] && { echo "oha missing: skipping fixed-rate phase" >&2; RATE=0; }

OUT_DIR=${OUT_DIR:-${TMPDIR:-/tmp}}; mkdir -p "$OUT_DIR"
TMP=$(mktemp -d "$OUT_DIR/peers.XXXXXX")
RES="$TMP/results.tsv"   # config run phase key=value...
: > "$RES"
declare -A MAINPID=()    # component -> main pid
declare -a ALLPIDS=()

pin() { local cpus=$1; shift; if [[ -n "$cpus" ]] && command -v taskset >/dev/null; then taskset -c "$cpus" "$@"; else "$@"; fi; }

descendants() { # pid -> pid and all descendants
  local p=$1; echo "$p"
  local c; for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do descendants "$c"; done
}
teardown() {
  local name pid p
  for name in "${!MAINPID[@]}"; do
    pid=${MAINPID[$name]}
    kill -0 "$pid" 2>/dev/null || continue
    local kids; kids=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    for p in $kids; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
  done
  wait 2>/dev/null
  if [[ "$KEEP" == 1 ]]; then echo "kept: $TMP" >&2; else rm -rf "$TMP"; fi
}
trap teardown EXIT
trap 'exit 130' INT TERM

port_free() { ! ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }
wait_port() { # port timeout_s
  local i; for i in $(seq 1 $(( $2 * 10 ))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1
}
start() { # name cpus cmd... (background; exec keeps $! == the real process, so it is reaped and killed by PID)
  local name=$1 cpus=$2; shift 2
  if [[ -n "$cpus" ]] && command -v taskset >/dev/null; then
    ( exec taskset -c "$cpus" "$@" ) > "$TMP/$name.out" 2>&1 &
  else
    ( exec "$@" ) > "$TMP/$name.out" 2>&1 &
  fi
  MAINPID[$name]=$!; ALLPIDS+=($!)
}
sys_busy_ns() { # machine-wide busy CPU time (all CPUs) in ns, from /proc/stat
  awk '/^cpu /{printf "%.0f", ($2+$3+$4+$7+$8+$9)*1e9/'"$(getconf CLK_TCK)"'}' /proc/stat
}
child_cpu_ns() { # CPU of this shell's reaped children (the load generator), ns
  awk '{printf "%.0f", ($16+$17)*1e9/'"$(getconf CLK_TCK)"'}' /proc/$$/stat
}
cpu_ns() { # sum of on-CPU ns over all threads of the component's process tree
  local pid=${MAINPID[$1]} p t s=0 v
  for p in $(descendants "$pid"); do
    for t in /proc/$p/task/*/schedstat; do read -r v _ < "$t" 2>/dev/null && s=$(( s + v )); done
  done; echo "$s"
}
rss_kb() { # sum VmRSS (kB) over the process tree; arg2=VmHWM for peak
  local pid=${MAINPID[$1]} f=${2:-VmRSS} p s=0 v
  for p in $(descendants "$pid"); do v=$(awk -v f="$f:" '$1==f{print $2}' /proc/$p/status 2>/dev/null); s=$(( s + ${v:-0} )); done
  echo "$s"
}

UP_H1=$BASE_PORT; UP_H2=$((BASE_PORT+1))
for p in $(seq "$BASE_PORT" $((BASE_PORT+60))); do port_free "$p" || { echo "port $p busy; use --base-port" >&2; exit 1; }; done

# ---------------------------------------------------------------- upstream: nginx 'return 200 "ok"'
nginx_common() { # dir
  cat <<EOF
worker_processes $WORKERS;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $1/cb; proxy_temp_path $1/px; fastcgi_temp_path $1/fc; uwsgi_temp_path $1/uw; scgi_temp_path $1/sc;
EOF
}
mkdir -p "$TMP/upstream"
{ nginx_common "$TMP/upstream"; cat <<EOF
  server { listen 127.0.0.1:$UP_H1; location / { return 200 "ok"; } }
  server { listen 127.0.0.1:$UP_H2 http2; location / { return 200 "ok"; } }
}
EOF
} > "$TMP/upstream/nginx.conf"
start upstream "$UPSTREAM_CPUS" nginx -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf"
wait_port "$UP_H1" 5 || { echo "upstream failed to start:"; cat "$TMP/upstream.out" "$TMP/upstream/error.log"; exit 1; }

# config table: name h1port h2port
declare -a CFG_NAMES=(direct) CFG_H1=("$UP_H1") CFG_H2=("$UP_H2")

for peer in $PEERS; do
  case "$peer" in
  haproxy)
    command -v haproxy >/dev/null || { echo "haproxy not installed; skipping" >&2; continue; }
    P=$((BASE_PORT+10)); mkdir -p "$TMP/haproxy"
    cat > "$TMP/haproxy/haproxy.cfg" <<EOF
global
  nbthread $WORKERS
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$P
  default_backend be
backend be
  server s1 127.0.0.1:$UP_H1
EOF
    start haproxy "$PROXY_CPUS" haproxy -db -f "$TMP/haproxy/haproxy.cfg"
    wait_port "$P" 5 || { echo "haproxy failed:"; cat "$TMP/haproxy.out"; continue; }
    CFG_NAMES+=(haproxy); CFG_H1+=("$P"); CFG_H2+=("$P");;   # HAProxy auto-detects the h2c preface
  nginx)
    P=$((BASE_PORT+20)); P2=$((BASE_PORT+21)); mkdir -p "$TMP/nginxproxy"
    { nginx_common "$TMP/nginxproxy"; cat <<EOF
  upstream up { server 127.0.0.1:$UP_H1; keepalive 256; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$P;  location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$P2 http2; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
    } > "$TMP/nginxproxy/nginx.conf"
    start nginx "$PROXY_CPUS" nginx -p "$TMP/nginxproxy" -e "$TMP/nginxproxy/error.log" -c "$TMP/nginxproxy/nginx.conf"
    wait_port "$P" 5 || { echo "nginx proxy failed:"; cat "$TMP/nginx.out"; continue; }
    CFG_NAMES+=(nginx); CFG_H1+=("$P"); CFG_H2+=("$P2");;
  caddy)
    command -v caddy >/dev/null || { echo "caddy not installed; skipping" >&2; continue; }
    P=$((BASE_PORT+30)); mkdir -p "$TMP/caddy"
    cat > "$TMP/caddy/Caddyfile" <<EOF
{
  admin off
  auto_https off
  servers {
    protocols h1 h2c
  }
}
http://127.0.0.1:$P {
  reverse_proxy 127.0.0.1:$UP_H1
}
EOF
    start caddy "$PROXY_CPUS" env XDG_DATA_HOME="$TMP/caddy" XDG_CONFIG_HOME="$TMP/caddy" HOME="$TMP/caddy" \
      GOMAXPROCS="$WORKERS" caddy run --config "$TMP/caddy/Caddyfile" --adapter caddyfile
    wait_port "$P" 10 || { echo "caddy failed:"; cat "$TMP/caddy.out"; continue; }
    CFG_NAMES+=(caddy); CFG_H1+=("$P"); CFG_H2+=("$P");;
  *) echo "unknown peer $peer" >&2;;
  esac
done

for i in "${!EXTRA_NAMES[@]}"; do
  name=${EXTRA_NAMES[$i]}; P=$((BASE_PORT+40+i)); mkdir -p "$TMP/$name"
  cmd=${EXTRA_CMDS[$i]}
  cmd=${cmd//\{LISTEN_PORT\}/$P}; cmd=${cmd//\{LISTEN\}/127.0.0.1:$P}
  cmd=${cmd//\{UPSTREAM\}/127.0.0.1:$UP_H1}; cmd=${cmd//\{UPSTREAM_HOST\}/127.0.0.1}; cmd=${cmd//\{UPSTREAM_PORT\}/$UP_H1}
  cmd=${cmd//\{WORKERS\}/$WORKERS}; cmd=${cmd//\{TMP\}/$TMP/$name}
  echo "$cmd" > "$TMP/$name/cmdline"
  start "$name" "$PROXY_CPUS" bash -c "exec $cmd"
  wait_port "$P" 15 || { echo "$name failed to listen on $P:"; cat "$TMP/$name.out"; continue; }
  CFG_NAMES+=("$name"); CFG_H1+=("$P"); CFG_H2+=("$P")
done

# sanity: every config must answer 200 "ok"
for i in "${!CFG_NAMES[@]}"; do
  body=$(curl -s --max-time 3 "http://127.0.0.1:${CFG_H1[$i]}/" 2>/dev/null || true)
  [[ "$body" == ok ]] || echo "WARNING: ${CFG_NAMES[$i]} returned '$body' on HTTP/1.1" >&2
done

cat > "$TMP/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local d = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT rps=%.1f p50=%d p99=%d p999=%d reqs=%d errs=%d non2xx=%d\n",
    summary.requests / d, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.requests, e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

SNAP=()
snap_begin() { # component ; records cpu counters before a load run
  local pc=$1 p0=0; [[ -n "$pc" ]] && p0=$(cpu_ns "$pc")
  SNAP=("$(cpu_ns upstream)" "$p0" "$(sys_busy_ns)" "$(child_cpu_ns)" "$(date +%s%N)" "$(split_ns "$pc")")
}
split_ns() { # component ; on-CPU ns of its threads named $SPLIT_THREAD (0 when unset)
  local s=0 p t v
  if [[ -n "$1" && -n "${SPLIT_THREAD:-}" ]]; then
    for p in $(descendants "${MAINPID[$1]}"); do
      for t in /proc/$p/task/*; do
        [[ "$(cat "$t/comm" 2>/dev/null)" == "$SPLIT_THREAD" ]] && read -r v _ < "$t/schedstat" 2>/dev/null && s=$(( s + v ))
      done
    done
  fi
  echo "$s"
}
snap_end() { # component reqs ; prints "pcpu=.. pus=.. ucpu=.. ccpu=.. ocpu=.."
  local pc=$1 reqs=${2:-0} t1 s1 c1 u1 p1=0
  t1=$(date +%s%N); s1=$(sys_busy_ns); c1=$(child_cpu_ns); u1=$(cpu_ns upstream); [[ -n "$pc" ]] && p1=$(cpu_ns "$pc")
  local x1; x1=$(split_ns "$pc")
  awk -v u="$((u1-SNAP[0]))" -v p="$((p1-SNAP[1]))" -v s="$((s1-SNAP[2]))" -v c="$((c1-SNAP[3]))" -v w="$((t1-SNAP[4]))" -v n="$reqs" -v x="$((x1-SNAP[5]))" \
    'BEGIN{printf "pcpu=%.1f pus=%.2f ucpu=%.1f ccpu=%.1f ocpu=%.1f tus=%.2f", 100*p/w, (n>0)?p/1000/n:0, 100*u/w, 100*c/w, 100*(s-c-u-p)/w, (n>0)?x/1000/n:0}'
}

comp_of() { [[ "$1" == direct ]] && echo "" || echo "$1"; }

measure_h1() { # cfg port run
  local cfg=$1 port=$2 run=$3 pc out line reqs cpu rss=0 hwm=0; pc=$(comp_of "$cfg")
  pin "$CLIENT_CPUS" wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$port/" >/dev/null 2>&1
  snap_begin "$pc"
  out=$(pin "$CLIENT_CPUS" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 5s -s "$TMP/report.lua" "http://127.0.0.1:$port/" 2>&1)
  line=$(grep '^RESULT' <<<"$out" | sed 's/^RESULT //')
  [[ -z "$line" ]] && { echo "wrk failed for $cfg: $out" >&2; return; }
  reqs=$(sed -E 's/.*reqs=([0-9]+).*/\1/' <<<"$line")
  cpu=$(snap_end "$pc" "$reqs")
  [[ -n "$pc" ]] && { rss=$(rss_kb "$pc"); hwm=$(rss_kb "$pc" VmHWM); }
  echo -e "$cfg\t$run\th1\t$line $cpu rss=$rss hwm=$hwm" >> "$RES"
}

measure_rate() { # cfg port run : open-loop fixed rate with coordinated-omission correction
  local cfg=$1 port=$2 run=$3 js="$TMP/oha-$1-$3.json" pc cpu; pc=$(comp_of "$cfg")
  snap_begin "$pc"
  pin "$CLIENT_CPUS" "$OHA" -z "${DURATION}s" -c "$CONNS" -q "$RATE" --latency-correction --no-tui \
        --output-format json "http://127.0.0.1:$port/" > "$js" 2>/dev/null
  cpu=$(snap_end "$pc" 0)
  python3 - "$cfg" "$run" "$js" "$cpu" >> "$RES" <<'PYEOF' || echo "oha result parse failed for $cfg" >&2
import json, sys
d = json.load(open(sys.argv[3]))
lp = d["latencyPercentiles"]; s = d["summary"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
# requests cut off by the -z deadline are not failures
err = sum(v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k)
print("%s\t%s\trate\trps=%.1f p50=%d p99=%d p999=%d non2xx=%d errs=%d %s" % (sys.argv[1], sys.argv[2],
      s["requestsPerSec"], (lp["p50"] or 0) * 1e6, (lp["p99"] or 0) * 1e6, (lp["p99.9"] or 0) * 1e6,
      sum(codes.values()) - ok, err, sys.argv[4]))
PYEOF
  rm -f "$js"
}

measure_h2() { # cfg port run
  local cfg=$1 port=$2 run=$3 out log="$TMP/h2-$1-$3.log" pc cpu; pc=$(comp_of "$cfg")
  pin "$CLIENT_CPUS" h2load -t"$THREADS" -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$WARMUP" "http://127.0.0.1:$port/" >/dev/null 2>&1
  snap_begin "$pc"
  out=$(pin "$CLIENT_CPUS" h2load -t"$THREADS" -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$DURATION" \
        --log-file="$log" "http://127.0.0.1:$port/" 2>&1)
  local rps ok
  rps=$(sed -nE 's/^finished in [0-9.]+s, ([0-9.]+) req\/s.*/\1/p' <<<"$out")
  ok=$(sed -nE 's/^requests: .* ([0-9]+) succeeded.*/\1/p' <<<"$out")
  cpu=$(snap_end "$pc" "${ok:-0}")
  [[ -z "$rps" || "${ok:-0}" == 0 ]] && { echo -e "$cfg\t$run\th2\trps=0 p50=0 p99=0 p999=0 non2xx=-1 $cpu" >> "$RES"; rm -f "$log"; return; }
  local pct; pct=$(awk -F'\t' '$2>=200 && $2<300 {print $3}' "$log" | sort -n | awk '{a[NR]=$1} END{
     if(NR==0){print "p50=0 p99=0 p999=0"; exit}
     i50=int(NR*0.50); if(i50<1)i50=1; i99=int(NR*0.99); if(i99<1)i99=1; i999=int(NR*0.999); if(i999<1)i999=1;
     printf "p50=%d p99=%d p999=%d", a[i50], a[i99], a[i999]}')
  local bad; bad=$(awk -F'\t' '$2<200 || $2>=300' "$log" | wc -l)
  echo -e "$cfg\t$run\th2\trps=$rps $pct non2xx=$bad $cpu" >> "$RES"
  rm -f "$log"
}

echo "# peers: $(nproc) CPUs, duration=${DURATION}s conns=$CONNS threads=$THREADS runs=$RUNS workers=$WORKERS rate=$RATE h2=$H2(c=$H2_CLIENTS,m=$H2_STREAMS)"
echo "# pinning: client=${CLIENT_CPUS:-any} upstream=${UPSTREAM_CPUS:-any} proxy=${PROXY_CPUS:-any}"
echo "# configs: ${CFG_NAMES[*]}"
for run in $(seq 1 "$RUNS"); do
  for i in "${!CFG_NAMES[@]}"; do
    echo "  run $run/$RUNS: ${CFG_NAMES[$i]}" >&2
    measure_h1 "${CFG_NAMES[$i]}" "${CFG_H1[$i]}" "$run"
    [[ "$RATE" != 0 ]] && measure_rate "${CFG_NAMES[$i]}" "${CFG_H1[$i]}" "$run"
    [[ "$H2" == 1 ]] && measure_h2 "${CFG_NAMES[$i]}" "${CFG_H2[$i]}" "$run"
  done
done
for i in "${!CFG_NAMES[@]}"; do  # idle-after-load RSS for the record
  c=${CFG_NAMES[$i]}; [[ $c == direct ]] && continue
  echo -e "$c\t0\tmem\trss=$(rss_kb "$c") hwm=$(rss_kb "$c" VmHWM)" >> "$RES"
done
cp "$RES" "$OUT_DIR/peers-last.tsv" 2>/dev/null

# ---------------------------------------------------------------- report (medians over clean runs)
awk -F'\t' -v order="${CFG_NAMES[*]}" -v rate="$RATE" -v h2="$H2" -v nmax="$NOISE_MAX" '
function med(key,   n,i,j,t,arr) { n=split(V[key],arr," "); if(n==0||V[key]=="")return "";
  for(i=1;i<=n;i++)for(j=i+1;j<=n;j++)if(arr[j]+0<arr[i]+0){t=arr[i];arr[i]=arr[j];arr[j]=t}
  return (n%2)?arr[(n+1)/2]:(arr[n/2]+arr[n/2+1])/2 }
function spread(key,   n,i,arr,mn,mx,m) { n=split(V[key],arr," "); if(n<2)return "-"; mn=mx=arr[1];
  for(i=2;i<=n;i++){if(arr[i]+0<mn+0)mn=arr[i]; if(arr[i]+0>mx+0)mx=arr[i]} m=med(key); return (m>0)?sprintf("%.1f%%",100*(mx-mn)/m):"-" }
function m(c,ph,k) { return med(c SUBSEP ph SUBSEP k) }
function runs(c,ph) { return ((c SUBSEP ph) in CLEAN) ? CLEAN[c SUBSEP ph] "/" TOT[c SUBSEP ph] : "0/" TOT[c SUBSEP ph] "*" }
{ split($4, kv, " "); delete R; for(k in kv){ split(kv[k], p, "="); R[p[1]]=p[2] }
  TOT[$1 SUBSEP $3]++; noisy=("ocpu" in R) && (R["ocpu"]+0 > nmax+0); if(!noisy) CLEAN[$1 SUBSEP $3]++
  for(k in R){ key=$1 SUBSEP $3 SUBSEP k; A[key]=(A[key]==""?R[k]:A[key] " " R[k]); if(!noisy) V[key]=(V[key]==""?R[k]:V[key] " " R[k]) } }
END {
  for(key in A){ split(key, q, SUBSEP); if(!((q[1] SUBSEP q[2]) in CLEAN)) V[key]=A[key] }   # no clean run: fall back to all
  n=split(order, C, " "); d="direct"
  printf "\nHTTP/1.1 keep-alive, closed loop (wrk), medians of clean runs; latency in us (at saturation: queueing, not proxy cost)\n"
  printf "%-10s %5s %9s %7s %7s %7s %9s %8s %6s %6s %8s %7s %6s %7s %6s %7s\n","config","runs","rps","spread","p50","p99","rps/direct","rps/hap","+p50","+p99","proxyCPU%","us/req","upCPU%","cliCPU%","other%","RSS_MiB"
  for(i=1;i<=n;i++){c=C[i]; r=m(c,"h1","rps"); if(r=="")continue; rd=m(d,"h1","rps"); rh=m("haproxy","h1","rps")
    printf "%-10s %5s %9.0f %7s %7d %7d %9.3f %8.3f %6d %6d %8s %7s %6s %7s %6s %7.1f\n", c, runs(c,"h1"), r, spread(c SUBSEP "h1" SUBSEP "rps"),
      m(c,"h1","p50"), m(c,"h1","p99"), r/rd, (rh>0?r/rh:0), m(c,"h1","p50")-m(d,"h1","p50"), m(c,"h1","p99")-m(d,"h1","p99"),
      (c==d?"-":m(c,"h1","pcpu")), (c==d?"-":m(c,"h1","pus")), m(c,"h1","ucpu"), m(c,"h1","ccpu"), m(c,"h1","ocpu"),
      (c==d?0:m(c,"mem","rss")/1024) }
  if(rate!=0){
    printf "\nHTTP/1.1 open loop at %s req/s (oha --latency-correction), medians of clean runs; latency in us\n", rate
    printf "%-10s %5s %8s %7s %7s %7s %7s %6s %6s %7s %8s %10s %6s %6s\n","config","runs","rps","p50","p50spr","p99","p99.9","+p50","+p99","+p99.9","proxyCPU%","mcore/krps","other%","errors"
    for(i=1;i<=n;i++){c=C[i]; r=m(c,"rate","rps"); if(r=="")continue; pc=m(c,"rate","pcpu")
      printf "%-10s %5s %8.0f %7d %7s %7d %7d %6d %6d %7d %8s %10s %6s %6d\n", c, runs(c,"rate"), r, m(c,"rate","p50"), spread(c SUBSEP "rate" SUBSEP "p50"),
        m(c,"rate","p99"), m(c,"rate","p999"), m(c,"rate","p50")-m(d,"rate","p50"), m(c,"rate","p99")-m(d,"rate","p99"),
        m(c,"rate","p999")-m(d,"rate","p999"), (c==d?"-":pc), (c==d?"-":sprintf("%.0f", pc*10*1000/r)), m(c,"rate","ocpu"),
        m(c,"rate","non2xx")+m(c,"rate","errs") } }
  if(h2==1){
    printf "\nHTTP/2 h2c prior knowledge (h2load), medians of clean runs; proxies use HTTP/1.1 upstream; latency in us\n"
    printf "%-10s %5s %9s %7s %7s %7s %7s %9s %8s %8s %7s %6s %6s\n","config","runs","rps","spread","p50","p99","p99.9","rps/direct","rps/hap","proxyCPU%","us/req","other%","non2xx"
    for(i=1;i<=n;i++){c=C[i]; r=m(c,"h2","rps"); if(r=="")continue; rd=m(d,"h2","rps"); rh=m("haproxy","h2","rps")
      if(r==0){printf "%-10s %5s %9s\n", c, runs(c,"h2"), "n/a (no h2c)"; continue}
      printf "%-10s %5s %9.0f %7s %7d %7d %7d %9.3f %8.3f %8s %7s %6s %6d\n", c, runs(c,"h2"), r, spread(c SUBSEP "h2" SUBSEP "rps"), m(c,"h2","p50"),
        m(c,"h2","p99"), m(c,"h2","p999"), (rd>0?r/rd:0), (rh>0?r/rh:0), (c==d?"-":m(c,"h2","pcpu")), (c==d?"-":m(c,"h2","pus")), m(c,"h2","ocpu"), m(c,"h2","non2xx") } }
}' "$RES"
echo
echo "legend: CPU% = percent of one core over the run; us/req = proxy on-CPU microseconds per request;"
echo "        other% = machine CPU not used by client/upstream/proxy (other tenants, kernel threads); runs with other% > $NOISE_MAX"
echo "        are excluded from medians (runs = clean/total; * = no clean run, all runs used);"
echo "        spread = (max-min)/median over runs; +X = difference vs direct; mcore/krps = proxy millicores per 1000 req/s."
echo "raw per-run results: $OUT_DIR/peers-last.tsv"
