#!/usr/bin/env bash
# apilb's unit under a real systemd: boots Debian 12 (bookworm, minbase with
# systemd) in a container with its own private network (loopback only),
# installs the .deb built from BUILD_DIR's binary and checks, each as one
# PASS/FAIL line, what docs/systemd.md and docs/upgrade.md promise.
# Not part of `meson test` (it takes minutes); run as root:
#
#   bash scripts/systemd-check.sh BUILD_DIR [CACHE_DIR]
#
# CACHE_DIR (default BUILD_DIR/systemd-check) keeps the debootstrapped tree
# (bookworm/, made once from apt's mirror) and each run's copy (run/), the
# .deb and the logs. Installs debootstrap and systemd-container with apt-get
# if they are missing. Ends with "N passed, N failed"; exits 1 on a failure.
#
# APILB_SYSTEMD_CHECKS="GROUP..." runs only those groups of checks after the
# boot, to iterate on one: unit (1-6b), bgp (7-9), vrrpm (10), nodelocal
# (11), vrrp (12), remove (13). Unset: all of them, which is the check.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage="usage: systemd-check.sh BUILD_DIR [CACHE_DIR]"
build=$(cd "${1:?$usage}" && pwd) || exit 64
cache=${2:-$build/systemd-check}
mirror=${APILB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
[[ $(id -u) -eq 0 ]] || { echo "run as root (debootstrap, systemd-nspawn)"; exit 64; }
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
pristine=$cache/bookworm
run=$cache/run
log=$cache/logs
rm -rf "$log"
mkdir -p "$log"
passed=0
failed=0
nspawn_pid=
leader=

# Whether the group of checks NAME runs (APILB_SYSTEMD_CHECKS, above).
want() { [[ -z ${APILB_SYSTEMD_CHECKS:-} || " $APILB_SYSTEMD_CHECKS " == *" $1 "* ]]; }

result() {  # result NAME OK DETAIL
  if [[ $2 == 0 ]]; then
    passed=$((passed + 1)); printf 'PASS  %-22s %s\n' "$1" "$3"
  else
    failed=$((failed + 1)); printf 'FAIL  %-22s %s\n' "$1" "$3"
  fi
}

# Runs a command inside the booted container (all its namespaces).
in_ct() { nsenter --target "$leader" --mount --uts --ipc --net --pid -- /usr/bin/env -i \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
# kill(1) is procps's; the shell's builtin needs nothing installed.
# Never pid 0 or none (an inactive unit's MainPID): that is the caller's own group.
ct_kill() { [[ ${*: -1} =~ ^[1-9][0-9]*$ ]] || return 1; in_ct sh -c 'kill "$@"' kill "$@"; }
prop() { in_ct systemctl show --property="$1" --value apilb.service; }
# Whether apilb's journal has a line matching `pattern` (case-insensitive).
# Reads it all (grep -c): grep -q would end the pipe early, and journalctl's
# SIGPIPE fails the check under pipefail.
journal_has() { in_ct journalctl -u apilb.service -o cat --no-pager | grep -ci -- "$1" >/dev/null; }

# Milliseconds since the epoch.
ms_now() { echo $(($(date +%s%N) / 1000000)); }
# Polls `cmd` every 0.5 s until it succeeds or SECONDS pass.
wait_for() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.5
  done
}

# Polls `cmd` (about every 50 ms plus the time it takes) until it succeeds or
# SECS pass; prints the ms since T0 it took, or nothing.
ms_until() {
  local t0=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.05
  done
  echo $(($(ms_now) - t0))
}
# Those of the "PID:what" words that still run (a zombie does not).
alive() {
  in_ct sh -c 'for w; do s=$(cat /proc/${w%%:*}/stat 2>/dev/null) || continue; s=${s##*) };
    [ "${s%% *}" = Z ] || printf "%s " "$w"; done' sh "$@"
}
none_alive() { [[ -z $(alive "$@") ]]; }
# Those of the "PID:what" words whose process is not in apilb.service's
# control group (systemd would not end it with the unit).
outside_unit() {
  in_ct sh -c 'for w; do grep -q "/apilb\.service\$" /proc/${w%%:*}/cgroup 2>/dev/null || printf "%s " "$w"; done' sh "$@"
}
# Every process in apilb.service's control group but the main one, as "PID:comm".
unit_procs() {
  local main; main=$(prop MainPID)
  in_ct sh -c 'for p in /proc/[0-9]*; do grep -q "/apilb\.service\$" $p/cgroup 2>/dev/null || continue;
    [ "${p#/proc/}" = "$1" ] || printf "%s:%s " "${p#/proc/}" "$(cat $p/comm)"; done' sh "$main"
}

# An upgrade of a node whose daemons apilb runs (KIDS, "PID:what" words),
# with a session open through ADDRESS:6443 across ACTION. Sets up_ok (0 or 1)
# and up_detail: MainPID follows the new process (the one `apilb upgrade`
# names, when it says), the unit stays active with NRestarts unchanged past
# WatchdogSec, the old process ends, and every kid keeps its pid, runs on
# without the old process and is in the unit's control group with the new
# main process.
upgrade_keeping() {
  local name=$1 addr=$2 kids=$3; shift 3
  local pid restarts out last new said old_gone=no stayed=yes lost outside t0 took
  pid=$(prop MainPID)
  restarts=$(prop NRestarts)
  t0=$(ms_now)
  out=$(in_ct session-across "$addr" "$@" 2>&1)
  took=$(($(ms_now) - t0))
  echo "$out" >"$log/$name.txt"
  last=$(tail -n 1 <<<"$out")
  new=$(sed -n 's/.* new=\([0-9]*\) .*/\1/p' <<<"$last")
  said=$(sed -n 's/^upgraded: pid [0-9]* -> pid \([0-9]*\);.*/\1/p' <<<"$out" | head -n 1)
  wait_for 30 sh -c "! nsenter --target $leader --pid --mount -- sh -c 'kill -0 $pid' 2>/dev/null" && old_gone=yes
  # Past WatchdogSec (10 s): the new process feeds the watchdog.
  for _ in $(seq 1 24); do
    [[ $(prop MainPID) == "$new" && $(prop ActiveState) == active ]] || { stayed=no; break; }
    sleep 0.5
  done
  lost=$(comm -23 <(tr ' ' '\n' <<<"$kids" | grep . | sort) <(alive $kids | tr ' ' '\n' | grep . | sort) | tr '\n' ' ')
  outside=$(outside_unit $kids "$new:main")
  up_ok=1
  [[ $last == *"before=before after=after"* && -n $new && $new != "$pid" && ( -z $said || $said == "$new" ) &&
    $old_gone == yes && $stayed == yes && $(prop NRestarts) == "$restarts" && -n $kids && -z $lost &&
    -z $outside ]] && up_ok=0
  up_detail="$(wc -w <<<"$kids") kept; pid $pid -> $new (said: ${said:-nothing}) in $took ms; the session: ${last#action=* old=* new=* }; old pid gone: $old_gone; 12 s later MainPID=$(prop MainPID) $(prop ActiveState), NRestarts $restarts -> $(prop NRestarts); kids lost: ${lost:-none}; outside apilb.service: ${outside:-none}"
}

stop_container() {
  [[ -n "$nspawn_pid" ]] || return 0
  # The container's init: SIGRTMIN+4 asks systemd for a clean poweroff.
  [[ -n "$leader" ]] && kill -s RTMIN+4 "$leader" 2>/dev/null
  for _ in $(seq 1 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$nspawn_pid" 2>/dev/null && kill -KILL "$nspawn_pid"
  wait "$nspawn_pid" 2>/dev/null
  nspawn_pid=
}
trap stop_container EXIT

# ---------------------------------------------------------------- the tree
for tool in debootstrap:debootstrap systemd-nspawn:systemd-container nsenter:util-linux; do
  command -v "${tool%%:*}" >/dev/null || apt-get install -y "${tool##*:}" >"$log/apt.log" 2>&1 ||
    { echo "cannot install ${tool##*:}"; exit 1; }
done
if [[ ! -e $pristine/.complete ]]; then
  echo "debootstrap bookworm into $pristine (once; from $mirror)"
  rm -rf "$pristine.tmp"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,adduser,socat,curl,frr,man-db \
    bookworm "$pristine.tmp" "$mirror" >"$log/debootstrap.log" 2>&1 ||
    { tail -n 20 "$log/debootstrap.log"; exit 1; }
  mv "$pristine.tmp" "$pristine"
  touch "$pristine/.complete"
fi

# ---------------------------------------------------------------- the .deb
version=$(sed -n '1s/^apilb (\([^)]*\)).*/\1/p' "$repo/packaging/debian/changelog")
deb=$cache/packaging/apilb_${version}_$(dpkg --print-architecture).deb
# Built again only when the binary or the packaging changed (3 minutes here).
if [[ ! -f $deb || -n $(find "$build/src/apilb" "$repo/packaging" "$repo/systemd" "$repo/conf" -newer "$deb" -print -quit) ]]; then
  APILB_PACKAGING_CASES=deb_build bash "$repo/scripts/check-packaging.sh" "$build" "$log/packaging.xml" \
    "$cache/packaging" >"$log/deb.log" 2>&1
fi
[[ -f $deb ]] || { cat "$log/deb.log"; echo "the .deb did not build"; exit 1; }

# apilb's libraries in the cached tree, from the mirror (once; the only step
# with the host's network, as debootstrap's).
# man-db: systemd-analyze verify checks the unit's Documentation=man:apilb(8).
# keepalived: the vrrpm_* checks (vrrp.manage: true).
deps="man-db keepalived $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/[|(].*//; s/ //g' | grep -v '^$' | sort -u | tr '\n' ' ')"
if ! chroot "$pristine" dpkg-query -W $deps >/dev/null 2>&1; then
  echo "installing apilb's dependencies into $pristine: $deps"
  systemd-nspawn -q -D "$pristine" --register=no --keep-unit sh -c "apt-get update && apt-get install -y $deps" \
    >"$log/deps.log" 2>&1 || { tail -n 20 "$log/deps.log"; exit 1; }
fi

# ---------------------------------------------------------------- a fresh copy, apilb installed
rm -rf "$run"
cp -a "$pristine" "$run"
cp "$deb" "$run/opt/apilb.deb"
# Offline (no systemd running): the postinst creates the user and, with no
# running unit, hands nothing over.
systemd-nspawn -q -D "$run" --private-network --register=no --keep-unit dpkg -i /opt/apilb.deb >"$log/install.log" 2>&1 ||
  { cat "$log/install.log"; exit 1; }
# The check's apilb.yaml with its one listener on LISTEN_IP:6443.
apilb_yaml() {
  cat <<YAML
workers: 2
listeners:
  - {name: front, address: "$1:6443", pool: p}
pools:
  - name: p
    balance: round-robin
    health: {type: tcp, interval: 1s, timeout: 500ms, rise: 1, fall: 2}
    backends:
      - {name: echo, address: "127.0.0.1:7001"}
admin:
  address: "127.0.0.1:6445"
  token_file: /run/apilb/admin-token
timeouts: {drain: 5s}
YAML
}
apilb_yaml 127.0.0.1 >"$run/etc/apilb/apilb.yaml"
cat >"$run/etc/systemd/system/apilb-echo.service" <<'EOF'
[Unit]
Description=echo backend for the apilb check
Before=apilb.service
[Service]
ExecStart=/usr/bin/socat TCP-LISTEN:7001,bind=127.0.0.1,reuseaddr,fork EXEC:/bin/cat
[Install]
WantedBy=multi-user.target
EOF
# The session check: one connection to ADDRESS:6443 kept open across an
# action, echoing before and after it. ACTION runs between (a command).
cat >"$run/usr/local/bin/session-across" <<'EOF'
#!/bin/bash
# usage: session-across ADDRESS ACTION... ; prints "old=PID new=PID" and the echoes
set -u
exec 3<>"/dev/tcp/$1/6443" || exit 2
shift
echo before >&3; read -r -t 5 a <&3 || a=none
old=$(systemctl show -p MainPID --value apilb.service)
"$@"; rc=$?
new=$(systemctl show -p MainPID --value apilb.service)
echo after >&3; read -r -t 5 b <&3 || b=none
echo "action=$rc old=$old new=$new before=$a after=$b"
[[ $rc == 0 && $a == before && $b == after ]]
EOF
chmod 755 "$run/usr/local/bin/session-across"
mkdir -p "$run/etc/systemd/system/apilb.service.d"
systemd-nspawn -q -D "$run" --private-network --register=no --keep-unit \
  systemctl enable apilb.service apilb-echo.service >>"$log/install.log" 2>&1

# ---------------------------------------------------------------- boot
# nspawn's own choice of cgroup hierarchy (hybrid on a hybrid host). Not the
# legacy one: there the container's systemd gets no notice of an emptied
# control group and waits TimeoutStopSec (45 s) before Restart= whenever it
# had to kill a process left beside the main one (sigkill_control; to see it,
# export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0).
echo "booting $run (systemd-nspawn --boot --private-network)"
systemd-nspawn -q -D "$run" --boot --register=no --keep-unit \
  --private-network >"$log/boot.log" 2>&1 </dev/null &
nspawn_pid=$!
booted() { leader=$(ps -o pid= --ppid "$nspawn_pid" | head -n 1 | tr -d ' '); [[ -n "$leader" ]] &&
  [[ $(in_ct systemctl is-system-running 2>/dev/null) =~ ^(running|degraded)$ ]]; }
if ! wait_for 120 booted; then
  result boot 1 "the container did not boot within 120 s (see $log/boot.log)"
  tail -n 30 "$log/boot.log"
  echo "$passed passed, $failed failed"; exit 1
fi
in_ct systemctl --failed --no-legend >"$log/failed-units.txt" 2>&1

if want unit; then  # ---- group unit
# 1. Type=notify: active only once READY=1 came.
wait_for 60 test "$(prop ActiveState)" = active
pid=$(prop MainPID)
result unit_active "$([[ $(prop ActiveState)/$(prop SubState)/$(prop Type) == active/running/notify ]] &&
  journal_has 'ready: listeners serving'; echo $?)" \
  "ActiveState=$(prop ActiveState) SubState=$(prop SubState) Type=$(prop Type) MainPID=$pid"

# 2. systemctl reload: the hitless reload (RELOADING=1 ... READY=1).
in_ct systemctl reload apilb.service >"$log/reload.log" 2>&1
wait_for 20 journal_has 'reload: config'
result reload "$([[ $(prop ActiveState) == active && $(prop MainPID) == "$pid" ]] &&
  journal_has 'reload: config'; echo $?)" \
  "$(in_ct journalctl -u apilb.service -o cat --no-pager | grep 'reload: config' | head -n 1 | cut -c1-100)"

# 3. The sandbox: the online exposure figure, and apilb's mount namespace
# read-only outside /run/apilb (PrivateTmp's /tmp is its own).
in_ct systemd-analyze security apilb.service >"$log/security.txt" 2>&1
exposure=$(sed -n 's/.*Overall exposure level for apilb.service: \([0-9.]*\).*/\1/p' "$log/security.txt")
pid=$(prop MainPID)
writes=""
for path in /etc/apilb/probe /usr/sbin/probe /var/lib/probe /root/probe /run/apilb/probe; do
  if in_ct nsenter --target "$pid" --mount -- setpriv --reuid=apilb --regid=apilb --clear-groups \
       touch "$path" 2>/dev/null; then writes+="${path%/probe}:rw "; else writes+="${path%/probe}:ro "; fi
done
in_ct nsenter --target "$pid" --mount -- rm -f /run/apilb/probe
result hardening "$([[ -n $exposure ]] && python3 -c "import sys; sys.exit(0 if float('$exposure') <= 2.0 else 1)" &&
  [[ $writes == "/etc/apilb:ro /usr/sbin:ro /var/lib:ro /root:ro /run/apilb:rw " ]]; echo $?)" \
  "exposure ${exposure:-?} (online); writes: $writes"

# 4. Upgrade under systemd: `apilb upgrade`, MainPID follows, a session goes on.
out=$(in_ct session-across 127.0.0.1 apilb upgrade --config /etc/apilb/apilb.yaml --timeout 60 2>&1)
echo "$out" >"$log/upgrade.txt"
last=$(tail -n 1 <<<"$out")
new=$(sed -n 's/.* new=\([0-9]*\) .*/\1/p' <<<"$last")
said=$(sed -n 's/^upgraded: pid [0-9]* -> pid \([0-9]*\);.*/\1/p' <<<"$out")
wait_for 20 sh -c "! nsenter --target $leader --pid --mount -- sh -c 'kill -0 $pid' 2>/dev/null"
# And it stays so past WatchdogSec (10 s): the new process feeds the watchdog.
restarts=$(prop NRestarts)
stayed=0
for _ in $(seq 1 30); do
  [[ $(prop MainPID) == "$new" && $(prop ActiveState) == active ]] || { stayed=1; break; }
  sleep 0.5
done
result upgrade "$([[ $last == *"before=before after=after"* && -n $said && $new == "$said" && $new != "$pid" &&
  $stayed == 0 && $(prop NRestarts) == "$restarts" ]] && ! ct_kill -0 "$pid" 2>/dev/null; echo $?)" \
  "$last; 15 s later MainPID=$(prop MainPID) $(prop ActiveState); $(grep -m1 '^upgraded:' <<<"$out" | cut -c1-90)"

# 5. The package upgrade: dpkg -i of the same .deb again runs the postinst's
# `apilb upgrade`: no restart (NRestarts unchanged), a session goes on.
restarts=$(prop NRestarts)
pid=$(prop MainPID)
out=$(in_ct session-across 127.0.0.1 dpkg -i /opt/apilb.deb 2>&1)
echo "$out" >"$log/dpkg-upgrade.txt"
last=$(tail -n 1 <<<"$out")
new=$(sed -n 's/.* new=\([0-9]*\) .*/\1/p' <<<"$last")
result deb_upgrade "$([[ $last == *"before=before after=after"* && $new != "$pid" && $(prop NRestarts) == "$restarts" &&
  $(prop ActiveState) == active ]] && grep -q 'no connection was dropped' <<<"$out"; echo $?)" \
  "$last; NRestarts $restarts -> $(prop NRestarts)"

# 6. The watchdog: armed, and a frozen apilb (SIGSTOP) is killed and restarted.
wd=$(prop WatchdogUSec)
pid=$(prop MainPID)
restarts=$(prop NRestarts)
ct_kill -STOP "$pid"
t0=$SECONDS
wait_for 90 sh -c "[ \"\$(nsenter --target $leader --mount --pid -- systemctl show -p MainPID --value apilb)\" != $pid ] &&
  [ \"\$(nsenter --target $leader --mount --pid -- systemctl show -p ActiveState --value apilb)\" = active ]"
took=$((SECONDS - t0))
result watchdog "$([[ $wd == 10s && $(prop NRestarts) -gt $restarts && $(prop MainPID) != "$pid" ]] &&
  journal_has 'watchdog timeout'; echo $?)" \
  "WatchdogUSec=$wd; SIGSTOP pid $pid -> new pid $(prop MainPID) after ${took}s, NRestarts $restarts -> $(prop NRestarts)"

# 6b. The control for Restart= after SIGKILL: a unit with apilb's KillMode=
# whose main process leaves a sleeping child (one that ignores SIGTERM, as
# apilb's keepers block it), with TimeoutStopSec=15s here to keep the run
# short. systemd SIGKILLs the child at once; a restart within 15 s says it
# then saw the control group empty, rather than waiting for TimeoutStopSec
# (on the legacy hierarchy a container's systemd did not: docs/systemd.md).
# The bgp*_sigkill checks depend on it: apilb's vtysh or keepers are often
# left to kill.
hierarchy=$(in_ct sh -c 'if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then echo unified;
  elif [ -d /sys/fs/cgroup/unified ]; then echo hybrid; else echo legacy; fi')
cat >"$run/etc/systemd/system/sleeper.service" <<'EOF'
[Unit]
Description=a main process with a sleeping child (systemd-check's control)
[Service]
ExecStart=/bin/sh -c '(trap "" TERM; exec sleep 600) & exec sleep 600'
KillMode=mixed
TimeoutStopSec=15s
Restart=on-failure
RestartSec=1s
EOF
in_ct systemctl daemon-reload
in_ct systemctl start sleeper.service
sprop() { in_ct systemctl show --property="$1" --value sleeper.service; }
sleep 1
spid=$(sprop MainPID)
child=$(in_ct ps --ppid "$spid" -o pid= | tr -d ' ')
t0=$(ms_now)
ct_kill -KILL "$spid"
sleeper_back() { local m; m=$(sprop MainPID); [[ $m != 0 && $m != "$spid" && $(sprop ActiveState) == active ]]; }
s_end=$((SECONDS + 30))
until sleeper_back; do ((SECONDS < s_end)) || break; sleep 0.1; done
sleeper_ms=$(($(ms_now) - t0))
sleeper_new=$(sprop MainPID)
sleeper_log=$(in_ct journalctl -u sleeper.service -o cat --no-pager | grep -E "Killing process $child|still around" | cut -d' ' -f2- | tr '\n' ' ')
# Its stop would wait 15 s again: not waited for.
in_ct systemctl stop --no-block sleeper.service
result sigkill_control "$([[ -n $child && $sleeper_new != 0 && $sleeper_new != "$spid" && $sleeper_ms -lt 15000 ]]; echo $?)" \
  "cgroup hierarchy: $hierarchy; SIGKILL main pid $spid (child $child sleeping, SIGTERM ignored): restarted as pid $sleeper_new after $sleeper_ms ms (TimeoutStopSec 15 s, RestartSec 1 s); systemd: ${sleeper_log:-nothing about the child}"

fi  # group unit

if want bgp; then  # ---- group bgp
# 7. The bgp drop-in loads: verify, ExecStopPost, the frrvty group.
in_ct mkdir -p /etc/systemd/system/apilb.service.d
cp "$repo/systemd/bgp.conf" "$run/etc/systemd/system/apilb.service.d/bgp.conf"
in_ct systemctl daemon-reload
verify=$(in_ct systemd-analyze verify apilb.service 2>&1)
echo "$verify" >"$log/bgp-verify.txt"
stoppost=$(prop ExecStopPost)
group=$(in_ct getent group frrvty)
result bgp_dropin "$([[ -z $verify && $stoppost == *"bgp-withdraw"* && -n $group ]]; echo $?)" \
  "verify: ${verify:-no messages}; ExecStopPost has bgp-withdraw: $([[ $stoppost == *bgp-withdraw* ]] && echo yes || echo no); frrvty: ${group:-missing}"

# 8. apilb with a bgp section under the unit and bgp.conf, beside Debian's own
# frr service (bgpd and bfdd enabled), as docs/bgp.md tells an operator to
# run it (manage: false). The peer is an address the container has no route
# to (private network, 198.18.0.0/15): nothing leaves it, the session stays
# down, and FRR still holds what apilb announces in its own BGP table.
bgp_vip=198.18.99.100
cp "$run/etc/apilb/apilb.yaml" "$run/etc/apilb/apilb.yaml.plain"
{ apilb_yaml "$bgp_vip"; cat <<YAML; } >"$run/etc/apilb/apilb.yaml"
bgp:
  local_as: 64512
  router_id: 198.18.98.1
  peers: [{address: 198.18.98.2, remote_as: 64500, bfd: true}]
  vips: [$bgp_vip]
YAML
in_ct apilb frr-config --config /etc/apilb/apilb.yaml -o /etc/frr/frr.conf >"$log/bgp-frr-config.txt" 2>&1
in_ct sh -c 'chown frr:frr /etc/frr/frr.conf && chmod 640 /etc/frr/frr.conf'
sed -i 's/^bgpd=no/bgpd=yes/; s/^bfdd=no/bfdd=yes/' "$run/etc/frr/daemons"
in_ct systemctl restart frr.service >"$log/bgp-frr-restart.txt" 2>&1
frr_state=$(in_ct systemctl is-active frr.service)
in_ct systemctl restart apilb.service >"$log/bgp-restart.txt" 2>&1
wait_for 60 test "$(prop ActiveState)" = active
# vtysh as root in the container: FRR's own view.
vty() { in_ct vtysh -c "$1" 2>&1; }
# With `bgp network import-check` FRR keeps the `network` in its table
# either way: a best path while the VIP is on an interface, "inaccessible"
# and no best path (announced to nobody) when it is not.
rib_has_vip() { vty "show ip bgp $bgp_vip/32" | grep -c "valid, sourced, local, best" >/dev/null; }
rib_lost_vip() { vty "show ip bgp $bgp_vip/32" | grep -c "no best path" >/dev/null; }
metric() { in_ct curl -s --max-time 5 http://127.0.0.1:6445/metrics | grep -F -- "$1" | grep -v '^#' | head -n 1; }
wait_for 30 rib_has_vip
rib=$(vty "show ip bgp $bgp_vip/32")
echo "$rib" >"$log/bgp-rib-ready.txt"
lo=$(in_ct ip -brief addr show dev lo)
echoed=$(in_ct timeout 10 bash -c "exec 3<>/dev/tcp/$bgp_vip/6443 && echo via-vip >&3 && read -r -t 5 l <&3 && echo \$l")
result bgp_announce "$([[ $frr_state == active && $(prop ActiveState) == active && $rib == *", best"* &&
  $lo == *"$bgp_vip/32"* && $echoed == via-vip ]]; echo $?)" \
  "frr $frr_state, apilb $(prop ActiveState); VIP on lo: $([[ $lo == *"$bgp_vip/32"* ]] && echo yes || echo no); best path in FRR's BGP table: $([[ $rib == *", best"* ]] && echo yes || echo no); echo through the VIP: ${echoed:-none}"

# apilb's own vtysh, from inside its sandbox (the frrvty group, FRR's vty
# sockets under a read-only /run, AF_UNIX): every 2 s it asks FRR for the
# sessions; apilb_bgp_frr_up 1 says it got answers.
frr_up() { [[ $(metric 'apilb_bgp_frr_up ') == "apilb_bgp_frr_up 1" ]]; }
wait_for 20 frr_up
peer=$(in_ct curl -s --max-time 5 http://127.0.0.1:6445/metrics | grep -F 'apilb_bgp_peer_state{peer="198.18.98.2"' | grep ' 1$')
sandbox="groups=$(prop SupplementaryGroups) caps=$(prop CapabilityBoundingSet) families=$(prop RestrictAddressFamilies) protect=$(prop ProtectSystem)"
result bgp_vty "$(frr_up; echo $?)" "$(metric 'apilb_bgp_frr_up '); ${peer:-no peer metric}; $sandbox"
in_ct systemd-analyze security apilb.service >"$log/bgp-security.txt" 2>&1
bgp_exposure=$(sed -n 's/.*Overall exposure level for apilb.service: \([0-9.]*\).*/\1/p' "$log/bgp-security.txt")

# A crash (or the OOM killer): SIGKILL to the main PID. Nothing of apilb's
# runs, so the VIP must leave FRR's table through the unit itself
# (ExecStopPost's bgp-withdraw) before Restart= brings apilb back, which
# announces again once ready. Times from the kill, polled with vtysh.
# bgp-withdraw's line in the journal (each run of the stop hook says it).
stoppost_said() { in_ct journalctl -u apilb.service -o cat --no-pager | grep -c 'VIP(s) off lo'; }
said_before=$(stoppost_said)
pid=$(prop MainPID)
restarts=$(prop NRestarts)
t0=$(ms_now)
ct_kill -KILL "$pid"
gone_ms=$(ms_until "$t0" 10 rib_lost_vip)
# Where the unit stood when the route went: stopping (stop-post), waiting to
# restart (auto-restart) or checking the config (start-pre) means the stop
# hook withdrew it; "activating/start" would be the next apilb's own start.
gone_state="$(prop ActiveState)/$(prop SubState) MainPID=$(prop MainPID)"
vty "show ip bgp $bgp_vip/32" >"$log/bgp-rib-killed.txt"
announced_again() { [[ $(prop ActiveState) == active ]] && rib_has_vip; }
back_ms=$(ms_until "$t0" 60 announced_again)
killed_stoppost=$(($(stoppost_said) - said_before))
result bgp_sigkill "$([[ -n $gone_ms && $gone_state != active/* &&
  $gone_state != "activating/start "* && -n $back_ms && $(prop MainPID) != "$pid" &&
  $(prop NRestarts) -gt $restarts && $killed_stoppost -ge 1 ]]; echo $?)" \
  "SIGKILL pid $pid: no best path after ${gone_ms:-never (10 s)} ms (unit $gone_state); announced again by pid $(prop MainPID) after ${back_ms:-never (60 s)} ms; NRestarts $restarts -> $(prop NRestarts); bgp-withdraw ran after the kill: $( ((killed_stoppost >= 1)) && echo yes || echo no)"

# The same crash after an edit broke the file (apilb runs on what it read):
# the stop hook cannot read the VIPs from it, and the restarts fail
# (check-config), so nothing else would ever take the VIP off. bgp-withdraw
# finds it by apilb's local route. Then the good file back, and a start.
cp "$run/etc/apilb/apilb.yaml" "$run/etc/apilb/apilb.yaml.good"
echo 'listeners: [' >"$run/etc/apilb/apilb.yaml"
wait_for 30 announced_again
pid=$(prop MainPID)
t0=$(ms_now)
ct_kill -KILL "$pid"
gone_ms=$(ms_until "$t0" 10 rib_lost_vip)
lo=$(in_ct ip -brief addr show dev lo)
said=$(in_ct journalctl -u apilb.service -o cat --no-pager | grep -c "marked VIP $bgp_vip off")
mv "$run/etc/apilb/apilb.yaml.good" "$run/etc/apilb/apilb.yaml"
# Its restarts may still be failing on the broken file, or given up.
in_ct systemctl reset-failed apilb.service >/dev/null 2>&1
in_ct systemctl restart apilb.service >>"$log/bgp-restart.txt" 2>&1
back=$(wait_for 60 announced_again && echo yes || echo no)
result bgp_sigkill_badfile "$([[ -n $gone_ms && $lo != *"$bgp_vip/"* && $said -ge 1 && $back == yes ]]; echo $?)" \
  "file broken, SIGKILL pid $pid: no best path after ${gone_ms:-never (10 s)} ms; VIP on lo: $([[ $lo == *"$bgp_vip/"* ]] && echo yes || echo no); bgp-withdraw took the marked VIP off: $( ((said >= 1)) && echo yes || echo no); good file back, announced again: $back"

# systemctl stop: the VIP leaves lo first (FRR withdraws it), then apilb
# drains; ExecStopPost's bgp-withdraw finds nothing left and succeeds.
pid=$(prop MainPID)
in_ct systemctl stop apilb.service >"$log/bgp-stop.txt" 2>&1
wait_for 10 rib_lost_vip
rib=$(vty "show ip bgp $bgp_vip/32")
echo "$rib" >"$log/bgp-rib-stopped.txt"
lo=$(in_ct ip -brief addr show dev lo)
order=$(in_ct journalctl -u apilb.service "_PID=$pid" -o cat --no-pager |
  grep -oE 'withdrawn: draining|SIGTERM: stopped accepting' | tr '\n' '|')
stoppost=$(prop ExecStopPost | grep -o 'status=[0-9]*' | head -n 1)
result bgp_withdraw "$([[ $rib == *"no best path"* && $lo != *"$bgp_vip/"* &&
  $order == *"withdrawn: draining"*"SIGTERM: stopped accepting"* && $stoppost == status=0 ]]; echo $?)" \
  "after stop: best path in FRR's table: $([[ $rib == *"no best path"* ]] && echo no || echo yes); on lo: $([[ $lo == *"$bgp_vip/"* ]] && echo yes || echo no); log: $order ExecStopPost $stoppost; exposure ${bgp_exposure:-?}"

in_ct journalctl -u apilb -o short-monotonic --no-pager >"$log/bgp-journal.txt" 2>&1
in_ct journalctl -u frr -o short-monotonic --no-pager >"$log/bgp-frr-journal.txt" 2>&1
rm -f "$run/etc/systemd/system/apilb.service.d/bgp.conf"
in_ct systemctl daemon-reload

# 9. bgp.manage: true under the shipped bgp-manage.conf: apilb runs zebra,
# bgpd and bfdd itself, in /run/apilb/frr. The peer is a real router: Debian's
# frr service moved into a network namespace of its own (apilb-peer, by a
# drop-in of frr.service) and joined to the container's by a veth pair
# (198.18.98.0/24, inside the container's private network), running
# conf/examples/frr-tor.conf with the check's addresses (BFD 100 ms x 3,
# ECMP). The two zebras are in different namespaces, as on two machines.
# Times from `ip -ts monitor route` in the peer's namespace: its kernel's
# route for the VIP, stamped by the kernel's clock, against the host's clock
# just before the action (the same clock).
peer_ns=apilb-peer
in_ct systemctl stop apilb.service frr.service >"$log/bgpm-setup.txt" 2>&1
{
  in_ct ip netns add "$peer_ns" &&
    in_ct ip link add apilb-n type veth peer name apilb-p &&
    in_ct ip link set apilb-p netns "$peer_ns" &&
    in_ct ip addr add 198.18.98.1/24 dev apilb-n && in_ct ip link set apilb-n up &&
    in_ct ip -n "$peer_ns" addr add 198.18.98.2/24 dev apilb-p &&
    in_ct ip -n "$peer_ns" link set apilb-p up && in_ct ip -n "$peer_ns" link set lo up
} >>"$log/bgpm-setup.txt" 2>&1
mkdir -p "$run/etc/systemd/system/frr.service.d"
printf '[Service]\nNetworkNamespacePath=/run/netns/%s\n' "$peer_ns" >"$run/etc/systemd/system/frr.service.d/netns.conf"
# The example's documentation addresses: the router 192.0.2.1, the nodes
# 192.0.2.11-13 (this node is .11), the VIP 203.0.113.100.
sed -E 's/192\.0\.2\.11/198.18.98.1/g; s/192\.0\.2\.1([23])/198.18.98.1\1/g; s/192\.0\.2\.1([^0-9]|$)/198.18.98.2\1/g;
  s/203\.0\.113\.100/198.18.99.100/g' "$repo/conf/examples/frr-tor.conf" >"$run/etc/frr/frr.conf"
in_ct sh -c 'chown frr:frr /etc/frr/frr.conf && chmod 640 /etc/frr/frr.conf'
# The bgp section of check 8, now with manage: true.
echo "  manage: true" >>"$run/etc/apilb/apilb.yaml"
cp "$repo/systemd/bgp-manage.conf" "$run/etc/systemd/system/apilb.service.d/bgp-manage.conf"
in_ct systemctl daemon-reload
in_ct systemctl start frr.service >>"$log/bgpm-setup.txt" 2>&1
verify=$(in_ct systemd-analyze verify apilb.service 2>&1)
echo "$verify" >"$log/bgpm-verify.txt"
in_ct systemd-analyze security apilb.service >"$log/bgpm-security.txt" 2>&1
bgpm_exposure=$(sed -n 's/.*Overall exposure level for apilb.service: \([0-9.]*\).*/\1/p' "$log/bgpm-security.txt")

peer_route() { in_ct ip -n "$peer_ns" route show "$bgp_vip" 2>/dev/null; }
peer_has_vip() { [[ $(peer_route) == *"proto bgp"* ]]; }
peer_lost_vip() { [[ -z $(peer_route) ]]; }
# The peer kernel's route changes for the VIP, stamped, for up to SECS.
monitor_pid=
start_monitor() {
  in_ct timeout "$1" ip -ts -n "$peer_ns" monitor route >"$log/bgpm-monitor-$2.txt" 2>&1 &
  monitor_pid=$!
  sleep 0.3
}
stop_monitor() { [[ -n $monitor_pid ]] && { kill "$monitor_pid" 2>/dev/null; wait "$monitor_pid" 2>/dev/null; }; monitor_pid=; }
# ms from T0 (ms since the epoch) to the first line of the monitor file NAME
# matching PATTERN, by the kernel's stamp ("[2026-12-05T19:30:00.123456] ...").
stamp_ms() {
  python3 - "$log/bgpm-monitor-$2.txt" "$1" "$3" <<'PY'
import datetime, re, sys
path, t0, pattern = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for line in open(path, errors="replace"):
    m = re.match(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\]\s*(.*)", line)
    if m and re.search(pattern, m.group(2)):
        t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
        print(int(t * 1000) - t0)
        break
PY
}
# apilb's FRR processes now: the daemons by their pid files and the keepers
# by the journal line of the current main PID ("frr: started bgpd (pid 12,
# keeper 11)"), as "PID:what" words.
# After an upgrade the daemons are the same, started by an earlier main PID:
# frr_main names it (set before the upgrade checks, cleared after the stop).
frr_main=
frr_pids() {
  local main; main=${frr_main:-$(prop MainPID)}
  in_ct journalctl -u apilb.service "_PID=$main" -o cat --no-pager |
    sed -n 's/^.*frr: started \([a-z]*\) (pid \([0-9]*\), keeper \([0-9]*\)).*$/\2:\1 \3:\1-keeper/p' | tr '\n' ' '
}
# Processes anywhere in the container that run in apilb's FRR directory (the
# [t]: not this scan's own shell and grep, whose command lines hold it).
frr_anywhere() { in_ct sh -c 'for p in /proc/[0-9]*; do tr "\0" " " <$p/cmdline 2>/dev/null | grep -q -- "--vty_socke[t] /run/apilb/frr" && echo "${p#/proc/}"; done' | tr '\n' ' '; }

t0=$(ms_now)
in_ct systemctl start apilb.service >"$log/bgpm-start.txt" 2>&1
wait_for 60 test "$(prop ActiveState)" = active
up_ms=$(ms_until "$t0" 90 peer_has_vip)
pids=$(frr_pids)
# Who the daemons run as, and that they are in apilb's unit (systemd ends
# what is left of them with it).
owners=""
for w in $pids; do
  [[ $w == *-keeper ]] && continue
  uid=$(in_ct sh -c "sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' /proc/${w%%:*}/status")
  unit=$(in_ct sh -c "grep -o 'apilb.service' /proc/${w%%:*}/cgroup | head -n 1")
  owners+="${w#*:}=$(in_ct getent passwd "$uid" | cut -d: -f1)/${unit:-elsewhere} "
done
session=$(in_ct vtysh -c 'show bgp neighbors 198.18.98.1 json' 2>&1 | grep -o '"bgpState":"[A-Za-z]*"' | head -n 1)
bfd=$(in_ct vtysh -c 'show bfd peers brief' 2>&1 | grep -c '198.18.98.1 .*up')
echoed=$(in_ct ip netns exec "$peer_ns" timeout 10 bash -c "exec 3<>/dev/tcp/$bgp_vip/6443 && echo via-peer >&3 && read -r -t 5 l <&3 && echo \$l")
# What FRR and apilb said about privileges and the sandbox (none expected).
denials=$(in_ct sh -c "cat /run/apilb/frr/*.log /run/apilb/frr/*.out 2>/dev/null; journalctl -u apilb.service _PID=$(prop MainPID) -o cat --no-pager" |
  grep -iE 'not permitted|permission denied|cap_set_proc|privs_init|seccomp' | sort -u)
echo "$denials" >"$log/bgpm-denials.txt"
result bgpm_announce "$([[ -z $verify && $(prop ActiveState) == active && -n $up_ms && $session == *Established* &&
  $echoed == via-peer && $(wc -w <<<"$pids") == 6 && $owners != *root* && $owners != *elsewhere* && -z $denials ]]; echo $?)" \
  "bgp-manage.conf: verify ${verify:-no messages}; the peer's route for the VIP ${up_ms:-never (90 s)} ms after start; session ${session:-?}, BFD up: $bfd; daemons: ${owners:-none}; echo from behind the peer: ${echoed:-none}; denials: $(grep -c . <<<"$denials")"

# A crash: SIGKILL to the main PID. The keepers get SIGTERM from the kernel
# (PR_SET_PDEATHSIG) and end the daemons; bgpd's end takes the route away at
# the peer, before the unit's ExecStopPost and with nothing of apilb's
# running. Then Restart= brings it all back.
pid=$(prop MainPID)
restarts=$(prop NRestarts)
pids=$(frr_pids)
start_monitor 60 sigkill
# Where the unit stands, and what is left in its control group, every 0.5 s
# from the kill until the route is back.
( for _ in $(seq 1 180); do
    printf '%s %s %s\n' "$(date +%T.%N | cut -c1-12)" "$(in_ct systemctl show -p SubState -p MainPID -p ControlPID --value apilb.service | tr '\n' ' ')" "$(unit_procs)"
    sleep 0.5
  done ) >"$log/bgpm-sigkill-states.txt" 2>&1 &
sampler=$!
t0=$(ms_now)
ct_kill -KILL "$pid"
gone_ms=$(ms_until "$t0" 10 none_alive $pids)
lost_ms=$(ms_until "$t0" 10 peer_lost_vip)
restarted() { local m; m=$(prop MainPID); [[ $m != 0 && $m != "$pid" && $(prop ActiveState) == active ]]; }
new_ms=$(ms_until "$t0" 90 restarted)
back_ms=$(ms_until "$t0" 90 peer_has_vip)
kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
stop_monitor
kernel_lost=$(stamp_ms "$t0" sigkill "^Deleted .*$bgp_vip")
kernel_back=$(stamp_ms "$t0" sigkill "^$bgp_vip .*proto bgp")
# Restart= must not wait for TimeoutStopSec (45 s) on anything left behind.
result bgpm_sigkill "$([[ -n $gone_ms && -n $lost_ms && -n $back_ms && -n $new_ms && $new_ms -lt 20000 &&
  $(prop NRestarts) -gt $restarts && $(wc -w <<<"$pids") == 6 ]]; echo $?)" \
  "SIGKILL pid $pid: its 6 FRR processes gone after ${gone_ms:-never (10 s)} ms (polled); the peer's route gone after ${kernel_lost:-?} ms (kernel stamp; polled ${lost_ms:-never (10 s)}); the unit active again with pid $(prop MainPID) after ${new_ms:-never (90 s)} ms; the route back after ${kernel_back:-?} ms (polled ${back_ms:-never (90 s)}); NRestarts $restarts -> $(prop NRestarts)"

# systemctl restart: a stop (withdraw, wait, drain, bgpd first), then a start.
# After systemd-tmpfiles, as the postinst of every package upgrade runs it
# (and the boot): it gives /run/apilb back to the apilb user, and the unit's
# RuntimeDirectory= would then chown it to root with everything in it,
# apilb's FRR directory included, which apilb then refuses (not frr's).
in_ct systemd-tmpfiles --create /usr/lib/tmpfiles.d/apilb.conf >>"$log/bgpm-start.txt" 2>&1
pid=$(prop MainPID)
pids=$(frr_pids)
start_monitor 120 restart
t0=$(ms_now)
in_ct systemctl restart apilb.service >>"$log/bgpm-start.txt" 2>&1
restart_ms=$(($(ms_now) - t0))
left=$(alive $pids)
frr_dir_owner=$(in_ct stat -c %U /run/apilb/frr 2>&1)
back_ms=$(ms_until "$t0" 90 peer_has_vip)
stop_monitor
kernel_lost=$(stamp_ms "$t0" restart "^Deleted .*$bgp_vip")
kernel_back=$(stamp_ms "$t0" restart "^$bgp_vip .*proto bgp")
result bgpm_restart "$([[ $(prop ActiveState) == active && $(prop MainPID) != "$pid" && -z $left && -n $back_ms &&
  -n $kernel_lost ]]; echo $?)" \
  "after systemd-tmpfiles, restart pid $pid -> $(prop MainPID) (systemctl took $restart_ms ms); /run/apilb/frr owned by $frr_dir_owner; the peer's route gone after ${kernel_lost:-never} ms, back after ${kernel_back:-?} ms (polled ${back_ms:-never (90 s)}); old FRR processes left: ${left:-none}"

# The upgrades of this node: `apilb upgrade`, then the package's postinst
# (dpkg -i of the same .deb, which also runs systemd-tmpfiles). The new
# process takes the keepers over; zebra, bgpd and bfdd run on with their
# sessions, so the peer's kernel never loses the route.
bgpm_upgrade() {  # bgpm_upgrade NAME ACTION...
  local name=$1 kids; shift
  frr_main=${frr_main:-$(prop MainPID)}
  kids=$(frr_pids)
  start_monitor 60 "$name"
  upgrade_keeping "$name" "$bgp_vip" "$kids" "$@"
  stop_monitor
  local deleted; deleted=$(grep -c "Deleted .*$bgp_vip" "$log/bgpm-monitor-$name.txt")
  result "$name" "$([[ $up_ok == 0 && $deleted == 0 ]] && peer_has_vip; echo $?)" \
    "$up_detail; the peer's route deleted meanwhile: $deleted time(s), there now: $(peer_has_vip && echo yes || echo no)"
}
bgpm_upgrade bgpm_upgrade apilb upgrade --config /etc/apilb/apilb.yaml --timeout 60
bgpm_upgrade bgpm_deb_upgrade dpkg -i /opt/apilb.deb

# systemctl stop: the VIP withdrawn first (the route goes at the peer while
# apilb still serves), then the drain, then bgpd, bfdd, zebra; nothing of
# FRR's left; ExecStopPost's bgp-withdraw finds nothing and succeeds.
pid=$(prop MainPID)
pids=$(frr_pids)
start_monitor 60 stop
t0=$(ms_now)
in_ct systemctl stop apilb.service >"$log/bgpm-stop.txt" 2>&1
stop_ms=$(($(ms_now) - t0))
stop_monitor
stop_limit_ms=$(($(prop TimeoutStopUSec | sed -n 's/^\([0-9]*\)s$/\1/p') * 1000))
stop_result=$(prop Result)
kernel_lost=$(stamp_ms "$t0" stop "^Deleted .*$bgp_vip")
order=$(in_ct journalctl -u apilb.service "_PID=$pid" -o cat --no-pager |
  grep -oE 'withdrawn: draining|SIGTERM: stopped accepting|frr: bgpd \(pid [0-9]+\) stopped|frr: zebra \(pid [0-9]+\) stopped' |
  sed 's/ (pid [0-9]*)//' | tr '\n' '|')
# The journal's stamp of the drain's start, against the route's deletion.
drain_ms=$(in_ct journalctl -u apilb.service "_PID=$pid" -o short-unix --no-pager | grep 'SIGTERM: stopped accepting' |
  head -n 1 | awk -v t0="$t0" '{ printf "%d", $1 * 1000 - t0 }')
left="$(alive $pids)$(frr_anywhere)$(unit_procs)"
frr_main=
stoppost=$(prop ExecStopPost | grep -o 'status=[0-9]*' | head -n 1)
result bgpm_stop "$([[ -n $kernel_lost && -n $drain_ms && $kernel_lost -lt $drain_ms &&
  $order == *"withdrawn: draining"*"SIGTERM: stopped accepting"*"frr: bgpd stopped"*"frr: zebra stopped"* &&
  -z $left && $stoppost == status=0 && $(prop ActiveState) == inactive && $stop_ms -lt $stop_limit_ms &&
  $stop_result == success ]]; echo $?)" \
  "stop of pid $pid took $stop_ms ms (TimeoutStopSec $((stop_limit_ms / 1000)) s, Result=$stop_result): the peer's route gone after ${kernel_lost:-never} ms, the drain began after ${drain_ms:-?} ms; log: $order FRR left: ${left:-none}; ExecStopPost $stoppost"

# The sandbox that stays: what the drop-in changes against the unit alone
# (check 3's figure), and what it keeps.
kept="NoNewPrivileges=$(prop NoNewPrivileges) ProtectSystem=$(prop ProtectSystem) ProtectHome=$(prop ProtectHome) PrivateTmp=$(prop PrivateTmp) PrivateDevices=$(prop PrivateDevices) RestrictNamespaces=$(prop RestrictNamespaces) MemoryDenyWriteExecute=$(prop MemoryDenyWriteExecute)"
caps=$(prop CapabilityBoundingSet)
result bgpm_hardening "$([[ -n $bgpm_exposure && $kept == "NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes PrivateDevices=yes RestrictNamespaces=yes MemoryDenyWriteExecute=yes" &&
  $(wc -w <<<"$caps") == 9 ]]; echo $?)" \
  "exposure ${exposure:-?} alone -> ${bgpm_exposure:-?} with bgp-manage.conf (online); $kept; caps: $caps"

in_ct journalctl -u apilb -o short-monotonic --no-pager >"$log/bgpm-journal.txt" 2>&1
in_ct journalctl -u frr -o short-monotonic --no-pager >"$log/bgpm-peer-journal.txt" 2>&1
in_ct sh -c 'tail -n 50 /run/apilb/frr/*.log' >"$log/bgpm-frr-logs.txt" 2>&1
in_ct systemctl stop frr.service >>"$log/bgpm-setup.txt" 2>&1
rm -f "$run/etc/systemd/system/apilb.service.d/bgp-manage.conf" "$run/etc/systemd/system/frr.service.d/netns.conf"
mv "$run/etc/apilb/apilb.yaml.plain" "$run/etc/apilb/apilb.yaml"
in_ct systemctl daemon-reload
in_ct systemctl start apilb.service >>"$log/bgpm-stop.txt" 2>&1
wait_for 60 test "$(prop ActiveState)" = active

fi  # group bgp

# The VIP of the vrrp checks (10 and 12), on one end of a veth pair.
vrrp_vip=198.18.97.100
vip_held() { [[ $(in_ct ip -brief addr show dev vrrp0) == *"$vrrp_vip/32"* ]]; }
vip_gone() { ! vip_held; }
# The address events on vrrp0, stamped, into FILE until vip_monitor_stop
# (or SECS).
vip_monitor() {  # vip_monitor FILE SECS
  in_ct timeout "$2" ip -ts monitor address dev vrrp0 >"$1" 2>&1 &
  vip_monitor_pid=$!
  sleep 0.3
}
vip_monitor_stop() { kill "$vip_monitor_pid" 2>/dev/null; wait "$vip_monitor_pid" 2>/dev/null; }
# Their segment: the container has only loopback (which vrrp refuses) and
# its kernel no dummy interfaces: a veth pair, both ends in the container,
# where the instance, alone, goes MASTER and puts the VIP on vrrp0.
vrrp_segment() {
  in_ct ip link add vrrp0 type veth peer name vrrp1 &&
    in_ct ip addr add 198.18.97.1/24 dev vrrp0 && in_ct ip link set vrrp0 up && in_ct ip link set vrrp1 up
}
# apilb.yaml: the check's listener and backend with a vrrp section for
# virtual router VRID on vrrp0, with EXTRA lines ("  manage: true").
vrrp_yaml() {  # vrrp_yaml VRID [EXTRA...]
  local vrid=$1; shift
  { apilb_yaml 127.0.0.1; printf 'vrrp:\n  interface: vrrp0\n  virtual_router_id: %s\n  priority: 150\n' "$vrid"
    printf '  vips: [%s/32]\n  advert_interval: 100ms\n' "$vrrp_vip"; printf '%s\n' "$@"; } >"$run/etc/apilb/apilb.yaml"
}

if want vrrpm; then  # ---- group vrrpm
# 10. vrrp.manage: true under the shipped vrrp-manage.conf: apilb runs
# keepalived under its keeper, on the veth pair above, where the instance,
# alone, goes MASTER. Then the upgrades, as for bgp.manage above.
in_ct systemctl stop apilb.service >"$log/vrrpm-setup.txt" 2>&1
vrrp_segment >>"$log/vrrpm-setup.txt" 2>&1
cp "$run/etc/apilb/apilb.yaml" "$run/etc/apilb/apilb.yaml.plain"
vrrp_yaml 51 "  handoff_timeout: 1s" "  manage: true"
cp "$repo/systemd/vrrp-manage.conf" "$run/etc/systemd/system/apilb.service.d/vrrp-manage.conf"
in_ct systemctl daemon-reload
verify=$(in_ct systemd-analyze verify apilb.service 2>&1)
echo "$verify" >"$log/vrrpm-verify.txt"
# The keeper by apilb's journal line ("vrrp: started keepalived (keeper pid
# 12) ..."), keepalived's processes (its parent and its VRRP child) by name:
# "PID:what" words.
keepalived_pids() {
  local keeper
  keeper=$(in_ct journalctl -u apilb.service -o cat --no-pager | sed -n 's/.*vrrp: started keepalived (keeper pid \([0-9]*\)).*/\1/p' | tail -n 1)
  echo "${keeper:+$keeper:keeper }$(in_ct ps -C keepalived -o pid= | awk '{ printf "%s:keepalived ", $1 }')"
}
t0=$(ms_now)
in_ct systemctl start apilb.service >"$log/vrrpm-start.txt" 2>&1
wait_for 60 test "$(prop ActiveState)" = active
master_ms=$(ms_until "$t0" 30 vip_held)
kids=$(keepalived_pids)
outside=$(outside_unit $kids)
result vrrpm_master "$([[ -z $verify && $(prop ActiveState) == active && -n $master_ms && $(wc -w <<<"$kids") -ge 2 &&
  -z $outside ]]; echo $?)" \
  "vrrp-manage.conf: verify ${verify:-no messages}; apilb $(prop ActiveState); VIP on vrrp0 ${master_ms:-never (30 s)} ms after the start; keeper and keepalived: ${kids:-none}; outside apilb.service: ${outside:-none}"

# The VIP's address events on vrrp0 while an upgrade runs, stamped.
vrrpm_upgrade() {  # vrrpm_upgrade NAME ACTION...
  local name=$1 deleted took; shift
  kids=$(keepalived_pids)
  vip_monitor "$log/vrrpm-monitor-$name.txt" 60
  upgrade_keeping "$name" 127.0.0.1 "$kids" "$@"
  vip_monitor_stop
  deleted=$(grep -c "Deleted .*$vrrp_vip" "$log/vrrpm-monitor-$name.txt")
  took=$(in_ct journalctl -u apilb.service -o cat --no-pager | grep -c 'vrrp: supervising keepalived (keeper pid [0-9]*) handed over')
  result "$name" "$([[ $up_ok == 0 && $deleted == 0 ]] && vip_held; echo $?)" \
    "$up_detail; the VIP deleted from vrrp0 meanwhile: $deleted time(s), held now: $(vip_held && echo yes || echo no); 'supervising keepalived ... handed over' logged $took time(s) so far"
}
vrrpm_upgrade vrrpm_upgrade apilb upgrade --config /etc/apilb/apilb.yaml --timeout 60
vrrpm_upgrade vrrpm_deb_upgrade dpkg -i /opt/apilb.deb

# systemctl stop after the upgrades: apilb hands the VIP over (nobody takes
# it), drains, stops keepalived through its keeper; nothing is left in the
# unit, within TimeoutStopSec.
kids=$(keepalived_pids)
pid=$(prop MainPID)
t0=$(ms_now)
in_ct systemctl stop apilb.service >"$log/vrrpm-stop.txt" 2>&1
stop_ms=$(($(ms_now) - t0))
stop_limit_ms=$(($(prop TimeoutStopUSec | sed -n 's/^\([0-9]*\)s$/\1/p') * 1000))
left="$(alive $kids)$(unit_procs)$(in_ct ps -C keepalived -o pid= | tr -d ' \n')"
said=$(in_ct journalctl -u apilb.service "_PID=$pid" -o cat --no-pager | grep -c 'vrrp: keepalived stopped')
result vrrpm_stop "$([[ $(prop ActiveState) == inactive && $(prop Result) == success && -z $left && $said -ge 1 &&
  $stop_ms -lt $stop_limit_ms ]] && ! vip_held; echo $?)" \
  "stop of pid $pid took $stop_ms ms (TimeoutStopSec $((stop_limit_ms / 1000)) s, Result=$(prop Result)); 'keepalived stopped' from it: $said; left: ${left:-none}; VIP on vrrp0: $(vip_held && echo yes || echo no)"

in_ct journalctl -u apilb -o short-monotonic --no-pager >"$log/vrrpm-journal.txt" 2>&1
rm -f "$run/etc/systemd/system/apilb.service.d/vrrp-manage.conf"
mv "$run/etc/apilb/apilb.yaml.plain" "$run/etc/apilb/apilb.yaml"
in_ct ip link del vrrp0 >>"$log/vrrpm-setup.txt" 2>&1
in_ct systemctl daemon-reload
in_ct systemctl start apilb.service >>"$log/vrrpm-stop.txt" 2>&1
wait_for 60 test "$(prop ActiveState)" = active

fi  # group vrrpm

if want nodelocal; then  # ---- group nodelocal
# 11. node-local (docs/node-local.md): conf/node-local.yaml and the drop-ins
# node-local.conf and kubelet-apilb.conf installed from the package's
# examples as the guide's steps 2 and 3 say, with the unit's hardening in
# force. The apiservers: the project's stand-in (BUILD_DIR's
# tests/standin/apilb-standin), one process listening as cp1-cp3 on
# 127.0.0.2-4:6443 with one store, its certificates made now
# (tests/tools/mkcerts.sh). The node's kubelet credentials as kubeadm's TLS
# bootstrap leaves them, root's and 0600: /etc/kubernetes/kubelet.conf (the
# CA inline) naming /var/lib/kubelet/pki/kubelet-client-current.pem (a link
# to a dated file holding the certificate, CN=system:node:worker-1, and its
# key), and the cluster CA in /etc/kubernetes/pki/ca.crt. A stand-in
# kubelet.service makes one request through 127.0.0.1:7445 with them.
nl_pki=$cache/nodelocal-pki
rm -rf "$nl_pki"
bash "$repo/tests/tools/mkcerts.sh" "$nl_pki" >"$log/nodelocal-setup.txt" 2>&1
printf 'keyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n' >"$nl_pki/kubelet.ext"
{
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$nl_pki/kubelet.key" &&
    openssl req -new -key "$nl_pki/kubelet.key" -subj "/O=system:nodes/CN=system:node:worker-1" -out "$nl_pki/kubelet.csr" &&
    openssl x509 -req -in "$nl_pki/kubelet.csr" -CA "$nl_pki/ca.crt" -CAkey "$nl_pki/ca.key" -days 1 -sha256 \
      -extfile "$nl_pki/kubelet.ext" -out "$nl_pki/kubelet.crt"
} >>"$log/nodelocal-setup.txt" 2>&1
kubelet_pem=kubelet-client-$(date -u +%Y-%m-%d-%H-%M-%S).pem
install -D -m 644 "$nl_pki/ca.crt" "$run/etc/kubernetes/pki/ca.crt"
mkdir -p "$run/var/lib/kubelet/pki"
cat "$nl_pki/kubelet.crt" "$nl_pki/kubelet.key" >"$run/var/lib/kubelet/pki/$kubelet_pem"
chmod 600 "$run/var/lib/kubelet/pki/$kubelet_pem"
ln -sfn "/var/lib/kubelet/pki/$kubelet_pem" "$run/var/lib/kubelet/pki/kubelet-client-current.pem"
(umask 077 && cat >"$run/etc/kubernetes/kubelet.conf" <<EOF
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: $(base64 -w0 "$nl_pki/ca.crt")
    server: https://127.0.0.1:7445
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: system:node:worker-1
  name: system:node:worker-1@kubernetes
current-context: system:node:worker-1@kubernetes
kind: Config
preferences: {}
users:
- name: system:node:worker-1
  user:
    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem
    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem
EOF
)
mkdir -p "$run/etc/apilb-standin"
for f in server.crt server.key client.crt client.key; do install -m 600 "$nl_pki/$f" "$run/etc/apilb-standin/$f"; done
install -m 755 "$build/tests/standin/apilb-standin" "$run/usr/local/bin/apilb-standin" >>"$log/nodelocal-setup.txt" 2>&1
cat >"$run/etc/systemd/system/apiserver-standin.service" <<'EOF'
[Unit]
Description=stand-in apiservers cp1-cp3 (127.0.0.2-4:6443) for the node-local check
[Service]
ExecStart=/usr/local/bin/apilb-standin --listen 127.0.0.2:6443 --name cp1 --also-listen 127.0.0.3=cp2 --also-listen 127.0.0.4=cp3 --cert /etc/apilb-standin/server.crt --key /etc/apilb-standin/server.key --client-ca /etc/kubernetes/pki/ca.crt
EOF
cat >"$run/etc/systemd/system/kubelet.service" <<'EOF'
[Unit]
Description=stand-in kubelet: one request through apilb with the kubelet's credentials
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/curl -sS --fail --max-time 5 --cacert /etc/kubernetes/pki/ca.crt --cert /var/lib/kubelet/pki/kubelet-client-current.pem -o /dev/null https://127.0.0.1:7445/version
EOF
in_ct systemctl stop apilb.service >>"$log/nodelocal-setup.txt" 2>&1
in_ct systemctl daemon-reload
in_ct systemctl start apiserver-standin.service >>"$log/nodelocal-setup.txt" 2>&1
# The stand-in's control surface, with the test client certificate.
standin_ctl() {  # standin_ctl METHOD PATH [JSON]
  in_ct curl -sS --max-time 5 --cacert /etc/kubernetes/pki/ca.crt --cert /etc/apilb-standin/client.crt \
    --key /etc/apilb-standin/client.key -X "$1" ${3:+-H 'Content-Type: application/json' --data-binary "$3"} \
    "https://127.0.0.2:6443$2"
}
# The `kubernetes` EndpointSlice lists these apiservers (127.0.0.N).
slice_lists() {
  local eps="" ip
  for ip; do eps+="${eps:+,}{\"addresses\":[\"$ip\"]}"; done
  standin_ctl PUT /control/slices/kubernetes "{\"endpoints\":[$eps]}"
}
wait_for 20 standin_ctl GET /control/state
slice_lists 127.0.0.2 127.0.0.3 >>"$log/nodelocal-setup.txt" 2>&1
# Step 2 of the guide, then step 3 (the drop-ins; the kubelet's start pulls
# apilb in, before it).
{
  in_ct install -m 600 /usr/share/doc/apilb/examples/node-local.yaml /etc/apilb/node-local.yaml &&
    in_ct sed -i 's/192.0.2.100:6443/127.0.0.2:6443/' /etc/apilb/node-local.yaml &&
    in_ct apilb check-config --config /etc/apilb/node-local.yaml &&
    in_ct install -D -m 644 /usr/share/doc/apilb/examples/node-local.conf /etc/systemd/system/apilb.service.d/node-local.conf &&
    in_ct install -D -m 644 /usr/share/doc/apilb/examples/kubelet-apilb.conf /etc/systemd/system/kubelet.service.d/10-apilb.conf &&
    in_ct systemctl daemon-reload
} >>"$log/nodelocal-setup.txt" 2>&1
nl_verify=$(in_ct systemd-analyze verify apilb.service kubelet.service 2>&1)
echo "$nl_verify" >"$log/nodelocal-verify.txt"
in_ct systemctl start kubelet.service >"$log/nodelocal-start.txt" 2>&1
kubelet_state=$(in_ct systemctl show -p ActiveState --value kubelet.service)/$(in_ct systemctl show -p Result --value kubelet.service)
wait_for 60 test "$(prop ActiveState)" = active
ready_at=$(prop ActiveEnterTimestampMonotonic)
kubelet_at=$(in_ct systemctl show -p ExecMainStartTimestampMonotonic --value kubelet.service)
pid=$(prop MainPID)
denied=$(in_ct journalctl -u apilb.service -o cat --no-pager | grep -iE 'permission denied|not permitted|read-only file system' | sort -u)
result nodelocal_start "$([[ -z $nl_verify && $(prop ActiveState)/$(prop SubState)/$(prop Type) == active/running/notify &&
  $(prop ExecStart) == *"/etc/apilb/node-local.yaml"* && $kubelet_state == active/success && -n $ready_at &&
  $ready_at -gt 0 && $kubelet_at -ge $ready_at && -z $denied ]]; echo $?)" \
  "verify ${nl_verify:-no messages}; the stand-in kubelet's start pulled apilb in: apilb $(prop ActiveState)/$(prop SubState) ($(prop Type), pid $pid, $(prop ExecStart | grep -o -- '--config [^ ;]*')) ready $(( (kubelet_at - ready_at) / 1000 )) ms before the kubelet started; the kubelet's request through 127.0.0.1:7445: $kubelet_state; denials in apilb's journal: $(grep -c . <<<"$denied")"

# The sandbox with the drop-in: the online exposure, what uid 0 with no
# capability (apilb's bounding set) may write in apilb's mount namespace,
# and that it reads the kubelet's credentials (0600, root's).
in_ct systemd-analyze security apilb.service >"$log/nodelocal-security.txt" 2>&1
nl_exposure=$(sed -n 's/.*Overall exposure level for apilb.service: \([0-9.]*\).*/\1/p' "$log/nodelocal-security.txt")
writes=""
for path in /etc/kubernetes/probe /var/lib/kubelet/probe /etc/apilb/probe /var/lib/apilb/probe /run/apilb/probe; do
  if in_ct nsenter --target "$pid" --mount -- setpriv --bounding-set=-all --inh-caps=-all touch "$path" 2>/dev/null; then
    writes+="${path%/probe}:rw "; else writes+="${path%/probe}:ro "; fi
done
in_ct nsenter --target "$pid" --mount -- rm -f /var/lib/apilb/probe /run/apilb/probe
creds=$(in_ct stat -L -c '%U:%a' /etc/kubernetes/kubelet.conf /var/lib/kubelet/pki/kubelet-client-current.pem | tr '\n' ' ')
caps=$(prop CapabilityBoundingSet)
result nodelocal_hardening "$([[ -n $nl_exposure && $(prop User) == root && -z $caps &&
  $writes == "/etc/kubernetes:ro /var/lib/kubelet:ro /etc/apilb:ro /var/lib/apilb:rw /run/apilb:rw " ]] &&
  python3 -c "import sys; sys.exit(0 if float('$nl_exposure') <= 2.0 else 1)"; echo $?)" \
  "exposure ${nl_exposure:-?} with node-local.conf (online); User=$(prop User), CapabilityBoundingSet=${caps:-empty}; writes as uid 0 without capabilities: $writes; the kubelet's kubeconfig and certificate: $creds"

# Discovery through the apiserver with the kubelet's certificate (the
# stand-in answers 401 without one), then an EndpointSlice change: cp3 added,
# a session reaches it once apilb probed it (change_interval 5 s as shipped).
nl_metric() { in_ct curl -s --max-time 5 http://127.0.0.1:7446/metrics | grep -F -- "$1" | grep -v '^#' | head -n 1; }
watching() { [[ $(nl_metric 'apilb_discovery_watch_state{pool="control-plane",state="watching"}') == *" 1" ]]; }
# Which apiserver answers a new session through apilb.
one_session() {
  in_ct curl -s --max-time 5 --cacert /etc/kubernetes/pki/ca.crt --cert /var/lib/kubelet/pki/kubelet-client-current.pem \
    -D - -o /dev/null https://127.0.0.1:7445/version | tr -d '\r' | sed -n 's/^[Xx]-[Ss]tandin-[Nn]ame: //p'
}
reaches() { [[ $(one_session) == "$1" ]]; }
wait_for 30 watching
watch_state=$(nl_metric 'apilb_discovery_watch_state{pool="control-plane",state="watching"}')
in_ct apilb status --config /etc/apilb/node-local.yaml >"$log/nodelocal-status-before.txt" 2>&1
t0=$(ms_now)
slice_lists 127.0.0.2 127.0.0.3 127.0.0.4 >>"$log/nodelocal-setup.txt" 2>&1
cp3_ms=$(ms_until "$t0" 40 reaches cp3)
in_ct apilb status --config /etc/apilb/node-local.yaml >"$log/nodelocal-status-after.txt" 2>&1
discovered=$(grep -c '127\.0\.0\.4:6443' "$log/nodelocal-status-after.txt")
result nodelocal_discovery "$([[ $watch_state == *" 1" && -n $cp3_ms && $discovered -ge 1 ]]; echo $?)" \
  "with /etc/kubernetes/kubelet.conf and its certificate: ${watch_state:-no watch metric}; cp3 (127.0.0.4) added to the slice -> a session on it after ${cp3_ms:-never (40 s)} ms; apilb status names it: $([[ $discovered -ge 1 ]] && echo yes || echo no)"

# The state file in the StateDirectory, and a restart while the API answers
# 503 (the stand-in's /control/unavailable): apilb starts from the
# last-known-good set (cp3 is in no file but the state file).
state=/var/lib/apilb/discovery-control-plane.json
state_has_cp3() { in_ct grep -q '127\.0\.0\.4' "$state"; }
wait_for 10 state_has_cp3
state_before=$(in_ct stat -c '%U:%a' "$state" 2>&1)
statedir=$(in_ct stat -c '%U:%a' /var/lib/apilb 2>&1)
standin_ctl POST '/control/unavailable?on=true' >>"$log/nodelocal-setup.txt" 2>&1
in_ct systemctl restart apilb.service >>"$log/nodelocal-start.txt" 2>&1
wait_for 60 test "$(prop ActiveState)" = active
npid=$(prop MainPID)
lkg=$(in_ct journalctl -u apilb.service "_PID=$npid" -o cat --no-pager | grep -m1 -o "last-known-good from [^ :;,]*")
lkg_ms=$(ms_until "$(ms_now)" 30 reaches cp3)
in_ct apilb status --config /etc/apilb/node-local.yaml >"$log/nodelocal-status-lkg.txt" 2>&1
from_file=$(grep -c 'set from *the state file' "$log/nodelocal-status-lkg.txt")
standin_ctl POST '/control/unavailable?on=false' >>"$log/nodelocal-setup.txt" 2>&1
back=$(wait_for 30 watching && echo yes || echo no)
result nodelocal_state "$([[ $state_before == root:600 && $statedir == root:700 && $npid != "$pid" &&
  $lkg == "last-known-good from $state" && -n $lkg_ms && $from_file -ge 1 && $back == yes ]]; echo $?)" \
  "$state $state_before in /var/lib/apilb $statedir, names cp3; restart with the API answering 503: pid $pid -> $npid, '${lkg:-no last-known-good line}', a session on cp3 after ${lkg_ms:-never (30 s)} ms, apilb status: $([[ $from_file -ge 1 ]] && echo 'set from the state file' || echo 'not from the state file'); the API back, watching again: $back"

# The admin endpoint on 127.0.0.1:7446: a change (drain of the seed) without
# the token refused, with it accepted (then undone).
token=/run/apilb/node-local-admin-token
post() {  # post PATH [TOKEN]: the HTTP status
  in_ct curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST ${2:+-H "Authorization: Bearer $2"} "http://127.0.0.1:7446$1"
}
token_file=$(in_ct stat -c '%U:%a' "$token" 2>&1)
without=$(post /api/v1/backends/control-plane/seed/drain)
with=$(post /api/v1/backends/control-plane/seed/drain "$(in_ct cat "$token")")
undo=$(post /api/v1/backends/control-plane/seed/enable "$(in_ct cat "$token")")
result nodelocal_admin "$([[ $without == 401 && $with == 200 && $undo == 200 && $token_file == root:600 ]]; echo $?)" \
  "$token $token_file; POST drain of the seed without the token: $without, with it: $with (enable: $undo)"

in_ct journalctl -u apilb -o short-monotonic --no-pager >"$log/nodelocal-journal.txt" 2>&1
in_ct journalctl -u apiserver-standin -o short-monotonic --no-pager >"$log/nodelocal-standin-journal.txt" 2>&1
in_ct systemctl stop kubelet.service apilb.service apiserver-standin.service >>"$log/nodelocal-setup.txt" 2>&1
rm -rf "$run/etc/systemd/system/apilb.service.d/node-local.conf" "$run/etc/systemd/system/kubelet.service.d" \
  "$run/etc/systemd/system/kubelet.service" "$run/etc/systemd/system/apiserver-standin.service"
in_ct systemctl daemon-reload
in_ct systemctl start apilb.service >>"$log/nodelocal-setup.txt" 2>&1
wait_for 60 test "$(prop ActiveState)" = active
fi  # group nodelocal

if want vrrp; then  # ---- group vrrp
# 12. vrrp with manage: false (docs/vip.md, "Two ways to run keepalived"):
# Debian's own keepalived.service runs the keepalived.conf apilb renders
# (`apilb keepalived-config ... -o /etc/keepalived/keepalived.conf`, as
# docs/systemd.md writes it), beside apilb.service as shipped, no drop-in.
# The segment: the veth pair of check 10. keepalived follows apilb through the track file
# (/run/apilb/vrrp-fault) and tells it its role through the notify FIFO.
# First with track_process as rendered by default: keepalived's process
# events exist only in the host's first network and PID namespaces, which
# this container is not in, so (docs/vip.md) the instance stays in FAULT.
# Then with `track_process: false`, the container's setting.
in_ct systemctl stop apilb.service >"$log/vrrp-setup.txt" 2>&1
vrrp_segment >>"$log/vrrp-setup.txt" 2>&1
cp "$run/etc/apilb/apilb.yaml" "$run/etc/apilb/apilb.yaml.plain"
# Renders and installs keepalived.conf, then (re)starts apilb and keepalived.
vrrp_start() {
  {
    in_ct apilb keepalived-config --config /etc/apilb/apilb.yaml --apilb-path /usr/sbin/apilb -o /etc/keepalived/keepalived.conf &&
      in_ct keepalived -t -f /etc/keepalived/keepalived.conf
  } >>"$log/vrrp-setup.txt" 2>&1
  rendered=$?
  cat "$run/etc/keepalived/keepalived.conf" >>"$log/vrrp-keepalived.conf" 2>/dev/null
  # This group starts apilb more often than the unit's StartLimitBurst (5
  # in 60 s) allows.
  in_ct systemctl reset-failed apilb.service >/dev/null 2>&1
  in_ct systemctl restart apilb.service >>"$log/vrrp-start.txt" 2>&1
  in_ct systemctl restart keepalived.service >>"$log/vrrp-start.txt" 2>&1
  wait_for 60 test "$(prop ActiveState)" = active
}
ka_said() { in_ct journalctl -u keepalived.service -o cat --no-pager | grep -c -- "$1"; }
roles() { in_ct journalctl -u apilb.service -o cat --no-pager | grep -c "vrrp: role .* -> $1"; }
vrrp_yaml 52
vrrp_start
track_line=$(grep -m1 '^ *process ' "$run/etc/keepalived/keepalived.conf" | sed 's/^ *//')
held=$(wait_for 5 vip_held && echo yes || echo no)
events=$(in_ct journalctl -u keepalived.service -o cat --no-pager | grep -m1 -o 'Failed to set/clear process event listen.*')
quorum=$(ka_said 'quorum not achieved')
result vrrp_track_process "$([[ $rendered == 0 && $held == no && $quorum -ge 1 ]]; echo $?)" \
  "rendered ($track_line), keepalived -t: $([[ $rendered == 0 ]] && echo ok || echo failed); in the container's own namespaces keepalived said '${events:-nothing about process events}', 'quorum not achieved' $quorum time(s): the VIP held within 5 s: $held (docs/vip.md: FAULT outside the first network namespace)"

in_ct systemctl stop keepalived.service >>"$log/vrrp-setup.txt" 2>&1
vrrp_yaml 52 "  track_process: false"
t0=$(ms_now)
vrrp_start
master_ms=$(ms_until "$t0" 30 vip_held)
ka_state=$(in_ct systemctl is-active keepalived.service)
track=$(in_ct cat /run/apilb/vrrp-fault 2>&1)
masters=$(roles MASTER)
result vrrp_master "$([[ $rendered == 0 && $ka_state == active && $(prop ActiveState) == active && -n $master_ms &&
  $track == 0 && $masters -ge 1 ]]; echo $?)" \
  "track_process: false; keepalived.conf rendered and keepalived -t: $([[ $rendered == 0 ]] && echo ok || echo failed); keepalived.service $ka_state, apilb $(prop ActiveState); VIP on vrrp0 ${master_ms:-never (30 s)} ms after the restarts began; track file: $track; apilb logged 'role ... -> MASTER' $masters time(s)"

# apilb's health goes bad: its one backend (apilb-echo) stops, the pool has
# no healthy backend after fall: 2 probes 1 s apart, apilb writes 1, the
# instance goes FAULT and the VIP leaves vrrp0. Then the backend is back.
faults_before=$(roles FAULT)
masters_before=$(roles MASTER)
t0=$(ms_now)
in_ct systemctl stop apilb-echo.service >>"$log/vrrp-setup.txt" 2>&1
gone_ms=$(ms_until "$t0" 20 vip_gone)
track_bad=$(in_ct cat /run/apilb/vrrp-fault 2>&1)
ka_fault=$(ka_said 'entering FAULT state')
t1=$(ms_now)
in_ct systemctl start apilb-echo.service >>"$log/vrrp-setup.txt" 2>&1
back_ms=$(ms_until "$t1" 20 vip_held)
track_good=$(in_ct cat /run/apilb/vrrp-fault 2>&1)
faults=$(($(roles FAULT) - faults_before))
masters=$(($(roles MASTER) - masters_before))
result vrrp_fault "$([[ -n $gone_ms && $track_bad == 1 && $faults -ge 1 && -n $back_ms && $track_good == 0 &&
  $masters -ge 1 ]]; echo $?)" \
  "backend stopped: VIP off vrrp0 after ${gone_ms:-never (20 s)} ms (track file $track_bad, keepalived 'entering FAULT state' $ka_fault time(s) in all, apilb 'role -> FAULT' $faults); backend started: VIP back after ${back_ms:-never (20 s)} ms (track file $track_good, 'role -> MASTER' $masters)"

# systemctl restart apilb: what happens to the VIP (docs/vip.md, "Graceful
# hand-off": on SIGTERM apilb writes 1, keepalived gives the VIP up for a
# peer to take, apilb drains; the new apilb writes 0 once its first health
# checks passed). keepalived.service itself goes on.
ka_pid=$(in_ct systemctl show -p MainPID --value keepalived.service)
pid=$(prop MainPID)
vip_monitor "$log/vrrp-monitor-restart.txt" 60
t0=$(ms_now)
in_ct systemctl restart apilb.service >>"$log/vrrp-start.txt" 2>&1
restart_ms=$(($(ms_now) - t0))
back_ms=$(ms_until "$t0" 30 vip_held)
sleep 1
vip_monitor_stop
deleted=$(grep -c "Deleted .*$vrrp_vip" "$log/vrrp-monitor-restart.txt")
order=$(in_ct journalctl -u apilb.service "_PID=$pid" -o cat --no-pager |
  grep -oE 'vrrp: not ready \(draining\)|SIGTERM: stopped accepting' | tr '\n' '|')
result vrrp_restart "$([[ $(prop ActiveState) == active && $(prop MainPID) != "$pid" && $deleted == 1 && -n $back_ms &&
  $(in_ct systemctl show -p MainPID --value keepalived.service) == "$ka_pid" ]]; echo $?)" \
  "systemctl restart took $restart_ms ms (pid $pid -> $(prop MainPID)); the VIP deleted from vrrp0 $deleted time(s), held again ${back_ms:-never (30 s)} ms after the restart began; the old process: ${order:-nothing logged}; keepalived.service pid $ka_pid -> $(in_ct systemctl show -p MainPID --value keepalived.service)"

# A crash with track_process off: SIGKILL to apilb. Nothing tells
# keepalived at once (the track file keeps its 0); the unit's Restart=
# starts apilb again, which writes 1 while it starts (FAULT: the VIP
# leaves) and 0 once its first health checks passed.
pid=$(prop MainPID)
restarts=$(prop NRestarts)
vip_monitor "$log/vrrp-monitor-sigkill.txt" 60
t0=$(ms_now)
ct_kill -KILL "$pid"
gone_ms=$(ms_until "$t0" 20 vip_gone)
restarted() { local m; m=$(prop MainPID); [[ $m != 0 && $m != "$pid" && $(prop ActiveState) == active ]]; }
new_ms=$(ms_until "$t0" 30 restarted)
back_ms=$(ms_until "$t0" 30 vip_held)
sleep 0.5
vip_monitor_stop
result vrrp_sigkill "$([[ -n $new_ms && -n $back_ms && $(prop NRestarts) -gt $restarts ]]; echo $?)" \
  "track_process: false, SIGKILL pid $pid: the VIP left vrrp0 after ${gone_ms:-never (20 s)} ms; the unit active again with pid $(prop MainPID) after ${new_ms:-never (30 s)} ms, the VIP back after ${back_ms:-never (30 s)} ms; NRestarts $restarts -> $(prop NRestarts)"

# A package upgrade (dpkg -i of the same .deb: the postinst's
# systemd-tmpfiles, then `apilb upgrade`) keeps the VIP, and the new process
# still moves it: its backend stopped, the VIP leaves vrrp0; started, it
# comes back. The new process must be able to write the track file in
# /run/apilb after systemd-tmpfiles gave the directory to its tmpfiles.d
# owner.
restarts=$(prop NRestarts)
pid=$(prop MainPID)
vip_monitor "$log/vrrp-monitor-deb-upgrade.txt" 90
out=$(in_ct session-across 127.0.0.1 dpkg -i /opt/apilb.deb 2>&1)
echo "$out" >"$log/vrrp-deb-upgrade.txt"
last=$(tail -n 1 <<<"$out")
vip_monitor_stop
deleted=$(grep -c "Deleted .*$vrrp_vip" "$log/vrrp-monitor-deb-upgrade.txt")
run_owner=$(in_ct stat -c '%U:%a' /run/apilb)
t0=$(ms_now)
in_ct systemctl stop apilb-echo.service >>"$log/vrrp-setup.txt" 2>&1
gone_ms=$(ms_until "$t0" 20 vip_gone)
t1=$(ms_now)
in_ct systemctl start apilb-echo.service >>"$log/vrrp-setup.txt" 2>&1
back_ms=$(ms_until "$t1" 20 vip_held)
track_errors=$(in_ct journalctl -u apilb.service -o cat --no-pager | grep -c 'cannot write the track file')
result vrrp_deb_upgrade "$([[ $last == *"before=before after=after"* && $(prop MainPID) != "$pid" && $(prop NRestarts) == "$restarts" &&
  $deleted == 0 && -n $gone_ms && -n $back_ms && $track_errors == 0 ]]; echo $?)" \
  "${last#action=* }; NRestarts $restarts -> $(prop NRestarts); the VIP deleted meanwhile: $deleted time(s); /run/apilb then $run_owner; backend stopped: VIP off after ${gone_ms:-never (20 s)} ms, back ${back_ms:-never (20 s)} ms after it started; 'cannot write the track file' logged $track_errors time(s)"

in_ct journalctl -u apilb -o short-monotonic --no-pager >"$log/vrrp-journal.txt" 2>&1
in_ct journalctl -u keepalived -o short-monotonic --no-pager >"$log/vrrp-keepalived-journal.txt" 2>&1
in_ct systemctl stop keepalived.service apilb.service >>"$log/vrrp-setup.txt" 2>&1
rm -f "$run/etc/keepalived/keepalived.conf"
mv "$run/etc/apilb/apilb.yaml.plain" "$run/etc/apilb/apilb.yaml"
in_ct ip link del vrrp0 >>"$log/vrrp-setup.txt" 2>&1
in_ct systemctl reset-failed apilb.service >/dev/null 2>&1
in_ct systemctl start apilb.service >>"$log/vrrp-setup.txt" 2>&1
wait_for 60 test "$(prop ActiveState)" = active
fi  # group vrrp

if want remove; then  # ---- group remove
# 13. apt remove: the prerm stops apilb, gracefully (its drain), and no
# apilb is left serving from the deleted binary.
pid=$(prop MainPID)
in_ct dpkg -r apilb >"$log/remove.txt" 2>&1
rc=$?
gone=1
wait_for 30 sh -c "! nsenter --target $leader --pid --mount -- sh -c 'kill -0 $pid' 2>/dev/null" && gone=0
# The drain's line from that very process (an upgrade's old one says it too).
drained=$(in_ct journalctl -u apilb.service "_PID=$pid" -o cat --no-pager | grep 'SIGTERM: stopped accepting')
result remove "$([[ $rc == 0 && $gone == 0 && -n $drained ]]; echo $?)" \
  "dpkg -r: exit $rc; pid $pid $([[ $gone == 0 ]] && echo ended || echo 'still running'); ${drained:-no drain logged}"

fi  # group remove

in_ct journalctl -u apilb -o short-monotonic --no-pager >"$log/apilb-journal.txt" 2>&1
stop_container
echo "logs in $log"
echo "$passed passed, $failed failed"
((failed == 0))
