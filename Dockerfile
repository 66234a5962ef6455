# strait's two images, both from local files only (no registry needed):
#   strait:dev       the sidecar: one static binary, nothing else, non-root
#                    (the last stage, what a plain build produces);
#   strait-init:dev  the init step (--target init): the same binary plus
#                    iptables in nft and legacy modes, run as root with
#                    NET_ADMIN to install the redirect.
#
# Build the static, stripped binary first (glibc linked statically; no DNS
# resolution happens through NSS, so nothing is lost), optimised with a
# profile of a training load (deploy/pgo.sh):
#   RUSTFLAGS="-C target-feature=+crt-static" deploy/pgo.sh --target x86_64-unknown-linux-gnu
#   mkdir -p target/image && strip -o target/image/strait target/pgo/x86_64-unknown-linux-gnu/strait
# (stripped by `strip`, not cargo's profile: that would rename the symbols
# proxy/symbol-order.txt lays out)
# and the init image's file tree (iptables and its libraries, from this
# Debian host's iptables package):
#   deploy/init-rootfs.sh
# then the images (Docker, or buildah as deploy/build-image.sh does):
#   buildah bud --storage-driver vfs --isolation chroot --target init -t strait-init:dev .
#   buildah bud --storage-driver vfs --isolation chroot -t strait:dev .

FROM scratch AS init
COPY target/init-rootfs/ /
COPY target/image/strait /strait
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin
USER 0:0
ENTRYPOINT ["/strait"]
CMD ["iptables", "--apply"]

FROM scratch AS sidecar
COPY target/image/strait /strait
COPY config/default.yaml /etc/strait/strait.yaml
# The uid `strait iptables` exempts from redirection (--proxy-uid).
USER 2102:2102
EXPOSE 4140 4143 4191
ENTRYPOINT ["/strait"]
CMD ["run", "--config", "/etc/strait/strait.yaml"]
