# strait sidecar image: one static binary, nothing else, non-root.
#
# Build the static binary first (glibc linked statically; no DNS resolution
# happens through NSS, so nothing is lost):
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --release --locked --target x86_64-unknown-linux-gnu --bin strait
# then the image (Docker, or buildah as deploy/build-image.sh does):
#   buildah bud --storage-driver vfs --isolation chroot -t strait:dev .
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/strait /strait
COPY config/default.yaml /etc/strait/strait.yaml
# The uid `strait iptables` exempts from redirection (--proxy-uid).
USER 2102:2102
EXPOSE 4140 4143 4191
ENTRYPOINT ["/strait"]
CMD ["run", "--config", "/etc/strait/strait.yaml"]
