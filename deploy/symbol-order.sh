#!/usr/bin/env bash
# Regenerate proxy/symbol-order.txt, the order lld lays out strait's
# functions in (proxy/build.rs passes it to release links).
#
# Why: the kernel maps a binary's code in 64 KiB windows around each page
# it faults in, and start-up code is spread over the whole 8 MiB text, so
# an idle strait kept most of its text resident. Laid out together, the
# code that runs at start-up and per request fills a few contiguous
# megabytes instead.
#
# How: the release binary, built as it ships (deploy/pgo.sh: profile-guided
# optimisation, which inlines and outlines differently from a plain build),
# runs under callgrind on the embedded default config (start-up, /ready,
# /metrics), then as an HTTP/1 reverse proxy to nginx with HTTP/1.1 and
# h2c traffic; every function that ran is listed, hottest first. The
# static build of the image (deploy/build-image.sh) names the same
# functions with other hashes, so it is built and profiled the same way,
# and its names are listed too. A stale file costs nothing but layout:
# names no longer in the binary are skipped at link time. A plain
# `cargo build --release` shares most of the names, not all. Needs
# valgrind, nginx, h2load (nghttp2-client), curl and python3. Takes about
# twenty minutes (two PGO builds: four fat-LTO links).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/pgo.sh
RUSTFLAGS="-C target-feature=+crt-static" deploy/pgo.sh --target x86_64-unknown-linux-gnu
dynamic=$PWD/target/pgo/strait
static=$PWD/target/pgo/x86_64-unknown-linux-gnu/strait
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
profile() { # NAME ARGS... : run $bin under callgrind in the background
  local name=$1; shift
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$tmp/$name.cg" \
    "$bin" "$@" > "$tmp/$name.log" 2>&1 &
  pids+=($!)
}
finish() { kill -TERM "${pids[-1]}"; wait "${pids[-1]}" || true; }

for build in dynamic static; do
  bin=${!build}
  # 1. The embedded default config: start-up, readiness, metrics.
  profile "$build-default" run
  wait_port 4191 || { cat "$tmp/$build-default.log"; exit 1; }
  curl -sf http://127.0.0.1:4191/ready > /dev/null
  curl -sf http://127.0.0.1:4191/metrics > /dev/null
  finish

  # 2. A reverse proxy to nginx, HTTP/1.1 and h2c clients.
  up=$(free_port) listen=$(free_port) admin=$(free_port)
  rm -rf "$tmp/nginx"; mkdir -p "$tmp/nginx"
  cat > "$tmp/nginx/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $tmp/nginx/pid; error_log $tmp/nginx/error.log warn;
events { worker_connections 256; }
http { access_log off; client_body_temp_path $tmp/nginx/b; proxy_temp_path $tmp/nginx/p;
  fastcgi_temp_path $tmp/nginx/f; uwsgi_temp_path $tmp/nginx/u; scgi_temp_path $tmp/nginx/s;
  server { listen 127.0.0.1:$up; location / { return 200 "ok"; } } }
NGINX
  nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" & nginx_pid=$!
  cat > "$tmp/strait.yaml" <<YAML
log: {level: warn}
runtime: {worker_threads: 1}
listeners:
  outbound: {address: 127.0.0.1, port: $listen, default_cluster: upstream}
  inbound: {address: 127.0.0.1, port: 0}
  admin: {address: 127.0.0.1, port: $admin}
clusters:
  - {name: upstream, protocol: http1, endpoints: [{address: "127.0.0.1:$up"}]}
YAML
  profile "$build-proxy" run --config "$tmp/strait.yaml"
  wait_port "$listen" || { cat "$tmp/$build-proxy.log"; exit 1; }
  h2load --h1 -n 2000 -c 10 "http://127.0.0.1:$listen/" > /dev/null
  h2load -n 2000 -c 10 -m 10 "http://127.0.0.1:$listen/" > /dev/null
  curl -sf "http://127.0.0.1:$admin/metrics" > /dev/null
  finish

  kill "$nginx_pid"; wait "$nginx_pid" 2>/dev/null || true
done

python3 deploy/symbol_order.py --binary "$dynamic" "$tmp"/dynamic-*.cg --binary "$static" "$tmp"/static-*.cg \
  > proxy/symbol-order.txt
