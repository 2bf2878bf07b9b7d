#!/usr/bin/env python3
"""The floor: what the kernel alone costs per unit of work on this machine.

Runs each floor relay (floor_epoll.c built plain: epoll; with -DFLOOR_SPLICE:
splice; with -DFLOOR_URING_POLL: upoll, and -DFLOOR_URING_ACCEPT too:
uaccept; floor_uring.c: uring, with -DFLOOR_MULTISHOT: ushot) and, with
--apilb BINARY, apilb (workers: 1), and nginx (tests/bench's stream
configuration, 1 worker process) against the loads of tests/bench -- new
HTTP connections/s (wrk -c64, Connection: close), keep-alive requests/s
(wrk -c64), bulk (iperf3 -P4) -- round-robin over backends on 127.0.0.2-4,
relay pinned to one CPU and load to the other, relays interleaved round by
round, medians reported. Per unit: CPU (utime+stime of the relay's
processes from /proc/PID/stat), system calls (perf stat on
raw_syscalls:sys_enter, in the measured run itself), wake-ups (voluntary
context switches), and the load CPU's busy time (load generator and
backends, from /proc/stat): with the load CPU full, the rate a relay
reaches is set by what it makes the load do, not by its own CPU; --strace
adds one short run per relay and load under `strace -c -f` for the
breakdown by call. Every number of one invocation comes from the same run. Wrap it in
`flock /tmp/apilb-bench.lock` on a shared machine. Loopback only.

  python3 tests/bench/floor/floor.py --apilb BUILD/src/apilb [--rounds 3] [--seconds 6]
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, str(HERE.parent))
from bench import cpu_jiffies, cpu_seconds, proc_tree  # noqa: E402
LOADS = ("conn", "keepalive", "bulk")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wakeups(pids: list[int]) -> int:
    """Voluntary context switches of all the processes' threads: how often they slept."""
    n = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            for line in open(f"/proc/{pid}/task/{task}/status"):
                if line.startswith("voluntary_ctxt_switches:"):
                    n += int(line.split()[1])
    return n


def cpu_busy_s(cpu: str) -> float:
    """Busy seconds of one CPU so far (all but idle and iowait, /proc/stat)."""
    return cpu_jiffies()[f"cpu{cpu}"][0] / TICK


def listening(port: int) -> bool:
    """Whether something listens on TCP `port` (without connecting to it:
    iperf3 takes any connection for a test's control connection)."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(name).read().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_port(port: int, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def build(work: Path) -> dict:
    bins = {}
    for name, src, flags in (("epoll", "floor_epoll.c", []), ("splice", "floor_epoll.c", ["-DFLOOR_SPLICE"]),
                             ("upoll", "floor_epoll.c", ["-DFLOOR_URING_POLL"]),
                             ("uaccept", "floor_epoll.c", ["-DFLOOR_URING_POLL", "-DFLOOR_URING_ACCEPT"]),
                             ("uring", "floor_uring.c", []),
                             ("ushot", "floor_uring.c", ["-DFLOOR_MULTISHOT"])):
        out = work / f"floor_{name}"
        libs = ["-luring"] if "uring" in src or "-DFLOOR_URING_POLL" in flags else []
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", *flags, "-o", str(out), str(HERE / src), *libs], check=True)
        bins[name] = out
    return bins


class Run:
    def __init__(self, args, work: Path) -> None:
        self.args, self.work = args, work
        self.http_port, self.iperf_port, self.lb_port = free_port(), free_port(), free_port()
        self.procs = []

    def start(self, argv, cpu: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["taskset", "-c", cpu, *argv], stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_relay(self, p: subprocess.Popen) -> None:
        """Stops a relay and waits for its listener to go: an io_uring's
        files are let go after the process has exited."""
        self.stop(p)
        deadline = time.monotonic() + 10
        while listening(self.lb_port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def backends(self) -> None:
        conf = self.work / "nginx.conf"
        listens = "\n".join(f"listen 127.0.0.{i}:{self.http_port} backlog=4096;" for i in (2, 3, 4))
        conf.write_text(f"""worker_processes 1; worker_rlimit_nofile 20000; daemon off;
pid {self.work}/nginx.pid; error_log stderr warn;
events {{ worker_connections 19800; }}
http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 600s;
  server {{ {listens} location = / {{ return 200 "ok\\n"; }} }} }}
""")
        self.start(["nginx", "-c", str(conf), "-p", str(self.work), "-e", "stderr"], self.args.gen_cpu)
        self.start(["iperf3", "-s", "-B", "0.0.0.0", "-p", str(self.iperf_port)], self.args.gen_cpu,
                   stdout=subprocess.DEVNULL)
        wait_port(self.http_port)
        wait_port(self.iperf_port)

    def relay(self, name: str, bins: dict, backend_port: int) -> subprocess.Popen:
        if name == "apilb":
            conf = self.work / f"apilb-{backend_port}.yaml"
            bes = "\n".join(f'      - {{name: b{i}, address: "127.0.0.{i}:{backend_port}"}}' for i in (2, 3, 4))
            conf.write_text(f"""workers: 1
listeners:
  - {{name: front, address: "127.0.0.1:{self.lb_port}", pool: p, backlog: 4096}}
pools:
  - name: p
    balance: round-robin
    backends:
{bes}
timeouts: {{connect: 2s, idle: 1h}}
limits: {{max_connections: 9500}}
log: {{level: warn}}
""")
            p = self.start([self.args.apilb, "run", "-c", str(conf)], self.args.lb_cpu, stdout=subprocess.DEVNULL)
        elif name == "nginx":
            conf = self.work / f"nginx-lb-{backend_port}.conf"
            text = (HERE.parent / "conf" / "nginx-stream.conf.in").read_text()
            for k, v in (("WORKERS", "1"), ("WORK", str(self.work)), ("LB_PORT", str(self.lb_port)),
                         ("BACKEND_PORT", str(backend_port))):
                text = text.replace(f"@{k}@", v)
            conf.write_text(text)
            p = self.start(["nginx", "-c", str(conf), "-p", str(self.work), "-e", "stderr"], self.args.lb_cpu)
        else:
            p = self.start([str(bins[name]), str(self.lb_port), str(backend_port)], self.args.lb_cpu,
                           stdout=subprocess.DEVNULL)
        wait_port(self.lb_port)
        if name == "nginx":
            time.sleep(0.2)  # the worker starts after the master bound the socket
        return p

    def load(self, load: str, secs: int) -> tuple[float, dict]:
        """Runs one load against the relay; returns (units, extra figures)."""
        if load == "bulk":
            out = subprocess.run(["taskset", "-c", self.args.gen_cpu, "iperf3", "-c", "127.0.0.1", "-p",
                                  str(self.lb_port), "-P", "4", "-t", str(secs), "-J"],
                                 capture_output=True, text=True, timeout=secs + 30, check=True).stdout
            gb = json.loads(out)["end"]["sum_received"]["bytes"] / 1e9
            return gb, {"gbps": 8 * gb / secs}
        argv = ["taskset", "-c", self.args.gen_cpu, "wrk", "-t1", "-c64", f"-d{secs}s", "--latency"]
        if load == "conn":
            argv += ["-H", "Connection: close"]
        out = subprocess.run([*argv, f"http://127.0.0.1:{self.lb_port}/"], capture_output=True, text=True,
                             timeout=secs + 30, check=True).stdout
        n = int(re.search(r"(\d+) requests in", out).group(1))
        errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)", out, re.M)
        p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)] if m else None
        return n, {"rps": n / secs, "p99_ms": p99, "errors": sum(map(int, errs.groups())) if errs else 0}

    def measure(self, name: str, bins: dict, load: str) -> dict:
        port = self.iperf_port if load == "bulk" else self.http_port
        lb = self.relay(name, bins, port)
        try:
            perf_out = self.work / "perf.txt"
            pids = proc_tree(lb.pid)
            perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-o", str(perf_out),
                                     "-p", ",".join(map(str, pids))], stdin=subprocess.DEVNULL)
            time.sleep(0.3)
            c0, w0, g0 = cpu_seconds(pids), wakeups(pids), cpu_busy_s(self.args.gen_cpu)
            units, r = self.load(load, self.args.seconds)
            c1, w1, g1 = cpu_seconds(pids), wakeups(pids), cpu_busy_s(self.args.gen_cpu)
            perf.send_signal(signal.SIGINT)
            perf.wait(10)
            calls = int(next(l for l in perf_out.read_text().splitlines() if "raw_syscalls" in l).split(",")[0])
        finally:
            self.stop_relay(lb)
        per = 1e6 if load != "bulk" else 1.0
        r.update(units=units, cpu_per_unit=per * (c1 - c0) / units, calls_per_unit=calls / units,
                 wakeups_per_unit=(w1 - w0) / units, load_cpu_per_unit=per * (g1 - g0) / units,
                 cpu_util=(c1 - c0) / self.args.seconds)
        return r

    def strace(self, name: str, bins: dict, load: str) -> str:
        port = self.iperf_port if load == "bulk" else self.http_port
        lb = self.relay(name, bins, port)
        out = self.work / f"strace-{name}-{load}.txt"
        attach = [a for p in proc_tree(lb.pid) for a in ("-p", str(p))]
        st = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), *attach],
                              stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            units, _ = self.load(load, 3)
        finally:
            st.send_signal(signal.SIGINT)
            st.wait(10)
            self.stop_relay(lb)
        rows = []
        for line in out.read_text().splitlines():
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                rows.append((int(f[3]), f[-1]))
        rows.sort(reverse=True)
        return ", ".join(f"{c / units:.2f} {call}" for c, call in rows[:6] if c / units >= 0.01)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apilb", help="apilb binary to measure beside the floor (release build)")
    ap.add_argument("--relays", default="epoll,splice,upoll,uaccept,uring,ushot,apilb,nginx")
    ap.add_argument("--loads", default=",".join(LOADS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--strace", action="store_true", help="also a short strace -c run per relay and load")
    ap.add_argument("--lb-cpu", default="0")
    ap.add_argument("--gen-cpu", default="1")
    args = ap.parse_args()
    relays = [r for r in args.relays.split(",") if r != "apilb" or args.apilb]
    loads = args.loads.split(",")
    work = Path(tempfile.mkdtemp(prefix="apilb-floor."))
    run = Run(args, work)
    bins = build(work)
    results = {(r, l): [] for r in relays for l in loads}
    try:
        run.backends()
        print(f"# floor: {args.rounds} rounds x {args.seconds}s, uptime: {os.getloadavg()}", flush=True)
        for rnd in range(args.rounds):
            for load in loads:
                for relay in relays:
                    r = run.measure(relay, bins, load)
                    results[(relay, load)].append(r)
                    print(f"round {rnd + 1} {load:9} {relay:7} {json.dumps(r)}", flush=True)
        unit = {"conn": "conn/s", "keepalive": "req/s", "bulk": "Gbit/s"}
        cpu = {"conn": "µs/conn", "keepalive": "µs/req", "bulk": "s/GB"}
        print(f"\n| load | relay | rate | CPU per unit | vs epoll | syscalls per unit | wake-ups per unit "
              f"| load CPU per unit | load avg |")
        print("|---|---|---|---|---|---|---|---|---|")
        for load in loads:
            def med(relay, key):
                return statistics.median(x[key] for x in results[(relay, load)])
            rate = "gbps" if load == "bulk" else "rps"
            for relay in relays:
                print(f"| {load} | {relay} | {med(relay, rate):.3g} {unit[load]} | {med(relay, 'cpu_per_unit'):.3g} "
                      f"{cpu[load]} | {med(relay, 'cpu_per_unit') / med(relays[0], 'cpu_per_unit'):.2f}x | "
                      f"{med(relay, 'calls_per_unit'):.3g} | {med(relay, 'wakeups_per_unit'):.3g} | "
                      f"{med(relay, 'load_cpu_per_unit'):.3g} {cpu[load]} | {os.getloadavg()[0]:.1f} |")
        if args.strace:
            print()
            for load in loads:
                for relay in relays:
                    print(f"strace {load} {relay}: {run.strace(relay, bins, load)}", flush=True)
    finally:
        for p in run.procs:
            run.stop(p)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
