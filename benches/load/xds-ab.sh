#!/usr/bin/env bash
# xds-ab.sh - the request path's cost while EDS updates stream in: a same-run A/B of two strait
# proxies configured by xDS from xds_churn_cp.rs (a real ADS server), both routing every request
# to the EDS cluster `load` (peers.sh's nginx upstream) beside a 10,000-endpoint EDS cluster no
# route uses. `strait-still` never gets an update; `strait-churn` gets one every 100 ms (100 of
# the 10,000 endpoints replaced and `load`'s endpoint weight toggled, so both balancers are
# rebuilt each time). The load runs are peers.sh's (interleaved, medians, proxy CPU per request).
#
# Also measured, because the churn proxy's CPU includes applying the updates:
#   - idle: each proxy alone, no traffic, for IDLE seconds: CPU % of a core and, for the churn
#     one, CPU per applied update;
#   - during the load runs: updates applied per second (the proxy's xds_updates_total) and the
#     control plane's response-to-ACK time per update (p50/p99/max), NACKs.
#
# Usage: xds-ab.sh [peers.sh options, e.g. --runs 3 --duration 8 --rate 0] (HTTP/1.1 only)
# Env: STRAIT_BIN (default target/release/strait), CP_BIN (default
#      target/release/examples/xds-churn-cp), BASE_PORT (19400), IDLE (8), INTERVAL_MS (100),
#      ENDPOINTS (10000), CHANGE (100), TOGGLE_LOAD (true: `load`'s weight changes with each
#      update; false: only the unrouted cluster changes), OUT_DIR (/tmp).
# Build: cargo build --release -p strait-proxy --bin strait --example xds-churn-cp
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STRAIT_BIN=${STRAIT_BIN:-$ROOT/target/release/strait}
CP_BIN=${CP_BIN:-$ROOT/target/release/examples/xds-churn-cp}
BASE_PORT=${BASE_PORT:-19400}; IDLE=${IDLE:-8}; INTERVAL_MS=${INTERVAL_MS:-100}
ENDPOINTS=${ENDPOINTS:-10000}; CHANGE=${CHANGE:-100}; TOGGLE_LOAD=${TOGGLE_LOAD:-true}
OUT_DIR=${OUT_DIR:-${TMPDIR:-/tmp}}
for b in "$STRAIT_BIN" "$CP_BIN"; do
  [[ -x "$b" ]] || { echo "missing $b (cargo build --release -p strait-proxy --bin strait --example xds-churn-cp)" >&2; exit 1; }
done
TMP=$(mktemp -d "$OUT_DIR/xds-ab.XXXXXX")
declare -a PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "${KEEP:-}" ]] && echo "kept: $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The load cluster's endpoint is peers.sh's HTTP/1.1 upstream: nginx on BASE_PORT.
"$CP_BIN" --upstream "127.0.0.1:$BASE_PORT" --endpoints "$ENDPOINTS" --change "$CHANGE" \
  --interval-ms "$INTERVAL_MS" --toggle-load "$TOGGLE_LOAD" > "$TMP/cp.log" 2> "$TMP/cp.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -qs '^addrs ' "$TMP/cp.log" && break; sleep 0.1; done
STILL=$(sed -nE 's/^addrs still=([0-9.:]+) .*/\1/p' "$TMP/cp.log")
CHURN=$(sed -nE 's/^addrs .* churn=([0-9.:]+)$/\1/p' "$TMP/cp.log")
[[ -n "$STILL" && -n "$CHURN" ]] || { echo "control plane did not start:"; cat "$TMP/cp.err"; exit 1; }
ADMIN_STILL=$((BASE_PORT+72)); ADMIN_CHURN=$((BASE_PORT+73))

cpu_ns() { # on-CPU ns over all threads of a process
  local t s=0 v
  for t in /proc/$1/task/*/schedstat; do read -r v _ < "$t" 2>/dev/null && s=$((s + v)); done
  echo "$s"
}
acks() { # the proxy's applied EDS updates (ack) and refused ones (nack)
  curl -s --max-time 2 "http://127.0.0.1:$1/metrics" | awk '
    /^xds_updates_total/ && /ClusterLoadAssignment/ { if ($0 ~ /"ack"/) a += $NF; else n += $NF }
    END { printf "%d %d\n", a, n }'
}
wait_ready() { # admin port
  local i; for i in $(seq 150); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$1/ready")" == 200 ]] && return 0
    sleep 0.1; done; return 1
}

# ---- idle: each proxy alone, no traffic
idle() { # name xds_addr admin_port updates_to_wait_for; sets IDLE_OUT="cpu% updates/s ms_per_update"
  local dir="$TMP/idle-$1" pid c0 c1 a0 a1 t0 t1
  STRAIT_BIN=$STRAIT_BIN STRAIT_XDS_ADDRESS=$2 STRAIT_ADMIN_PORT=$3 \
    bash "$HERE/strait-proxy.sh" "127.0.0.1:$((BASE_PORT+74))" unused 1 "$dir" > "$TMP/idle-$1.log" 2>&1 &
  pid=$!; PIDS+=($pid)
  wait_ready "$3" || { echo "$1 not ready:"; cat "$TMP/idle-$1.log"; exit 1; }
  # Past the initial fetch (and, streaming, into the steady stream).
  for _ in $(seq 100); do read -r a0 _ < <(acks "$3"); (( a0 >= $4 )) && break; sleep 0.1; done
  read -r a0 _ < <(acks "$3"); c0=$(cpu_ns "$pid"); t0=$(date +%s%N); IDLE_T0=$(date +%s%3N)
  sleep "$IDLE"
  read -r a1 _ < <(acks "$3"); c1=$(cpu_ns "$pid"); t1=$(date +%s%N); IDLE_T1=$(date +%s%3N)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  IDLE_OUT=$(awk -v c=$((c1-c0)) -v w=$((t1-t0)) -v u=$((a1-a0)) \
    'BEGIN { printf "%.1f %.1f %s", 100*c/w, u*1e9/w, (u>0) ? sprintf("%.2f", c/u/1e6) : "-" }')
}
idle still "$STILL" "$ADMIN_STILL" 1; read -r IDLE_STILL_CPU _ _ <<< "$IDLE_OUT"
idle churn "$CHURN" "$ADMIN_CHURN" 3; read -r IDLE_CHURN_CPU IDLE_RATE IDLE_MS <<< "$IDLE_OUT"

# ---- load: peers.sh with both, interleaved
( while :; do echo "$(date +%s%3N) $(acks "$ADMIN_CHURN")"; sleep 1; done ) > "$TMP/acks.log" &
PIDS+=($!)
LOAD_T0=$(date +%s%3N)
px() { # name xds_addr admin_port
  echo "$1=env STRAIT_BIN=$STRAIT_BIN STRAIT_XDS_ADDRESS=$2 STRAIT_ADMIN_PORT=$3 $HERE/strait-proxy.sh {LISTEN} {UPSTREAM} {WORKERS} {TMP}"
}
# --no-h2: an xDS cluster forwards an HTTP/2 client's requests as HTTP/2, and the upstream
# (nginx on BASE_PORT) speaks HTTP/1.1 only.
OUT_DIR=$OUT_DIR SPLIT_THREAD=strait-admin bash "$HERE/peers.sh" --base-port "$BASE_PORT" --peers "" --no-h2 \
  --proxy "$(px strait-still "$STILL" "$ADMIN_STILL")" \
  --proxy "$(px strait-churn "$CHURN" "$ADMIN_CHURN")" "$@"
LOAD_T1=$(date +%s%3N)

# ---- the A/B: every run, then medians; the admin thread (where xDS updates are applied) apart
echo
echo "strait-still vs strait-churn, HTTP/1.1 (wrk), every run (us = proxy CPU us per request; admin = its strait-admin thread, which applies xDS updates; path = the rest):"
awk -F'\t' '($1 == "strait-still" || $1 == "strait-churn") && $3 == "h1" {
    delete R; n = split($4, kv, " "); for (i = 1; i <= n; i++) { split(kv[i], p, "="); R[p[1]] = p[2] }
    printf "  run %s %-13s rps %7.0f  p50 %5d us  p99 %6d us  us/req %6.2f  admin %5.2f  path %6.2f  other%% %5.1f\n",
      $2, $1, R["rps"], R["p50"], R["p99"], R["pus"], R["tus"], R["pus"] - R["tus"], R["ocpu"]
    print $1, R["rps"], R["p50"], R["p99"], R["pus"], R["tus"], R["pus"] - R["tus"] > "'"$TMP/ab.txt"'" }' "$OUT_DIR/peers-last.tsv"
median() { # config column(2=rps 3=p50 4=p99 5=us 6=admin 7=path)
  awk -v c="$1" -v k="$2" '$1 == c { print $k }' "$TMP/ab.txt" | sort -g | awk '{ v[++n] = $1 } END { if (n) print v[int((n + 1) / 2)] }'
}
printf "  medians:        %9s %9s %9s %9s %9s %9s\n" rps p50_us p99_us us/req admin path
for c in strait-still strait-churn; do
  printf "  %-15s" "$c"; for k in 2 3 4 5 6 7; do printf " %9.2f" "$(median "$c" "$k")"; done; echo
done
printf "  churn/still    "; for k in 2 3 4 5 6 7; do
  awk -v a="$(median strait-churn "$k")" -v b="$(median strait-still "$k")" 'BEGIN { if (b > 0) printf " %9.3f", a / b; else printf " %9s", "-" }'
done; echo

# ---- what streamed while the load ran
echo
echo "xDS during the load runs (strait-churn; control plane every ${INTERVAL_MS} ms, $ENDPOINTS endpoints, $CHANGE replaced per update, load weight toggled: $TOGGLE_LOAD):"
awk -v t0="$LOAD_T0" -v t1="$LOAD_T1" '
  $2 != "" && $1 >= t0 && $1 <= t1 { if (!n++) { f = $1; a = $2; k = $3 } l = $1; b = $2; m = $3 }
  END { if (n < 2) { print "  no samples"; exit }
        printf "  updates applied: %d in %.1f s = %.1f/s; NACKs: %d\n", b - a, (l - f) / 1000, (b - a) * 1000 / (l - f), m - k }' "$TMP/acks.log"
NACKS=$(grep -c '^nack ' "$TMP/cp.log" || true)
ack_latency() { # from_ms to_ms label: the control plane's response-to-ACK times in that window
  awk -v t0="$1" -v t1="$2" '$1 == "ack" && $2 >= t0 && $2 <= t1 { print $3 }' "$TMP/cp.log" | sort -n |
    awk -v what="$3" '{ v[++n] = $1 }
      END { if (!n) { print "  " what ": no ACKs seen by the control plane"; exit }
            i99 = int(n * 0.99); if (i99 < 1) i99 = 1
            printf "  %s: response to ACK p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d updates\n",
              what, v[int((n + 1) / 2)], v[i99], v[n], n }'
}
ack_latency "$LOAD_T0" "$LOAD_T1" "under load"
ack_latency "$IDLE_T0" "$IDLE_T1" "idle"
echo "  NACKs in the whole run: $NACKS"
echo "idle (no traffic, ${IDLE}s each): strait-still ${IDLE_STILL_CPU}% of a core; strait-churn ${IDLE_CHURN_CPU}% of a core, $IDLE_RATE updates/s, $IDLE_MS ms CPU per update"
for ph in h1; do
  awk -F'\t' -v ph="$ph" '$1 == "strait-churn" && $3 == ph { split($4, kv, " "); for (i in kv) { split(kv[i], p, "="); if (p[1] == "rps") print p[2] } }' \
    "$OUT_DIR/peers-last.tsv" | sort -n | awk -v ph="$ph" -v cpu="$IDLE_CHURN_CPU" -v still="$IDLE_STILL_CPU" '{ v[++n] = $1 }
      END { if (!n) exit; med = v[int((n + 1) / 2)]; if (med <= 0) exit
            printf "  %s: applying updates is ~%.2f us of strait-churn'"'"'s CPU per request at its median %.0f req/s (idle churn minus idle still)\n", ph, (cpu - still) / 100 * 1e6 / med, med }'
done
