#!/usr/bin/env python3
"""Where each balancer's CPU goes, system call by system call.

Reads the results.json of a `tests/bench/run.sh --perf DIR` run (every
measured run then has a `perf record -g -e cpu-clock` profile of the
balancer) and charges each sample to the system call it was in -- the libc
wrapper above the kernel's entry (`entry_SYSCALL_64`) -- or to user space,
or to the kernel outside any call (interrupts, the scheduler). Prints, per
configuration and test, the median µs per unit of work (connection,
request; ms per GB for bulk) of each balancer, with the part spent in
softirq in brackets: on loopback the receiving peer's TCP work runs in the
sender's call, so a send or a connect carries work that any relay pays.

Also the time spent enabling interrupts on the way into a call
(`pvm_irq_enable` under `do_syscall_64` in a PVM guest such as this
machine; zero elsewhere): the part of each call's cost that a relay
submitting its calls in batches (io_uring) would not pay per call.

    APILB_BENCH_FRAME_POINTERS=1 bash tests/bench/run.sh --tests conn_http,keepalive --workers 1 \\
        --perf /tmp/perf
    python3 tests/bench/callprofile.py /tmp/apilb-bench-results/results.json
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

BALANCERS = ("apilb", "haproxy", "nginx")
# test -> (unit, sample key giving the units, scale to the printed unit)
UNITS = {"conn_http": ("connection", "requests", 1e6), "conn_tls": ("connection", "requests", 1e6),
         "keepalive": ("request", "requests", 1e6), "bulk": ("GB", "bytes", 1e3)}
ENTRY = "(entering calls: interrupts enabled)"
USER = "user space"
OUTSIDE = "(kernel outside a call)"


def call_name(libc: str) -> str:
    """`__GI___writev`, `__libc_sendto`, `__close_nocancel` -> the call."""
    name = re.sub(r"^(__GI___|__GI_|__libc_|__)", "", libc)
    return re.sub(r"_nocancel$", "", name)


def profile(data: Path) -> tuple[dict[str, int], dict[str, int], int, float]:
    """(samples per call, of which in softirq, samples on entry, sample rate)."""
    freq = 0.0
    ev = subprocess.run(["perf", "evlist", "-F", "-i", str(data)], capture_output=True, text=True).stdout
    m = re.search(r"sample_freq=(\d+)", ev)
    if m:
        freq = float(m.group(1))
    out = subprocess.run(["perf", "script", "-F", "ip,sym", "-i", str(data)], capture_output=True, text=True,
                         check=True).stdout
    calls: collections.Counter = collections.Counter()
    soft: collections.Counter = collections.Counter()
    entry = 0
    for block in out.split("\n\n"):
        frames = [line.split(None, 1) for line in block.strip().splitlines()]
        frames = [f for f in frames if f]
        if not frames:
            continue
        syms = [f[1] if len(f) > 1 else "[unknown]" for f in frames]
        name = None
        for i, s in enumerate(syms):
            if s.startswith("entry_SYSCALL_64"):
                above = syms[i + 1] if i + 1 < len(syms) else "[unknown]"
                name = call_name(above) if above != "[unknown]" else "(a call, wrapper unknown)"
                break
        if name is None:
            name = OUTSIDE if frames[0][0].startswith("ffff") else USER
        calls[name] += 1
        if "handle_softirqs" in syms or "net_rx_action" in syms:
            soft[name] += 1
        if syms[0] == "pvm_irq_enable":
            parent = next((s for s in syms[1:] if not s.startswith("__raw_callee")), "")
            if parent == "do_syscall_64":
                entry += 1
    return dict(calls), dict(soft), entry, freq


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results.json of a run.sh --perf run")
    ap.add_argument("--min", type=float, default=0.1, help="leave out calls below this many units per unit")
    args = ap.parse_args()
    res = json.loads(Path(args.results).read_text())
    found = False
    for workers, tests in res["samples"].items():
        for test, (unit, key, scale) in UNITS.items():
            per: dict[str, list[dict[str, tuple[float, float]]]] = {t: [] for t in BALANCERS}
            for target in BALANCERS:
                for s in tests.get(test, {}).get(target, []):
                    data = s.get("perf_data")
                    units = s.get(key)
                    if not data or not units or not Path(data).exists():
                        continue
                    if key == "bytes":
                        units /= 1e9
                    calls, soft, entry, freq = profile(Path(data))
                    if not freq:
                        continue
                    k = scale / freq / units
                    row = {c: (n * k, soft.get(c, 0) * k) for c, n in calls.items()}
                    row["**all**"] = (sum(calls.values()) * k, sum(soft.values()) * k)
                    row[ENTRY] = (entry * k, 0.0)
                    per[target].append(row)
            if not any(per.values()):
                continue
            found = True
            names = {c for t in BALANCERS for r in per[t] for c in r}

            def med(t: str, c: str) -> tuple[float, float] | None:
                if not per[t]:
                    return None
                return (statistics.median(r.get(c, (0.0, 0.0))[0] for r in per[t]),
                        statistics.median(r.get(c, (0.0, 0.0))[1] for r in per[t]))

            order = sorted((c for c in names if c not in ("**all**", ENTRY)),
                           key=lambda c: -max((med(t, c) or (0.0, 0.0))[0] for t in BALANCERS))
            u = "ms per GB" if unit == "GB" else f"µs per {unit}"
            print(f"\n## workers {workers}: {test}, {u} (in brackets: in softirq); "
                  f"profiles: " + ", ".join(f"{t} {len(per[t])}" for t in BALANCERS) + "\n")
            print("| call | " + " | ".join(BALANCERS) + " |")
            print("|---|" + "--:|" * len(BALANCERS))
            for c in [*order, ENTRY, "**all**"]:
                vals = [med(t, c) for t in BALANCERS]
                if c not in ("**all**", ENTRY) and max((v or (0.0, 0.0))[0] for v in vals) < args.min:
                    continue
                cells = ["–" if v is None else f"{v[0]:.2f} ({v[1]:.2f})" if v[1] else f"{v[0]:.2f}" for v in vals]
                print(f"| {c} | " + " | ".join(cells) + " |")
    if not found:
        print("no profiles: run tests/bench/run.sh with --perf DIR (and keep DIR)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
