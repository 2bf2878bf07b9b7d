#!/usr/bin/env bash
# Builds and checks apilb's deployment artifacts from an already built tree
# and writes the results as a JUnit XML report, which
# scripts/summarize-tests.py counts with the GoogleTest cases (scripts/test.sh
# calls this after the plain build).
#
#   bash scripts/check-packaging.sh BUILD_DIR REPORT.xml [OUT_DIR]
#
# Cases (classname Packaging):
#   unit_verify        systemd-analyze verify of systemd/apilb.service, alone
#                      and with each drop-in, and of a stand-in kubelet.service
#                      with the node-local kubelet drop-in; any message fails
#   unit_security      systemd-analyze security --offline: exposure <= 2.0
#   deb_build          dpkg-buildpackage -us -uc -b with packaging/debian; the
#                      binary comes from BUILD_DIR (APILB_PACKAGING_FULL=1:
#                      compiles again, as a plain dpkg-buildpackage does)
#   deb_contents       the files, the conffile, the maintainer scripts
#   deb_lintian        lintian --fail-on error
#   deb_install        as root with CI=true or APILB_PACKAGING_INSTALL=1:
#                      dpkg -i for real, then checks and dpkg --purge;
#                      otherwise unpacked into a scratch root and checked there
#   unit_notify        the packaged binary run as the unit does, as an
#                      unprivileged user: scripts/check-sd-notify.py
#   kube_manifests     packaging/kubernetes/check-manifests.py (both pods and
#                      the node-local RBAC); the example configs (HA and
#                      node-local) through check-config
#   image_build        packaging/container/build-image.sh (umoci, no daemon)
#   image_config       user, entrypoint, cmd, exposed ports of the image
#   image_runs         chroot into the unpacked image: apilb version and
#                      check-config as user 65532
#   appliance_userdata the cloud-init file: YAML, #cloud-config, its script
#                      through bash -n
#
# Artifacts stay in OUT_DIR (default BUILD_DIR/packaging); logs in OUT_DIR/logs.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage="usage: check-packaging.sh BUILD_DIR REPORT.xml [OUT_DIR]"
build=$(cd "${1:?$usage}" && pwd) || exit 64
report=${2:?$usage}
out=${3:-$build/packaging}
version=$(sed -n '1s/^apilb (\([^)]*\)).*/\1/p' "$repo/packaging/debian/changelog")
arch=$(dpkg --print-architecture)
deb=$out/apilb_${version}_${arch}.deb
started=$SECONDS

rm -rf "$out"
mkdir -p "$out/logs"
cases=()
failed=0

xml_escape() { python3 -c 'import sys, html; sys.stdout.write(html.escape(sys.stdin.read()))'; }

# APILB_PACKAGING_CASES="deb_build ...": only those cases run (the others
# are left out of the report); scripts/systemd-check.sh builds its .deb so.
wanted() { [[ -z "${APILB_PACKAGING_CASES:-}" || " $APILB_PACKAGING_CASES " == *" $1 "* ]]; }

# check NAME FUNCTION: runs FUNCTION with its output in logs/NAME.log; one case.
check() {
  local name=$1; shift
  wanted "$name" || return 0
  local t0=$SECONDS rc log=$out/logs/$name.log
  # Not `|| rc=$?`: bash ignores set -e in anything tested by || or &&,
  # subshells included, and every step of a check must count.
  ( set -e; "$@" ) >"$log" 2>&1
  rc=$?
  local secs=$((SECONDS - t0))
  if ((rc == 0)); then
    printf '  ok    %-20s %4ss\n' "$name" "$secs"
    cases+=("<testcase classname=\"Packaging\" name=\"$name\" time=\"$secs\"/>")
  else
    failed=$((failed + 1))
    printf '  FAIL  %-20s %4ss (exit %s); the end of %s:\n' "$name" "$secs" "$rc" "$log"
    tail -n 25 "$log" | sed 's/^/        /'
    cases+=("<testcase classname=\"Packaging\" name=\"$name\" time=\"$secs\"><failure message=\"exit $rc, see $log\">$(tail -n 25 "$log" | xml_escape)</failure></testcase>")
  fi
}

skip() {
  wanted "$1" || return 0
  printf '  skip  %-20s %s\n' "$1" "$2"
  cases+=("<testcase classname=\"Packaging\" name=\"$1\"><skipped message=\"$(printf %s "$2" | xml_escape)\"/></testcase>")
}

# A unit directory for systemd-analyze: the unit with its Exec paths pointed
# at BINARY (verify checks that they exist), its drop-ins, and MANPATH for
# Documentation=man:apilb(8).
unit_dir=$out/unit
make_unit_dir() {
  local binary=$1 dropins=$2
  rm -rf "$unit_dir"
  mkdir -p "$unit_dir/apilb.service.d" "$unit_dir/man/man8"
  sed "s#/usr/sbin/apilb#$binary#g" "$repo/systemd/apilb.service" >"$unit_dir/apilb.service"
  for d in $dropins; do sed "s#/usr/sbin/apilb#$binary#g" "$repo/systemd/$d" >"$unit_dir/apilb.service.d/$d"; done
  gzip -c "$repo/packaging/man/apilb.8" >"$unit_dir/man/man8/apilb.8.gz"
}

# systemd-analyze verify UNIT in $unit_dir; fails on any message (verify
# exits 0 on unknown keys and bad values; its messages are the verdict).
verify_quiet() {
  local msgs
  msgs=$(cd "$unit_dir" && MANPATH=$unit_dir/man SYSTEMD_UNIT_PATH=$unit_dir: \
         systemd-analyze verify "$1" 2>&1) || true
  echo "$msgs"
  [[ -z "$msgs" ]]
}

unit_verify() {
  local set
  for set in "" low-ports.conf vrrp-manage.conf bgp.conf bgp-manage.conf node-local.conf; do
    make_unit_dir "$build/src/apilb" "$set"
    echo "verify apilb.service ${set:+with $set}"
    verify_quiet apilb.service
  done
  # The kubelet's drop-in, on a stand-in kubelet unit (no kubelet here);
  # verify loads apilb.service (with node-local.conf) through Wants=.
  mkdir -p "$unit_dir/kubelet.service.d"
  printf '[Unit]\nDescription=stand-in for kubelet.service\n[Service]\nExecStart=/bin/true\n' >"$unit_dir/kubelet.service"
  cp "$repo/systemd/kubelet-apilb.conf" "$unit_dir/kubelet.service.d/10-apilb.conf"
  echo "verify kubelet.service with kubelet-apilb.conf"
  verify_quiet kubelet.service
  # The order the guide promises: apilb before the kubelet, pulled in by it.
  grep -qx 'Before=kubelet.service' "$repo/systemd/node-local.conf"
  grep -qx 'Wants=apilb.service' "$repo/systemd/kubelet-apilb.conf"
  grep -qx 'After=apilb.service' "$repo/systemd/kubelet-apilb.conf"
}

unit_security() {
  local set score
  for set in "" low-ports.conf vrrp-manage.conf bgp.conf bgp-manage.conf node-local.conf; do
    make_unit_dir "$build/src/apilb" "$set"
    score=$(cd "$unit_dir" && SYSTEMD_UNIT_PATH=$unit_dir: \
            systemd-analyze security --offline=true --no-pager apilb.service 2>&1 |
            sed -n 's/.*Overall exposure level for apilb.service: \([0-9.]*\).*/\1/p')
    echo "exposure ${set:-(unit alone)}: ${score:-?}"
    [[ -n "$score" ]]
    # The promise is for the unit as shipped; the drop-ins are reported.
    if [[ -z "$set" ]]; then
      echo "$score" >"$out/security-score"
      python3 -c "import sys; sys.exit(0 if float('$score') <= 2.0 else 1)"
    fi
  done
}

# dpkg-buildpackage needs debian/ at the top of the source tree: a copy of
# the repository without build directories, with packaging/debian as debian/.
deb_build() {
  local stage=$out/src/apilb-${version%-*}
  mkdir -p "$stage"
  tar -C "$repo" --exclude=./.git --exclude='./build*' --exclude=./debian -cf - . | tar -C "$stage" -xf -
  cp -r "$repo/packaging/debian" "$stage/debian"
  local env=(DEB_BUILD_OPTIONS="nocheck parallel=2")
  [[ "${APILB_PACKAGING_FULL:-0}" == 1 ]] || env+=(APILB_PREBUILT="$build")
  (cd "$stage" && env "${env[@]}" dpkg-buildpackage -us -uc -b)
  ls -l "$out/src"
  mv "$out/src/apilb_${version}_${arch}.deb" "$deb"
  stat -c '%s bytes: %n' "$deb" | tee "$out/deb-size"
}

deb_contents() {
  local list; list=$(dpkg-deb -c "$deb")
  echo "$list"
  local f
  for f in ./usr/sbin/apilb ./etc/apilb/apilb.yaml ./lib/systemd/system/apilb.service \
           ./usr/lib/tmpfiles.d/apilb.conf ./usr/share/man/man8/apilb.8.gz \
           ./usr/share/doc/apilb/copyright ./usr/share/doc/apilb/README.md \
           ./usr/share/doc/apilb/vip.md ./usr/share/doc/apilb/bgp.md ./usr/share/doc/apilb/systemd.md \
           ./usr/share/doc/apilb/kubeadm-ha.md ./usr/share/doc/apilb/upgrade.md \
           ./usr/share/doc/apilb/troubleshooting.md ./usr/share/doc/apilb/node-local.md \
           ./usr/share/doc/apilb/examples/low-ports.conf ./usr/share/doc/apilb/examples/vrrp-manage.conf \
           ./usr/share/doc/apilb/examples/bgp.conf ./usr/share/doc/apilb/examples/bgp-manage.conf \
           ./usr/share/doc/apilb/examples/frr-tor.conf \
           ./usr/share/doc/apilb/examples/node-local.yaml ./usr/share/doc/apilb/examples/node-local.conf \
           ./usr/share/doc/apilb/examples/kubelet-apilb.conf; do
    # Regular files (a link would point into the build machine), and the
    # guides not gzipped: the unit's Documentation= names systemd.md.
    grep -Eq "^-.* $f\$" <<<"$list" || { echo "missing: $f"; return 1; }
  done
  # node-local.conf's StateDirectory= (the discovery state file): systemd
  # makes it at the unit's start, but the guide's `apilb check-config` of
  # node-local.yaml runs before that and refuses a state file whose
  # directory is missing (docs/node-local.md, step 2; systemd-check.sh's
  # nodelocal_start found it).
  grep -Eq '^d.* \./var/lib/apilb/$' <<<"$list" || { echo "missing: the directory ./var/lib/apilb/"; return 1; }
  local ctl; ctl=$(mktemp -d)
  dpkg-deb -e "$deb" "$ctl"
  grep -qx /etc/apilb/apilb.yaml "$ctl/conffiles"
  grep -q 'adduser --system' "$ctl/postinst"
  # Never started with the example configuration, and enabled only when
  # it was enabled before (an upgrade; deb_install checks a fresh install).
  if grep -E 'deb-systemd-invoke (start|restart)' "$ctl/postinst"; then
    echo "the postinst starts the service"; return 1
  fi
  local before; before=$(grep -B2 "deb-systemd-helper enable 'apilb.service'" "$ctl/postinst")
  [[ "$before" == *"was-enabled 'apilb.service'"* ]]
  grep -q 'systemd-tmpfiles' "$ctl/postinst"
  # Every program the unit runs comes with the package or one it depends
  # on: a minimal Debian 12 has no /bin/kill (procps), and ExecReload
  # failed with 203/EXEC there (scripts/systemd-check.sh found it).
  local depends exe owner
  depends=$(dpkg-deb -f "$deb" Depends)
  for exe in $(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\(\/[^ ]*\).*/\1/p' "$repo/systemd/"*.service "$repo/systemd/"*.conf | sort -u); do
    [[ $exe == /usr/sbin/apilb ]] && continue
    owner=$(dpkg -S "$exe" | grep -v "^diversion by" | cut -d: -f1 | head -n 1)
    echo "$exe: from $owner"
    # An Essential package (dash's /bin/sh) is on every Debian system.
    [[ -n $owner && $(dpkg-query -W -f='${Essential}' "$owner" 2>/dev/null) == yes ]] && continue
    [[ -n $owner && ", $depends," == *", $owner"[\ ,]* ]] || { echo "$exe comes from $owner, not in Depends: $depends"; return 1; }
  done
  # An upgrade hands over in place (`apilb upgrade`), only on an upgrade of
  # a running unit, and nothing stops the unit before it (debhelper's
  # preinst stop, which --no-start alone adds, or a prerm stop).
  grep -q '/usr/sbin/apilb upgrade --config' "$ctl/postinst"
  grep -q 'systemctl is-active --quiet apilb.service' "$ctl/postinst"
  if [[ -e "$ctl/preinst" ]] && grep -E 'deb-systemd-invoke stop|systemctl stop' "$ctl/preinst"; then
    echo "the preinst stops the service on upgrade"; return 1
  fi
  # The prerm stops it on a remove, and only then: run it as dpkg does for
  # an upgrade and for a remove, with systemd's tools recorded, not run.
  local fake; fake=$(mktemp -d)
  printf '#!/bin/sh\necho "$0 $*" >>%s/calls\n' "$fake" >"$fake/deb-systemd-invoke"
  chmod +x "$fake/deb-systemd-invoke"; cp "$fake/deb-systemd-invoke" "$fake/systemctl"
  sed 's#\[ -d /run/systemd/system \]#true#' "$ctl/prerm" >"$fake/prerm"
  PATH=$fake:$PATH sh -e "$fake/prerm" upgrade 0.1.0-1
  if [[ -s $fake/calls ]]; then echo "the prerm acts on an upgrade: $(cat "$fake/calls")"; return 1; fi
  PATH=$fake:$PATH sh -e "$fake/prerm" remove
  grep -q 'deb-systemd-invoke stop apilb.service' "$fake/calls" || { echo "the prerm does not stop apilb on a remove"; return 1; }
  rm -rf "$fake"
  sh -n "$ctl/postinst"
  rm -rf "$ctl"
}

deb_lintian() {
  lintian --fail-on error --display-level '>=warning' "$deb"
}

# The same checks on an installed tree: ROOT is / or a scratch root.
installed_checks() {
  local root=$1 as_user=$2
  "$root/usr/sbin/apilb" version | grep -qx "apilb ${version%-*}"
  # check-config on the conffile as installed, by the service's user.
  if [[ -n "$as_user" ]]; then
    runuser -u "$as_user" -- "$root/usr/sbin/apilb" check-config --config "$root/etc/apilb/apilb.yaml"
  else
    "$root/usr/sbin/apilb" check-config --config "$root/etc/apilb/apilb.yaml"
  fi
  man --warnings -l "$root/usr/share/man/man8/apilb.8.gz" >/dev/null
  # The installed unit, with the installed binary and man page.
  rm -rf "$unit_dir"; mkdir -p "$unit_dir"
  sed "s#/usr/sbin/apilb#$root/usr/sbin/apilb#g" "$root/lib/systemd/system/apilb.service" >"$unit_dir/apilb.service"
  local msgs
  msgs=$(cd "$unit_dir" && MANPATH=$root/usr/share/man SYSTEMD_UNIT_PATH=$unit_dir: \
         systemd-analyze verify apilb.service 2>&1) || true
  echo "verify (installed unit): ${msgs:-no messages}"
  [[ -z "$msgs" ]]
}

deb_install() {
  if [[ $(id -u) -eq 0 && ( "${CI:-}" == true || "${APILB_PACKAGING_INSTALL:-0}" == 1 ) ]]; then
    echo "== installing for real: dpkg -i $deb"
    if dpkg -s apilb >/dev/null 2>&1; then echo "apilb is already installed; not touching it"; return 1; fi
    local rc
    set +e
    (
      set -e
      dpkg -i "$deb"
      getent passwd apilb
      [[ $(stat -c %U /run/apilb) == apilb ]]
      [[ ! -e /etc/systemd/system/multi-user.target.wants/apilb.service ]]
      dpkg-query -W -f='${Conffiles}\n' apilb | grep -q /etc/apilb/apilb.yaml
      installed_checks / apilb
    )
    rc=$?
    set -e
    dpkg --purge apilb
    if getent passwd apilb; then echo "the apilb user is left after the purge"; return 1; fi
    [[ ! -e /etc/apilb && ! -e /usr/sbin/apilb ]]
    return $rc
  fi
  echo "== unpacking into a scratch root (set CI=true as root for a real install)"
  local root=$out/root
  dpkg-deb -x "$deb" "$root"
  installed_checks "$root" ""
}

# The packaged binary run as the unit runs it (unprivileged, NOTIFY_SOCKET):
# READY, RELOADING/READY around SIGHUP, STOPPING on SIGTERM, exit 0.
unit_notify() {
  local root=$out/notify-root
  dpkg-deb -x "$deb" "$root"
  timeout 60 python3 "$repo/scripts/check-sd-notify.py" "$root/usr/sbin/apilb" nobody
}

kube_manifests() {
  python3 "$repo/packaging/kubernetes/check-manifests.py" "$repo/packaging/kubernetes/apilb-pod.yaml" \
    "$repo/packaging/kubernetes/apilb-node-local-pod.yaml" "$repo/packaging/kubernetes/apilb-node-local-rbac.yaml"
  # The example config, with the CA at a path that exists here.
  local tmp; tmp=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=test-ca \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" -days 1 2>/dev/null
  sed "s#/etc/kubernetes/pki/ca.crt#$tmp/ca.crt#" "$repo/packaging/kubernetes/apilb-config.yaml" >"$tmp/apilb.yaml"
  "$build/src/apilb" check-config --config "$tmp/apilb.yaml"
  "$build/src/apilb" keepalived-config --config "$tmp/apilb.yaml" --apilb-path /usr/sbin/apilb -o "$tmp/keepalived.conf"
  grep -q 'process "/usr/sbin/apilb" run --config' "$tmp/keepalived.conf"
  # The node-local example (cli_test runs it against the stand-in): its
  # kubeconfig must exist for check-config, a kubeadm-shaped one here.
  printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster: {server: "https://127.0.0.1:7445", certificate-authority: %s}\n' \
    "$tmp/ca.crt" >"$tmp/kubelet.conf"
  sed -e "s#/etc/kubernetes/pki/ca.crt#$tmp/ca.crt#" -e "s#/etc/kubernetes/kubelet.conf#$tmp/kubelet.conf#" \
    -e "s#/var/lib/apilb/#$tmp/#" "$repo/conf/node-local.yaml" >"$tmp/node-local.yaml"
  "$build/src/apilb" check-config --config "$tmp/node-local.yaml"
  rm -rf "$tmp"
}

image_build() {
  bash "$repo/packaging/container/build-image.sh" "$deb" "$out/image"
  du -sb "$out/image/oci/blobs" | cut -f1 >"$out/image-size"
  stat -c %s "$out/image/apilb-oci.tar" >>"$out/image-size"
}

image_config() {
  python3 - "$out/image/oci" "${version%-*}" <<'PY'
import json, os, sys
layout, tag = sys.argv[1], sys.argv[2]
def blob(digest):
    algo, hexd = digest.split(":")
    with open(os.path.join(layout, "blobs", algo, hexd)) as f:
        return json.load(f)
index = json.load(open(os.path.join(layout, "index.json")))
m = [d for d in index["manifests"]
     if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
assert len(m) == 1, f"tag {tag} not in index.json: {index}"
manifest = blob(m[0]["digest"])
cfg = blob(manifest["config"]["digest"])
c = cfg["config"]
print(json.dumps(c, indent=1))
assert c["User"] == "65532:65532", c.get("User")
assert c["Entrypoint"] == ["/usr/sbin/apilb"], c.get("Entrypoint")
assert c["Cmd"] == ["run", "--config", "/etc/apilb/apilb.yaml"], c.get("Cmd")
assert set(c["ExposedPorts"]) == {"6443/tcp"}, c.get("ExposedPorts")
assert cfg["os"] == "linux"
assert len(manifest["layers"]) == 1, "one layer: FROM scratch plus the files"
PY
}

image_runs() {
  local bundle=$out/image/bundle
  umoci unpack --image "$out/image/oci:${version%-*}" "$bundle" >/dev/null
  find "$bundle/rootfs" -type f | sort
  # Nothing but the binary, its libraries and the few files it needs.
  [[ ! -e "$bundle/rootfs/bin/sh" && ! -e "$bundle/rootfs/usr/bin/sh" ]]
  chroot "$bundle/rootfs" /usr/sbin/apilb version | grep -qx "apilb ${version%-*}"
  # check-config runs the YAML check in a child started from /proc/self/exe:
  # give the chroot a /proc, as every container runtime does (its own mount
  # namespace, so nothing is left mounted).
  mkdir -p "$bundle/rootfs/proc"
  unshare --mount --propagation private sh -c 'mount -t proc proc "$1/proc" &&
    chroot --userspec=65532:65532 "$1" /usr/sbin/apilb check-config --config /etc/apilb/apilb.yaml' _ "$bundle/rootfs"
  rm -rf "$bundle"
}

appliance_userdata() {
  local f=$repo/packaging/appliance/user-data.yaml dir=$out/appliance
  head -n1 "$f" | grep -qx '#cloud-config'
  # Writes out every file it carries, to check each with its own tool.
  python3 - "$f" "$dir" <<'PY'
import os, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for k in doc:
    assert k in {"package_update", "packages", "write_files", "runcmd", "bootcmd"}, k
for w in doc["write_files"]:
    name = os.path.join(sys.argv[2], w["path"].lstrip("/"))
    os.makedirs(os.path.dirname(name), exist_ok=True)
    with open(name, "w") as f:
        f.write(w["content"])
    print(name)
assert doc["runcmd"] == [["bash", "/usr/local/sbin/apilb-appliance-setup.sh"]]
PY
  bash -n "$dir/usr/local/sbin/apilb-appliance-setup.sh"
  bash -n "$dir/etc/apilb-appliance/settings.env"
  # Its apilb.yaml, with a CA where it says, passes check-config and
  # renders a keepalived.conf.
  local tmp; tmp=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=test-ca \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" -days 1 2>/dev/null
  sed "s#/etc/apilb/ca.crt#$tmp/ca.crt#" "$dir/etc/apilb-appliance/apilb.yaml" >"$tmp/apilb.yaml"
  "$build/src/apilb" check-config --config "$tmp/apilb.yaml"
  "$build/src/apilb" keepalived-config --config "$tmp/apilb.yaml" --apilb-path /usr/sbin/apilb
  rm -rf "$tmp"
}

echo "packaging checks ($out):"
if [[ ! -x "$build/src/apilb" ]]; then
  echo "no $build/src/apilb: build first"
  cases+=("<testcase classname=\"Packaging\" name=\"binary\"><failure message=\"no binary\"/></testcase>")
  failed=1
else
  check unit_verify unit_verify
  check unit_security unit_security
  check deb_build deb_build
  if [[ -f "$deb" ]]; then
    check deb_contents deb_contents
    check deb_lintian deb_lintian
    check deb_install deb_install
    check unit_notify unit_notify
    check image_build image_build
    if [[ -d "$out/image/oci" ]]; then
      check image_config image_config
      check image_runs image_runs
    else
      skip image_config "no image"; skip image_runs "no image"
    fi
  else
    for c in deb_contents deb_lintian deb_install unit_notify image_build image_config image_runs; do
      skip "$c" "the .deb did not build"
    done
  fi
  check kube_manifests kube_manifests
  check appliance_userdata appliance_userdata
fi

{
  echo '<?xml version="1.0" encoding="UTF-8"?>'
  echo "<testsuites><testsuite name=\"Packaging\" tests=\"${#cases[@]}\" failures=\"$failed\">"
  printf '%s\n' "${cases[@]}"
  echo '</testsuite></testsuites>'
} >"$report"
echo "packaging: ${#cases[@]} checks, $failed failed, in $((SECONDS - started))s" \
     "(.deb $(cut -d' ' -f1 "$out/deb-size" 2>/dev/null || echo ?) bytes," \
     "image $(head -n1 "$out/image-size" 2>/dev/null || echo ?) bytes," \
     "exposure $(cat "$out/security-score" 2>/dev/null || echo ?))"
((failed == 0))
