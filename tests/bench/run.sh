#!/usr/bin/env bash
# The benchmark of issue 3: apilb, HAProxy (mode tcp), nginx (stream) and a
# direct connection, each round-robin over three backends on 127.0.0.2-4,
# interleaved round by round. docs/performance.md explains every test and
# holds the results of a full run.
#
#   bash tests/bench/run.sh                  # full suite: 3 rounds, all tests, the shipped
#                                            # defaults (auto), then 1 and 2 workers each: ~15 minutes
#   BENCH_ROUNDS=5 bash tests/bench/run.sh   # more rounds
#   bash tests/bench/run.sh --tests bulk,keepalive --rounds 1 --workers 1   # a subset
#   bash tests/bench/syscalls.sh             # system calls per unit of work (perf stat)
#
# On a machine shared with others who measure, take the lock first:
#   flock /tmp/apilb-bench.lock bash tests/bench/run.sh ...
#
# Arguments are passed to bench.py (see `python3 tests/bench/bench.py -h`).
# Environment:
#   APILB_BENCH_REV    measure this git revision (e.g. HEAD, a commit) instead of the
#                      working tree: exported with `git archive` into a scratch directory
#                      (nothing in the repository is touched), built there
#   APILB_BENCH_BUILD  release build directory of apilb (default /tmp/apilb-bench-build,
#                      with -REV appended when APILB_BENCH_REV is set); configured and
#                      rebuilt here, so the newest sources are measured
#   APILB_BENCH_OUT    where results.md and results.json go (default /tmp/apilb-bench-results)
#   APILB_BENCH_FRAME_POINTERS=1  build with frame pointers (for `--perf DIR`, which
#                      records a perf profile of the balancer in each measured run)
#   BENCH_LB_CPU       CPU for the balancer under test (default 0)
#   BENCH_GEN_CPU      CPU for load generators and backends (default 1)
#   BENCH_ROUNDS       rounds (default 3)
#
# Needs root (or sudo) only to install packages; the measurements use loopback
# addresses 127.0.0.1-4 and nothing else.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rev=${APILB_BENCH_REV:-}
build=${APILB_BENCH_BUILD:-/tmp/apilb-bench-build}
out=${APILB_BENCH_OUT:-/tmp/apilb-bench-results}
lb_cpu=${BENCH_LB_CPU:-0}
gen_cpu=${BENCH_GEN_CPU:-1}
rounds=${BENCH_ROUNDS:-3}

bash "$root/scripts/install-deps.sh" bench

if [[ $(nproc) -lt 2 ]]; then
    echo "run.sh: needs at least 2 CPUs (one for the balancer, one for the load)" >&2
    exit 1
fi

# A release build of apilb, like a packaged one: of the working tree, or of
# APILB_BENCH_REV exported beside the build directory.
src=$root
if [[ -n $rev ]]; then
    commit=$(git -C "$root" rev-parse --verify "$rev^{commit}")
    build=${APILB_BENCH_BUILD:-/tmp/apilb-bench-build}-${commit:0:10}
    src=$build.src
    if [[ ! -f $src/meson.build ]]; then
        rm -rf "$src" && mkdir -p "$src"
        git -C "$root" archive --format=tar "$commit" | tar -x -C "$src"
    fi
    version="${commit:0:10} ($rev)"
else
    version="$(git -C "$root" rev-parse --short=10 HEAD 2>/dev/null || echo '?')"
    [[ -z $(git -C "$root" status --porcelain -- src include 2>/dev/null) ]] || version+=" plus uncommitted changes in src/ include/"
fi
# APILB_BENCH_FRAME_POINTERS=1: a separate build that keeps frame pointers,
# for `--perf` call graphs.
setup_args=(--buildtype=release)
if [[ ${APILB_BENCH_FRAME_POINTERS:-0} == 1 ]]; then
    build+=-fp
    setup_args+=("-Dcpp_args=-fno-omit-frame-pointer -g")
fi
if [[ ! -f $build/build.ninja ]]; then
    meson setup "$build" "$src" "${setup_args[@]}" >/dev/null
fi
ninja -C "$build" src/apilb >/dev/null

mkdir -p "$out"
work=$(mktemp -d /tmp/apilb-bench.XXXXXX)
# The processes' logs are kept with the results; the rest is thrown away.
trap 'rm -rf "$out/logs"; [[ -d $work/logs ]] && mv "$work/logs" "$out/logs"; rm -rf "$work"' EXIT
g++ -std=c++20 -O2 -Wall -Wextra -o "$work/connload" "$here/connload.cpp"

# Every process gets the same descriptor limit: the machine's hard limit
# (20000 on our test machines).
ulimit -n "$(ulimit -Hn)"

{
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'),"\
         "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r),"\
         "Debian $(cat /etc/debian_version)"
    echo "apilb: $("$build/src/apilb" version 2>&1 | head -1), source $version, g++ $(g++ -dumpversion), release build in $build"
    echo "haproxy: $(haproxy -v | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "iperf3: $(iperf3 --version | head -1); wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); h2load: nghttp2 $(dpkg-query -W -f='${Version}' nghttp2-client); valgrind: $(valgrind --version)"
    echo "descriptor limit: $(ulimit -n); balancer on CPU $lb_cpu, load generators and backends on CPU $gen_cpu (taskset)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/machine.txt" >&2

taskset -c "$gen_cpu" python3 "$here/bench.py" \
    --apilb "$build/src/apilb" --connload "$work/connload" --work "$work" --out "$out" \
    --rounds "$rounds" --lb-cpu "$lb_cpu" --gen-cpu "$gen_cpu" "$@"
