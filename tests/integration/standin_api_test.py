#!/usr/bin/env python3
"""The stand-in apiserver's Kubernetes API against real Kubernetes clients.

    standin_api_test.py STANDIN_BIN MKCERTS

Starts apilb-standin on 127.0.0.1 (port 0) with test-time certificates, a
token file and a forbidden user, and drives it with the Python client from
Debian (python3-kubernetes, through kubeconfigs this test writes) and
kubectl: list (label selector, limit/continue), watch from a resourceVersion
(events for changes the control surface makes, bookmarks), 410 after
compaction (watch ERROR event and list), 401 (no or bad credentials, the
reject switch), 403 (the forbidden user), the legacy Endpoints, a watch
broken mid-stream, a stall and a bogus empty list. This is what apilb's
discovery client meets, so these clients' view of it must be the
apiserver's.

Exit 0 pass, 1 fail, 77 skip (python3-kubernetes not installed). Loopback
only; every wait is bounded.
"""
from __future__ import annotations

import http.client
import json
import os
import queue
import select
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time

try:
    import kubernetes
    from kubernetes import client, config, watch
except ImportError:
    print("SKIP: python3-kubernetes is not installed (scripts/install-deps.sh installs it)")
    sys.exit(77)

import urllib3

urllib3.disable_warnings()

problems: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        problems.append(what)


class Standin:
    """apilb-standin as a process, and its control surface. `ip` is the
    address it listens on (port 0); `extra` replaces this test's options
    (token file, forbidden user, bookmarks, name)."""

    def __init__(self, binary: str, certs: str, workdir: str, ip: str = "127.0.0.1",
                 extra: list[str] | None = None) -> None:
        self.certs = certs
        self.log_path = os.path.join(workdir, "standin.log")
        self.tokens = os.path.join(workdir, "tokens.csv")
        with open(self.tokens, "w") as f:
            f.write("watcher-token,watcher,1001\nforbidden-token,nobody,1002,\"group-a\"\n")
        self.log = open(self.log_path, "w")
        self.ip = ip
        if extra is None:
            extra = ["--token-auth-file", self.tokens, "--forbidden-user", "nobody", "--bookmark-interval-ms", "200",
                     "--name", "api"]
        self.proc = subprocess.Popen(
            [binary, "--listen", f"{ip}:0", "--cert", f"{certs}/server.crt", "--key", f"{certs}/server.key",
             "--client-ca", f"{certs}/ca.crt"] + extra,
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith(f"listening on {ip}:"):
            raise RuntimeError(f"stand-in did not start: {line!r}")
        self.port = int(line.strip().rsplit(":", 1)[1])
        self.ctx = ssl.create_default_context(cafile=f"{certs}/ca.crt")
        self.ctx.load_cert_chain(f"{certs}/client.crt", f"{certs}/client.key")

    def control(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPSConnection(self.ip, self.port, context=self.ctx, timeout=10)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None)
            res = conn.getresponse()
            return res.status, json.loads(res.read() or b"{}")
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def kubeconfig(path: str, port: int, certs: str, user: dict) -> str:
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                     "certificate-authority": f"{certs}/ca.crt"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "u"}}],
    }
    with open(path, "w") as f:
        json.dump(cfg, f)  # JSON is YAML
    return path


SELECTOR = "kubernetes.io/service-name=kubernetes"


def api_status(fn) -> int:
    """The HTTP status an API call fails with (0 if it succeeds)."""
    try:
        fn()
        return 0
    except client.rest.ApiException as e:
        return e.status


class Watcher:
    """A Python-client watch on its own thread; events arrive in a queue."""

    def __init__(self, api: client.DiscoveryV1Api, **kwargs) -> None:
        self.events: queue.Queue = queue.Queue()
        self.w = watch.Watch()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(api, kwargs), daemon=True)
        self.thread.start()

    def _run(self, api, kwargs) -> None:
        try:
            for e in self.w.stream(api.list_namespaced_endpoint_slice, "default", label_selector=SELECTOR,
                                   _request_timeout=30, **kwargs):
                self.events.put(e)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            self.error = e
        self.events.put(None)

    def next(self, types: set[str], timeout: float = 10) -> dict | None:
        """The next event of one of `types` (others skipped), None at the end or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                e = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if e is None or e["type"] in types:
                return e
        return None


def endpoints_of(raw: dict) -> list[tuple[str, dict]]:
    return [(ep["addresses"][0], ep.get("conditions", {})) for ep in raw.get("endpoints") or []]


def run(binary: str, mkcerts: str, workdir: str) -> None:
    certs = os.path.join(workdir, "certs")
    subprocess.run(["/bin/bash", mkcerts, certs], check=True, timeout=60)
    s = Standin(binary, certs, workdir)
    try:
        scenarios(s, certs, workdir)
    finally:
        s.stop()
        with open(s.log_path) as f:
            log = f.read()
        check("runtime error" not in log and "Sanitizer" not in log, "stand-in log has no sanitizer report")


def scenarios(s: Standin, certs: str, workdir: str) -> None:
    admin = config.new_client_from_config(kubeconfig(os.path.join(workdir, "admin.kubeconfig"), s.port, certs, {
        "client-certificate": f"{certs}/client.crt", "client-key": f"{certs}/client.key"}))
    token = config.new_client_from_config(kubeconfig(os.path.join(workdir, "token.kubeconfig"), s.port, certs,
                                                     {"token": "watcher-token"}))
    bad = config.new_client_from_config(kubeconfig(os.path.join(workdir, "bad.kubeconfig"), s.port, certs,
                                                   {"token": "not-a-token"}))
    forbidden = config.new_client_from_config(kubeconfig(os.path.join(workdir, "forbidden.kubeconfig"), s.port,
                                                         certs, {"token": "forbidden-token"}))
    disc = client.DiscoveryV1Api(admin)

    # List: the slice the stand-in starts with, the apiserver advertising itself.
    lst = disc.list_namespaced_endpoint_slice("default", label_selector=SELECTOR)
    check(len(lst.items) == 1 and lst.items[0].metadata.name == "kubernetes", "list: one slice named kubernetes")
    sl = lst.items[0]
    check(sl.address_type == "IPv4" and sl.endpoints[0].addresses == ["127.0.0.1"]
          and sl.endpoints[0].conditions.ready is True and sl.ports[0].port == s.port and sl.ports[0].name == "https",
          "list: the slice holds 127.0.0.1, ready, port https = the stand-in's")
    check(int(lst.metadata.resource_version) >= int(sl.metadata.resource_version), "list: a list resourceVersion")
    lst_token = client.DiscoveryV1Api(token).list_namespaced_endpoint_slice("default", label_selector=SELECTOR)
    check(len(lst_token.items) == 1, "list with a bearer token from the token file")

    # Chunking: two slices, one per page.
    st, _ = s.control("PUT", "/control/slices/kubernetes-b",
                      {"endpoints": [{"addresses": ["127.0.0.4"], "conditions": {"ready": True}}]})
    check(st == 200, "control: a second slice")
    p1 = disc.list_namespaced_endpoint_slice("default", label_selector=SELECTOR, limit=1)
    p2 = disc.list_namespaced_endpoint_slice("default", label_selector=SELECTOR, limit=1,
                                             _continue=p1.metadata._continue)
    check([i.metadata.name for i in p1.items] == ["kubernetes"] and bool(p1.metadata._continue)
          and [i.metadata.name for i in p2.items] == ["kubernetes-b"] and not p2.metadata._continue
          and p1.metadata.resource_version == p2.metadata.resource_version,
          "list: limit=1 gives two pages joined by continue, at one resourceVersion")

    # Watch from the list's resourceVersion: the changes, in order, then bookmarks.
    start_rv = disc.list_namespaced_endpoint_slice("default", label_selector=SELECTOR).metadata.resource_version
    w = Watcher(disc, resource_version=start_rv, allow_watch_bookmarks=True, timeout_seconds=20)
    st, _ = s.control("PUT", "/control/slices/kubernetes", {"endpoints": [
        {"addresses": ["127.0.0.2"], "conditions": {"ready": True, "serving": True, "terminating": False}},
        {"addresses": ["127.0.0.3"], "conditions": {"ready": False, "serving": True, "terminating": True}}]})
    e = w.next({"ADDED", "MODIFIED", "DELETED"})
    check(e is not None and e["type"] == "MODIFIED" and endpoints_of(e["raw_object"]) == [
        ("127.0.0.2", {"ready": True, "serving": True, "terminating": False}),
        ("127.0.0.3", {"ready": False, "serving": True, "terminating": True})]
        and e["object"].endpoints[1].conditions.terminating is True,
        "watch: MODIFIED with the new endpoints and their conditions")
    s.control("DELETE", "/control/slices/kubernetes-b")
    e = w.next({"ADDED", "MODIFIED", "DELETED"})
    check(e is not None and e["type"] == "DELETED" and e["object"].metadata.name == "kubernetes-b",
          "watch: DELETED for a removed slice")
    _, state = s.control("POST", "/control/bump?n=5")
    # Bookmarks sent before the bump carry the older version: wait for one after it.
    deadline = time.monotonic() + 10
    b = w.next({"BOOKMARK"})
    while (b is not None and b["raw_object"]["metadata"]["resourceVersion"] != state["resourceVersion"]
           and time.monotonic() < deadline):
        b = w.next({"BOOKMARK"})
    check(b is not None and b["raw_object"]["kind"] == "EndpointSlice"
          and b["raw_object"]["metadata"]["resourceVersion"] == state["resourceVersion"],
          "watch: a BOOKMARK carries the current resourceVersion (after writes elsewhere)")
    last_rv = state["resourceVersion"]
    w.w.stop()

    # Watch with no resourceVersion: what exists arrives as ADDED.
    w2 = Watcher(disc, timeout_seconds=2)
    e = w2.next({"ADDED"})
    check(e is not None and e["object"].metadata.name == "kubernetes", "watch without resourceVersion: ADDED first")
    check(w2.next({"__end__"}, timeout=15) is None and w2.error is None, "watch: ends cleanly at timeoutSeconds")

    # A watch broken mid-stream: the client sees a broken connection, not an end.
    # The break comes only once the client has read the stream's header and
    # a bookmark: broken before the client has its response, the request
    # fails and urllib3 quietly sends it again (its default retries), and
    # the new watch is one the break never saw (seen on a busy machine).
    for how in ("close", "reset"):
        w3 = Watcher(disc, resource_version=last_rv, allow_watch_bookmarks=True, timeout_seconds=20)
        b = w3.next({"BOOKMARK"})
        check(b is not None, f"break-watches how={how}: the watch is open (a bookmark arrived)")
        s.control("POST", f"/control/break-watches?how={how}")
        w3.thread.join(10)
        outcome = "still open after 10 s" if w3.thread.is_alive() else type(w3.error).__name__
        check(not w3.thread.is_alive() and w3.error is not None,
              f"break-watches how={how}: the client's stream fails ({outcome})")

    # Compaction: a watch from before it gets ERROR 410 (the client raises it), a list Exact gets 410.
    s.control("POST", "/control/compact")
    try:
        for _ in watch.Watch().stream(disc.list_namespaced_endpoint_slice, "default", label_selector=SELECTOR,
                                      resource_version=start_rv, timeout_seconds=5, _request_timeout=10):
            pass
        code = 0
    except client.rest.ApiException as e:
        code = e.status
    check(code == 410, f"watch from a compacted resourceVersion: 410 Gone (got {code})")
    check(api_status(lambda: disc.list_namespaced_endpoint_slice(
        "default", label_selector=SELECTOR, resource_version=start_rv, resource_version_match="Exact")) == 410,
        "list Exact at a compacted resourceVersion: 410")
    check(api_status(lambda: disc.list_namespaced_endpoint_slice(
        "default", label_selector=SELECTOR, limit=1, _continue=p1.metadata._continue)) == 410,
        "list continue from before the compaction: 410")
    future = str(int(s.control("GET", "/control/state")[1]["resourceVersion"]) + 1000)
    t0 = time.monotonic()
    code = api_status(lambda: disc.list_namespaced_endpoint_slice("default", resource_version=future,
                                                                  _request_timeout=30))
    check(code == 504 and time.monotonic() - t0 >= 2.5, f"list at a future resourceVersion: 504 after ~3 s ({code})")
    w4 = Watcher(disc, resource_version=last_rv, timeout_seconds=5)
    s.control("PUT", "/control/slices/kubernetes", {"endpoints": [{"addresses": ["127.0.0.5"]}]})
    e = w4.next({"ADDED", "MODIFIED", "DELETED"})
    check(e is not None and e["type"] == "MODIFIED", "watch from the compaction point still resumes")
    w4.w.stop()

    # Authentication and authorisation.
    check(api_status(lambda: client.DiscoveryV1Api(bad).list_namespaced_endpoint_slice("default")) == 401,
          "a token not in the token file: 401")
    check(api_status(lambda: client.DiscoveryV1Api(forbidden).list_namespaced_endpoint_slice("default")) == 403,
          "the forbidden user: 403")
    check(api_status(lambda: client.CoreV1Api(forbidden).read_namespaced_endpoints("kubernetes", "default")) == 403,
          "the forbidden user, legacy Endpoints: 403")
    s.control("POST", "/control/reject-credentials?on=true")
    check(api_status(lambda: disc.list_namespaced_endpoint_slice("default")) == 401,
          "reject-credentials: a valid client certificate gets 401")
    s.control("POST", "/control/reject-credentials?on=false")
    check(api_status(lambda: disc.list_namespaced_endpoint_slice("default")) == 0, "credentials accepted again")

    # The legacy Endpoints mirror slice kubernetes (ready addresses only).
    s.control("PUT", "/control/slices/kubernetes", {"endpoints": [
        {"addresses": ["127.0.0.2"], "conditions": {"ready": True}},
        {"addresses": ["127.0.0.3"], "conditions": {"ready": False}},
        {"addresses": ["127.0.0.6"], "conditions": {"ready": False, "terminating": True}}]})
    ep = client.CoreV1Api(admin).read_namespaced_endpoints("kubernetes", "default")
    check([a.ip for a in ep.subsets[0].addresses] == ["127.0.0.2"]
          and [a.ip for a in ep.subsets[0].not_ready_addresses] == ["127.0.0.3"]
          and ep.subsets[0].ports[0].port == s.port, "legacy Endpoints kubernetes: ready and not-ready addresses")

    # Bogus empty list and stall.
    s.control("POST", "/control/bogus-empty?on=true")
    check(disc.list_namespaced_endpoint_slice("default", label_selector=SELECTOR).items == [],
          "bogus-empty: the list has no items")
    s.control("POST", "/control/bogus-empty?on=false")
    s.control("POST", "/control/stall?on=true")
    t0 = time.monotonic()
    try:
        disc.list_namespaced_endpoint_slice("default", label_selector=SELECTOR, _request_timeout=1)
        stalled = False
    except Exception:  # noqa: BLE001 - urllib3's read timeout
        stalled = True
    check(stalled and time.monotonic() - t0 >= 0.9, "stall: a list gets no answer")
    s.control("POST", "/control/stall?on=false")
    check(len(disc.list_namespaced_endpoint_slice("default", label_selector=SELECTOR).items) == 1,
          "stall lifted: lists answer again")

    # kubectl, with its discovery documents.
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("not run: kubectl is not on PATH (scripts/install-deps.sh kubectl)")
        return
    env = dict(os.environ, HOME=workdir)
    r = subprocess.run([kubectl, "--kubeconfig", os.path.join(workdir, "admin.kubeconfig"), "--cache-dir",
                        os.path.join(workdir, "kube-cache"), "--request-timeout", "10s", "get", "endpointslices",
                        "-n", "default", "-l", SELECTOR, "-o", "json"],
                       capture_output=True, text=True, timeout=60, env=env)
    items = json.loads(r.stdout)["items"] if r.returncode == 0 else []
    check(r.returncode == 0 and [i["metadata"]["name"] for i in items] == ["kubernetes"]
          and [e["addresses"][0] for e in items[0]["endpoints"]] == ["127.0.0.2", "127.0.0.3", "127.0.0.6"],
          f"kubectl get endpointslices -o json ({r.stderr.strip()[:200]})")
    r = subprocess.run([kubectl, "--kubeconfig", os.path.join(workdir, "forbidden.kubeconfig"), "--cache-dir",
                        os.path.join(workdir, "kube-cache2"), "--request-timeout", "10s", "get", "endpointslices",
                        "-n", "default"], capture_output=True, text=True, timeout=60, env=env)
    check(r.returncode != 0 and "forbidden" in r.stderr, "kubectl as the forbidden user: forbidden")


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"python3-kubernetes {kubernetes.__version__}")
    with tempfile.TemporaryDirectory(prefix="standin-api-") as workdir:
        run(sys.argv[1], sys.argv[2], workdir)
    if problems:
        print(f"{len(problems)} check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
