#!/usr/bin/env python3
"""Sums GoogleTest cases over one or more meson build directories.

    summarize-tests.py [options] LABEL=BUILDDIR [LABEL=BUILDDIR ...]

Reads, for each build directory, what `meson test` left there:
  meson-logs/testlog.json        one JSON object per test executable (result,
                                 return code, start time, output)
  meson-info/intro-tests.json    each test's protocol and working directory
  <workdir>/<testname>.xml       the GoogleTest XML report meson asks a
                                 `protocol : 'gtest'` test to write (workdir
                                 defaults to the build directory)

and counts individual GoogleTest cases. A test executable that crashed or
timed out before writing its XML report counts as one failed case, named
after the executable. An executable whose cases all passed but that still
exited non-zero (e.g. LeakSanitizer at exit) adds one failure, and so does a
sanitizer report anywhere in a test's output (also from child processes that
share its stderr). A test without the gtest protocol counts as one case.

Prints one line per build, the failing (and skipped) tests, and as the very
last line `N passed, N failed` (`, N skipped` added when some were skipped).
Exits 1 if anything failed or nothing ran at all, 0 otherwise.

Options:
  --build-failed LABEL=REASON   that build did not build: one failure, its
                                test logs (maybe stale) are not read
  --meson-rc LABEL=RC           exit code of `meson test`; non-zero with no
                                failing test found adds one failure
  --junit LABEL=FILE            also count the cases of a JUnit XML report
                                (scripts/check-packaging.sh writes one, so
                                does scripts/fuzz.sh: one case per fuzz
                                target); a missing or unreadable report is
                                one failure
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

OK_RESULTS = {"OK", "EXPECTEDFAIL"}
SKIP_RESULTS = {"SKIP"}

SANITIZER_RE = re.compile(
    r"^(==\d+==ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer|MemorySanitizer)"
    r"|\S+:\d+:\d+: runtime error: "
    r"|SUMMARY: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|ThreadSanitizer))",
    re.MULTILINE,
)
GTEST_LINE_RE = re.compile(r"^\[ +(RUN|OK|FAILED|SKIPPED) +\] (\S+)", re.MULTILINE)


@dataclass
class BuildSummary:
    label: str
    path: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    programs: int = 0
    failures: list[str] = field(default_factory=list)
    skips: list[str] = field(default_factory=list)
    note: str = ""

    def fail(self, text: str) -> None:
        self.failed += 1
        self.failures.append(text)


def first_lines(text: str, n: int = 4, width: int = 160) -> str:
    lines = [ln.rstrip() for ln in (text or "").strip().splitlines() if ln.strip()]
    out = [ln if len(ln) <= width else ln[: width - 3] + "..." for ln in lines[:n]]
    if len(lines) > n:
        out.append("...")
    return "\n".join(out)


def one_line(text: str, width: int = 160) -> str:
    """A skip reason on one line: GoogleTest puts file:line first, the reason after."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    if len(lines) > 1:
        lines = lines[1:] + [f"({lines[0]})"]
    out = " ".join(lines)
    return out if len(out) <= width else out[: width - 3] + "..."


def indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + ln for ln in text.splitlines())


def signal_name(num: int) -> str:
    try:
        return f"signal {num} {signal.Signals(num).name}"
    except ValueError:
        return f"signal {num}"


def how_it_ended(entry: dict) -> str:
    result = entry.get("result", "?")
    rc = entry.get("returncode")
    if result == "TIMEOUT":
        return f"timed out after {entry.get('duration', 0):.0f}s"
    if isinstance(rc, int) and rc < 0:
        return f"killed by {signal_name(-rc)}"
    if isinstance(rc, int) and 128 < rc < 128 + 65:
        return f"exit status {rc} (maybe {signal_name(rc - 128)})"
    if rc is not None:
        return f"exit status {rc} ({result})"
    return result


def last_unfinished_case(output: str) -> str | None:
    """The GoogleTest case that was started but never reported as done."""
    running = None
    for kind, name in GTEST_LINE_RE.findall(output or ""):
        if kind == "RUN":
            running = name
        elif name == running:
            running = None
    return running


def parse_gtest_xml(path: str):
    """Yields (case name, 'passed'|'failed'|'skipped', message)."""
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        suite = case.get("classname") or ""
        name = case.get("name") or ""
        full = f"{suite}.{name}" if suite and name else (suite or name or "(unnamed)")
        problems = case.findall("failure") + case.findall("error")
        if problems:
            msg = "\n".join((p.get("message") or p.text or "").strip() for p in problems)
            yield full, "failed", msg
        elif (case.get("result") in ("skipped", "suppressed")
              or case.get("status") == "notrun"
              or case.find("skipped") is not None):
            sk = case.find("skipped")
            msg = (sk.get("message") or sk.text or "") if sk is not None else "disabled"
            yield full, "skipped", msg
        else:
            yield full, "passed", ""


def load_json_lines(path: str) -> list[dict]:
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line:
                entries.append(json.loads(line))
    return entries


def summarize_build(label: str, builddir: str, meson_rc: int | None) -> BuildSummary:
    s = BuildSummary(label, builddir)
    log_path = os.path.join(builddir, "meson-logs", "testlog.json")
    if not os.path.exists(log_path):
        s.note = "no meson-logs/testlog.json: `meson test` did not run"
        s.fail(f"[{label}] no test results: `meson test` did not run in {builddir}")
        return s
    try:
        entries = load_json_lines(log_path)
    except (OSError, ValueError) as e:
        s.fail(f"[{label}] cannot read {log_path}: {e}")
        return s

    tests_info: dict[str, dict] = {}
    try:
        with open(os.path.join(builddir, "meson-info", "intro-tests.json"), encoding="utf-8") as f:
            for t in json.load(f):
                tests_info[t["name"]] = t
    except (OSError, ValueError):
        pass

    for entry in entries:
        name = entry.get("name", "?")
        # With more than one suite, meson logs "project:suite / name".
        if name not in tests_info and " / " in name:
            name = name.split(" / ", 1)[1]
        result = entry.get("result", "?")
        output = (entry.get("stdout") or "") + (entry.get("stderr") or "")
        info = tests_info.get(name, {})
        protocol = info.get("protocol", "gtest")
        workdir = info.get("workdir") or builddir
        s.programs += 1
        failed_before = s.failed

        sanitizer_line = ""
        m = SANITIZER_RE.search(output)
        if m:
            line_start = output.rfind("\n", 0, m.start()) + 1
            line_end = output.find("\n", m.start())
            sanitizer_line = output[line_start: line_end if line_end >= 0 else len(output)].strip()

        cases = None
        if protocol == "gtest":
            xml_path = os.path.join(workdir, f"{name}.xml")
            try:
                fresh = os.path.getmtime(xml_path) >= float(entry.get("starttime", 0)) - 1.0
            except OSError:
                fresh = False
            if fresh:
                try:
                    cases = list(parse_gtest_xml(xml_path))
                except ET.ParseError as e:
                    s.fail(f"[{label}] {name}: unreadable GoogleTest XML report {xml_path}: {e}")
                    cases = []

        if cases is not None:
            for case, status, msg in cases:
                if status == "passed":
                    s.passed += 1
                elif status == "skipped":
                    s.skipped += 1
                    s.skips.append(f"[{label}] {name}: {case}: {one_line(msg)}")
                else:
                    s.fail(f"[{label}] {name}: {case}\n{indent(first_lines(msg, 6))}")
        elif result in OK_RESULTS:
            s.passed += 1
        elif result in SKIP_RESULTS:
            s.skipped += 1
            s.skips.append(f"[{label}] {name}: skipped by the test (exit 77)")
        else:
            text = f"[{label}] {name}: {how_it_ended(entry)}"
            if protocol == "gtest":
                text += ", no GoogleTest XML report"
                running = last_unfinished_case(output)
                if running:
                    text += f" (last case started: {running})"
            if sanitizer_line:
                text += f"\n{indent(first_lines(sanitizer_line, 1))}"
                sanitizer_line = ""  # told with this failure
            s.fail(text)

        if sanitizer_line:
            s.fail(f"[{label}] {name}: sanitizer report in its output:\n"
                   f"{indent(first_lines(sanitizer_line, 1))}")
        elif result not in OK_RESULTS | SKIP_RESULTS and s.failed == failed_before:
            # Every case passed, yet the executable failed: a crash in a
            # destructor after the report, LeakSanitizer at exit, a timeout
            # while shutting down, ...
            s.fail(f"[{label}] {name}: all its cases passed but it ended with {how_it_ended(entry)}")

    if meson_rc not in (None, 0) and s.failed == 0:
        s.fail(f"[{label}] `meson test` exited {meson_rc} but no failing test was found")
    return s


def summarize_junit(label: str, path: str) -> BuildSummary:
    s = BuildSummary(label, path)
    try:
        cases = list(parse_gtest_xml(path))
    except (OSError, ET.ParseError) as e:
        s.note = "no report"
        s.fail(f"[{label}] cannot read the report {path}: {e}")
        return s
    s.programs = 1
    for case, status, msg in cases:
        if status == "passed":
            s.passed += 1
        elif status == "skipped":
            s.skipped += 1
            s.skips.append(f"[{label}] {case}: {one_line(msg)}")
        else:
            s.fail(f"[{label}] {case}\n{indent(first_lines(msg, 6))}")
    if not cases:
        s.fail(f"[{label}] no case in {path}")
    return s


def split_pair(text: str, what: str) -> tuple[str, str]:
    if "=" not in text:
        raise SystemExit(f"summarize-tests.py: expected LABEL={what}, got {text!r}")
    a, b = text.split("=", 1)
    return a, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="*", metavar="LABEL=BUILDDIR")
    ap.add_argument("--build-failed", action="append", default=[], metavar="LABEL=REASON")
    ap.add_argument("--meson-rc", action="append", default=[], metavar="LABEL=RC")
    ap.add_argument("--junit", action="append", default=[], metavar="LABEL=FILE")
    args = ap.parse_intermixed_args()

    broken = dict(split_pair(x, "REASON") for x in args.build_failed)
    rcs = {k: int(v) for k, v in (split_pair(x, "RC") for x in args.meson_rc)}
    builds = [split_pair(x, "BUILDDIR") for x in args.builds]
    for label in broken:
        if label not in dict(builds):
            builds.append((label, ""))

    summaries = []
    for label, builddir in builds:
        if label in broken:
            s = BuildSummary(label, builddir)
            s.note = broken[label]
            s.fail(f"[{label}] {broken[label]}: no test ran in {builddir or 'it'}")
        else:
            s = summarize_build(label, builddir, rcs.get(label))
        summaries.append(s)
    for label, path in (split_pair(x, "FILE") for x in args.junit):
        summaries.append(summarize_junit(label, path))

    print()
    print("Test summary (GoogleTest cases):")
    for s in summaries:
        where = f" ({s.path})" if s.path else ""
        line = f"  {s.label}{where}: {s.passed} passed, {s.failed} failed, {s.skipped} skipped"
        if s.programs:
            line += f", from {s.programs} test programs"
        if s.note:
            line += f" [{s.note}]"
        print(line)

    passed = sum(s.passed for s in summaries)
    failed = sum(s.failed for s in summaries)
    skipped = sum(s.skipped for s in summaries)
    failures = [f for s in summaries for f in s.failures]
    skips = [k for s in summaries for k in s.skips]
    if passed + failed + skipped == 0:
        failed = 1
        failures.append("no test ran at all")

    if skips:
        print(f"Skipped ({len(skips)}):")
        for k in skips:
            print(f"  {k}")
    if failures:
        print(f"FAILED ({len(failures)}):")
        for f in failures:
            print(f"  {f}")

    final = f"{passed} passed, {failed} failed"
    if skipped:
        final += f", {skipped} skipped"
    sys.stdout.flush()
    print(final)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
