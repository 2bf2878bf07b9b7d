#!/usr/bin/env bash
# apilb in front of three stand-in kube-apiservers, on this machine:
#
#   bash scripts/demo.sh               # until Ctrl-C
#   bash scripts/demo.sh --for 60      # for 60 seconds, then stop
#
# Installs missing packages, builds build/ (apilb and the stand-in apiserver),
# then under .demo/ (gitignored): makes a test CA and certificates, starts
# three stand-in apiservers on 127.0.0.2-4:6443 (mutual TLS, like
# kube-apiserver) and apilb on 127.0.0.1:6443 in front of them, and prints
# commands to try. On exit it stops the processes it started.
#
# Environment:
#   APILB_BUILD_DIR   build directory (default: <repo>/build)
#   APILB_DEMO_PORT   port for apilb and the stand-ins (default: 6443)
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

run_for=0
while (($#)); do
  case "$1" in
    --for)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || { echo "demo.sh: --for needs a number of seconds" >&2; exit 2; }
      run_for=$2; shift 2 ;;
    --for=*)
      run_for=${1#--for=}
      [[ "$run_for" =~ ^[0-9]+$ && "$run_for" -gt 0 ]] || { echo "demo.sh: --for needs a number of seconds" >&2; exit 2; }
      shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
build=${APILB_BUILD_DIR:-$repo/build}
port=${APILB_DEMO_PORT:-6443}
[[ "$port" =~ ^[0-9]+$ && "$port" -ge 1 && "$port" -le 65535 ]] || { echo "demo.sh: APILB_DEMO_PORT must be a port number, got '$port'" >&2; exit 2; }
demo=.demo
certs=$demo/certs
apilb_bin=$build/src/apilb
standin_bin=$build/tests/standin/apilb-standin
backends=(2 3 4)   # stand-in N listens on 127.0.0.N

pids=()      # everything this script started, stopped by PID on exit
names=()
tail_pid=""
stopping=0

stop_all() {
  ((stopping)) && return
  stopping=1
  local i pid
  # apilb first, so that its last sessions still find their backends; the log
  # tail last, so that apilb's shutdown lines are shown.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    [[ "${pids[$i]}" == "$tail_pid" ]] && continue
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  # apilb drains for up to timeouts.drain (2s in the demo config).
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do
      [[ "$pid" == "$tail_pid" ]] && continue
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  if [[ -n "$tail_pid" ]]; then
    sleep 0.3
    kill -TERM "$tail_pid" 2>/dev/null || true
    for _ in $(seq 10); do
      kill -0 "$tail_pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "demo.sh: ${names[$i]} (pid ${pids[$i]}) did not stop on SIGTERM; killing it" >&2
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
    wait "${pids[$i]}" 2>/dev/null || true
  done
}
trap stop_all EXIT
trap 'exit 0' INT TERM   # Ctrl-C: stop_all runs from the EXIT trap, exit status 0

start() { # NAME LOGFILE COMMAND...
  local name=$1 log=$2; shift 2
  "$@" >"$log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

fail() {
  echo "demo.sh: $*" >&2
  exit 1
}

# --- install and build -------------------------------------------------------
bash scripts/install-deps.sh
if [[ ! -f "$build/meson-private/coredata.dat" ]]; then
  echo "demo.sh: configuring $build"
  meson setup "$build" "$repo" --buildtype=debugoptimized >/dev/null
fi
echo "demo.sh: building apilb and the stand-in apiserver in $build"
buildlog=$(mktemp)
if ! ninja -C "$build" src/apilb tests/standin/apilb-standin >"$buildlog" 2>&1; then
  grep -v '^\[[0-9]*/[0-9]*\] ' "$buildlog" | tail -n 100 >&2
  rm -f "$buildlog"
  fail "the build failed (see above)"
fi
rm -f "$buildlog"

# --- is the port free? -------------------------------------------------------
# Anything listening on the port on 127.0.0.1-4 or on a wildcard address.
taken=$(ss -Hltnp "sport = :$port" 2>/dev/null |
  awk -v p=":$port" '$4 ~ "^(127\\.0\\.0\\.[1-4]|0\\.0\\.0\\.0|\\*|\\[::\\]|\\[::ffff:127\\.0\\.0\\.[1-4]\\])" p "$"' || true)
if [[ -n "$taken" ]]; then
  echo "demo.sh: port $port is already in use on this machine:" >&2
  echo "$taken" | sed 's/^/  /' >&2
  echo "demo.sh: stop that process (a demo still running?), or pick another port:" >&2
  echo "  APILB_DEMO_PORT=$((port == 6443 ? 16443 : port + 1)) bash scripts/demo.sh" >&2
  exit 1
fi

# --- certificates, stand-ins, apilb -----------------------------------------
mkdir -p "$demo"
bash tests/tools/mkcerts.sh "$certs"

for n in "${backends[@]}"; do
  start "stand-in cp-$n" "$demo/cp-$n.log" "$standin_bin" \
    --listen "127.0.0.$n:$port" --cert "$certs/server.crt" --key "$certs/server.key" \
    --client-ca "$certs/ca.crt" --name "cp-$n"
done

# Each stand-in prints "listening on IP:PORT" once bound.
for i in "${!backends[@]}"; do
  n=${backends[$i]}
  for _ in $(seq 100); do
    grep -q '^listening on ' "$demo/cp-$n.log" && break
    kill -0 "${pids[$i]}" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q '^listening on ' "$demo/cp-$n.log"; then
    cat "$demo/cp-$n.log" >&2
    fail "stand-in cp-$n did not start (its output is above, also in $demo/cp-$n.log)"
  fi
done

cat >"$demo/apilb.yaml" <<EOF
# Written by scripts/demo.sh. Every field: docs/configuration.md.
listeners:
  - name: apiserver
    address: 127.0.0.1:$port
    pool: control-plane
pools:
  - name: control-plane
    balance: round-robin
    backends:
$(for n in "${backends[@]}"; do
  printf '      - name: cp-%s\n        address: 127.0.0.%s:%s\n' "$n" "$n" "$port"
done)
    health:                    # follow each apiserver's /readyz
      interval: 1s
      tls: {ca_file: $certs/ca.crt}
timeouts:
  drain: 2s
log:
  level: debug
EOF

if ! "$apilb_bin" check-config --config "$demo/apilb.yaml"; then
  fail "$demo/apilb.yaml was rejected by apilb check-config (see above)"
fi

start apilb "$demo/apilb.log" "$apilb_bin" run --config "$demo/apilb.yaml"
apilb_pid=${pids[-1]}

# apilb is up when a request goes through it to a stand-in.
ready=0
for _ in $(seq 100); do
  kill -0 "$apilb_pid" 2>/dev/null || break
  if curl -sf --max-time 2 --cacert "$certs/ca.crt" "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.1
done
if ((!ready)); then
  tail -n 40 "$demo/apilb.log" >&2
  fail "apilb did not start serving on 127.0.0.1:$port (its log is above, also in $demo/apilb.log)"
fi

# --- what to try -------------------------------------------------------------
url=https://127.0.0.1:$port
ca="--cacert $certs/ca.crt"
mtls="--cert $certs/client.crt --key $certs/client.key"
cat <<EOF

apilb is running on 127.0.0.1:$port in front of three stand-in kube-apiservers:
  cp-2 127.0.0.2:$port   cp-3 127.0.0.3:$port   cp-4 127.0.0.4:$port   (round-robin)
TLS goes through apilb untouched: the certificates are the apiservers' own.
Files: $demo/apilb.yaml, logs in $demo/apilb.log and $demo/cp-N.log, certificates in $certs/

Try, from $repo:

  curl $ca $url/readyz
  curl $ca $url/version
  curl $ca $mtls $url/whoami
      # client_cert_subject: your client certificate reached the apiserver through apilb
  for i in 1 2 3; do curl -s $ca $url/whoami; echo; done
      # round-robin: successive connections go to cp-2, cp-3 and cp-4
  curl -N $ca '$url/watch?events=5&interval_ms=500'
      # a watch: events stream through as the apiserver sends them
  kubectl --server $url --certificate-authority $certs/ca.crt \\
      --client-certificate $certs/client.crt --client-key $certs/client.key get --raw /version
  curl -X POST $ca 'https://127.0.0.2:$port/control/readyz?status=fail'
      # makes cp-2 report not ready (status=ok to undo): within about two
      # seconds apilb logs it unhealthy, sends new connections to cp-3 and
      # cp-4 only, and closes cp-2's sessions 5 s later
EOF
if ! command -v kubectl >/dev/null 2>&1; then
  echo "  (kubectl is not installed: bash scripts/install-deps.sh kubectl)"
fi
if ((run_for)); then
  echo
  echo "Stopping in ${run_for}s. apilb's log follows:"
else
  echo
  echo "Ctrl-C stops everything. apilb's log follows:"
fi
echo

# --- foreground ---------------------------------------------------------------
tail -n +1 -f "$demo/apilb.log" &
tail_pid=$!
pids+=("$tail_pid")
names+=("log tail")

started=$SECONDS
while ((run_for == 0 || SECONDS - started < run_for)); do
  for i in "${!pids[@]}"; do
    [[ "${pids[$i]}" == "$tail_pid" ]] && continue
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      wait "${pids[$i]}" && rc=0 || rc=$?
      sleep 0.2   # let the tail show apilb's last lines
      fail "${names[$i]} (pid ${pids[$i]}) exited unexpectedly with status $rc; see $demo/"
    fi
  done
  sleep 1
done
echo
echo "demo.sh: ${run_for}s are up; stopping"
exit 0
