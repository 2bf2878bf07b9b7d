#!/usr/bin/env bash
# The soak of issue 15: the real apilb in front of four stand-in apiservers
# (real TLS, 127.0.0.2-5), for N minutes, under a mixed load: keep-alive
# requests, new connections, 150-second watches, 64 KiB-1 MiB echoes checked by
# sha256, a reload every 10 s (cycling configs that remove, add back and
# reorder backends) and a backend restart every 60 s (SIGKILL and SIGTERM in
# turn). It samples apilb's RSS, descriptors, threads and request latency
# every 5 s, writes them to a CSV and prints a summary table.
#
#   nice bash scripts/soak.sh [--minutes 30] [--build DIR] [other soakload.py options]
#
# It fails (exit 1) on any corrupted byte or failure the schedule did not
# excuse, on RSS growth over max(16 MiB, 25 %) or descriptor growth over 24
# (the median of the last minute against the minute after a 2-minute
# warm-up), on any change in the thread count, on a latency regression (the
# last 2 minutes against the 2 after warm-up: p50 over 2x + 2 ms, p99 over
# 3x + 20 ms), or when sessions or descriptors remain 30 s after the load
# stops. tests/tools/soakload.py says exactly which failures are excused.
# Not part of the test suite; loopback only.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ulimit -n "$(ulimit -Hn)"
exec python3 "$root/tests/tools/soakload.py" soak --build "${APILB_BUILD_DIR:-$root/build}" "$@"
