#!/usr/bin/env bash
# The whole test suite in one command, on a fresh Debian 12 machine:
#
#   bash scripts/test.sh
#
# 1. installs missing packages (scripts/install-deps.sh; quiet when all there)
# 2. configures (if not yet) and builds build/ (debugoptimized),
#    build-asan/ (debug, AddressSanitizer + UndefinedBehaviorSanitizer) and,
#    with APILB_TSAN=1, build-tsan/ (debug, ThreadSanitizer: apilb and the
#    tests in tsan_stage)
# 3. runs `meson test` in each, the plain build's with every apilb the tests
#    start on its default relay.io (epoll), the sanitizer build's on
#    relay.io: io_uring (APILB_TEST_RELAY_IO; the unit tests of the poller
#    and the relay cover both engines in each build), so that the whole
#    suite runs on each engine; a sanitizer report fails the run; after the
#    plain build, scripts/check-packaging.sh builds and checks the .deb, the
#    systemd unit, the OCI image and the manifests (counted as tests too);
#    then the fuzz stage: scripts/fuzz.sh builds build-fuzz/ (clang) and runs
#    each libFuzzer target briefly (counted as one test per target); with
#    APILB_TSAN=1, build-tsan/ and the tests where threads meet under TSan
# 4. sums the GoogleTest cases of all builds (scripts/summarize-tests.py); the last
#    line of output is `N passed, N failed` (`, N skipped` when some were)
#
# Exits non-zero if a build or any test failed.
#
# Environment:
#   APILB_BUILD_DIR       build directory (default: <repo>/build)
#   APILB_ASAN_BUILD_DIR  sanitizer build directory (default: <repo>/build-asan)
#   APILB_SKIP_ASAN=1     skip the sanitizer build, for quick local runs
#                         (CI never sets it)
#   APILB_TSAN_BUILD_DIR  ThreadSanitizer build directory (default: <repo>/build-tsan)
#   APILB_TSAN=1          also build build-tsan/ and run the threaded subset
#                         under ThreadSanitizer (CI does not: it does not fit
#                         the 20-minute budget; scripts/tsan.sh runs all)
#   APILB_SKIP_PACKAGING=1  skip scripts/check-packaging.sh (the .deb, unit,
#                         image, manifests; ~1 min), for quick local runs
#   APILB_SKIP_FUZZ=1     skip the fuzz stage (clang build + short runs)
#   APILB_FUZZ_SECONDS    seconds each fuzz target runs (default 30)
#   APILB_FUZZ_BUILD_DIR  fuzz build directory (default: <repo>/build-fuzz)
#   APILB_ASAN_RELAY_IO   relay.io of the sanitizer build's apilbs (default
#                         io_uring; epoll, or "" for each config's own)
#   APILB_SOURCE_DIR      meson project to test (default: this repository;
#                         used to test this script on a trial project)
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=${APILB_SOURCE_DIR:-$repo}
build_dir=${APILB_BUILD_DIR:-$src/build}
asan_dir=${APILB_ASAN_BUILD_DIR:-$src/build-asan}
summarize=(python3 "$repo/scripts/summarize-tests.py")

summary_args=()   # LABEL=DIR, --build-failed LABEL=REASON, --meson-rc LABEL=RC
started=$SECONDS

say() { printf '\n=== %s\n' "$*"; }

if ! bash "$repo/scripts/install-deps.sh"; then
  echo "test.sh: installing the dependencies failed (see above)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

# Makes sure DIR is configured with the wanted options: sets it up if it is
# not a meson build directory yet, reconfigures only if an option differs.
configure() {
  local dir=$1; shift
  if [[ -f "$dir/meson-private/coredata.dat" ]]; then
    local differs
    differs=$(meson introspect --buildoptions "$dir" 2>/dev/null | python3 -c '
import json, sys
want = dict(a[2:].split("=", 1) for a in sys.argv[1:])
try:
    have = {o["name"]: o["value"] for o in json.load(sys.stdin)}
except ValueError:
    print("unreadable"); sys.exit()
def norm(v):
    if isinstance(v, bool): return "true" if v else "false"
    if isinstance(v, list): return ",".join(v)
    return str(v)
print(" ".join(k for k, v in want.items() if norm(have.get(k)) != v))
' "$@")
    [[ -z "$differs" ]] && return 0
    echo "reconfiguring $dir ($differs)"
    meson setup --reconfigure "$dir" "$src" "$@"
  else
    meson setup "$dir" "$src" "$@"
  fi
}

# build_and_test LABEL DIR [meson options...]; `meson test` gets the
# environment in test_env and the extra arguments in test_args; ninja builds
# build_targets (default: everything).
test_env=()
test_args=()
# Test programs run at once (meson test --num-processes): most of them wait
# on timers and sockets, not the CPU.
test_jobs=2
build_targets=()
after_build=()
build_and_test() {
  local label=$1 dir=$2; shift 2
  local log t0=$SECONDS
  say "$label: configure and build $dir"
  mkdir -p "$(dirname "$dir")"
  log=$(mktemp "${TMPDIR:-/tmp}/apilb-build.XXXXXX")
  if ! configure "$dir" "$@" >"$log" 2>&1; then
    tail -n 60 "$log"
    rm -f "$log"
    echo "$label: meson setup failed"
    summary_args+=("$label=$dir" --build-failed "$label=meson setup failed")
    return 1
  fi
  if ! ninja -C "$dir" "${build_targets[@]}" >"$log" 2>&1; then
    # The compiler's messages, without the long list of finished steps.
    grep -v '^\[[0-9]*/[0-9]*\] ' "$log" | tail -n 150
    rm -f "$log"
    echo "$label: build failed"
    summary_args+=("$label=$dir" --build-failed "$label=compilation failed")
    return 1
  fi
  echo "built in $((SECONDS - t0))s ($(grep -c 'warning:' "$log") compiler warnings; \`ninja -C $dir\` shows them)"
  rm -f "$log"
  "${after_build[@]}"

  say "$label: meson test -C $dir"
  rm -f "$dir/meson-logs/testlog.json"
  local rc=0 t1=$SECONDS
  env "${test_env[@]}" meson test -C "$dir" --no-rebuild --print-errorlogs \
    --num-processes "$test_jobs" "${test_args[@]}" || rc=$?
  echo "meson test exited $rc after $((SECONDS - t1))s"
  summary_args+=("$label=$dir" --meson-rc "$label=$rc")
  return 0
}

# The builds still to come compile in the background, at the lowest CPU
# priority, while the plain build's tests and the packaging checks run (the
# sanitizer build) and then while the sanitizer build's tests run (the fuzz
# build): those mostly wait on timers and sockets, and on a fresh 2-core
# machine the compiles are most of the suite's time. A test that runs takes the CPU
# first (nice 19 gets about 1/70 of a core that a test wants). The stages
# below run their own configure and ninja again afterwards, which finds the
# work done (or finishes it, and reports any error as before).
# APILB_NO_PREBUILD=1 keeps every build in its own stage.
#
# The sanitizer build's options. Once the plain build has built, the
# sanitizer build runs the plain build's integration test programs and
# stand-in against its own apilb instead of compiling them again
# (tests/integration/meson.build says why that checks the same).
asan_options=(--buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false)
plain_built() {
  [[ "$src" == "$repo" ]] && asan_options+=("-Dintegration_tests_from=$build_dir")
  start_prebuild
}

prebuild_pid=
prebuild_log=${TMPDIR:-/tmp}/apilb-prebuild.$$.log
# Created by the background job once the sanitizer build has ended (the
# fuzz build goes on after it): its tests need not wait for the fuzz build.
asan_prebuilt=${TMPDIR:-/tmp}/apilb-prebuild.$$.asan-done
prebuild_started=0
start_prebuild() {
  [[ "${APILB_NO_PREBUILD:-0}" == 1 ]] && return 0
  local fuzz=0
  [[ "$src" == "$repo" && "${APILB_SKIP_FUZZ:-0}" != 1 ]] && fuzz=1
  prebuild_started=$SECONDS
  rm -f "$asan_prebuilt"
  (
    if [[ "${APILB_SKIP_ASAN:-0}" != 1 ]]; then
      mkdir -p "$(dirname "$asan_dir")"
      configure "$asan_dir" "${asan_options[@]}" &&
        nice -n 19 ninja -C "$asan_dir"
    fi
    touch "$asan_prebuilt"
    if [[ $fuzz == 1 ]]; then
      APILB_FUZZ_BUILD_DIR=${APILB_FUZZ_BUILD_DIR:-$src/build-fuzz} APILB_FUZZ_BUILD_ONLY=1 \
        nice -n 19 bash "$repo/scripts/fuzz.sh" all 0
    fi
  ) >"$prebuild_log" 2>&1 &
  prebuild_pid=$!
  echo "(the sanitizer and fuzz builds compile in the background from here, nice 19)"
}
# The sanitizer build's tests wait only for the sanitizer build; the fuzz
# build goes on beside them at nice 19 (they mostly wait on timers and
# sockets), and the fuzz stage waits for it.
wait_asan_prebuild() {
  [[ -z "$prebuild_pid" ]] && return 0
  say "waiting for the background sanitizer build"
  # Bounded: the file appears, or the background job has ended.
  while [[ ! -e "$asan_prebuilt" ]] && kill -0 "$prebuild_pid" 2>/dev/null; do sleep 1; done
  echo "background sanitizer build ended $((SECONDS - prebuild_started))s after it started" \
    "(errors, if any, are reported by its stage)"
}
wait_prebuild() {
  [[ -z "$prebuild_pid" ]] && return 0
  say "waiting for the background builds"
  wait "$prebuild_pid" || true
  echo "background builds ended $((SECONDS - prebuild_started))s after they started" \
    "(errors, if any, are reported by their stages)"
  rm -f "$prebuild_log" "$asan_prebuilt"
  prebuild_pid=
}

after_build=(plain_built)
build_and_test build "$build_dir" --buildtype=debugoptimized
after_build=()

# The deployment artifacts, from the plain build's binary: the systemd
#    unit, the .deb (installed for real and purged when CI=true), the OCI
#    image, the static pod manifests, the appliance user-data. Its cases are
#    counted with the others (a JUnit report).
if [[ "$src" == "$repo" && "${APILB_SKIP_PACKAGING:-0}" != 1 ]]; then
  say "packaging: scripts/check-packaging.sh"
  packaging_report=$build_dir/packaging-report.xml
  rm -f "$packaging_report"
  if [[ -x "$build_dir/src/apilb" ]]; then
    bash "$repo/scripts/check-packaging.sh" "$build_dir" "$packaging_report" || true
  fi
  summary_args+=(--junit "packaging=$packaging_report")
fi

# Why this host refuses io_uring to its processes ("" if it does not): a
# container runtime's seccomp profile, kernel.io_uring_disabled, a kernel
# without it. A raw io_uring_setup, as tests/io_uring_host.hpp asks; only a
# refusal counts (EPERM, EACCES, ENOSYS). 425 is io_uring_setup's number on
# every architecture.
io_uring_refusal() {
  python3 - <<'PY'
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
fd = libc.syscall(425, 1, params)
if fd >= 0:
    os.close(fd)
elif ctypes.get_errno() in (errno.EPERM, errno.EACCES, errno.ENOSYS):
    why = "io_uring_setup failed: " + os.strerror(ctypes.get_errno())
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            if f.read().strip() not in ("", "0"):
                why += " (kernel.io_uring_disabled)"
    except OSError:
        pass
    print(why)
PY
}

wait_asan_prebuild
if [[ "${APILB_SKIP_ASAN:-0}" == 1 ]]; then
  say "build-asan: skipped (APILB_SKIP_ASAN=1)"
else
  # detect_leaks + abort_on_error: a leak or memory error kills the test;
  # halt_on_error: undefined behaviour does too. Tests run slower under the
  # sanitizers, so their timeouts are doubled.
  # The engine the plain build's tests did not run on (`meson test --setup
  # io_uring` sets the same variable).
  asan_relay_io=${APILB_ASAN_RELAY_IO-io_uring}
  # On a host that refuses io_uring, relay.io: io_uring cannot start: the
  # stage runs on the configs' own engine, and the ring's own tests skip
  # with the reason (tests/io_uring_host.hpp).
  refusal=
  [[ "$asan_relay_io" == io_uring ]] && refusal=$(io_uring_refusal)
  if [[ -n "$refusal" ]]; then
    echo "build-asan: this host refuses io_uring ($refusal): its apilbs run on the configs' own relay.io (epoll)," \
      "and the tests of the ring skip"
    asan_relay_io=
  fi
  test_env=(ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
            UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
            APILB_TEST_RELAY_IO="$asan_relay_io")
  test_args=(--timeout-multiplier 2)
  # Three at once here: beside these tests only the small fuzz build runs
  # (the plain build's tests share the CPU with the whole sanitizer build,
  # which is what bounds that stage). Measured on a quiet 2-core VM at
  # fde48e9: 465 s with 3, every test passing, against 596 s with 2 in the
  # clean-clone run of cd71180 (which had three tests serial).
  test_jobs=3
  [[ -n "$asan_relay_io" ]] && echo "build-asan: every apilb the tests start runs on relay.io: $asan_relay_io"
  build_and_test build-asan "$asan_dir" "${asan_options[@]}"
fi

# The fuzz stage: the libFuzzer targets of tests/fuzz/ (clang-14, their own
# build with only what they need), each run briefly from its seed corpus,
# two at a time; a crash, a slow input (-timeout) or a memory blow-up
# (-rss_limit_mb) is a failed case of the JUnit report fuzz.sh writes.
# The seeds themselves are replayed by `meson test` in both builds above.
fuzz_stage() {
  if [[ "$src" != "$repo" || "${APILB_SKIP_FUZZ:-0}" == 1 ]]; then
    say "fuzz: skipped"
    return 0
  fi
  local dir=${APILB_FUZZ_BUILD_DIR:-$src/build-fuzz}
  local seconds=${APILB_FUZZ_SECONDS:-30}
  say "fuzz: scripts/fuzz.sh all ${seconds}s in $dir"
  mkdir -p "$dir"
  local report=$dir/fuzz-report.xml t0=$SECONDS
  rm -f "$report"
  APILB_FUZZ_BUILD_DIR=$dir APILB_FUZZ_JUNIT=$report APILB_FUZZ_NICE=0 \
    bash "$repo/scripts/fuzz.sh" all "$seconds" || true
  echo "fuzz stage took $((SECONDS - t0))s"
  summary_args+=(--junit "fuzz=$report")
}
wait_prebuild
fuzz_stage

# ThreadSanitizer, on the tests where the threads meet: the workers, the
# control thread (probes, admin endpoint, reload, rebalancing) and the log
# writer. Not in CI: even this subset's build and run would take the suite
# past its 20-minute budget (docs/reliability.md has the numbers);
# scripts/tsan.sh runs the whole suite before each release. Only what these
# tests need is built.
tsan_stage() {
  local dir=${APILB_TSAN_BUILD_DIR:-$src/build-tsan}
  local tests=(log_sink_unit_test poller_unit_test fd_table_unit_test relay_unit_test
               worker_test reload_test reload_retry_test admin_test liveness_test
               health_failover_test pacing_rebalance_test)
  # shellcheck source=scripts/tsan.sh
  source "$repo/scripts/tsan.sh"
  if ! tsan_setup "$repo"; then
    summary_args+=("build-tsan=$dir" --build-failed "build-tsan=TSan cannot run on this host")
    return
  fi
  test_env=("TSAN_OPTIONS=$TSAN_OPTIONS" "GTEST_FILTER=$tsan_gtest_filter")
  test_args=("${tsan_test_args[@]}" "${tests[@]}")
  test_jobs=2
  build_targets=(src/apilb tests/standin/apilb-standin)
  local t
  for t in "${tests[@]}"; do
    case $t in
      *_unit_test) build_targets+=("tests/io/$t") ;;
      *) build_targets+=("tests/integration/$t") ;;
    esac
  done
  build_and_test build-tsan "$dir" --buildtype=debug -Db_sanitize=thread -Db_lundef=false
  build_targets=()
}
if [[ "${APILB_TSAN:-0}" == 1 && "$src" == "$repo" ]]; then
  tsan_stage
else
  say "build-tsan: not run (APILB_TSAN=1 runs it; scripts/tsan.sh runs the whole suite under TSan)"
fi

say "done in $((SECONDS - started))s"
"${summarize[@]}" "${summary_args[@]}"
exit $?
