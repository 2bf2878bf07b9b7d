#!/usr/bin/env bash
# Captures FRR 8.4's JSON answers (show bgp neighbors json, show bfd peers
# json) from a router namespace with peers in several states, for the seed
# corpus of the bgp_neighbors fuzz target. Root; namespaces named with the
# PID, removed at the end; 198.18.60.0/22 only, no link to the host.
set -euo pipefail
out=${1:?output directory}
mkdir -p "$out"
p=apilbcap$$
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for h in r n1 n2 n3 n4; do ip netns del "$p-$h" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$p-r"
ip -n "$p-r" link set lo up
for i in 1 2 3 4; do
  ip netns add "$p-n$i"
  ip -n "$p-n$i" link set lo up
  ip link add "${p}r$i" netns "$p-r" type veth peer name eth0 netns "$p-n$i"
  ip -n "$p-r" addr add "198.18.6$i.1/24" dev "${p}r$i"
  ip -n "$p-r" link set "${p}r$i" up
  ip -n "$p-n$i" addr add "198.18.6$i.2/24" dev eth0
  ip -n "$p-n$i" link set eth0 up
done
start_frr() {  # host
  local d=$work/$1
  mkdir -p "$d"; chown frr:frr "$d"; : >"$d/empty.conf"; chown frr:frr "$d/empty.conf"
  for daemon in zebra bgpd bfdd; do
    local extra=()
    [[ $daemon == bfdd ]] && extra=(--bfdctl "$d/bfdd.sock")
    ip netns exec "$p-$1" /usr/lib/frr/$daemon -u frr -g frr -i "$d/$daemon.pid" -z "$d/zserv.api" \
      --vty_socket "$d" -f "$d/empty.conf" -P 0 --log "file:$d/$daemon.log" "${extra[@]}" >"$d/$daemon.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [[ -S $d/$daemon.vty ]] && break; sleep 0.1; done
  done
}
apply() {  # host conf
  printf '%s\n' "$2" >"$work/$1/frr.conf"; chown frr:frr "$work/$1/frr.conf"
  ip netns exec "$p-$1" vtysh --vty_socket "$work/$1" -f "$work/$1/frr.conf" >/dev/null
}
show() { ip netns exec "$p-$1" vtysh --vty_socket "$work/$1" -c "$2"; }
start_frr r
apply r "frr defaults traditional
bfd
 profile fast
  receive-interval 100
  transmit-interval 100
 exit
exit
router bgp 64500
 bgp router-id 198.18.61.1
 no bgp ebgp-requires-policy
 neighbor 198.18.61.2 remote-as 64512
 neighbor 198.18.61.2 bfd profile fast
 neighbor 198.18.61.2 timers connect 1
 neighbor 198.18.62.2 remote-as 64513
 neighbor 198.18.62.2 bfd
 neighbor 198.18.62.2 timers connect 1
 neighbor 198.18.63.2 remote-as 64514
 neighbor 198.18.63.2 bfd profile fast
 neighbor 198.18.63.2 password s3cret
 neighbor 198.18.64.2 remote-as 64515
 neighbor 198.18.64.2 shutdown
 address-family ipv4 unicast
  maximum-paths 8
  network 198.18.60.0/24
 exit-address-family
exit"
node_conf() {  # i as
  echo "frr defaults traditional
router bgp $2
 bgp router-id 198.18.6$1.2
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 neighbor 198.18.6$1.1 remote-as 64500
 neighbor 198.18.6$1.1 bfd
 neighbor 198.18.6$1.1 timers connect 1
 address-family ipv4 unicast
  network 198.18.6$1.2/32
  neighbor 198.18.6$1.1 activate
 exit-address-family
exit"
}
ip -n "$p-n1" addr add 198.18.61.2/32 dev lo 2>/dev/null || true
start_frr n1; apply n1 "$(node_conf 1 64512)"
start_frr n2; apply n2 "$(node_conf 2 64513)"
# n3 runs no FRR (Active/Connect, BFD down); n4 is shut down (Idle).
for _ in $(seq 300); do
  [[ $(show r 'show bgp summary json' | grep -c '"state":"Established"') -ge 2 ]] && break
  sleep 0.1
done
sleep 1
show r 'show bgp neighbors json' >"$out/router-two-established-active-idle.json"
show r 'show bfd peers json' >"$out/bfd-peers-up-and-down.json"
show r 'show bgp neighbors 198.18.61.2 json' >"$out/router-one-neighbor.json"
show r 'show bgp summary json' >"$out/router-summary.json"
show n1 'show bgp neighbors json' >"$out/node-established.json"
show r 'show bgp vrf all neighbors json' >"$out/router-vrf-all.json"
# n2's link cut: BFD takes its session down.
ip -n "$p-n2" link set eth0 down
sleep 1.5
show r 'show bgp neighbors json' >"$out/router-after-bfd-down.json"
show r 'show bfd peers json' >"$out/bfd-peer-went-down.json"
show n2 'show bgp neighbors json' >"$out/node-link-cut.json"
# A node whose bgpd is not running: vtysh's answer then.
kill "$(cat "$work/n1/bgpd.pid")"
sleep 1
show n1 'show bgp neighbors json' >"$out/vtysh-bgpd-not-running.txt" 2>&1 || true
ls -la "$out"
