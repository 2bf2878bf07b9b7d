#!/usr/bin/env bash
# The reload storm of issue 15: the real apilb in front of four stand-in
# apiservers (real TLS, 127.0.0.2-5) takes N reloads back to back (default
# 1 000; every tenth through `apilb reload`, the rest POST /api/v1/reload
# with the admin token) while clients do keep-alive requests, new
# connections, 64 KiB-1 MiB echoes checked by sha256 and 50-second watches
# the whole time. The configs cycle: all four backends; b3 removed and the
# rest reordered; b3 added back and all reversed; b4 removed (with the
# balance policy switched each time).
#
#   bash scripts/reload-storm.sh [--reloads 1000] [--build DIR] [soakload options...]
#
# The bar (exit 1 otherwise): every reload applied, 0 failed requests, 0
# corrupted bytes, and 0 broken sessions that the reloads did not ask to
# close. The only sessions a reload asks to close are those of a backend it
# removed (b3, b4), after timeouts.reload_drain (2 s here), and they must end
# with a reset; b1 and b2 are never removed, so none of their sessions may
# break. Also: no session or descriptor left once the load stops, the same
# thread count. Not part of the test suite; loopback only.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
reloads=1000
build=${APILB_BUILD_DIR:-$root/build}
extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --reloads) reloads=$2; shift 2 ;;
        --build) build=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) extra+=("$1"); shift ;;
    esac
done
if [[ ! $reloads =~ ^[1-9][0-9]*$ ]]; then
    echo "reload-storm.sh: --reloads wants a positive integer, got '$reloads'" >&2
    exit 64
fi
for exe in src/apilb tests/standin/apilb-standin; do
    if [[ ! -x $build/$exe ]]; then
        echo "reload-storm.sh: $build/$exe not found: build first (meson setup build && ninja -C build), or --build DIR" >&2
        exit 64
    fi
done
ulimit -n "$(ulimit -Hn)"
# The time limit: a reload takes ~0.1 s (the YAML check's child process),
# several times that on a loaded machine.
exec python3 "$root/tests/tools/soakload.py" storm --apilb "$build/src/apilb" \
    --standin "$build/tests/standin/apilb-standin" --seconds $((60 + reloads)) \
    --reloads "$reloads" --reload-period 0 --reload-drain 2s \
    --keepalive 8 --keepalive-pause 0.05 --newconn 2 --newconn-pause 0.1 \
    --watches 30 --watch-events 100 --watch-interval-ms 500 --bulk 2 --bulk-pause 0.2 \
    --sample 2 --warmup 10 --window 20 "${extra[@]}"
