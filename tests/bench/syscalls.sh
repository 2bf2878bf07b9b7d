#!/usr/bin/env bash
# System calls per unit of work of apilb, HAProxy and nginx (issue 17): the
# benchmark's connection, keep-alive and bulk tests with the balancer's system
# calls counted by perf stat (bench.py --syscalls), one round, one worker
# each. Counts do not move with other load on the machine; the throughput and
# CPU figures of this run are slowed by the counting and are not the ones to
# quote (run.sh without --syscalls gives those).
#
#   bash tests/bench/syscalls.sh                         # 1 worker each
#   bash tests/bench/syscalls.sh --workers auto,1,2      # more configurations
#   bash tests/bench/syscalls.sh --tests bulk --rounds 3 # later arguments win
#
# Results: $APILB_BENCH_OUT (default /tmp/apilb-bench-syscalls)/results.md,
# "System calls of the balancer per unit of work". Needs perf (linux-perf,
# installed by run.sh) and root for the tracepoints.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export APILB_BENCH_OUT=${APILB_BENCH_OUT:-/tmp/apilb-bench-syscalls}
exec bash "$here/run.sh" --syscalls --tests conn_http,keepalive,bulk --rounds 1 --workers 1 "$@"
