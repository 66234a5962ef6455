#!/usr/bin/env bash
# Build the static, stripped strait binary and both images with buildah
# (no Docker daemon or registry needed), then prove them in network
# namespaces this script creates, so it neither probes nor stops anything
# on the host's own 127.0.0.1:
#   1. the init image's step (`strait iptables --apply`, as the manifest
#      runs it) installs the redirect in a "pod" namespace, twice (a
#      restarted init container), and in nft and legacy modes;
#   2. the sidecar image, as uid 2102, serves /ready there, and the rules
#      work: the pod's connection to a peer namespace goes through the
#      proxy's outbound listener, the peer's connection to the pod's app
#      through its inbound listener (the proxy's metrics count both);
#   3. POST /shutdown stops it, and the init image's --clean removes the rules.
#   deploy/build-image.sh [TAG] [INIT_TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-strait:dev}
init_tag=${2:-strait-init:dev}
for tool in buildah:buildah ip:iproute2 curl:curl; do
  command -v "${tool%%:*}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${tool##*:}" >/dev/null; }
done
# Built with profile-guided optimisation (deploy/pgo.sh: two release
# builds and a short training load). Stripped after the build rather than
# by cargo's profile, which would rename every symbol and so miss
# proxy/symbol-order.txt's layout.
RUSTFLAGS="-C target-feature=+crt-static" deploy/pgo.sh --target x86_64-unknown-linux-gnu
mkdir -p target/image
binary=target/image/strait
strip -o "$binary" target/pgo/x86_64-unknown-linux-gnu/strait
deploy/init-rootfs.sh
bah=(buildah --storage-driver vfs)
"${bah[@]}" bud --isolation chroot --target init -t "$init_tag" .
"${bah[@]}" bud --isolation chroot -t "$tag" .
echo "binary: $(stat -c %s "$binary") bytes ($(du -h --apparent-size "$binary" | cut -f1)), stripped"

pod=strait-img-pod-$$
peer=strait-img-peer-$$
scratch=strait-img-ipt-$$
web=$(mktemp -d)
pids=()
ctrs=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ctr in "${ctrs[@]}"; do "${bah[@]}" rm "$ctr" >/dev/null 2>&1 || true; done
  for ns in "$pod" "$peer" "$scratch"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$web"
}
trap cleanup EXIT
fail() { echo "image test failed: $*" >&2; exit 1; }

# The images' file trees, run with chroot inside the namespaces.
init_ctr=$("${bah[@]}" from "$init_tag"); ctrs+=("$init_ctr")
side_ctr=$("${bah[@]}" from "$tag"); ctrs+=("$side_ctr")
init_root=$("${bah[@]}" mount "$init_ctr")
side_root=$("${bah[@]}" mount "$side_ctr")
"${bah[@]}" run --isolation chroot "$side_ctr" -- /strait version
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
in_init() { # ns, then a command line run in the init image's file tree
  local ns=$1; shift
  in_ns "$ns" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$init_root" "$@"
}
init_step() { # ns, then the arguments after `strait`, as the manifest passes them
  local ns=$1; shift
  in_init "$ns" /strait "$@"
}

# 1. The init step, in both modes, twice, in a scratch namespace.
ip netns add "$scratch"
for mode in nft legacy; do
  init_step "$scratch" iptables --apply --mode "$mode" --proxy-uid 2102 --skip-inbound-ports 4191
  init_step "$scratch" iptables --apply --mode "$mode" --proxy-uid 2102 --skip-inbound-ports 4191 \
    || fail "a second --apply ($mode) failed"
  rules=$(in_init "$scratch" "iptables-$mode" -t nat -S)
  [[ $(grep -c -- '-A OUTPUT -p tcp -j STRAIT_OUTBOUND' <<<"$rules") == 1 ]] || fail "$mode: OUTPUT jump not there once: $rules"
  init_step "$scratch" iptables --clean --mode "$mode"
  ! in_init "$scratch" "iptables-$mode" -t nat -S | grep -q STRAIT || fail "$mode: --clean left rules"
  echo "init image: --apply twice and --clean work with iptables-$mode"
done

# 2. A pod and a peer joined by a veth pair (198.18.1.0/30, RFC 2544
#    benchmarking space, never routed off this machine).
ip netns add "$pod"
ip netns add "$peer"
ip link add "sp$$" type veth peer name "sq$$"
ip link set "sp$$" netns "$pod"
ip link set "sq$$" netns "$peer"
in_ns "$pod" ip addr add 198.18.1.1/30 dev "sp$$"
in_ns "$peer" ip addr add 198.18.1.2/30 dev "sq$$"
for ns in "$pod" "$peer"; do
  in_ns "$ns" ip link set lo up
done
in_ns "$pod" ip link set "sp$$" up
in_ns "$peer" ip link set "sq$$" up
echo "hello from strait's image test" >"$web/hello.txt"
in_ns "$peer" python3 -m http.server 8080 --bind 198.18.1.2 --directory "$web" >/dev/null 2>&1 &
pids+=($!)
in_ns "$pod" python3 -m http.server 8081 --bind 127.0.0.1 --directory "$web" >/dev/null 2>&1 &
pids+=($!)

init_step "$pod" iptables --apply --proxy-uid 2102 --skip-inbound-ports 4191
in_ns "$pod" chroot --userspec=2102:2102 "$side_root" /strait run --config /etc/strait/strait.yaml >/dev/null 2>&1 &
proxy=$!
pids+=("$proxy")
admin=http://127.0.0.1:4191
ready=no
for _ in $(seq 1 100); do
  [[ "$(in_ns "$pod" curl -s --max-time 1 "$admin/ready")" == ready ]] && { ready=yes; break; }
  sleep 0.1
done
[[ $ready == yes ]] || fail "the sidecar image did not become ready"
echo "sidecar image serves /ready (in namespace $pod)"
get() { # ns url: the body, retried while the peer's server starts
  for _ in $(seq 1 50); do
    in_ns "$1" curl -sf --max-time 2 "$2" && return 0
    sleep 0.1
  done
  return 1
}
[[ "$(get "$pod" http://198.18.1.2:8080/hello.txt)" == "hello from strait's image test" ]] || fail "outbound through the proxy"
[[ "$(get "$peer" http://198.18.1.1:8081/hello.txt)" == "hello from strait's image test" ]] || fail "inbound through the proxy"
metrics=$(in_ns "$pod" curl -s "$admin/metrics")
for direction in outbound inbound; do
  grep -q "^request_total{.*direction=\"$direction\"" <<<"$metrics" || fail "no $direction request counted: the redirect missed the proxy"
done
echo "the init image's rules send the pod's traffic through the sidecar, both ways"

# 3. Shutdown on request, then the rules go.
in_ns "$pod" curl -s -X POST --max-time 1 "$admin/shutdown" >/dev/null
for _ in $(seq 1 50); do kill -0 "$proxy" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$proxy" 2>/dev/null || fail "the sidecar did not stop on POST /shutdown"
init_step "$pod" iptables --clean
echo "images $init_tag and $tag pass"
