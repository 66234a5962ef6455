#!/usr/bin/env bash
# Assemble the file tree of the strait-init image (the Dockerfile's `init`
# stage) into target/init-rootfs: iptables in both modes (iptables-nft and
# iptables-legacy, `iptables` being nft as on current Debian and most
# nodes), their extension modules, and exactly the shared libraries they
# load, taken from this Debian host's own `iptables` package. No registry
# is needed (a `FROM debian` stage would pull one); the image holds the
# build host's bits, so build it on the Debian release you trust.
#   deploy/init-rootfs.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-target/init-rootfs}
command -v xtables-nft-multi >/dev/null && command -v xtables-legacy-multi >/dev/null || {
  apt-get update -qq && apt-get install -y -qq --no-install-recommends iptables >/dev/null
}
rm -rf "$root"
mkdir -p "$root"/{usr/sbin,run,tmp,etc,usr/share/doc/iptables}
chmod 1777 "$root/tmp"

copy() { # copy a file to the same path under the root, following symlinks
  mkdir -p "$root$(dirname "$1")"
  cp -L "$1" "$root$1"
}

nft=$(command -v xtables-nft-multi)
legacy=$(command -v xtables-legacy-multi)
modules=$(dirname "$(readlink -f "$(dpkg -L iptables | grep -m1 '/xtables/lib.*\.so$')")")
copy "$nft"
copy "$legacy"
for module in "$modules"/*.so; do copy "$module"; done
# The libraries the binaries and every extension module load, and the loader.
for lib in $(ldd "$nft" "$legacy" "$modules"/*.so | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | sort -u); do
  copy "$lib"
done

# The multi-call binaries act by the name they are called by.
cd "$root/usr/sbin"
for family in iptables ip6tables; do
  for suffix in "" -save -restore; do
    ln -sf xtables-nft-multi "$family-nft$suffix"
    ln -sf xtables-legacy-multi "$family-legacy$suffix"
    ln -sf xtables-nft-multi "$family$suffix"
  done
done
cd - >/dev/null

# Protocol and port names (`-p tcp`), ethertypes for nft; the license.
for f in /etc/protocols /etc/services /etc/ethertypes; do [[ -e $f ]] && copy "$f"; done
cp /usr/share/doc/iptables/copyright "$root/usr/share/doc/iptables/copyright"
echo "init rootfs in $root: $(du -sh "$root" | cut -f1)"
