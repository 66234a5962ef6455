#!/usr/bin/env bash
# Build strait's release binary with profile-guided optimisation (PGO).
# An instrumented build first runs the work a sidecar spends its CPU on:
#   - HTTP/1.1 and h2c proxying, with and without request bodies;
#   - both sides of the mTLS HTTP/2 mesh hop;
#   - new connections, and a few /metrics scrapes;
#   - xDS: a control plane (benches/load/xds_churn_cp.rs) streaming
#     10,000-endpoint EDS updates while requests follow its routes.
# The final build is then optimised with that profile: branches laid out
# for the paths taken, hot calls inlined, cold code moved aside. Code the
# training never runs is compiled for speed as in a plain build, not for
# size (LLVM's defaults for code a profile calls cold; see the flags
# below). The gain is measured in BENCHMARKS.md ("Profile-guided
# optimisation").
#
#   deploy/pgo.sh [--target TRIPLE]
#
# The binary: target/pgo/strait, or target/pgo/TRIPLE/strait with --target.
#
# RUSTFLAGS given to it apply to both builds; the image passes crt-static.
# Each build has its own target directory, so neither one invalidates
# `cargo build --release`. The profile is named by its hash in the final
# build's flags, so a new profile always rebuilds every crate with it.
# Needs llvm-profdata from rustc's own LLVM (rustup's llvm-tools component,
# added if missing), plus nginx, h2load, openssl, curl and python3 (installed
# with apt-get if missing). It takes two release builds, a build of the
# control plane and about twenty seconds of load, bounded by request and
# update counts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
target_args=() triple=""
case "${1:-}" in
  --target) triple=$2; target_args=(--target "$2");;
  "") ;;
  *) echo "usage: deploy/pgo.sh [--target TRIPLE]" >&2; exit 2;;
esac

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
[[ -x $profdata ]] || rustup component add llvm-tools >&2
missing=()
for tool in nginx:nginx-light h2load:nghttp2-client openssl:openssl curl:curl python3:python3; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

pgo=$ROOT/target/pgo
build() { # TARGET_DIR EXTRA_RUSTFLAGS: prints the release directory
  RUSTFLAGS="${RUSTFLAGS:-} $2" CARGO_TARGET_DIR=$1 \
    cargo build --release --locked "${target_args[@]}" --bin strait >&2
  echo "$1/${triple:+$triple/}release"
}

rm -rf "$pgo/raw"
instrumented=$(build "$pgo/generate" "-Cprofile-generate=$pgo/raw")/strait
# The training's xDS control plane, a plain build of its own: built in the
# same invocation as strait, it would pull in the dev-dependencies' crate
# features, and a profile of code built with other features does not
# match the final build's (measured: the gain was gone).
RUSTFLAGS="" CARGO_TARGET_DIR=$pgo/control-plane CARGO_PROFILE_RELEASE_LTO=false \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build --release --locked -p strait-proxy --example xds-churn-cp >&2
control_plane=$pgo/control-plane/release/examples/xds-churn-cp

# ------------------------------------------------------------- training
. "$ROOT/benches/load/lib.sh"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
start() { "$@" >> "$tmp/log" 2>&1 & pids+=("$!"); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { for _ in $(seq 150); do curl -s -m 5 "http://127.0.0.1:$1/" 2>/dev/null | grep -q ok && return 0; sleep 0.2; done
  echo "strait did not answer on $1:" >&2; tail -5 "$tmp/log" >&2; return 1; }
up=$(free_port) plain=$(free_port) mesh=$(free_port) inbound=$(free_port) admin=$(free_port)
ok_upstream "$tmp/nginx" "$up" 1024
start nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf"
mesh_pki "$tmp/pki"
config() { # NAME IDENTITY OUTBOUND INBOUND ADMIN_PORT CLUSTER_EXTRA ENDPOINT
  local identity=""
  [[ -n $2 ]] && identity="identity: {certificate: $tmp/pki/$2.crt, private_key: $tmp/pki/$2.p8, trust_bundle: $tmp/pki/ca.pem}"
  cat > "$tmp/$1.yaml" <<YAML
log: {level: warn}
runtime: {worker_threads: 1}
$identity
listeners:
  outbound: $3
  inbound: $4
  admin: {address: 127.0.0.1, port: $5}
clusters:
  - name: app
    $6
    endpoints: [{address: "$7"}]
YAML
}
anywhere="{address: 127.0.0.1, port: 0}"
config plain "" "{address: 127.0.0.1, port: $plain, default_cluster: app}" "$anywhere" "$admin" \
  "protocol: http1" "127.0.0.1:$up"
config server server "$anywhere" "{address: 127.0.0.1, port: $inbound, default_cluster: app}" 0 \
  "protocol: http1" "127.0.0.1:$up"
config client client "{address: 127.0.0.1, port: $mesh, default_cluster: app}" "$anywhere" 0 \
  "tls: {identity: \"spiffe://bench/server\"}" "127.0.0.1:$inbound"
straits=()
for name in plain server client; do start "$instrumented" run --config "$tmp/$name.yaml"; straits+=("${pids[-1]}"); done
wait_ok "$plain"; wait_ok "$mesh"
head -c 1024 /dev/zero > "$tmp/body"
load() { # h2load ARGS: a profile of failed requests would train the wrong paths
  local out
  out=$(h2load "$@")
  grep -q " 0 failed, 0 errored" <<<"$out" || { echo "training load failed: h2load $*" >&2; grep "^requests:" <<<"$out" >&2; return 1; }
}
for port in "$plain" "$mesh"; do
  url=http://127.0.0.1:$port/
  load --h1 -c 50 -m 1 -n 60000 "$url"          # HTTP/1.1 keep-alive, as wrk sends
  load --h1 -c 10 -m 10 -n 30000 "$url"         # pipelined
  load -c 10 -m 10 -n 60000 "$url"              # h2c streams
  load --h1 -c 10 -n 5000 -d "$tmp/body" "$url" # request bodies
  load -c 10 -m 10 -n 5000 -d "$tmp/body" "$url"
  load --h1 -c 200 -m 1 -n 2000 "$url"          # new connections
done
for _ in 1 2 3; do curl -sf "http://127.0.0.1:$admin/metrics" > /dev/null; done

# xDS: every request routed by the control plane, which replaces 100 of a
# 10,000-endpoint cluster's endpoints every 100 ms; 30 updates applied.
"$control_plane" --upstream "127.0.0.1:$up" \
  --endpoints 10000 --change 100 --interval-ms 100 > "$tmp/cp.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do grep -q "^addrs" "$tmp/cp.log" && break; sleep 0.1; done
ads=$(sed -n 's/^addrs.* churn=\([^ ]*\).*/\1/p' "$tmp/cp.log")
[[ -n $ads ]] || { echo "training: the xDS control plane did not start:" >&2; cat "$tmp/cp.log" >&2; exit 1; }
xds=$(free_port) xds_admin=$(free_port)
cat > "$tmp/xds.yaml" <<YAML
log: {level: warn}
runtime: {worker_threads: 1}
listeners:
  outbound: {address: 127.0.0.1, port: $xds}
  inbound: {address: 127.0.0.1, port: 0}
  admin: {address: 127.0.0.1, port: $xds_admin}
xds: {address: "$ads", node: {id: pgo}}
YAML
start "$instrumented" run --config "$tmp/xds.yaml"; straits+=("${pids[-1]}")
applied() { curl -s "http://127.0.0.1:$xds_admin/metrics" |
  awk '/^xds_updates_total/ && /ClusterLoadAssignment/ && /"ack"/ { n += $NF } END { print n + 0 }'; }
wait_ok "$xds"
load --h1 -c 10 -n 5000 "http://127.0.0.1:$xds/"
for _ in $(seq 300); do (( $(applied) >= 30 )) && break; sleep 0.2; done
n=$(applied)
if (( n < 30 )); then
  echo "training: $n of 30 EDS updates applied in 60 s (control plane $ads); its log and strait's:" >&2
  tail -5 "$tmp/cp.log" "$tmp/log" >&2
  exit 1
fi
# A graceful stop: the profile is written as the process exits.
for p in "${straits[@]}"; do kill -TERM "$p"; done
for p in "${straits[@]}"; do wait "$p" || true; done

# ---------------------------------------------------------- final build
"$profdata" merge -o "$pgo/merged.profdata" "$pgo/raw"
sum=$(sha256sum "$pgo/merged.profdata" | cut -c1-16)
profile=$pgo/strait-$sum.profdata
rm -f "$pgo"/strait-*.profdata
mv "$pgo/merged.profdata" "$profile"
# -pgso=false: functions the training never ran are optimised for speed,
# not size; inline-cold-callsite-threshold: calls in such code are inlined
# as a plain build would (LLVM's default for a call a profile says never
# ran is 45, against 225). Without them, applying an EDS update took 9.6 %
# more instructions than in a plain build (before xDS was trained), and
# every path outside the training is at the same risk.
final=$(build "$pgo/use" "-Cprofile-use=$profile -Cllvm-args=-pgso=false -Cllvm-args=-inline-cold-callsite-threshold=225")
out=$pgo/${triple:+$triple/}strait
mkdir -p "$(dirname "$out")"
cp "$final/strait" "$out"
echo "built $out (profile $profile)" >&2
