#!/usr/bin/env python3
"""apilb against HAProxy, nginx and a direct connection, interleaved.

Run through tests/bench/run.sh, which installs the tools, builds apilb and
connload, pins this script to the load-generator CPU and calls it.

Every measurement starts fresh processes: the balancer under test (pinned to
the balancer CPU) and the backends (pinned, with every load generator, to the
other CPU). Each round runs every test for every target, the targets in a
rotated order; the table reports medians over the rounds and the ratios of
apilb's medians to the others'.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BACKENDS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
sys.path.insert(0, str(HERE))
from report import (TARGETS, TESTS, engine_table, load_syscall_table, noise_table, round_ratios, syscall_table,  # noqa: E402
                    table, value)
from syscount import SyscallCount, load_per_unit, per_unit  # noqa: E402
# Tests of apilb alone (no counterpart in HAProxy or nginx).
APILB_ONLY = ("instructions", "scrape")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# /proc readings

def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx: master and worker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of the processes (all their threads), in seconds. The
    kernel here has no IRQ time accounting, so softirq work done in a
    process's context (the loopback receive path of its sends) is charged to
    its stime as well."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads)."""
    return sum(cpu_split(pids))


def thread_count(pids: list[int]) -> int:
    """Threads of the processes, all together (nginx: master and workers)."""
    total = 0
    for p in pids:
        try:
            total += len(os.listdir(f"/proc/{p}/task"))
        except OSError:
            pass
    return total


def thread_cpu_ns(pid: int) -> int:
    """CPU time of all the threads of `pid` in nanoseconds (the first field of
    /proc/PID/task/TID/schedstat): finer than the 10 ms ticks of
    /proc/PID/stat, for work that takes a few milliseconds."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_kib(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_jiffies() -> dict[str, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            v = [int(x) for x in vals]
            idle = v[3] + v[4]  # idle + iowait
            out[name] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def busy_percent(before, after, cpu: str) -> float:
    b0, t0 = before[f"cpu{cpu}"]
    b1, t1 = after[f"cpu{cpu}"]
    return 100.0 * (b1 - b0) / max(1, t1 - t0)


# The slab caches a TCP connection's socket, file, inode and epoll entry live
# in. Summing only these keeps other users of the machine (compilers filling
# the dentry cache with other files) mostly out of the figure.
SOCKET_SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq",
                "skbuff_head_cache", "lsm_file_cache", "lsm_inode_cache")


def kernel_mem_kib() -> dict[str, int]:
    """Socket-related slab memory (from /proc/slabinfo, root only; else the
    whole of Slab from /proc/meminfo) and TCP socket buffer memory."""
    out = {}
    try:
        with open("/proc/slabinfo") as f:
            total = 0
            for line in f.readlines()[2:]:
                parts = line.split()
                if parts[0] in SOCKET_SLABS:
                    total += int(parts[2]) * int(parts[3])  # num_objs * objsize
            out["Slab"] = total // 1024
    except OSError:
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                if k == "Slab":
                    out["Slab"] = int(v.split()[0])
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                out["tcp_mem"] = int(parts[parts.index("mem") + 1]) * PAGE // 1024
    return out


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def tcp_counters() -> dict[str, int]:
    """The kernel's TcpExt counters that show a full accept or SYN queue."""
    want = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "SyncookiesSent", "TCPSynRetrans")
    out = {}
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            for k, v in zip(head.split()[1:], vals.split()[1:]):
                if k in want:
                    out[k] = int(v)
    return out


def listening(port: int, addr: str = "127.0.0.1") -> bool:
    want = f"{socket.htonl(int.from_bytes(socket.inet_aton(addr), 'big')):08X}:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and (parts[1] == want or parts[1] == f"00000000:{port:04X}"):
                    return True
    except OSError:
        pass
    return False


def free_port(addrs=("127.0.0.1",), avoid=()) -> int:
    """A port free on every address in `addrs` (and not in `avoid`)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in avoid or port < 20000:
            continue
        ok = True
        for a in addrs:
            try:
                with socket.socket() as s:
                    s.bind((a, port))
            except OSError:
                ok = False
                break
        if ok:
            return port
    raise RuntimeError("no free port found")


# --------------------------------------------------------------------------
# processes

class Procs:
    """Every process this script starts, so that each is ended by its PID."""

    def __init__(self, logdir: Path) -> None:
        self.live: list[subprocess.Popen] = []
        self.logdir = logdir
        self.count = 0

    def start(self, argv: list[str], cpu: str, **kw) -> subprocess.Popen:
        """Starts argv pinned to `cpu`; its stderr goes to a log file (never
        to a pipe nobody reads), named in p.log_path."""
        self.count += 1
        self.logdir.mkdir(parents=True, exist_ok=True)
        path = self.logdir / f"{self.count:04d}-{Path(argv[0]).name}.log"
        kw.setdefault("stdout", subprocess.DEVNULL)
        with open(path, "wb") as err:
            p = subprocess.Popen(["taskset", "-c", cpu, *argv], stderr=err, **kw)
        p.log_path = path
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig=signal.SIGTERM, timeout=10.0) -> None:
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.live:
            self.live.remove(p)

    def stop_all(self) -> None:
        for p in list(self.live):
            self.stop(p, timeout=5)


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        # The configuration being measured: "1", "2", ... workers/threads/
        # processes in all three balancers, or "auto" for each one's shipped
        # default (args.workers lists them).
        self.workers = args.workers[0]
        self.work = Path(args.work)
        self.lb_cpu = args.lb_cpu
        self.gen_cpu = args.gen_cpu
        self.procs = Procs(self.work / "logs")
        self.apilb = args.apilb
        self.connload = args.connload
        self.lb_port = free_port()
        self.http_port = free_port(BACKENDS, avoid={self.lb_port})
        self.https_port = free_port(BACKENDS, avoid={self.lb_port, self.http_port})
        self.iperf_port = free_port(("127.0.0.1", *BACKENDS),
                                    avoid={self.lb_port, self.http_port, self.https_port})
        # samples[workers][test][target]: one dict per measurement.
        # --apilb-io's first engine is target "apilb"; each further one is
        # another target, "apilb-ENGINE", measured in the same rounds.
        self.targets = [*TARGETS, *(f"apilb-{io}" for io in args.apilb_io[1:])]
        self.samples: dict[str, dict[str, dict[str, list[dict]]]] = {
            w: {t: {x: [] for x in self.targets} for t in TESTS} for w in args.workers}
        self.notes: list[str] = []
        self.softirqd = next((int(d) for d in os.listdir("/proc") if d.isdigit() and
                              read_text(f"/proc/{d}/comm").strip() == f"ksoftirqd/{self.lb_cpu}"), None)

    # ---------------------------------------------------------------- setup
    def prepare(self) -> None:
        # nginx's workers run as an unprivileged user and must read www/.
        self.work.chmod(0o755)
        (self.work / "www").mkdir(parents=True, exist_ok=True)
        (self.work / "www" / "64k").write_bytes(os.urandom(65536))
        subprocess.run(["bash", str(HERE.parent / "tools" / "mkcerts.sh"), str(self.work / "certs")], check=True)

    def render(self, template: str, out: str, **vals) -> Path:
        text = (HERE / "conf" / template).read_text()
        vals.setdefault("WORK", str(self.work))
        for k, v in vals.items():
            text = text.replace(f"@{k}@", str(v))
        if "@" in re.sub(r"#.*", "", text):
            leftover = re.findall(r"@[A-Z_]+@", text)
            if leftover:
                raise RuntimeError(f"{template}: unset {leftover}")
        path = self.work / out
        path.write_text(text)
        return path

    def wait_listening(self, port: int, addr: str, proc: subprocess.Popen, what: str, timeout=15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if listening(port, addr):
                return
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode}): {log_tail(proc)}")
            time.sleep(0.02)
        raise RuntimeError(f"{what} is not listening on {addr}:{port} after {timeout}s")

    def start_backend_http(self) -> subprocess.Popen:
        conf = self.render("nginx-backend.conf.in", "nginx-backend.conf",
                           HTTP_PORT=self.http_port, HTTPS_PORT=self.https_port)
        p = self.procs.start(["nginx", "-c", str(conf), "-p", str(self.work), "-e", "stderr"], self.gen_cpu)
        for a in BACKENDS:
            self.wait_listening(self.http_port, a, p, "backend nginx")
            self.wait_listening(self.https_port, a, p, "backend nginx")
        return p

    def start_backend_iperf(self) -> subprocess.Popen:
        # One iperf3 server for all three backend addresses: iperf3's control
        # and data connections must reach the same server process, and
        # round-robin spreads the five connections of `-P 4` over .2/.3/.4.
        # It listens on the wildcard address; only loopback clients use it.
        p = self.procs.start(["iperf3", "-s", "-1", "-B", "0.0.0.0", "-p", str(self.iperf_port)], self.gen_cpu)
        self.wait_listening(self.iperf_port, "0.0.0.0", p, "iperf3 server")
        return p

    def start_balancer(self, target: str, backend_port: int, max_conn=9500, relay=None,
                       wrapper: list[str] | None = None, apilb_extra: str = "") -> subprocess.Popen:
        """`apilb_extra`: YAML appended to apilb's config (further sections)."""
        relay = relay or self.args.apilb_relay
        auto = self.workers == "auto"
        if target == "apilb" or target.startswith("apilb-"):
            io = target.removeprefix("apilb-") if target != "apilb" else self.args.apilb_io[0]
            # 0: one worker per CPU core, as conf/apilb.yaml ships.
            conf = self.render("apilb.yaml.in", "apilb.yaml", LB_PORT=self.lb_port, BACKEND_PORT=backend_port,
                               MAX_CONN=max_conn, RELAY_MODE=relay, RELAY_IO=io,
                               WORKERS="0" if auto else self.workers)
            if apilb_extra:
                conf.write_text(conf.read_text() + apilb_extra)
            argv = [*(wrapper or []), self.apilb, "run", "--config", str(conf)]
        elif target == "haproxy":
            # No nbthread line: HAProxy's default, one thread per CPU it may run on.
            conf = self.render("haproxy.cfg.in", "haproxy.cfg", LB_PORT=self.lb_port, BACKEND_PORT=backend_port,
                               MAX_CONN=max_conn, NBTHREAD="" if auto else f"nbthread {self.workers}")
            argv = ["haproxy", "-f", str(conf)]
        elif target == "nginx":
            conf = self.render("nginx-stream.conf.in", "nginx-lb.conf", LB_PORT=self.lb_port,
                               BACKEND_PORT=backend_port, WORKERS=self.workers)
            argv = ["nginx", "-c", str(conf), "-p", str(self.work), "-e", "stderr"]
        else:
            raise ValueError(target)
        p = self.procs.start(argv, self.lb_cpu)
        self.wait_listening(self.lb_port, "127.0.0.1", p, target, timeout=60 if wrapper else 15)
        time.sleep(0.1)  # nginx: let the worker start after the master bound the socket
        return p

    def front(self, target: str, backend_port: int) -> tuple[str, int]:
        """Where a client connects: the balancer, or the first backend directly."""
        return ("127.0.0.1", self.lb_port) if target != "direct" else (BACKENDS[0], backend_port)

    def run_tool(self, argv: list[str], timeout: float) -> str:
        r = subprocess.run(["taskset", "-c", self.gen_cpu, "timeout", "-k", "2", str(timeout), *argv],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stderr.strip()[:500]} {r.stdout[-500:]}")
        return r.stdout

    def measured(self, target: str, lb: subprocess.Popen | None, fn):
        """Runs fn(), returning its result with the balancer's CPU seconds and
        the busy share of both CPUs over the same window."""
        pids = proc_tree(lb.pid) if lb else []
        softirqd = [self.softirqd] if self.softirqd else []
        syscalls = SyscallCount(self.procs, self.gen_cpu, pids, self.work / "syscalls.csv") \
            if self.args.syscalls and lb else None
        gen_calls = SyscallCount(self.procs, self.gen_cpu, [], self.work / "gen-syscalls.csv",
                                 on_cpu=self.gen_cpu) \
            if self.args.syscalls else None
        n0, (u0, k0), j0, t0 = tcp_counters(), cpu_split(pids), cpu_jiffies(), time.monotonic()
        s0 = cpu_seconds(softirqd)
        perf = None
        if self.args.perf and lb:
            self.perf_runs = getattr(self, "perf_runs", 0) + 1
            data = Path(self.args.perf) / f"perf.{self.current}.{self.perf_runs}.data"
            data.parent.mkdir(parents=True, exist_ok=True)
            perf = self.procs.start(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-g",
                                     "-o", str(data), "-p", ",".join(map(str, pids))], self.gen_cpu)
            time.sleep(0.3)
        res = fn()
        if perf:
            self.procs.stop(perf, sig=signal.SIGINT, timeout=30)
            res["perf_data"] = str(data)
        n1, (u1, k1), j1, t1 = tcp_counters(), cpu_split(pids), cpu_jiffies(), time.monotonic()
        if syscalls:
            res["syscalls"] = syscalls.stop()
        if gen_calls:
            res["gen_syscalls"] = gen_calls.stop()
        c0, c1 = u0 + k0, u1 + k1
        # Network softirq work the kernel deferred to ksoftirqd on the
        # balancer's CPU is not charged to the balancer: shown apart.
        res["softirqd_s"] = cpu_seconds(softirqd) - s0
        res["lb_cpu_s"] = c1 - c0 if lb else None
        res["lb_user_s"] = u1 - u0 if lb else None
        res["lb_sys_s"] = k1 - k0 if lb else None
        res["lb_threads"] = thread_count(pids) if lb else None
        res["lb_cpu_busy_pct"] = busy_percent(j0, j1, self.lb_cpu)
        res["gen_cpu_busy_pct"] = busy_percent(j0, j1, self.gen_cpu)
        res["wall_s"] = t1 - t0
        # What else ran on the balancer's CPU meanwhile (other users of the
        # machine): its busy share less the balancer's own CPU time.
        own = 100.0 * (c1 - c0) / (t1 - t0) if lb else 0.0
        res["foreign_lb_cpu_pct"] = max(0.0, res["lb_cpu_busy_pct"] - own)
        res["tcp"] = {k: n1[k] - n0.get(k, 0) for k in n1}
        return res

    # ---------------------------------------------------------------- tests
    def test_bulk(self, target: str) -> dict:
        srv = self.start_backend_iperf()
        lb = self.start_balancer(target, self.iperf_port) if target != "direct" else None
        host, port = self.front(target, self.iperf_port)
        secs = self.args.seconds

        def go():
            out = self.run_tool(["iperf3", "-c", host, "-p", str(port), "-P", "4", "-t", str(secs), "-J"],
                                timeout=secs + 15)
            j = json.loads(out)
            s = j["end"]["sum_received"]
            return {"gbps": s["bits_per_second"] / 1e9, "bytes": s["bytes"]}

        try:
            r = self.measured(target, lb, go)
        finally:
            if lb:
                self.procs.stop(lb)
            self.procs.stop(srv)
        load_per_unit(r, r["bytes"] / 1e9)
        if lb:
            r["cpu_s_per_gb"] = r["lb_cpu_s"] / (r["bytes"] / 1e9)
            per_unit(r, r["bytes"] / 1e9)
        return r

    def wrk(self, target: str, url_scheme: str, close: bool) -> dict:
        be = self.start_backend_http()
        port = self.https_port if url_scheme == "https" else self.http_port
        lb = self.start_balancer(target, port) if target != "direct" else None
        host, fport = self.front(target, port)
        secs = self.args.seconds
        argv = ["wrk", "-t1", "-c64", f"-d{secs}s", "--latency"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"{url_scheme}://{host}:{fport}/")

        def go():
            out = self.run_tool(argv, timeout=secs + 15)
            return parse_wrk(out)

        try:
            r = self.measured(target, lb, go)
        finally:
            if lb:
                self.procs.stop(lb)
            self.procs.stop(be)
        load_per_unit(r, r["requests"], scale=1e6)
        if lb and r["requests"]:
            r["cpu_us_per_req"] = 1e6 * r["lb_cpu_s"] / r["requests"]
            per_unit(r, r["requests"], scale=1e6)
        return r

    def test_conn_http(self, target: str) -> dict:
        return self.wrk(target, "http", close=True)

    def test_conn_tls(self, target: str) -> dict:
        return self.wrk(target, "https", close=True)

    def test_keepalive(self, target: str) -> dict:
        return self.wrk(target, "http", close=False)

    def test_idle(self, target: str) -> dict:
        be = self.start_backend_http()
        lb = self.start_balancer(target, self.http_port) if target != "direct" else None
        if target == "direct":
            addrs = ",".join(f"{a}:{self.http_port}" for a in BACKENDS)
        else:
            addrs = f"127.0.0.1:{self.lb_port}"
        pids = proc_tree(lb.pid) if lb else []
        time.sleep(0.2)
        r: dict = {"rss0_kib": rss_kib(pids)}
        k0 = kernel_mem_kib()
        holder = self.procs.start([self.connload, "hold", addrs], self.gen_cpu,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            total = 0
            for step in self.args.idle_steps:
                holder.stdin.write(f"open {step - total}\n")
                holder.stdin.flush()
                line = holder.stdout.readline().split()
                if not line or line[0] != "ready":
                    raise RuntimeError(f"connload hold: unexpected {line}")
                alive, failed = int(line[1]), int(line[2])
                total = step
                time.sleep(0.5)  # let the balancer settle after the last request
                rss = rss_kib(pids)
                k = kernel_mem_kib()
                r[f"alive_{step}"] = alive
                r[f"failed_{step}"] = failed
                r[f"rss_{step}_kib"] = rss
                if lb:
                    r[f"rss_per_conn_{step}"] = (rss - r["rss0_kib"]) * 1024 / max(1, alive)
                r[f"kernel_per_conn_{step}"] = {
                    key: (k[key] - k0[key]) * 1024 / max(1, alive) for key in k}
            holder.stdin.write("quit\n")
            holder.stdin.flush()
            holder.wait(timeout=30)
        finally:
            self.procs.stop(holder)
            if lb:
                self.procs.stop(lb)
            self.procs.stop(be)
        return r

    def test_storm(self, target: str) -> dict:
        be = self.start_backend_http()
        lb = self.start_balancer(target, self.http_port) if target != "direct" else None
        if target == "direct":
            addrs = ",".join(f"{a}:{self.http_port}" for a in BACKENDS)
        else:
            addrs = f"127.0.0.1:{self.lb_port}"

        def go():
            out = self.run_tool([self.connload, "storm", addrs, str(self.args.storm), "30"], timeout=45)
            return json.loads(out)

        try:
            r = self.measured(target, lb, go)
        finally:
            if lb:
                self.procs.stop(lb)
            self.procs.stop(be)
        return r

    def scrapes(self, port: int, pid: int, n: int) -> dict:
        """`n` GETs of /metrics on one keep-alive connection, as Prometheus
        scrapes (after 3 unmeasured ones): latency of each, and apilb's CPU
        over all of them (all threads; apilb is otherwise idle: no health
        checks in the bench config, idle sessions)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            def one() -> str:
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                body = resp.read().decode()
                if resp.status != 200:
                    raise RuntimeError(f"GET /metrics: {resp.status} {body[:200]}")
                return body

            for _ in range(3):
                one()
            lat = []
            ns0, t0, j0, w0 = thread_cpu_ns(pid), cpu_seconds([pid]), cpu_jiffies(), time.monotonic()
            for _ in range(n):
                s0 = time.perf_counter()
                body = one()
                lat.append((time.perf_counter() - s0) * 1e3)
            ns1, t1, j1, w1 = thread_cpu_ns(pid), cpu_seconds([pid]), cpu_jiffies(), time.monotonic()
        finally:
            conn.close()
        lat.sort()
        gauge = {m.group(1): float(m.group(2)) for m in
                 re.finditer(r"^(apilb_sessions_active|apilb_process_open_fds) (\S+)$", body, re.M)}
        return {"scrapes": n, "p50_ms": statistics.median(lat), "p90_ms": lat[int(0.9 * (n - 1))],
                "max_ms": lat[-1], "cpu_us_per_scrape": (ns1 - ns0) / 1e3 / n,
                "cpu_us_per_scrape_ticks": (t1 - t0) * 1e6 / n, "bytes": len(body),
                "sessions_active": gauge.get("apilb_sessions_active"),
                "open_fds": gauge.get("apilb_process_open_fds"),
                # Other work on the balancer's CPU meanwhile: the machine is shared.
                "foreign_lb_cpu_pct": max(0.0, busy_percent(j0, j1, self.lb_cpu) - 100.0 * (ns1 - ns0) / 1e9 / (w1 - w0))}

    def test_scrape(self, target: str) -> dict | None:
        """The cost of a /metrics scrape with 0 and with --idle idle sessions
        open (issue 6). apilb counts its descriptors for
        apilb_process_open_fds by listing /proc/self/fd, the one part of a
        scrape that grows with the sessions (two descriptors each)."""
        if target != "apilb":
            return None
        be = self.start_backend_http()
        admin = free_port(avoid={self.lb_port, self.http_port, self.https_port, self.iperf_port})
        lb = self.start_balancer("apilb", self.http_port,
                                 apilb_extra=f'admin: {{address: "127.0.0.1:{admin}"}}\n')
        self.wait_listening(admin, "127.0.0.1", lb, "apilb's admin endpoint")
        holder = self.procs.start([self.connload, "hold", f"127.0.0.1:{self.lb_port}"], self.gen_cpu,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        r: dict = {}
        try:
            total = 0
            for step in [0, *self.args.idle_steps]:
                if step > total:
                    holder.stdin.write(f"open {step - total}\n")
                    holder.stdin.flush()
                    line = holder.stdout.readline().split()
                    if not line or line[0] != "ready":
                        raise RuntimeError(f"connload hold: unexpected {line}")
                    r[f"alive_{step}"], r[f"failed_{step}"] = int(line[1]), int(line[2])
                    total = step
                time.sleep(0.5)  # let the last sessions settle
                s = self.scrapes(admin, lb.pid, self.args.scrapes)
                if step and s["sessions_active"] != r[f"alive_{step}"]:
                    raise RuntimeError(f"apilb_sessions_active {s['sessions_active']}, "
                                       f"connload holds {r[f'alive_{step}']}")
                for k, v in s.items():
                    r[f"scrape_{k}_{step}"] = v
                # The last step's: the scrapes of an empty apilb take a few ms
                # in all, below the 10 ms jiffies this share is counted in.
                r["foreign_lb_cpu_pct"] = s["foreign_lb_cpu_pct"]
            holder.stdin.write("quit\n")
            holder.stdin.flush()
            holder.wait(timeout=30)
        finally:
            self.procs.stop(holder)
            self.procs.stop(lb)
            self.procs.stop(be)
        return r

    def test_instructions(self, target: str) -> dict | None:
        """User-space instructions apilb executes for a fixed workload, under
        callgrind (this machine has no hardware counters for perf stat)."""
        if target != "apilb":
            return None
        be = self.start_backend_http()
        self.instr_runs = getattr(self, "instr_runs", 0) + 1
        (self.work / "logs").mkdir(exist_ok=True)

        def wrapper(name: str) -> list[str]:
            return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.work / 'logs' / name}",
                    "--dump-instr=no", "--dump-line=no"]

        def total_ir(name: str) -> int:
            m = re.search(r"^(?:summary|totals):\s*(\d+)", (self.work / "logs" / name).read_text(), re.M)
            return int(m.group(1)) if m else 0

        # Start-up and shut-down alone, to subtract.
        base_name = f"callgrind.base.{self.instr_runs}"
        lb = self.start_balancer("apilb", self.http_port, wrapper=wrapper(base_name))
        self.procs.stop(lb, sig=signal.SIGTERM, timeout=60)
        base = total_ir(base_name)
        name = f"callgrind.out.{self.instr_runs}"
        lb = self.start_balancer("apilb", self.http_port, wrapper=wrapper(name))
        n, c = self.args.instr_conns, 50
        try:
            t0 = time.monotonic()
            res = self.run_tool(["h2load", "--h1", "-n", str(n), "-c", str(c), "-H", "Connection: close",
                                 f"http://127.0.0.1:{self.lb_port}/64k"], timeout=180)
            elapsed = time.monotonic() - t0
            summary = next((l for l in res.splitlines() if l.startswith("requests:")), res[-300:])
            m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", res)
            ok = int(m.group(2)) if m else 0
            m = re.search(r"traffic: .*?\((\d+)\) total", res)
            traffic = int(m.group(1)) if m else 0
        finally:
            self.procs.stop(lb, sig=signal.SIGTERM, timeout=60)
            self.procs.stop(be)
        if ok != n:
            raise RuntimeError(f"h2load: {summary}")
        ir = total_ir(name)
        return {"ir": ir, "ir_startup": base, "ir_per_conn": (ir - base) / max(1, ok), "succeeded": ok,
                "bytes_to_client": traffic,
                "wall_s": elapsed, "h2load": summary}

    # ---------------------------------------------------------------- driver
    def run(self) -> None:
        """Every round measures every configuration of --workers in turn, so
        that the configurations meet the same background load."""
        for rnd in range(self.args.rounds):
            n = len(self.targets)
            order = self.targets[rnd % n:] + self.targets[:rnd % n]
            for workers in self.args.workers:
                self.workers = workers
                log(f"round {rnd + 1}/{self.args.rounds}, workers {workers}: order {', '.join(order)}; "
                    f"load average {open('/proc/loadavg').read().split()[0]}")
                self.run_round(rnd, order, self.samples[workers])

    def run_round(self, rnd: int, order: list[str], samples: dict[str, dict[str, list[dict]]]) -> None:
        for test in self.args.tests:
            for target in order:
                if test in APILB_ONLY and target != "apilb":
                    continue
                fn = getattr(self, f"test_{test}")
                self.current = f"{test}.{target}.w{self.workers}"
                t0 = time.monotonic()
                try:
                    r = fn(target)
                except Exception as e:  # one failed measurement must not lose the others
                    log(f"  {test} {target}: FAILED: {e}")
                    self.notes.append(f"round {rnd + 1}, workers {self.workers}: {test} {target} failed: {e}")
                    self.procs.stop_all()
                    continue
                if r is None:
                    continue
                r["round"] = rnd + 1
                samples[test][target].append(r)
                log(f"  {test:12s} {target:8s} {short(test, r)}  ({time.monotonic() - t0:.1f}s)")


def log_tail(p: subprocess.Popen, n: int = 800) -> str:
    try:
        return p.log_path.read_text(errors="replace")[-n:].strip()
    except (AttributeError, OSError):
        return ""


def parse_wrk(out: str) -> dict:
    def unit(v: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s|m)?", v)
        n = float(m.group(1))
        return n * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, None: 1.0}[m.group(2)]

    r = {"rps": float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1)),
         "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s*{pct}%\s+(\S+)", out, re.M)
        r[f"p{pct}_ms"] = unit(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    return r


def short(test: str, r: dict) -> str:
    keys = {"bulk": ("gbps", "cpu_s_per_gb"), "conn_http": ("rps", "cpu_us_per_req"),
            "conn_tls": ("rps", "cpu_us_per_req"), "keepalive": ("rps", "p50_ms", "p99_ms", "cpu_us_per_req"),
            "idle": ("rss_per_conn_5000", "rss_per_conn_9000", "failed_9000"),
            "storm": ("complete_ms", "p99_ms", "failed", "listen_overflows"), "instructions": ("ir", "ir_per_conn", "succeeded")}
    parts = []
    if test == "idle":
        keys = {"idle": tuple(k for k in r if k.startswith(("rss_per_conn_", "failed_")))}
    if test == "scrape":
        keys = {"scrape": tuple(k for k in r if k.startswith(("scrape_p50_ms_", "scrape_cpu_us_per_scrape_",
                                                              "scrape_open_fds_")))}
    for k in keys[test]:
        v = value(r, k)
        if v is not None:
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    for k in ("socket_errors", "non2xx"):
        if r.get(k):
            parts.append(f"{k}={r[k]}!")
    if r.get("syscalls"):
        parts.append(f"syscalls={r['syscalls'].get('total', 0)}")
    if r.get("lb_threads"):
        parts.append(f"threads={r['lb_threads']}")
    if "lb_cpu_busy_pct" in r:
        parts.append(f"cpu{{lb={r['lb_cpu_busy_pct']:.0f}% foreign={r['foreign_lb_cpu_pct']:.0f}% "
                     f"gen={r['gen_cpu_busy_pct']:.0f}%}}")
    return " ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--apilb", required=True)
    ap.add_argument("--connload", required=True)
    ap.add_argument("--work", required=True, help="scratch directory (configs, certificates, logs)")
    ap.add_argument("--out", required=True, help="directory for results.json and results.md")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3, help="duration of each iperf3 and wrk run")
    ap.add_argument("--tests", default=",".join(TESTS))
    ap.add_argument("--storm", type=int, default=5000)
    ap.add_argument("--idle", default="5000,9000")
    ap.add_argument("--instr-conns", type=int, default=2000)
    ap.add_argument("--scrapes", type=int, default=50, help="GET /metrics per step of the scrape test")
    ap.add_argument("--perf", metavar="DIR",
                    help="record a perf profile (cpu-clock, call graphs) of the balancer during each "
                         "measured run into DIR/perf.TEST.TARGET.N.data")
    ap.add_argument("--apilb-relay", choices=("splice", "copy"), default="splice",
                    help="apilb's relay.mode (default splice, apilb's default)")
    ap.add_argument("--apilb-io", default="epoll",
                    help="apilb's relay.io (default epoll, apilb's default); a list such as epoll,io_uring "
                         "measures apilb once per engine in the same rounds: the first is the tables' apilb, "
                         "each further one gets the same tables and a round-by-round comparison")
    ap.add_argument("--workers", default="auto,1,2",
                    help="configurations to measure, in this order: N = N workers (apilb), threads (HAProxy "
                         "nbthread) and worker processes (nginx) each; auto = each one's shipped default "
                         "(apilb workers: 0, HAProxy without nbthread, nginx worker_processes auto)")
    ap.add_argument("--syscalls", action="store_true",
                    help="count the balancer's system calls (perf stat on the syscalls tracepoints) in each "
                         "measured run and report them per unit of work (slows the balancer a little), and "
                         "those of everything on the load CPU (load generator and backends), direct included")
    ap.add_argument("--lb-cpu", default="0")
    ap.add_argument("--gen-cpu", default="1")
    args = ap.parse_args()
    args.tests = [t for t in args.tests.split(",") if t]
    for t in args.tests:
        if t not in TESTS:
            ap.error(f"unknown test {t}; known: {', '.join(TESTS)}")
    args.apilb_io = [x for x in args.apilb_io.split(",") if x]
    if not args.apilb_io or len(set(args.apilb_io)) != len(args.apilb_io) or \
            any(x not in ("epoll", "io_uring", "auto") for x in args.apilb_io):
        ap.error(f"--apilb-io: {','.join(args.apilb_io)}: want distinct engines of epoll, io_uring, auto")
    args.idle_steps = [int(x) for x in args.idle.split(",")]
    args.workers = [w for w in args.workers.split(",") if w]
    for w in args.workers:
        if w != "auto" and not (w.isdigit() and 1 <= int(w) <= 64):
            ap.error(f"--workers: {w} is neither auto nor a count 1..64")

    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    try:
        bench.prepare()
        log(f"ports: balancer 127.0.0.1:{bench.lb_port}, backends http {bench.http_port}, "
            f"https {bench.https_port}, iperf3 {bench.iperf_port}; balancer on CPU {args.lb_cpu}, "
            f"load generators and backends on CPU {args.gen_cpu}")
        bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.procs.stop_all()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    elapsed = time.monotonic() - started
    md = [f"{args.rounds} rounds, medians; configurations {', '.join(args.workers)}; {elapsed:.0f} s in all."]
    for w in args.workers:
        samples = bench.samples[w]
        rows, goals = table(samples)
        title = ("shipped defaults: apilb `workers: 0` (one per CPU core), HAProxy without `nbthread`, "
                 "nginx `worker_processes auto`") if w == "auto" else f"{w} worker(s)/thread(s) each"
        md += ["", f"## workers {w}: {title}", "", rows, "",
               "| Target | wanted | apilb |", "|---|---|---|", *goals, "", round_ratios(samples), "",
               noise_table(samples)]
        if args.syscalls:
            md += ["", syscall_table(samples), "", load_syscall_table(samples)]
        for io in args.apilb_io[1:]:
            # The same tables with this engine's apilb in apilb's place.
            alt = {t: {**by_target, "apilb": by_target[f"apilb-{io}"]} for t, by_target in samples.items()}
            rows, goals = table(alt)
            md += ["", f"### workers {w}, apilb with relay.io: {io} (the first engine: {args.apilb_io[0]})", "",
                   rows, "", "| Target | wanted | apilb |", "|---|---|---|", *goals, "", round_ratios(alt), "",
                   engine_table(samples, args.apilb_io[0], io)]
            if args.syscalls:
                md += ["", syscall_table(alt), "", load_syscall_table(alt)]
    if bench.notes:
        md += ["", "Failed measurements:", *[f"- {n}" for n in bench.notes]]
    (out / "results.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(
        {"rounds": args.rounds, "seconds": args.seconds, "elapsed_s": elapsed, "workers": args.workers,
         "samples": bench.samples,
         "notes": bench.notes}, indent=1))
    print("\n".join(md))
    return 1 if bench.notes else 0


if __name__ == "__main__":
    sys.exit(main())
