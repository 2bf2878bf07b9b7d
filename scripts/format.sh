#!/usr/bin/env bash
# clang-format over apilb's C++ with the repository's .clang-format.
#
#   scripts/format.sh            check: lists the files that differ and how
#                                many lines each would change; exits 1 if any
#   scripts/format.sh --fix      rewrites those files in place
#   scripts/format.sh [--fix] FILE...   only these files
#
# Files: every tracked *.cpp and *.hpp under src/, include/ and tests/
# (tests/corpus holds fuzz inputs, not code). CLANG_FORMAT picks the binary
# (default clang-format-14, Debian 12's; other versions format differently).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
clang_format=${CLANG_FORMAT:-clang-format-14}
command -v "$clang_format" >/dev/null || { echo "format.sh: $clang_format not found (apt-get install clang-format-14)" >&2; exit 2; }

fix=0
if [[ ${1:-} == --fix ]]; then
  fix=1
  shift
fi
if [[ $# -gt 0 ]]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files 'src/*.cpp' 'src/*.hpp' 'include/*.hpp' 'tests/*.cpp' 'tests/*.hpp' | grep -v '^tests/corpus/')
fi

if [[ $fix == 1 ]]; then
  "$clang_format" --style=file -i "${files[@]}"
  exit 0
fi

# One clang-format run answers "all formatted?" (about a second) and names
# the files that are not ("FILE:LINE:COL: error: code should be
# clang-formatted"); only those get the per-file count below (a count of
# every file took minutes on a loaded machine, past the test's timeout).
if report=$("$clang_format" --style=file --dry-run --Werror "${files[@]}" 2>&1); then
  echo "format.sh: ${#files[@]} file(s) formatted"
  exit 0
fi
mapfile -t unformatted < <(sed -n 's/^\([^:]*\):[0-9]*:[0-9]*: error: code should be clang-formatted.*/\1/p' <<<"$report" | sort -u)
[[ ${#unformatted[@]} -gt 0 ]] || { printf '%s\n' "$report" >&2; exit 1; }

changed_files=0
changed_lines=0
for f in "${unformatted[@]}"; do
  n=$("$clang_format" --style=file "$f" | diff "$f" - | grep -c '^<' || true)
  if [[ $n -gt 0 ]]; then
    echo "$f: $n line(s) would change"
    changed_files=$((changed_files + 1))
    changed_lines=$((changed_lines + n))
  fi
done
if [[ $changed_files -gt 0 ]]; then
  echo "format.sh: $changed_files of ${#files[@]} file(s), $changed_lines line(s) not formatted; scripts/format.sh --fix rewrites them" >&2
  exit 1
fi
echo "format.sh: ${#files[@]} file(s) formatted"
