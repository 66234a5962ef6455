#!/usr/bin/env bash
# Build the static strait binary and the FROM scratch image with buildah
# (no Docker daemon or registry needed), then smoke-test the image: it must
# print its version and serve /ready on the embedded default config.
#   deploy/build-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-strait:dev}
command -v buildah >/dev/null || { apt-get update -qq && apt-get install -y -qq buildah >/dev/null; }
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target x86_64-unknown-linux-gnu --bin strait
bah=(buildah --storage-driver vfs)
"${bah[@]}" bud --isolation chroot -t "$tag" .
ctr=$("${bah[@]}" from "$tag")
trap '"${bah[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
"${bah[@]}" run --isolation chroot "$ctr" -- /strait version
timeout 10 "${bah[@]}" run --isolation chroot "$ctr" -- /strait run --config /etc/strait/strait.yaml >/dev/null 2>&1 &
proxy=$!
ready=no
for _ in $(seq 1 50); do
  [[ "$(curl -s --max-time 1 http://127.0.0.1:4191/ready)" == ready ]] && { ready=yes; break; }
  sleep 0.1
done
curl -s -X POST --max-time 1 http://127.0.0.1:4191/shutdown >/dev/null || true
wait "$proxy" 2>/dev/null || true
[[ $ready == yes ]] || { echo "image $tag did not become ready" >&2; exit 1; }
echo "image $tag serves /ready and shuts down on request"
