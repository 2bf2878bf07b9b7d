#!/usr/bin/env python3
"""kubectl and the Python client through a node-local apilb while the control
plane changes under it.

    node_local_clients_test.py APILB_BIN STANDIN_BIN MKCERTS SOURCE_ROOT

The apiservers are one apilb-standin process with a listener per apiserver
on 127.0.0.2-5 (--also-listen): they share one store of API objects, as
apiservers share etcd, so a watch resumed through another apiserver goes on
from its resourceVersion; each answers its own /readyz. apilb runs the
shipped conf/node-local.yaml (addresses and paths moved to a temp dir,
grace_period, change_interval and reload_drain shortened so that a drain
shows in seconds)
on 127.0.0.1. The clients' kubeconfig says server https://127.0.0.1:PORT
with no tls-server-name: the apiservers' certificate must name 127.0.0.1
(as for KubePrism), which the test PKI's does, and the test checks it.

A Python-client watch of the `kubernetes` EndpointSlices and kubectl, run
over and over, through apilb, while the apiserver that carries the watch
leaves the slice (apilb drains it: its sessions are reset after
reload_drain) and a fourth one joins: the watch reconnects through apilb and
resumes from its resourceVersion, seeing every change; every kubectl run
succeeds and sees the new set.

Exit 0 pass, 1 fail, 77 skip (python3-kubernetes or kubectl missing).
Loopback only; every wait is bounded; about 15 s.
"""
from __future__ import annotations

import http.client
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

try:
    from kubernetes import client, config, watch
except ImportError:
    print("SKIP: python3-kubernetes is not installed (scripts/install-deps.sh installs it)")
    sys.exit(77)
KUBECTL = shutil.which("kubectl")
if KUBECTL is None:
    print("SKIP: kubectl is not installed (scripts/install-deps.sh kubectl installs it)")
    sys.exit(77)

import urllib3

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from test_ports import free_port  # noqa: E402  (claims the port; see tests/tools/test_ports.py)
from standin_api_test import Standin  # noqa: E402  (the stand-in as a process, and its control surface)

urllib3.disable_warnings()

SELECTOR = "kubernetes.io/service-name=kubernetes"
problems: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        problems.append(what)


def wait_until(pred, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(poll)
    return pred()


def start_apiservers(binary: str, certs: str, workdir: str) -> Standin:
    """The stand-in apiservers cp1..cp4 on 127.0.0.2-5: one process, one store."""
    return Standin(binary, certs, workdir, ip="127.0.0.2",
                   extra=["--name", "cp1", "--also-listen", "127.0.0.3=cp2", "--also-listen", "127.0.0.4=cp3",
                          "--also-listen", "127.0.0.5=cp4"])


def set_slice(s: Standin, *ns: int) -> None:
    """The `kubernetes` slice lists cp`ns`."""
    status, _ = s.control("PUT", "/control/slices/kubernetes",
                          {"endpoints": [{"addresses": [f"127.0.0.{n + 1}"]} for n in ns]})
    if status != 200:
        raise RuntimeError("the stand-in refused the slice")


class Watcher:
    """A Python-client watch of the slices on its own thread, reconnecting
    from its last resourceVersion when the connection ends, as a reflector
    does. Events and breaks arrive in a queue."""

    def __init__(self, api: client.DiscoveryV1Api, rv: str) -> None:
        self.api = api
        self.rv = rv
        self.events: queue.Queue = queue.Queue()
        self.breaks: list[str] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            w = watch.Watch()
            try:
                for e in w.stream(self.api.list_namespaced_endpoint_slice, "default", label_selector=SELECTOR,
                                  resource_version=self.rv, timeout_seconds=60, _request_timeout=(5, 20)):
                    self.rv = e["object"].metadata.resource_version
                    addrs = sorted(a for ep in (e["object"].endpoints or []) for a in ep.addresses)
                    self.events.put((time.monotonic(), e["type"], addrs))
            except Exception as x:  # noqa: BLE001 - a break is what the test looks at
                if self.stopping:
                    return
                # Python's ssl reads a reset as 0 bytes: urllib3 then reports a broken chunk.
                self.breaks.append((time.monotonic(), f"{type(x).__name__}: {str(x)[:120]}"))
                time.sleep(0.2)

    def until(self, addrs: list[str], timeout: float) -> float | None:
        """When an event listing exactly `addrs` arrived (None at the timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                at, _, got = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if got == sorted(addrs):
                return at
        return None


def apilb_status(admin: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    try:
        conn.request("GET", "/api/v1/status")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def backends(admin: int) -> list[dict]:
    try:
        return apilb_status(admin)["pools"][0]["backends"]
    except (OSError, ValueError, KeyError, IndexError):
        return []


def run(apilb_bin: str, standin_bin: str, mkcerts: str, source_root: str, tmp: str) -> None:
    certs = os.path.join(tmp, "certs")
    subprocess.run(["/bin/bash", mkcerts, certs], check=True, timeout=60)
    # The clients verify the apiserver's certificate against the address
    # they dial, 127.0.0.1 (apilb passes TLS through): it must name it.
    sans = subprocess.run(["openssl", "x509", "-in", f"{certs}/server.crt", "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, timeout=10).stdout
    check("IP Address:127.0.0.1" in sans and "DNS:localhost" in sans,
          "the apiservers' certificate names 127.0.0.1 and localhost")

    s = start_apiservers(standin_bin, certs, tmp)
    apilb = None
    watcher = None
    try:
        set_slice(s, 1, 2, 3)
        port, admin = free_port(), free_port()
        kubeconfig = os.path.join(tmp, "apilb.kubeconfig")
        with open(kubeconfig, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                       "clusters": [{"name": "k", "cluster": {"server": "https://192.0.2.1:6443",
                                                              "certificate-authority": f"{certs}/ca.crt"}}],
                       "users": [{"name": "u", "user": {"client-certificate": f"{certs}/client.crt",
                                                        "client-key": f"{certs}/client.key"}}],
                       "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}, f)
        with open(os.path.join(source_root, "conf/node-local.yaml")) as f:
            yaml = f.read()
        for old, new in (('"127.0.0.1:7445"', f'"127.0.0.1:{port}"'), ('"127.0.0.1:7446"', f'"127.0.0.1:{admin}"'),
                         ('"192.0.2.100:6443"', f'"127.0.0.2:{s.port}"'),
                         ("/etc/kubernetes/kubelet.conf", kubeconfig),
                         ("/etc/kubernetes/pki/ca.crt", f"{certs}/ca.crt"), ("/var/lib/apilb/", tmp + "/"),
                         ("/run/apilb/", tmp + "/"), ("grace_period: 5m", "grace_period: 1s"),
                         ("change_interval: 5s", "change_interval: 1s"), ("reload_drain: 30s", "reload_drain: 2s")):
            if old not in yaml:
                raise RuntimeError(f"conf/node-local.yaml no longer has {old!r}")
            yaml = yaml.replace(old, new)
        cfg = os.path.join(tmp, "node-local.yaml")
        with open(cfg, "w") as f:
            f.write(yaml)
        apilb_log = open(os.path.join(tmp, "apilb.log"), "w")
        apilb = subprocess.Popen([apilb_bin, "run", "--config", cfg], stdout=apilb_log, stderr=subprocess.STDOUT)
        cp = {n: f"127.0.0.{n + 1}:{s.port}" for n in (1, 2, 3, 4)}
        admitted = lambda want: {b["address"] for b in backends(admin)  # noqa: E731
                                 if b.get("discovery") == "admitted" and b.get("state") == "up"} == want
        check(wait_until(lambda: admitted({cp[1], cp[2], cp[3]}), 30),
              "apilb, seeded with cp1, serves cp1-cp3 from the slice")

        # The clients' kubeconfig: apilb's loopback listener, no tls-server-name.
        client_kc = os.path.join(tmp, "client.kubeconfig")
        with open(client_kc, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                       "clusters": [{"name": "k", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                              "certificate-authority": f"{certs}/ca.crt"}}],
                       "users": [{"name": "u", "user": {"client-certificate": f"{certs}/client.crt",
                                                        "client-key": f"{certs}/client.key"}}],
                       "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}, f)
        env = dict(os.environ, HOME=tmp, KUBECACHEDIR=os.path.join(tmp, "kube-cache"))

        def kubectl() -> tuple[int, str]:
            r = subprocess.run([KUBECTL, "--kubeconfig", client_kc, "--request-timeout", "10s", "get",
                                "endpointslices", "-n", "default", "-l", SELECTOR, "-o",
                                "jsonpath={.items[*].endpoints[*].addresses[*]}"],
                               capture_output=True, text=True, timeout=30, env=env)
            return r.returncode, (r.stdout if r.returncode == 0 else r.stderr).strip()

        rc, out = kubectl()
        check(rc == 0 and sorted(out.split()) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"],
              f"kubectl get endpointslices through apilb: {out}")
        api = client.DiscoveryV1Api(config.new_client_from_config(client_kc))
        lst = api.list_namespaced_endpoint_slice("default", label_selector=SELECTOR, _request_timeout=10)
        watcher = Watcher(api, lst.metadata.resource_version)
        # The watch's session: the one backend with an open session.
        held = []
        wait_until(lambda: held.append([b["address"] for b in backends(admin) if b.get("active_sessions", 0) > 0])
                   or len(held[-1]) == 1, 10)
        check(len(held) > 0 and len(held[-1]) == 1, f"the Python watch holds one session through apilb: {held[-1:]}")
        if not held or len(held[-1]) != 1:
            return
        carrier = held[-1][0]
        gone = next(n for n in cp if cp[n] == carrier)
        print(f"the watch runs through cp{gone}; it leaves the slice and cp4 joins", flush=True)

        # kubectl over and over while the control plane changes.
        kubectl_runs: list[tuple[float, int, str]] = []
        stop_kubectl = threading.Event()

        def kubectl_loop() -> None:
            deadline = time.monotonic() + 25
            while not stop_kubectl.is_set() and time.monotonic() < deadline:
                rc, out = kubectl()
                kubectl_runs.append((time.monotonic(), rc, out))
                time.sleep(0.1)

        kt = threading.Thread(target=kubectl_loop, daemon=True)
        kt.start()
        new_set = sorted({1, 2, 3, 4} - {gone})
        t0 = time.monotonic()
        set_slice(s, *new_set)
        want = [f"127.0.0.{n + 1}" for n in new_set]
        seen = watcher.until(want, 10)
        check(seen is not None, f"the Python watch sees cp{gone} leave and cp4 join: {want}")
        # apilb drains cp{gone}: the watch's session is reset after reload_drain, and the watch reconnects.
        check(wait_until(lambda: len(watcher.breaks) > 0, 15), f"the watch through cp{gone} was ended by the drain")
        check(wait_until(lambda: admitted({cp[n] for n in new_set}), 15), "apilb's backends are the new set")
        # The next change (cp{gone} back) reaches the watch through its new connection.
        final = [1, 2, 3, 4]
        t1 = time.monotonic()
        set_slice(s, *final)
        want = [f"127.0.0.{n + 1}" for n in final]
        resumed = watcher.until(want, 15)
        check(resumed is not None, f"after reconnecting through apilb the watch sees the next change: {want}")
        if resumed is not None and seen is not None and watcher.breaks:
            print(f"slice change -> the watch's event: {1000 * (seen - t0):.0f} ms; -> the watch's session reset "
                  f"by the drain (grace_period 1 s, reload_drain 2 s): {1000 * (watcher.breaks[0][0] - t0):.0f} ms; "
                  f"the next change -> seen on the watch resumed through apilb: {1000 * (resumed - t1):.0f} ms",
                  flush=True)
        check(wait_until(lambda: len(kubectl_runs) > 0 and sorted(kubectl_runs[-1][2].split()) == want, 15),
              f"kubectl sees the new set: {kubectl_runs[-1][2] if kubectl_runs else None}")
        stop_kubectl.set()
        kt.join(35)
        failed = [r for r in kubectl_runs if r[1] != 0]
        check(len(kubectl_runs) >= 3 and not failed,
              f"every kubectl run through apilb succeeded: {len(kubectl_runs)} runs, failures {failed[:3]}")
        check(len(watcher.breaks) == 1, f"the watch broke once, at the drain: {watcher.breaks}")
        st = apilb_status(admin)
        closed = st.get("sessions_closed", {}).get("reload", 0)
        check(closed >= 1, f"apilb closed the watch's session as a drained backend's: sessions_closed.reload={closed}")
    finally:
        if watcher is not None:
            watcher.stopping = True
        if apilb is not None:
            apilb.send_signal(signal.SIGTERM)
            try:
                apilb.wait(15)
            except subprocess.TimeoutExpired:
                apilb.kill()
                apilb.wait(10)
            with open(os.path.join(tmp, "apilb.log")) as f:
                log = f.read()
            check("runtime error:" not in log and "Sanitizer" not in log, "apilb's log has no sanitizer report")
            if problems:
                print("apilb log (end):\n" + log[-4000:])
        s.stop()


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="apilb-node-local-clients-") as tmp:
        run(*sys.argv[1:5], tmp)
    print(f"{len(problems)} problem(s) in {time.monotonic() - started:.1f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
