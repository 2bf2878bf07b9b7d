"""System calls of the balancer under test, counted by the kernel: `perf stat`
on the syscalls:sys_enter_* tracepoints of the balancer's processes (all
their threads) for the length of one measurement (bench.py --syscalls); and
the same for everything on the load CPU (the load generator and the
backends): what the balancer's way of relaying makes the other side do.

Counts, not times: a count per unit of work does not move when other users
of the machine take CPU, so it compares balancers across noisy runs. The
tracepoints cost the balancer some CPU on each call, so throughput and CPU
figures of a run with --syscalls are not the ones to quote."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

# The tracepoint per system call, the total, and the balancer's context
# switches (each one a sleep in epoll_wait and a wake-up, or a preemption).
EVENTS = ("syscalls:sys_enter_*", "raw_syscalls:sys_enter", "context-switches")


class SyscallCount:
    """perf stat on `pids`, or with `pids` empty on every task that runs on
    CPU `on_cpu` (system-wide counting of that CPU), from construction until
    stop(); `procs` (bench.Procs) starts and ends it by its PID, on CPU
    `cpu`."""

    def __init__(self, procs, cpu: str, pids: list[int], csv: Path, on_cpu: str | None = None) -> None:
        self.procs = procs
        self.csv = csv
        csv.unlink(missing_ok=True)
        argv = ["perf", "stat", "-x,", "-o", str(csv)]
        argv += ["-a", "-C", on_cpu] if on_cpu is not None else ["-p", ",".join(map(str, pids))]
        for e in EVENTS:
            argv += ["-e", e]
        self.perf = procs.start(argv, cpu)
        # perf writes its header once the counters are open; counting starts then.
        deadline = time.monotonic() + 20
        while not csv.exists() and self.perf.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not csv.exists():
            procs.stop(self.perf, sig=signal.SIGINT)
            raise RuntimeError(f"perf stat did not start: {procs_log(self.perf)}")
        time.sleep(0.3)

    def stop(self) -> dict[str, int]:
        """Ends perf stat; returns {syscall name: count} for the calls made at
        least once, "total" (every system call) and "context_switches"."""
        self.procs.stop(self.perf, sig=signal.SIGINT, timeout=30)
        return parse(self.csv.read_text())


def procs_log(p: subprocess.Popen) -> str:
    try:
        return p.log_path.read_text(errors="replace")[-500:]
    except (AttributeError, OSError):
        return ""


def parse(text: str) -> dict[str, int]:
    """perf stat -x, output: "count,unit,event,..." per line."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        n, event = int(parts[0]), parts[2]
        if event == "raw_syscalls:sys_enter":
            out["total"] = n
        elif event == "context-switches":
            out["context_switches"] = n
        elif event.startswith("syscalls:sys_enter_") and n:
            out[event.removeprefix("syscalls:sys_enter_")] = n
    return out


def per_unit(r: dict, units: float, scale: float = 1.0) -> None:
    """Adds to sample `r` the balancer's user and kernel CPU per unit of work
    (seconds times `scale`) and, if counted, its system calls per unit."""
    if units <= 0:
        return
    r["user_per_unit"] = r["lb_user_s"] * scale / units
    r["sys_per_unit"] = r["lb_sys_s"] * scale / units
    if "syscalls" in r:
        r["syscalls_per_unit"] = {k: v / units for k, v in r["syscalls"].items()}


def load_per_unit(r: dict, units: float, scale: float = 1.0) -> None:
    """Adds to sample `r` (any target, direct included) the load CPU's busy
    time per unit of work (seconds times `scale`: the load generator, the
    backends and the network stack's work done in their context) and, if
    counted, the system calls and context switches made on that CPU."""
    if units <= 0:
        return
    r["gen_cpu_per_unit"] = r["gen_cpu_busy_pct"] / 100.0 * r["wall_s"] * scale / units
    if "gen_syscalls" in r:
        r["gen_syscalls_per_unit"] = {k: r["gen_syscalls"].get(k, 0) / units for k in ("total", "context_switches")}
