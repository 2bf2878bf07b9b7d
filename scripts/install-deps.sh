#!/usr/bin/env bash
# Installs the Debian 12 packages apilb needs, and nothing when they are all
# there already (then it prints nothing and exits 0).
#
#   bash scripts/install-deps.sh              # build + tests (the default set)
#   bash scripts/install-deps.sh bench        # also the benchmark tools
#   bash scripts/install-deps.sh kubectl      # also kubectl, for the demo's kubectl line
#
# Groups can be combined: `install-deps.sh bench kubectl`. Uses sudo only when
# not run as root. Boost must be 1.81 (libboost1.81-dev); Debian's default
# libboost-dev is 1.74 and the two -dev packages conflict.
set -euo pipefail

# What `meson setup` + `ninja` + `meson test` need, and the tools the tests and
# the demo call (openssl makes the test certificates, curl talks to the
# stand-in apiservers, ip comes from iproute2, nft (nftables) drops packets
# in tests/integration/netfault_test.cpp; chromium runs the status page's
# browser test, tests/browser/status_page_test.py).
base=(
  meson ninja-build pkg-config g++
  libboost1.81-dev libboost-json1.81-dev
  libssl-dev openssl libyaml-cpp-dev libspdlog-dev libfmt-dev
  libgtest-dev libcli11-dev libsystemd-dev
  # The workers' io_uring (relay.io), and the floor relays of tests/bench/floor.
  liburing-dev
  curl python3 ca-certificates iproute2 nftables
  # resfault_test: prlimit and unshare (util-linux), libfaketime to step
  # apilb's wall clock.
  util-linux faketime
  keepalived
  # tests/integration/bgp_test.cpp and frr_conf_test: FRR's zebra, bgpd,
  # bfdd and vtysh (vtysh --dryrun checks the rendered frr.conf).
  frr
  # scripts/check-packaging.sh: the .deb, its lint, the unit checks
  # (systemd-analyze), the OCI image without a daemon (umoci), man, YAML.
  debhelper dpkg-dev fakeroot lintian systemd umoci man-db python3-yaml
  chromium
  # tests/integration/standin_api_test.py: the stand-in apiserver's
  # EndpointSlice API against the real Kubernetes Python client.
  python3-kubernetes
  # scripts/fuzz.sh and the fuzz stage of scripts/test.sh: libFuzzer.
  clang-14 libclang-rt-14-dev
  # The format test (scripts/format.sh): Debian 12's clang-format.
  clang-format-14
)

wanted=("${base[@]}")
for group in "$@"; do
  case "$group" in
    base) ;;
    bench)
      # strace: tests/bench/floor/floor.py --strace and tests/bench/syscalls.sh.
      wanted+=(haproxy nginx libnginx-mod-stream wrk iperf3 nghttp2-client valgrind linux-perf strace) ;;
    kubectl)
      # Debian ships kubectl in kubernetes-client; keep any kubectl already on PATH.
      command -v kubectl >/dev/null 2>&1 || wanted+=(kubernetes-client) ;;
    -h|--help)
      sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *)
      echo "install-deps.sh: unknown package group '$group' (known: base, bench, kubectl)" >&2
      exit 2 ;;
  esac
done

installed() {
  local status
  status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
  [[ "$status" == "install ok installed" ]]
}

# Boost 1.74 development headers (Debian's default) cannot be installed next to
# 1.81's; apt would have to remove them, so say so instead of doing it quietly.
conflicting=()
for pkg in libboost-dev libboost1.74-dev libboost-all-dev; do
  if installed "$pkg"; then conflicting+=("$pkg"); fi
done
if ((${#conflicting[@]})); then
  if installed libboost1.81-dev; then
    # Cannot normally happen (dpkg enforces the Conflicts), but be explicit.
    echo "install-deps.sh: warning: ${conflicting[*]} installed next to libboost1.81-dev" >&2
  else
    cat >&2 <<EOF
install-deps.sh: Boost 1.74 development packages are installed: ${conflicting[*]}
  apilb needs Boost 1.81 (libboost1.81-dev, libboost-json1.81-dev), which conflicts
  with them. Remove them first, then run this script again:
    apt-get remove ${conflicting[*]}
EOF
    exit 1
  fi
fi

missing=()
for pkg in "${wanted[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
((${#missing[@]})) || exit 0

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "install-deps.sh: missing packages: ${missing[*]}" >&2
  echo "install-deps.sh: not root and no sudo; install them as root:" >&2
  echo "  apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "install-deps.sh: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps.sh: done"
