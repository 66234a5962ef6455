#!/usr/bin/env bash
# Start strait as a plain reverse proxy for the load benchmark:
#   strait-proxy.sh LISTEN UPSTREAM WORKERS DIR [PROTOCOL]
# LISTEN and UPSTREAM are IP:PORT; every connection to LISTEN goes to UPSTREAM
# (the outbound listener's default cluster), PROTOCOL is the cluster protocol
# (default http1, like the peers' HTTP/1.1 upstreams).
# With STRAIT_TRACE_SAMPLE_RATE set (e.g. 0.01), spans are exported to the
# OTLP/gRPC collector at STRAIT_TRACE_OTLP (default 127.0.0.1:4317), e.g.
#   --proxy "strait-trace=STRAIT_TRACE_SAMPLE_RATE=0.01 $HERE/strait-proxy.sh {LISTEN} {UPSTREAM} {WORKERS} {TMP}"
# (otlp-sink.py next to this script is such a collector). The admin port is
# STRAIT_ADMIN_PORT (default: any free one); with STRAIT_TAP_QUERY set (e.g.
# "authority=nomatch.test&seconds=600") a tap with that filter is held open
# on it for the proxy's whole run. With STRAIT_XDS_ADDRESS set (host:port of
# an ADS server, e.g. xds_churn_cp.rs's), the routes and clusters come from
# that control plane instead (UPSTREAM is then the control plane's to give)
# and the node id is STRAIT_XDS_NODE_ID (default "bench").
set -euo pipefail
listen=$1 upstream=$2 workers=$3 dir=$4 protocol=${5:-http1}
mkdir -p "$dir"
tracing=""
if [[ -n "${STRAIT_TRACE_SAMPLE_RATE:-}" ]]; then
  tracing="tracing: {otlp: {address: \"${STRAIT_TRACE_OTLP:-127.0.0.1:4317}\"}, sample_rate: $STRAIT_TRACE_SAMPLE_RATE}"
fi
if [[ -n "${STRAIT_XDS_ADDRESS:-}" ]]; then
  cat > "$dir/strait.yaml" <<YAML
log: {level: warn}
runtime: {worker_threads: $workers}
listeners:
  outbound: {address: ${listen%:*}, port: ${listen##*:}}
  inbound: {address: 127.0.0.1, port: 0}
  admin: {address: 127.0.0.1, port: ${STRAIT_ADMIN_PORT:-0}}
xds: {address: "$STRAIT_XDS_ADDRESS", node: {id: "${STRAIT_XDS_NODE_ID:-bench}"}}
$tracing
YAML
else
cat > "$dir/strait.yaml" <<YAML
log: {level: warn}
runtime: {worker_threads: $workers}
listeners:
  outbound: {address: ${listen%:*}, port: ${listen##*:}, default_cluster: upstream}
  inbound: {address: 127.0.0.1, port: 0}
  admin: {address: 127.0.0.1, port: ${STRAIT_ADMIN_PORT:-0}}
clusters:
  - name: upstream
    protocol: $protocol
    endpoints: [{address: "$upstream"}]
$tracing
YAML
fi
if [[ -n "${STRAIT_TAP_QUERY:-}" ]]; then
  (curl -sN --retry 30 --retry-connrefused --retry-delay 1 \
    "http://127.0.0.1:${STRAIT_ADMIN_PORT:?a tap needs STRAIT_ADMIN_PORT}/tap?$STRAIT_TAP_QUERY" \
    > "$dir/tap.out" 2>&1 &)
fi
exec "${STRAIT_BIN:-$(dirname "$0")/../../target/release/strait}" run --config "$dir/strait.yaml"
