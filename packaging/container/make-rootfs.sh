#!/usr/bin/env bash
# Assembles the runtime root filesystem of the apilb image: the binary, the
# shared libraries it is linked against (as ldd resolves them on this
# Debian 12 system), the example configuration, and passwd/group entries for
# the unprivileged user 65532 (apilb). Nothing else: no shell, no package
# manager.
#
#   make-rootfs.sh APILB_BINARY CONFIG_FILE DEST_DIR
set -euo pipefail
bin=${1:?usage: make-rootfs.sh APILB_BINARY CONFIG_FILE DEST_DIR}
config=${2:?usage}
dest=${3:?usage}

mkdir -p "$dest"/{usr/sbin,etc/apilb,run/apilb,tmp}
install -m 0755 "$bin" "$dest/usr/sbin/apilb"
install -m 0644 "$config" "$dest/etc/apilb/apilb.yaml"

# Every library ldd names, and the dynamic loader, at their own paths.
# (usr-merged Debian: /lib is a link to usr/lib; keep that shape.)
ln -sfn usr/lib "$dest/lib"
ln -sfn usr/lib64 "$dest/lib64"
while read -r path; do
  real=$(readlink -f "$path")
  case "$path" in /lib/*|/lib64/*) path=/usr$path ;; esac
  mkdir -p "$dest$(dirname "$path")"
  cp "$real" "$dest$path"
done < <(ldd "$bin" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}')

cat >"$dest/etc/passwd" <<'PW'
root:x:0:0:root:/root:/usr/sbin/nologin
apilb:x:65532:65532:apilb:/nonexistent:/usr/sbin/nologin
PW
cat >"$dest/etc/group" <<'GR'
root:x:0:
apilb:x:65532:
GR
# vrrp.state_dir (writable by the user; a volume in Kubernetes).
chown 65532:65532 "$dest/run/apilb" 2>/dev/null || true
chmod 1777 "$dest/tmp"
