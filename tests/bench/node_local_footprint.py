#!/usr/bin/env python3
"""What a node-local apilb costs a node (docs/node-local.md, "What it costs").

    python3 tests/bench/node_local_footprint.py [--build build] [--idle 60] [--no-nginx]

Runs the real binary with the shipped conf/node-local.yaml (addresses and
paths moved into a temporary directory; workers 1, then 0 = one per core)
against the stand-in apiserver on 127.0.0.2 (HTTPS, client certificates,
the `kubernetes` EndpointSlices), with discovery watching and /readyz probed
every 2 s, as on a node. For each: resident memory (VmRSS) once discovery
watches and the seed is healthy; CPU (utime + stime from /proc/PID/stat)
over --idle seconds with no client; resident memory with 50, then 500, idle
proxied connections (each a TLS session to the stand-in through apilb, one
GET /version answered, then held open). With nginx installed, the same for
an nginx stream proxy in front of the same stand-in (1 worker, then auto).

Loopback only; every loop is bounded in count and time. Not part of the
test suite: it takes about 2 x (idle + 30) s per balancer.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "tools"))
from bench import CLK_TCK, cpu_seconds, proc_tree, rss_kib  # noqa: E402
from test_ports import free_port  # noqa: E402

HOLD_COUNTS = (50, 500)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for(pred, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise SystemExit(f"FAIL: {what} within {seconds} s")


def stop(proc: subprocess.Popen, seconds: float) -> None:
    """SIGTERM, then SIGKILL after `seconds`: only the processes this script started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


class Holder:
    """Idle proxied connections: TLS through the balancer to the stand-in,
    one request answered (the bytes crossed both ways), then held."""

    def __init__(self, port: int, ca: str):
        self.port = port
        self.ctx = ssl.create_default_context(cafile=ca)
        self.socks: list[ssl.SSLSocket] = []

    def open_to(self, total: int, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while len(self.socks) < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"FAIL: only {len(self.socks)} of {total} connections in {seconds} s")
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            s = self.ctx.wrap_socket(raw, server_hostname="kubernetes")
            s.sendall(b"GET /version HTTP/1.1\r\nHost: kubernetes\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    raise SystemExit("FAIL: the stand-in closed a held connection")
                got += chunk
            if not got.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"FAIL: GET /version through the balancer: {got[:80]!r}")
            self.socks.append(s)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()


def measure(name: str, argv: list[str], port: int, ready, idle: int, ca: str, work: Path) -> dict:
    out = open(work / f"{name}.log", "w")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    holder = Holder(port, ca)
    try:
        wait_for(lambda: proc.poll() is None and ready(), 30, f"{name} ready")
        time.sleep(5)  # first probes, the list and the watch are behind it
        pids = proc_tree(proc.pid)
        res = {"balancer": name, "processes": len(pids), "rss_idle_kib": rss_kib(pids)}
        c0, t0 = cpu_seconds(pids), time.monotonic()
        time.sleep(idle)
        c1, t1 = cpu_seconds(proc_tree(proc.pid)), time.monotonic()
        res["idle_cpu_seconds"] = round(c1 - c0, 3)
        res["idle_cpu_percent"] = round(100 * (c1 - c0) / (t1 - t0), 3)
        res["idle_window_s"] = round(t1 - t0, 1)
        for n in HOLD_COUNTS:
            holder.open_to(n)
            time.sleep(2)
            res[f"rss_{n}_kib"] = rss_kib(proc_tree(proc.pid))
        res["kib_per_connection"] = round(
            (res[f"rss_{HOLD_COUNTS[-1]}_kib"] - res["rss_idle_kib"]) / HOLD_COUNTS[-1], 2)
        return res
    finally:
        holder.close()
        stop(proc, 40)  # apilb drains for up to timeouts.drain (30 s)
        out.close()


def apilb_config(work: Path, certs: Path, seed: str, port: int, admin: int, workers: int) -> Path:
    """conf/node-local.yaml as shipped, its host paths and addresses moved here."""
    yaml = (REPO / "conf" / "node-local.yaml").read_text()
    for a, b in (('"127.0.0.1:7445"', f'"127.0.0.1:{port}"'), ('"127.0.0.1:7446"', f'"127.0.0.1:{admin}"'),
                 ('"192.0.2.100:6443"', f'"{seed}"'), ("/etc/kubernetes/kubelet.conf", str(work / "kubelet.conf")),
                 ("/etc/kubernetes/pki/ca.crt", str(certs / "ca.crt")), ("/var/lib/apilb/", f"{work}/"),
                 ("/run/apilb/", f"{work}/"), ("workers: 1\n", f"workers: {workers}\n")):
        assert a in yaml, a
        yaml = yaml.replace(a, b)
    path = work / f"node-local-{workers}.yaml"
    path.write_text(yaml)
    return path


def nginx_config(work: Path, seed: str, port: int, workers: str) -> Path:
    path = work / f"nginx-{workers}.conf"
    path.write_text(f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes {workers};
daemon off;
pid {work}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass {seed};
        proxy_connect_timeout 2s;
        proxy_timeout 1h;
    }}
}}
""")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(REPO / "build"))
    ap.add_argument("--idle", type=int, default=60, help="seconds of idle CPU measured (default 60)")
    ap.add_argument("--no-nginx", action="store_true")
    args = ap.parse_args()
    build = Path(args.build).resolve()
    apilb, standin = build / "src" / "apilb", build / "tests" / "standin" / "apilb-standin"
    work = Path(tempfile.mkdtemp(prefix="apilb-footprint-"))
    certs = work / "certs"
    subprocess.run(["bash", str(REPO / "tests" / "tools" / "mkcerts.sh"), str(certs)], check=True, timeout=60)
    ca64 = subprocess.run(["base64", "-w0", str(certs / "ca.crt")], check=True, capture_output=True,
                          text=True).stdout
    (work / "kubelet.conf").write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: k, cluster: {{server: "https://127.0.0.1:7445", certificate-authority-data: {ca64}}}}}]
users: [{{name: u, user: {{client-certificate: {certs}/client.crt, client-key: {certs}/client.key}}}}]
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
current-context: c
""")
    slog = open(work / "standin.log", "w")
    st = subprocess.Popen([str(standin), "--listen", "127.0.0.2:0", "--cert", str(certs / "server.crt"), "--key",
                           str(certs / "server.key"), "--name", "api", "--client-ca", str(certs / "ca.crt")],
                          stdout=slog, stderr=subprocess.STDOUT)
    results = []
    try:
        def standin_port():
            text = (work / "standin.log").read_text()
            i = text.find("listening on 127.0.0.2:")
            return int(text[i + 23:].split()[0]) if i >= 0 else 0
        seed = f"127.0.0.2:{wait_for(standin_port, 10, 'the stand-in listening')}"
        for workers in (1, 0):
            port, admin = free_port(), free_port()
            cfg = apilb_config(work, certs, seed, port, admin, workers)

            def apilb_ready():
                status, body = get(admin, "/api/v1/status")
                return (status == 200 and json.loads(body)["ready"]
                        and json.loads(body)["discovery"][0]["watch_state"] == "watching")
            log(f"apilb, workers: {workers}")
            results.append(measure(f"apilb-workers-{workers}", [str(apilb), "run", "--config", str(cfg)], port,
                                   apilb_ready, args.idle, str(certs / "ca.crt"), work))
            log(json.dumps(results[-1]))
        if not args.no_nginx and os.path.exists("/usr/sbin/nginx"):
            for workers in ("1", "auto"):
                port = free_port()
                cfg = nginx_config(work, seed, port, workers)

                def nginx_ready():
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        return True
                    except OSError:
                        return False
                log(f"nginx stream, worker_processes {workers}")
                results.append(measure(f"nginx-workers-{workers}",
                                       ["/usr/sbin/nginx", "-c", str(cfg), "-p", str(work), "-e", "stderr"], port,
                                       nginx_ready, args.idle, str(certs / "ca.crt"), work))
                log(json.dumps(results[-1]))
    finally:
        stop(st, 10)
        slog.close()
    print(f"{'balancer':<20} {'procs':>5} {'RSS idle':>10} {'RSS 50':>10} {'RSS 500':>10} {'per conn':>9} "
          f"{'idle CPU':>9}")
    for r in results:
        print(f"{r['balancer']:<20} {r['processes']:>5} {r['rss_idle_kib']:>6} KiB {r['rss_50_kib']:>6} KiB "
              f"{r['rss_500_kib']:>6} KiB {r['kib_per_connection']:>5} KiB {r['idle_cpu_percent']:>7} % "
              f"({r['idle_cpu_seconds']} s CPU in {r['idle_window_s']} s)")
    print(f"CLK_TCK {CLK_TCK}; {os.cpu_count()} CPU(s); logs and configs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
