#!/usr/bin/env bash
# The soak of issue 15: the real apilb in front of four stand-in apiservers
# (real TLS, 127.0.0.2-5), for N minutes, under a mixed load: keep-alive
# requests, new connections, 5-minute watches, 64 KiB-1 MiB echoes checked by
# sha256, a reload every 10 s (cycling configs that remove, add back and
# reorder backends) and a backend restart every 60 s (SIGKILL and SIGTERM in
# turn). It samples apilb's RSS, descriptors, threads and request latency
# every 5 s, writes them to a CSV and prints a summary table.
#
#   bash scripts/soak.sh --minutes 30 [--build DIR] [soakload options...]
#
# It fails (exit 1) on any corrupted byte or failure the schedule did not
# excuse, on RSS growth over max(16 MiB, 25 %) or descriptor growth over 24
# (the median of the last minute against the minute after a 2-minute
# warm-up), on any change in the thread count, on a latency regression (the
# last 2 minutes against the first: p50 over 2x + 2 ms, p99 over 3x + 20 ms),
# or when sessions or descriptors remain 30 s after the load stops.
# tests/tools/soakload.py says exactly which failures are excused.
# Not part of the test suite; loopback only; run it under `nice` on a shared
# machine.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
minutes=30
build=${APILB_BUILD_DIR:-$root/build}
extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --minutes) minutes=$2; shift 2 ;;
        --build) build=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) extra+=("$1"); shift ;;
    esac
done
if [[ ! $minutes =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    echo "soak.sh: --minutes wants a number, got '$minutes'" >&2
    exit 64
fi
for exe in src/apilb tests/standin/apilb-standin; do
    if [[ ! -x $build/$exe ]]; then
        echo "soak.sh: $build/$exe not found: build first (meson setup build && ninja -C build), or --build DIR" >&2
        exit 64
    fi
done
ulimit -n "$(ulimit -Hn)"
seconds=$(python3 -c "print(int(float('$minutes') * 60))")
exec python3 "$root/tests/tools/soakload.py" soak --apilb "$build/src/apilb" \
    --standin "$build/tests/standin/apilb-standin" --seconds "$seconds" \
    --reload-period 10 --reload-drain 5s --restart-period 60 \
    --keepalive 8 --keepalive-pause 0.05 --newconn 2 --newconn-pause 0.1 \
    --watches 40 --watch-events 300 --watch-interval-ms 1000 --bulk 2 --bulk-pause 0.2 \
    --sample 5 --warmup 120 --window 120 "${extra[@]}"
