#!/usr/bin/env bash
# The reload storm of issue 15: the real apilb in front of four stand-in
# apiservers (real TLS, 127.0.0.2-5) takes N reloads back to back (default
# 1 000; every tenth through `apilb reload`, the rest POST /api/v1/reload
# with the admin token) while clients do keep-alive requests, new
# connections, 64 KiB-1 MiB echoes checked by sha256 and 50-second watches
# the whole time (and alone for 15 s before, for a latency baseline). The
# configs cycle: all four backends; b3 removed and the rest reordered; b3
# added back and all reversed; b4 removed; the balance policy switches each
# time.
#
#   nice bash scripts/reload-storm.sh [--reloads 1000] [--build DIR] [other soakload.py options]
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
ulimit -n "$(ulimit -Hn)"
exec python3 "$root/tests/tools/soakload.py" storm --build "${APILB_BUILD_DIR:-$root/build}" "$@"
