#!/usr/bin/env bash
# Builds the apilb OCI image without a container engine or daemon: umoci
# (Debian's package) writes an OCI image layout from the root filesystem that
# make-rootfs.sh assembles from the .deb's files. The same image as the
# Containerfile's, with no registry and no compile.
#
#   build-image.sh APILB_DEB OUT_DIR [TAG]
#
# Writes OUT_DIR/oci (the image layout, tag TAG, default the .deb's upstream
# version) and OUT_DIR/apilb-oci.tar (the same as an OCI archive, for
# `ctr -n k8s.io images import`, `podman load` or `skopeo copy oci-archive:`).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deb=${1:?usage: build-image.sh APILB_DEB OUT_DIR [TAG]}
out=${2:?usage: build-image.sh APILB_DEB OUT_DIR [TAG]}
version=$(dpkg-deb -f "$deb" Version)
tag=${3:-${version%-*}}
arch=$(dpkg-deb -f "$deb" Architecture)

command -v umoci >/dev/null || { echo "build-image.sh: umoci is missing (apt-get install umoci)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

dpkg-deb -x "$deb" "$work/deb"
rm -rf "$out/oci" "$out/apilb-oci.tar"
mkdir -p "$out"
img=$out/oci

umoci init --layout "$img"
umoci new --image "$img:$tag"
umoci unpack --image "$img:$tag" "$work/bundle" >/dev/null
"$here/make-rootfs.sh" "$work/deb/usr/sbin/apilb" "$work/deb/etc/apilb/apilb.yaml" "$work/bundle/rootfs"
umoci repack --image "$img:$tag" "$work/bundle"
umoci config --image "$img:$tag" \
  --os linux --architecture "$arch" \
  --author "apilb maintainers" \
  --config.user 65532:65532 \
  --config.workingdir / \
  --config.entrypoint /usr/sbin/apilb \
  --config.cmd run --config.cmd --config --config.cmd /etc/apilb/apilb.yaml \
  --config.exposedports 6443/tcp \
  --config.label org.opencontainers.image.title=apilb \
  --config.label "org.opencontainers.image.version=$version" \
  --config.stopsignal SIGTERM
umoci gc --layout "$img"
tar -C "$img" -cf "$out/apilb-oci.tar" .
echo "image $img:$tag ($(du -sb "$img/blobs" | cut -f1) bytes of blobs), archive $out/apilb-oci.tar"
