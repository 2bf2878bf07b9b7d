#!/usr/bin/env python3
"""soakload: the soak and the reload storm of issue 15 (scripts/soak.sh,
scripts/reload-storm.sh). Not part of the test suite.

Starts the real apilb in front of four stand-in apiservers (tests/standin,
real TLS, b1..b4 on 127.0.0.2-5) and drives a mixed load through it over
TLS, verified against the test CA, on loopback only:

  keepalive  connections doing GET /version back to back, each closed cleanly
             after a bounded number of requests or seconds, then reopened
  newconn    one TLS connection per GET /version (Connection: close)
  watch      GET /watch?events=N&interval_ms=I: every event must arrive, in
             order, and the watch must end with the last chunk
  bulk       POST /echo of 64 KiB..1 MiB: the sha256 of what came back must
             equal the sha256 of what was sent
  direct     keep-alive and new-connection requests straight to b1, not
             through apilb: the latency control (what the machine does)

while it reloads apilb (POST /api/v1/reload with the admin token, every
tenth through `apilb reload`), cycling through configs that remove, add back
and reorder backends and switch the balance policy, and (soak) restarts one
backend at a time with SIGKILL or SIGTERM.

Each response names its backend (X-Standin-Name), so a broken session is
excused only when the schedule asked for it:
  backend_restart  its backend was killed while the session was open
  reload_removed   a reload removed its backend while it was open, and the
                   session ended with a reset (apilb's close after
                   timeouts.reload_drain); a clean EOF here is a defect
  restart_window   the session broke before its first response (so its
                   backend is unknown) while a backend was down (from 1 s
                   before the kill to 2 s after it listened again)
Anything else is a failure. A corrupted or missing byte is never excused.

Python asyncio rather than C++: the load is there to cycle sessions through
reloads and restarts for a long time, not to measure throughput; a few
hundred requests per second over real TLS are plenty and cost one core's
fraction, and the checks (sha256, event order, excuse rules) read better
here. Every loop is bounded in count and time; every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from soakreport import pct, sanitizer_findings, summary, verdict

BACKENDS = ["b1", "b2", "b3", "b4"]

# The reload cycle. b1 and b2 are never removed, so their sessions must never
# break because of a reload; b3 and b4 are removed in turn and added back (as
# new backends: the old one's sessions are closed after reload_drain, the new
# one's must live on). Every reload switches the balance policy.
CONFIG_CYCLE = [
    (["b1", "b2", "b3", "b4"], "least-connections"),
    (["b2", "b1", "b4"], "round-robin"),               # b3 removed, reordered
    (["b4", "b3", "b2", "b1"], "least-connections"),   # b3 added back, reversed
    (["b3", "b4", "b1", "b2"], "round-robin"),         # reordered
    (["b1", "b2", "b3"], "least-connections"),         # b4 removed
    (["b1", "b4", "b2", "b3"], "round-robin"),         # b4 added back
    (["b2", "b3", "b4", "b1"], "least-connections"),   # reordered
    (["b4", "b1", "b3", "b2"], "round-robin"),         # reordered
]


def now() -> float:
    return time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class Corrupt(Exception):
    """Bytes that differ from what the backend sent: never excused."""


class Protocol(Exception):
    """An answer that is not what the stand-in sends (bad status, framing)."""


def classify(e: BaseException) -> str:
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(e, (asyncio.IncompleteReadError, EOFError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "eof"
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ssl.SSLError):
        return "tls:" + (e.reason or str(e))
    if isinstance(e, Protocol):
        return "protocol:" + str(e)
    if isinstance(e, OSError):
        return f"os:{e.errno}"
    return type(e).__name__


# ---------------------------------------------------------------------------
# Processes


class Backend:
    """One stand-in apiserver; restarted on the same ip:port it first got."""

    def __init__(self, name: str, ip: str, exe: str, certs: Path, work: Path) -> None:
        self.name, self.ip, self.exe, self.certs, self.work = name, ip, exe, certs, work
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    async def start(self) -> None:
        logf = self.work / f"standin-{self.name}.log"
        for attempt in range(20):
            with open(logf, "ab") as out:
                out.write(f"--- start {self.starts + 1}\n".encode())
                out.flush()
                self.proc = subprocess.Popen(
                    [self.exe, "--listen", f"{self.ip}:{self.port}", "--cert", str(self.certs / "server.crt"),
                     "--key", str(self.certs / "server.key"), "--name", self.name],
                    stdout=out, stderr=out, stdin=subprocess.DEVNULL)
            deadline = now() + 10
            while now() < deadline and self.proc.poll() is None:
                m = re.findall(rb"listening on [0-9.]+:(\d+)", logf.read_bytes())
                if len(m) > self.starts:
                    self.port = int(m[-1])
                    self.starts += 1
                    return
                await asyncio.sleep(0.02)
            self.proc.kill()
            self.proc.wait()
            await asyncio.sleep(0.2 * (attempt + 1))  # the port may still be held a moment
        raise RuntimeError(f"stand-in {self.name} did not start (see {logf})")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


class Apilb:
    """The real apilb binary, its config file and its admin endpoint."""

    def __init__(self, exe: str, work: Path, certs: Path, backends: dict[str, Backend], reload_drain: str) -> None:
        self.exe, self.work, self.certs, self.backends = exe, work, certs, backends
        self.reload_drain = reload_drain
        self.port = free_port()
        self.admin_port = free_port()
        self.config = work / "apilb.yaml"
        self.token_file = work / "admin-token"
        self.proc: subprocess.Popen | None = None
        self.token = ""

    def render(self, names: list[str], balance: str) -> str:
        backends = "".join(f'      - {{name: {n}, address: "{self.backends[n].address}"}}\n' for n in names)
        return (
            "workers: 2\n"
            f'listeners:\n  - {{name: front, address: "127.0.0.1:{self.port}", pool: p}}\n'
            f"pools:\n  - name: p\n    balance: {balance}\n    backends:\n{backends}"
            # Probes tolerant of a loaded machine (timeout 3 s, fall 2): a
            # live backend must not be declared down, which would close its
            # sessions unasked.
            "    health:\n      interval: 1s\n      timeout: 3s\n      rise: 2\n      fall: 2\n"
            f"      tls: {{ca_file: {self.certs / 'ca.crt'}}}\n"
            f"timeouts: {{reload_drain: {self.reload_drain}}}\n"
            f'admin: {{address: "127.0.0.1:{self.admin_port}", token_file: {self.token_file}}}\n'
            "log: {level: info}\n")

    def write_config(self, names: list[str], balance: str) -> None:
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(self.render(names, balance))
        os.replace(tmp, self.config)

    async def start(self) -> None:
        out = open(self.work / "apilb.log", "ab")
        self.proc = subprocess.Popen([self.exe, "run", "--config", str(self.config)], stdout=out, stderr=out,
                                     stdin=subprocess.DEVNULL)
        out.close()
        deadline = now() + 20
        while now() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"apilb exited with {self.proc.returncode} (see {self.work / 'apilb.log'})")
            if self.token_file.exists() and (await self.admin("GET", "/readyz"))[0] == 200:
                self.token = self.token_file.read_text().strip()
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("apilb did not become ready in 20 s")

    async def admin(self, method: str, path: str, token: str = "", timeout: float = 10) -> tuple[int, str]:
        """One request to the admin endpoint on a fresh connection; (0, why) if none came."""
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.admin_port), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            return 0, classify(e)
        try:
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            w.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\n"
                    "Connection: close\r\n\r\n".encode())
            data = await asyncio.wait_for(r.read(1 << 20), timeout)
            while True:
                more = await asyncio.wait_for(r.read(1 << 20), timeout)
                if not more:
                    break
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            return int(head.split()[1]), body.decode(errors="replace")
        except (OSError, asyncio.TimeoutError, ValueError, IndexError) as e:
            return 0, classify(e)
        finally:
            w.close()

    def proc_sample(self) -> dict:
        pid = self.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
        fds = pipes = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            fds += 1
            pipes += target.startswith("pipe:")
        # Pipes are counted apart: each worker keeps up to 64 idle splice
        # pipes for reuse (relay.hpp pipe_pool), a bounded cache, not a leak.
        return {"rss_kib": rss, "threads": threads, "fds": fds, "pipe_fds": pipes}

    async def gauge(self, name: str) -> float | None:
        code, body = await self.admin("GET", "/metrics")
        m = re.search(rf"^{name} (\S+)$", body, re.M) if code == 200 else None
        return float(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# What happened and what was asked for


@dataclass
class Event:
    name: str
    start: float        # restart: the kill was sent; removal: the reload was sent
    end: float | None   # restart: listening again; removal: the reload answered


@dataclass
class Conn:
    """One client connection: when it started, and the backend its last answer named."""
    started: float
    backend: str | None = None


@dataclass
class Stats:
    ok: dict = field(default_factory=lambda: {"keepalive": 0, "newconn": 0, "watch_events": 0, "watches": 0,
                                              "bulk": 0, "direct": 0, "direct_newconn": 0})
    bytes_checked: int = 0
    corrupt: list = field(default_factory=list)
    failures: list = field(default_factory=list)          # unexcused: (t, kind, backend, class, detail)
    excused: dict = field(default_factory=dict)           # reason -> count
    excused_by_backend: dict = field(default_factory=dict)
    latencies: list = field(default_factory=list)         # (t, kind, seconds)
    reloads_ok: int = 0
    reloads_failed: list = field(default_factory=list)
    restarts: list = field(default_factory=list)
    removals: list = field(default_factory=list)
    sessions: int = 0
    latency: dict = field(default_factory=dict)           # kind -> (p50 first, p99 first, p50 last, p99 last)
    reloads_from: float = 0.0                             # the first reload was sent
    reloads_until: float = 0.0                            # the last one answered


class Load:
    def __init__(self, args, lb: Apilb, stats: Stats, end: float) -> None:
        self.args, self.lb, self.stats, self.end = args, lb, stats, end
        self.ctx = ssl.create_default_context(cafile=str(lb.certs / "ca.crt"))
        self.ctx.check_hostname = False  # the certificate names 127.0.0.1-9; we dial 127.0.0.1 through apilb
        self.blob = os.urandom(2 << 20)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", args.reload_drain)
        if not m:
            raise SystemExit(f"soakload: --reload-drain: want e.g. 2s or 500ms, got {args.reload_drain!r}")
        self.drain_s = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)

    # -- excuses --------------------------------------------------------

    def excuse(self, backend: str | None, t0: float, t1: float, cls: str) -> str | None:
        s = self.stats
        if backend:
            for r in s.restarts:
                if r.name == backend and t0 - 1 <= r.start <= t1:
                    return "backend_restart"
            for r in s.removals:
                # Until the reload has answered (plus the workers' apply), a new
                # session may still have gone to the removed backend; apilb
                # closes it reload_drain after the reload, never sooner.
                if (r.name == backend and r.start + self.drain_s - 0.5 <= t1 and
                        t0 <= (r.end or t1) + 0.5):
                    return "reload_removed" if cls == "reset" else None
            return None
        for r in s.restarts:
            if r.start - 1 <= t1 and t0 <= (r.end if r.end is not None else t1) + 2:
                return "restart_window"
        return None

    def fail(self, kind: str, backend: str | None, t0: float, e: BaseException) -> None:
        t1 = now()
        cls = classify(e)
        if isinstance(e, Corrupt):
            self.stats.corrupt.append((round(t1 - self.args.t_start, 1), kind, backend, str(e)))
            log(f"CORRUPT {kind} on {backend}: {e}")
            return
        why = self.excuse(backend, t0, t1, cls)
        if why:
            self.stats.excused[why] = self.stats.excused.get(why, 0) + 1
            key = f"{backend or '?'}:{cls}"
            self.stats.excused_by_backend[key] = self.stats.excused_by_backend.get(key, 0) + 1
            return
        self.stats.failures.append((round(t1 - self.args.t_start, 1), kind, backend, cls, repr(e)[:200]))
        log(f"FAILED {kind} on {backend or 'unknown backend'} after {t1 - t0:.1f}s: {cls} {e!r}"[:300])

    # -- HTTP over TLS ----------------------------------------------------

    async def connect(self, address: tuple[str, int] | None = None):
        """A TLS connection to apilb's listener, or to `address` (the control)."""
        self.stats.sessions += 1
        host, port = address or ("127.0.0.1", self.lb.port)
        return await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=self.ctx, server_hostname="127.0.0.1",
                                    ssl_handshake_timeout=10), 10)

    @staticmethod
    async def close(w) -> None:
        w.close()
        try:
            await asyncio.wait_for(w.wait_closed(), 2)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass

    @staticmethod
    async def read_head(r, timeout: float) -> tuple[int, dict]:
        raw = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
        lines = raw.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            raise Protocol(f"bad status line {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        return status, headers

    async def exchange(self, r, w, req: bytes, timeout: float) -> tuple[str, bytes]:
        """Sends one request, reads one Content-Length response; returns (backend, body)."""
        w.write(req)
        await asyncio.wait_for(w.drain(), timeout)
        status, h = await self.read_head(r, timeout)
        body = await asyncio.wait_for(r.readexactly(int(h.get("content-length", "0"))), timeout)
        if status != 200:
            raise Protocol(f"HTTP {status}")
        return h.get("x-standin-name", "?"), body

    VERSION = b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    VERSION_CLOSE = b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

    @staticmethod
    def check_version(body: bytes) -> None:
        if b'"gitVersion":"v1.32.0-apilb-standin"' not in body:
            raise Corrupt(f"/version body {body[:80]!r}")

    # -- the load loops (each bounded by self.end and its own counts) -------

    async def sessions(self, kind: str, serve, pause: float = 0.0, retry_pause: float = 0.1,
                       address: tuple[str, int] | None = None) -> None:
        """The one connection loop: opens a TLS connection through apilb and
        runs `serve(r, w, conn)` on it until self.end; every failure goes to
        fail() with the backend the connection was last seen on (conn.backend)."""
        while now() < self.end:
            conn = Conn(started=now())
            try:
                r, w = await self.connect(address)
                try:
                    await serve(r, w, conn)
                finally:
                    await self.close(w)
            except Exception as e:  # noqa: BLE001 - every failure is judged by fail()
                self.fail(kind, conn.backend, conn.started, e)
                await asyncio.sleep(retry_pause)
            await asyncio.sleep(pause)

    async def keepalive(self, pause: float, kind: str = "keepalive", backend: Backend | None = None) -> None:
        """Keep-alive requests through apilb; with `backend`, straight to it
        (kind "direct"): the control, whose latency shows what the machine
        itself does to a request while apilb reloads."""
        async def serve(r, w, conn):
            # A connection lives at most 500 requests or 60 s.
            t0 = now()
            for _ in range(500):
                if now() >= min(self.end, t0 + 60):
                    break
                ts = now()
                conn.backend, body = await self.exchange(r, w, self.VERSION, 10)
                self.stats.latencies.append((ts, kind, now() - ts))
                self.check_version(body)
                self.stats.ok[kind] += 1
                await asyncio.sleep(pause)
        await self.sessions(kind, serve, address=(backend.ip, backend.port) if backend else None)

    async def newconn(self, pause: float, kind: str = "newconn", backend: Backend | None = None) -> None:
        """One TLS connection per request through apilb; with `backend`,
        straight to it (kind "direct_newconn", the control)."""
        async def serve(r, w, conn):
            # From before the TCP connect: connect, TLS handshake, request.
            conn.backend, body = await self.exchange(r, w, self.VERSION_CLOSE, 10)
            self.stats.latencies.append((conn.started, kind, now() - conn.started))
            self.check_version(body)
            self.stats.ok[kind] += 1
        await self.sessions(kind, serve, pause=pause, retry_pause=0,
                            address=(backend.ip, backend.port) if backend else None)

    async def watch(self, events: int, interval_ms: int, stagger: float) -> None:
        async def serve(r, w, conn):
            w.write(f"GET /watch?events={events}&interval_ms={interval_ms} HTTP/1.1\r\n"
                    "Host: 127.0.0.1\r\n\r\n".encode())
            status, h = await self.read_head(r, 10)
            conn.backend = h.get("x-standin-name", "?")
            if status != 200 or h.get("transfer-encoding") != "chunked":
                raise Protocol(f"watch answered {status} {h.get('transfer-encoding')}")
            gap = interval_ms / 1000 + 10
            for i in range(1, events + 2):
                size_line = await asyncio.wait_for(r.readuntil(b"\r\n"), gap)
                size = int(size_line.split(b";")[0], 16)
                chunk = await asyncio.wait_for(r.readexactly(size + 2), gap)
                if size == 0:
                    if i != events + 1:
                        raise Corrupt(f"watch ended after {i - 1} of {events} events")
                    break
                want = f'"resourceVersion":"{i}"'.encode()
                if want not in chunk or not chunk.endswith(b"}}\n\r\n"):
                    raise Corrupt(f"watch event {i}: {chunk[:120]!r}")
                self.stats.ok["watch_events"] += 1
                self.stats.bytes_checked += size
            self.stats.ok["watches"] += 1
        await asyncio.sleep(stagger)
        await self.sessions("watch", serve, retry_pause=0.2)

    async def bulk(self, pause: float) -> None:
        rng = random.Random()

        async def serve(r, w, conn):
            for _ in range(20):  # a connection carries at most 20 transfers
                if now() >= self.end:
                    break
                n = rng.randrange(64 << 10, (1 << 20) + 1)
                off = rng.randrange(0, len(self.blob) - n)
                body = self.blob[off:off + n]
                req = (f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {n}\r\n"
                       "Content-Type: application/octet-stream\r\n\r\n").encode() + body
                conn.backend, got = await self.exchange(r, w, req, 30)
                if hashlib.sha256(got).digest() != hashlib.sha256(body).digest():
                    raise Corrupt(f"echo of {n} bytes came back as {len(got)} bytes with another sha256")
                self.stats.bytes_checked += 2 * n
                self.stats.ok["bulk"] += 1
                await asyncio.sleep(pause)
        await self.sessions("bulk", serve, retry_pause=0.2)

    # -- what the schedule does -------------------------------------------

    async def reload_once(self, i: int) -> None:
        names, balance = CONFIG_CYCLE[i % len(CONFIG_CYCLE)]
        prev = CONFIG_CYCLE[(i - 1) % len(CONFIG_CYCLE)][0]
        removed = [n for n in prev if n not in names]
        self.lb.write_config(names, balance)
        t = now()
        events = [Event(n, t, None) for n in removed]
        self.stats.removals.extend(events)
        if i % 10 == 9:
            p = await asyncio.create_subprocess_exec(
                self.lb.exe, "reload", "--config", str(self.lb.config),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                out, _ = await asyncio.wait_for(p.communicate(), 20)
                ok, detail = p.returncode == 0, out.decode(errors="replace").strip()
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()
                ok, detail = False, "apilb reload took over 20 s"
        else:
            code, body = await self.lb.admin("POST", "/api/v1/reload", self.lb.token, timeout=20)
            ok, detail = code == 200, f"HTTP {code} {body[:200]}"
        for e in events:
            e.end = now()
        if ok:
            self.stats.reloads_ok += 1
            self.stats.reloads_until = now()
        else:
            self.stats.reloads_failed.append((i, detail))
            log(f"reload {i} FAILED: {detail}")

    async def reloader(self, count: int | None, period: float, delay: float) -> None:
        await asyncio.sleep(delay)
        self.stats.reloads_from = now()
        i = 1  # CONFIG_CYCLE[0] is the config apilb started with
        while now() < self.end and (count is None or i <= count):
            await self.reload_once(i)
            i += 1
            await asyncio.sleep(period)

    async def restarter(self, period: float, backends: dict[str, Backend]) -> None:
        i = 0
        while now() + period < self.end:
            await asyncio.sleep(period)
            b = backends[BACKENDS[i % len(BACKENDS)]]
            sig = signal.SIGKILL if i % 2 == 0 else signal.SIGTERM
            ev = Event(b.name, now(), None)
            self.stats.restarts.append(ev)
            await asyncio.get_running_loop().run_in_executor(None, b.stop, sig)
            await asyncio.sleep(2)
            await b.start()
            ev.end = now()
            log(f"restarted {b.name} ({signal.Signals(sig).name}, down {ev.end - ev.start:.1f}s)")
            i += 1


# ---------------------------------------------------------------------------
# Sampling and the verdict


async def sampler(args, lb: Apilb, load: Load, rows: list[dict]) -> None:
    stats = load.stats
    last_t, last_i = now(), 0
    while now() < load.end:
        await asyncio.sleep(min(args.sample, max(0.0, load.end - now())))
        t = now()
        window = [x for x in stats.latencies[last_i:] if x[0] >= last_t]
        last_i, last_t = len(stats.latencies), t
        ka = [x[2] * 1000 for x in window if x[1] == "keepalive"]
        nc = [x[2] * 1000 for x in window if x[1] == "newconn"]
        row = {"t_s": round(t - args.t_start, 1), **lb.proc_sample(),
               "sessions_active": await lb.gauge("apilb_sessions_active"),
               "requests": sum(stats.ok[k] for k in ("keepalive", "newconn", "bulk")),
               "window_keepalive": len(ka),
               "keepalive_p50_ms": round(pct(ka, 50), 2), "keepalive_p99_ms": round(pct(ka, 99), 2),
               "newconn_p50_ms": round(pct(nc, 50), 2), "newconn_p99_ms": round(pct(nc, 99), 2),
               "bytes_checked": stats.bytes_checked, "watch_events": stats.ok["watch_events"],
               "corrupt": len(stats.corrupt), "failed": len(stats.failures),
               "excused": sum(stats.excused.values()), "reloads": stats.reloads_ok,
               "restarts": len(stats.restarts)}
        rows.append(row)
        if args.verbose or len(rows) % max(1, int(60 / args.sample)) == 0:
            log(f"t={row['t_s']}s rss={row['rss_kib']}KiB fds={row['fds']} threads={row['threads']} "
                f"sessions={row['sessions_active']} requests={row['requests']} "
                f"p50/p99={row['keepalive_p50_ms']}/{row['keepalive_p99_ms']}ms reloads={row['reloads']} "
                f"failed={row['failed']} excused={row['excused']} corrupt={row['corrupt']}")


# ---------------------------------------------------------------------------


async def main_async(args) -> int:
    work = Path(args.work)
    certs = work / "certs"
    subprocess.run(["bash", str(Path(__file__).with_name("mkcerts.sh")), str(certs)], check=True)
    backends = {n: Backend(n, f"127.0.0.{i + 2}", args.standin, certs, work) for i, n in enumerate(BACKENDS)}
    lb = Apilb(args.apilb, work, certs, backends, args.reload_drain)
    running: list[asyncio.Future] = []
    try:
        for b in backends.values():
            await b.start()
        lb.write_config(*CONFIG_CYCLE[0])
        await lb.start()
        args.apilb_pid = lb.proc.pid
        await asyncio.sleep(3)  # first probes
        idle = lb.proc_sample()
        log(f"apilb pid {lb.proc.pid} on 127.0.0.1:{lb.port}, admin :{lb.admin_port}; idle {idle}")

        args.t_start = now()
        stats = Stats()
        load = Load(args, lb, stats, args.t_start + args.seconds)
        rows: list[dict] = []
        tasks = [load.keepalive(args.keepalive_pause) for _ in range(args.keepalive)]
        tasks += [load.newconn(args.newconn_pause) for _ in range(args.newconn)]
        tasks += [load.watch(args.watch_events, args.watch_interval_ms, i * args.watch_interval_ms / 1000 / max(1, args.watches))
                  for i in range(args.watches)]
        tasks += [load.bulk(args.bulk_pause) for _ in range(args.bulk)]
        tasks += [load.keepalive(args.keepalive_pause, "direct", backends["b1"]) for _ in range(args.direct)]
        tasks += [load.newconn(args.newconn_pause, "direct_newconn", backends["b1"]) for _ in range(args.direct)]
        if args.restart_period:
            tasks.append(load.restarter(args.restart_period, backends))
        tasks.append(sampler(args, lb, load, rows))
        running += [asyncio.ensure_future(t) for t in tasks]
        if args.reloads or args.reload_period:
            reloader = asyncio.ensure_future(load.reloader(args.reloads or None, args.reload_period,
                                                           args.reload_delay))
            running.append(reloader)
            if args.reloads:
                # The storm ends when its reloads are done (or at the time limit).
                await asyncio.wait([reloader], timeout=args.seconds)
                load.end = min(load.end, now())
        # Loops stop at load.end; an operation under way gets 15 s more, then
        # is cancelled (not counted either way).
        done, pending = await asyncio.wait(running, timeout=max(0, load.end - now()) + 15)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception():
                raise t.exception()
        elapsed = now() - args.t_start
        if lb.proc.poll() is not None:
            raise RuntimeError(f"apilb exited with {lb.proc.returncode} during the run")
        # Every session must close and the descriptors return once the load stops.
        deadline = now() + args.settle
        after: dict = {}
        while now() < deadline:
            after = {**lb.proc_sample(), "sessions_active": await lb.gauge("apilb_sessions_active")}
            if after["sessions_active"] == 0 and after["fds"] - after["pipe_fds"] <= idle["fds"] - idle["pipe_fds"] + 4:
                break
            await asyncio.sleep(0.5)
        with open(args.csv, "w", newline="") as f:
            if rows:
                wr = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
                wr.writeheader()
                wr.writerows(rows)
        bad = verdict(args, stats, rows, idle, after)
        # apilb stops as it would in production: SIGTERM, drain, exit 0 (a
        # sanitizer build reports leaks at this exit).
        code = stop_apilb(lb)
        if code != 0:
            bad.append(f"apilb exited with {code} after SIGTERM")
        bad += sanitizer_findings(work / "apilb.log")
        print(summary(args, stats, rows, idle, after, bad, elapsed))
        print(f"samples: {args.csv}")
        return 1 if bad else 0
    finally:
        # Interrupted (Ctrl-C) or failed: the load stops before its servers.
        for t in running:
            t.cancel()
        stop_apilb(lb)
        for b in backends.values():
            b.stop(signal.SIGTERM)


def stop_apilb(lb: Apilb) -> int | None:
    """SIGTERM, then its exit code (SIGKILL after 40 s: drain is 30 s)."""
    if lb.proc is None:
        return None
    if lb.proc.poll() is None:
        lb.proc.send_signal(signal.SIGTERM)
        try:
            lb.proc.wait(40)
        except subprocess.TimeoutExpired:
            lb.proc.kill()
            lb.proc.wait()
    return lb.proc.returncode


# What scripts/soak.sh and scripts/reload-storm.sh run; any option given
# on the command line wins.
PRESETS = {
    "soak": dict(minutes=30, reload_period=10, reload_delay=0, reload_drain="5s", restart_period=60, watches=40,
                 watch_events=150, watch_interval_ms=1000, sample=5, warmup=120, window=120),
    "storm": dict(reloads=1000, reload_period=0, reload_delay=15, reload_drain="2s", restart_period=0,
                  watches=30, watch_events=100, watch_interval_ms=500, sample=2, warmup=10, window=20),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["soak", "storm"])
    ap.add_argument("--build", default="build", help="meson build directory with src/apilb and the stand-in")
    ap.add_argument("--apilb", help="apilb binary (default BUILD/src/apilb)")
    ap.add_argument("--standin", help="stand-in binary (default BUILD/tests/standin/apilb-standin)")
    ap.add_argument("--minutes", type=float, help="soak: load time (default 30)")
    ap.add_argument("--seconds", type=float, help="load time in seconds; the storm: its time limit "
                                                  "(default 60 + one per reload)")
    ap.add_argument("--work", help="work directory (default: a new one under $TMPDIR, kept)")
    ap.add_argument("--csv", help="where the samples go (default WORK/samples.csv)")
    ap.add_argument("--reloads", type=int, help="storm: this many reloads back to back (default 1000)")
    ap.add_argument("--reload-period", type=float, help="pause between reloads (s)")
    ap.add_argument("--reload-delay", type=float, help="load alone this long before the first reload (s)")
    ap.add_argument("--reload-drain", help="apilb's timeouts.reload_drain")
    ap.add_argument("--restart-period", type=float, help="restart a backend every this many s (0: never)")
    ap.add_argument("--keepalive", type=int, default=8)
    ap.add_argument("--keepalive-pause", type=float, default=0.05)
    ap.add_argument("--newconn", type=int, default=2)
    ap.add_argument("--newconn-pause", type=float, default=0.1)
    ap.add_argument("--watches", type=int)
    ap.add_argument("--watch-events", type=int)
    ap.add_argument("--watch-interval-ms", type=int)
    ap.add_argument("--bulk", type=int, default=2)
    ap.add_argument("--direct", type=int, default=1,
                    help="keep-alive and new-connection loops straight to b1, not through apilb: "
                         "the latency control")
    ap.add_argument("--bulk-pause", type=float, default=0.2)
    ap.add_argument("--sample", type=float, help="seconds between samples")
    ap.add_argument("--warmup", type=float, help="seconds before the growth baseline")
    ap.add_argument("--window", type=float, help="latency window (s), first vs last")
    ap.add_argument("--rss-tolerance", type=float, default=0.25, help="RSS growth allowed, fraction")
    ap.add_argument("--rss-tolerance-kib", type=int, default=16384, help="RSS growth allowed, KiB (the larger wins)")
    ap.add_argument("--fd-tolerance", type=int, default=24)
    ap.add_argument("--settle", type=float, default=30, help="seconds for sessions to close after the load")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    for k, v in PRESETS[args.mode].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.mode == "soak":
        args.reloads = 0
        args.seconds = args.seconds or args.minutes * 60
    else:
        args.seconds = args.seconds or 60 + args.reloads
    args.apilb = args.apilb or str(Path(args.build) / "src" / "apilb")
    args.standin = args.standin or str(Path(args.build) / "tests" / "standin" / "apilb-standin")
    for exe in (args.apilb, args.standin):
        if not os.access(exe, os.X_OK):
            print(f"soakload: {exe} not found: build first (meson setup build && ninja -C build), "
                  "or give --build DIR", file=sys.stderr)
            return 64
    args.work = args.work or tempfile.mkdtemp(prefix=f"apilb-{args.mode}.")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    args.csv = args.csv or str(Path(args.work) / "samples.csv")
    args.apilb_pid = 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
