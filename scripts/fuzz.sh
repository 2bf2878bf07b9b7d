#!/usr/bin/env bash
# Coverage-guided fuzzing of apilb's parsers (libFuzzer, clang), the long
# run (docs/reliability.md, "Fuzzing"):
#
#   bash scripts/fuzz.sh [TARGET|all] [SECONDS]
#
# TARGET is one of tests/fuzz/*_fuzz.cpp without _fuzz.cpp (config,
# admin_request, probe_response, keepalived_conf, endpoint_slices, kubeconfig,
# handover, frr_conf, bgp_neighbors, cgroup); all (the default) runs
# every target, two at a time, each for SECONDS (default 600; 0 builds the
# targets and runs none: libFuzzer reads -max_total_time=0 as no limit, so
# a run would end only by the outer timeout). Builds
# build-fuzz/ first if needed (clang-14, -Dfuzzing=true, only `ninja fuzz`).
# Each target starts from a scratch corpus (build-fuzz/fuzz-corpus/TARGET,
# kept between runs) plus the seeds in tests/corpus/TARGET/; what it finds
# goes to build-fuzz/fuzz-findings/TARGET/. Prints per target the executions,
# coverage and findings, and how to turn a finding into a reproducer.
# Exits 1 if any target found something or did not run.
#
# Environment:
#   APILB_FUZZ_BUILD_DIR  build directory (default: <repo>/build-fuzz)
#   APILB_FUZZ_JOBS       targets run at once (default 2)
#   APILB_FUZZ_JUNIT      also write a JUnit report there (scripts/test.sh)
#   APILB_FUZZ_NICE       nice level of the fuzzers (default 10)
#   APILB_FUZZ_BUILD_ONLY=1  build the targets and stop (scripts/test.sh builds
#                         them in the background while other tests run)
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${APILB_FUZZ_BUILD_DIR:-$repo/build-fuzz}
jobs=${APILB_FUZZ_JOBS:-2}
niceness=${APILB_FUZZ_NICE:-10}
which=${1:-all}
seconds=${2:-600}

all_targets=()
for f in "$repo"/tests/fuzz/*_fuzz.cpp; do
  f=${f##*/}
  all_targets+=("${f%_fuzz.cpp}")
done
if [[ "$which" == all ]]; then
  targets=("${all_targets[@]}")
elif [[ " ${all_targets[*]} " == *" $which "* ]]; then
  targets=("$which")
else
  echo "fuzz.sh: unknown target '$which' (known: ${all_targets[*]} all)" >&2
  exit 2
fi
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS must be a number, got '$seconds'" >&2; exit 2; }

# Per target: libFuzzer's -timeout (one input, wall-clock seconds) and
# -rss_limit_mb. Every input runs in milliseconds; the margin is for a
# shared, loaded machine (at a load of 20 on 2 cores an input was once
# descheduled for 6 s). The config target waits for the YAML guard's child:
# on a hang up to 2 s of CPU under AddressSanitizer (4 x 500 ms), at most
# 20 s of wall time. What takes longer than this is a finding of ours.
timeout_of() { [[ $1 == config ]] && echo 60 || echo 25; }
rss_limit_mb=2048

if [[ ! -f "$build/meson-private/coredata.dat" ]]; then
  echo "fuzz.sh: configuring $build (clang++-14, -Dfuzzing=true)"
  CXX=clang++-14 meson setup "$build" "$repo" --buildtype=debugoptimized -Dfuzzing=true -Db_lundef=false \
    >"$build.setup.log" 2>&1 || { tail -n 40 "$build.setup.log"; echo "fuzz.sh: meson setup failed" >&2; exit 1; }
  rm -f "$build.setup.log"
fi
t0=$SECONDS
if ! ninja -C "$build" fuzz >"$build/fuzz-build.log" 2>&1; then
  grep -v '^\[[0-9]*/[0-9]*\] ' "$build/fuzz-build.log" | tail -n 80
  echo "fuzz.sh: building the fuzz targets failed" >&2
  exit 1
fi
echo "fuzz.sh: fuzz targets built in $((SECONDS - t0))s"
[[ "${APILB_FUZZ_BUILD_ONLY:-0}" == 1 || "$seconds" == 0 ]] && exit 0

# run_target NAME: one libFuzzer run; its log in build-fuzz/fuzz-logs/NAME.log.
# The seeds are tests/corpus/NAME/ but hang-*: those are yaml-cpp's known
# endless loops, each costing the guard's whole CPU budget; meson test
# replays them (NAME_fuzz_replay), fuzzing from them would mostly wait.
run_target() {
  local name=$1
  local corpus=$build/fuzz-corpus/$name findings=$build/fuzz-findings/$name seeds=$build/fuzz-seeds/$name
  mkdir -p "$corpus" "$findings" "$build/fuzz-logs"
  rm -rf "$seeds"
  mkdir -p "$seeds"
  find "$repo/tests/corpus/$name" -maxdepth 1 -type f ! -name 'hang-*' -exec cp {} "$seeds/" \;
  # -max_total_time ends the run; the outer timeout only catches a wedged fuzzer.
  timeout --kill-after=30 $((seconds + 120)) nice -n "$niceness" \
    "$build/tests/fuzz/${name}_fuzz" -max_total_time="$seconds" -timeout="$(timeout_of "$name")" \
    -rss_limit_mb="$rss_limit_mb" -print_final_stats=1 -artifact_prefix="$findings/" \
    "$corpus" "$seeds" >"$build/fuzz-logs/$name.log" 2>&1
  echo $? >"$build/fuzz-logs/$name.rc"
}

started=$SECONDS
running=0
for name in "${targets[@]}"; do
  rm -f "$build/fuzz-logs/$name.rc" "$build/fuzz-findings/$name/"* 2>/dev/null
  echo "fuzz.sh: fuzzing $name for ${seconds}s"
  run_target "$name" &
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n
    running=$((running - 1))
  fi
done
wait

failed=0
junit_cases=""
for name in "${targets[@]}"; do
  log=$build/fuzz-logs/$name.log
  rc=$(cat "$build/fuzz-logs/$name.rc" 2>/dev/null || echo 1)
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  rate=$(grep -o 'exec/s: [0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  cov=$(grep -oE '(DONE|pulse|NEW|REDUCE|INITED) +cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1 |
        sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+)/cov \1, ft \2, corpus \3/')
  # What libFuzzer writes for a finding; slow-unit-* (over 10 s, under
  # -timeout) only says an input was slow.
  mapfile -t found < <(find "$build/fuzz-findings/$name" -type f \( -name 'crash-*' -o -name 'leak-*' \
    -o -name 'timeout-*' -o -name 'oom-*' \) 2>/dev/null | sort)
  echo "$name: ${execs:-?} execs (${rate:-?}/s), ${cov:-no coverage line}, ${#found[@]} finding(s), libFuzzer exit $rc"
  message=""
  if ((${#found[@]})) || [[ "$rc" != 0 ]]; then
    failed=$((failed + 1))
    grep -E '^(==[0-9]+==ERROR|SUMMARY|ALARM|.*_fuzz: )' "$log" | head -n 5 | sed 's/^/    /'
    for f in "${found[@]}"; do
      echo "    finding: $f"
      echo "      reproduce: $build/tests/fuzz/${name}_fuzz $f"
      echo "      keep it:   cp $f $repo/tests/corpus/$name/   (then fix; ${name}_fuzz_replay replays it)"
    done
    [[ ${#found[@]} -eq 0 ]] && echo "    no finding file; see $log"
    message="libFuzzer exit $rc, ${#found[@]} finding(s); see $log"
  fi
  junit_cases+="  <testcase classname=\"fuzz\" name=\"$name\" time=\"$seconds\">"
  [[ -n "$message" ]] && junit_cases+="<failure message=\"$message\"/>"
  junit_cases+="</testcase>"$'\n'
done
echo "fuzz.sh: ${#targets[@]} target(s) in $((SECONDS - started))s, $failed with findings"
if [[ -n "${APILB_FUZZ_JUNIT:-}" ]]; then
  {
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo "<testsuite name=\"fuzz\" tests=\"${#targets[@]}\" failures=\"$failed\">"
    printf '%s' "$junit_cases"
    echo '</testsuite>'
  } >"$APILB_FUZZ_JUNIT"
fi
((failed == 0))
