#!/usr/bin/env python3
"""The example alerting rules and the metrics list against a running apilb.

    alert_rules_test.py APILB_BIN RULES_FILE METRICS_MD [PROMTOOL_TEST_FILE]

Starts the real apilb (one loopback backend, the admin endpoint on a free
loopback port, a vrrp section so that the VRRP metrics exist and a discovery
section so that the discovery metrics do; no keepalived,
the interface named there does not exist and is never touched), scrapes
/metrics once every backend has been probed; then, as root, a second apilb
with a bgp section (which adds addresses and routes, so it runs in a network
namespace of its own that is removed afterwards; no FRR), for the apilb_bgp_*
families. It checks:

  - RULES_FILE: its shape (groups, unique alert names, `for`, a severity, a
    summary), and that every metric each `expr` selects is one apilb exposes,
    with the labels and label values its matchers and `by (...)` clauses
    name. Only `up` (Prometheus's own) and the target labels job, instance
    and vip_group come from elsewhere. So a renamed metric, label or label
    value fails here, not in someone's silent alerting.
  - METRICS_MD: its metrics table lists exactly the families apilb exposes.
  - with promtool on PATH (Debian's `prometheus` package; not in
    scripts/install-deps.sh): `promtool check rules RULES_FILE`,
    `promtool test rules PROMTOOL_TEST_FILE` (each alert fires on made-up
    series, and stays quiet where it should) and `promtool check metrics` on
    the scrape. Without promtool these three are reported as not run.

Exit 0 pass, 1 fail. No traffic leaves 127.0.0.1; every wait is bounded.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from test_ports import free_port  # noqa: E402  (shared with the C++ harness's scheme)

# Series and labels that Prometheus (not apilb) attaches: `up` per target,
# the target labels, and vip_group, the target label the rules file asks
# operators to set on the nodes of one VIP pair.
PROMETHEUS_METRICS = {"up"}
TARGET_LABELS = {"job", "instance", "vip_group"}
# The alerts docs/metrics.md promises (issue 6 names the first two).
REQUIRED_ALERTS = {"ApilbPoolNoHealthyBackend", "ApilbBackendFlapping", "ApilbNotReady", "ApilbReloadFailed",
                   "ApilbBackendConnectFailures", "ApilbVrrpNoMaster"}
SEVERITIES = {"critical", "warning", "info"}
DURATION_RE = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "atan2"}

problems: list[str] = []


def problem(msg: str) -> None:
    problems.append(msg)
    print("FAIL: " + msg, flush=True)


# --------------------------------------------------------------------------
# the exposition

def parse_exposition(text: str):
    """Family names (from TYPE lines) and, per sample name, its label names
    and the values seen for each label."""
    families: dict[str, str] = {}
    samples: dict[str, dict[str, set[str]]] = {}
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            families[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if not m:
            problem(f"unparsable exposition line: {line!r}")
            continue
        labels = samples.setdefault(m.group(1), {})
        for k, v in label_re.findall(m.group(3) or ""):
            labels.setdefault(k, set()).add(v)
    return families, samples


# --------------------------------------------------------------------------
# PromQL, as far as the rules need it

def selectors_and_groupings(expr: str):
    """The metric names an expression selects, each with its label matchers
    [(label, op, value)], and the label names of its by/without/on/ignoring/
    group_left/group_right clauses. Not a PromQL parser: enough for rules
    made of selectors, functions, aggregations and binary operators."""
    # Matchers, then remove them so label names are not taken for metrics.
    selected: list[tuple[str | None, list[tuple[str, str, str]]]] = []
    matcher_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')

    def take_selector(m: re.Match) -> str:
        selected.append((m.group(1), matcher_re.findall(m.group(2))))
        return f" {m.group(1) or ''} "

    text = re.sub(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}", take_selector, expr)
    grouping: set[str] = set()

    def take_grouping(m: re.Match) -> str:
        grouping.update(x.strip() for x in m.group(2).split(",") if x.strip())
        return " "

    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", take_grouping, text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", text)  # string arguments
    names_with_matchers = {n for n, _ in selected if n}
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        if name not in names_with_matchers:
            selected.append((name, []))
            names_with_matchers.add(name)
    return selected, grouping


def check_rules(path: str, families: dict[str, str], samples: dict[str, dict[str, set[str]]]) -> int:
    with open(path) as f:
        doc = yaml.safe_load(f)
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not groups:
        problem(f"{path}: no groups")
        return 0
    seen: set[str] = set()
    checked = 0
    for g in groups:
        if not g.get("name") or not g.get("rules"):
            problem(f"{path}: a group without a name or rules: {g!r}")
            continue
        for rule in g["rules"]:
            name = rule.get("alert")
            where = f"{path}: group {g['name']}: alert {name}"
            if not name or not isinstance(rule.get("expr"), str):
                problem(f"{where}: needs `alert` and `expr`")
                continue
            if name in seen:
                problem(f"{where}: the name is used twice")
            seen.add(name)
            if "for" in rule and not DURATION_RE.match(str(rule["for"])):
                problem(f"{where}: `for: {rule['for']}` is not a duration")
            if (rule.get("labels") or {}).get("severity") not in SEVERITIES:
                problem(f"{where}: labels.severity must be one of {sorted(SEVERITIES)}")
            if not (rule.get("annotations") or {}).get("summary"):
                problem(f"{where}: no annotations.summary")
            selected, grouping = selectors_and_groupings(rule["expr"])
            if not selected:
                problem(f"{where}: selects no metric at all: {rule['expr']!r}")
            exposed_labels: set[str] = set()
            for metric, matchers in selected:
                if metric in PROMETHEUS_METRICS:
                    continue
                if metric not in samples:
                    problem(f"{where}: metric {metric} is not exposed by apilb's /metrics")
                    continue
                labels = samples[metric]
                exposed_labels.update(labels)
                for label, op, value in matchers:
                    if label in TARGET_LABELS:
                        continue
                    if label not in labels:
                        problem(f"{where}: {metric} has no label {label} (it has {sorted(labels) or 'none'})")
                    elif op == "=" and value not in labels[label]:
                        problem(f"{where}: {metric}{{{label}=\"{value}\"}} matches nothing; apilb exposes "
                                f"{label} = {sorted(labels[label])}")
            for label in grouping - TARGET_LABELS - exposed_labels:
                problem(f"{where}: groups by label {label}, which no metric of the expression has")
            checked += 1
            print(f"ok: {name}: {', '.join(m for m, _ in selected)}", flush=True)
    for name in sorted(REQUIRED_ALERTS - seen):
        problem(f"{path}: alert {name} is missing (docs/metrics.md describes it)")
    return checked


def check_metrics_md(path: str, families: dict[str, str], bgp_scraped: bool) -> None:
    """The table in docs/metrics.md against the families apilb exposes."""
    with open(path) as f:
        text = f.read()
    documented = set(re.findall(r"^\| `(apilb_[a-z0-9_]+)` \|", text, re.M))
    # Families that exist only with admin.tls (this apilb runs without it):
    # documented, but not required here. admin_tls_test checks them.
    tls_only = set(re.findall(r"^\| `(apilb_[a-z0-9_]+)` \|[^\n]*Only with `admin\.tls`", text, re.M))
    # Families of a bgp section, when the bgp scrape could not run (no root).
    bgp_only = set(re.findall(r"^\| `(apilb_bgp_[a-z0-9_]+)` \|", text, re.M)) if not bgp_scraped else set()
    for name in sorted(set(families) - documented):
        problem(f"{path}: {name} is exposed but not in the metrics table")
    for name in sorted(documented - set(families) - tls_only - bgp_only):
        problem(f"{path}: {name} is in the metrics table but apilb does not expose it")
    print(f"ok: {path}: {len(documented & set(families))} families documented", flush=True)


# --------------------------------------------------------------------------
# the real apilb

class Backend:
    """Accepts and closes: enough for a TCP health check."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
                c.close()
            except OSError:
                return




def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def discovery_kubeconfig(tmp: str) -> str:
    """A kubeconfig with a CA made now (openssl CLI) and a token, so that the
    pool's discovery starts and its metrics exist; the backend speaks no TLS,
    so the watch only counts errors."""
    ca = os.path.join(tmp, "ca.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", os.path.join(tmp, "ca.key"), "-out", ca, "-subj", "/CN=apilb-alerts-ca", "-days", "1"],
                   check=True, capture_output=True, timeout=30)
    path = os.path.join(tmp, "kubeconfig")
    with open(path, "w") as f:
        f.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: k, cluster: {{server: "https://127.0.0.1:1", certificate-authority: {ca}}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
current-context: c
""")
    return path


def scrape_running_apilb(binary: str, tmp: str) -> str:
    backend = Backend()
    admin = free_port()
    kubeconfig = discovery_kubeconfig(tmp)
    config = os.path.join(tmp, "apilb.yaml")
    with open(config, "w") as f:
        f.write(f"""workers: 1
listeners:
  - {{name: front, address: "127.0.0.1:{free_port()}", pool: p}}
pools:
  - name: p
    backends:
      - {{name: b0, address: "127.0.0.1:{backend.port}"}}
    health: {{type: tcp, interval: 100ms, timeout: 500ms, rise: 1, fall: 1}}
    discovery: {{kubeconfig: {kubeconfig}}}
admin: {{address: "127.0.0.1:{admin}"}}
vrrp:
  interface: apilbnoif0
  virtual_router_id: 51
  vips: ["198.18.0.100/32"]
  state_dir: {tmp}/state
log: {{level: info}}
""")
    log_path = os.path.join(tmp, "apilb.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "run", "--config", config], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        port = admin
        while time.monotonic() < deadline and proc.poll() is None:
            if "admin: listening on " in open(log_path).read():
                break
            time.sleep(0.02)
        else:
            raise SystemExit(f"FAIL: apilb did not start its admin endpoint; log:\n{open(log_path).read()}")
        while time.monotonic() < deadline and get(port, "/readyz")[0] != 200:
            time.sleep(0.05)
        status, body = get(port, "/metrics")
        if status != 200:
            raise SystemExit(f"FAIL: GET /metrics: {status} {body}")
        if "apilb_backend_last_probe_success{" not in body:
            raise SystemExit(f"FAIL: no probe had completed within 15 s; /metrics:\n{body}")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
        if rc != 0:
            problem(f"apilb exited {rc} after SIGTERM; log:\n{open(log_path).read()}")
        return body
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        backend.sock.close()


def scrape_bgp_apilb(binary: str, tmp: str) -> str | None:
    """/metrics of an apilb with a bgp section, run in a network namespace
    made for it (it puts the VIP on lo and adds a local route: never on the
    host). None, with the reason printed, where namespaces cannot be made."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    curl = shutil.which("curl") or "/usr/bin/curl"
    if os.geteuid() != 0 or not os.path.exists(ip):
        print("not run: the bgp metrics scrape (needs root and iproute2 for a network namespace)", flush=True)
        return None
    ns = f"apilb-alerts-{os.getpid()}"
    if subprocess.run([ip, "netns", "add", ns], capture_output=True, timeout=30).returncode != 0:
        print("not run: the bgp metrics scrape (cannot make a network namespace)", flush=True)
        return None
    proc = None
    try:
        subprocess.run([ip, "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
        admin = free_port()
        config = os.path.join(tmp, "apilb-bgp.yaml")
        with open(config, "w") as f:
            # No backend answers and no FRR runs: the families exist all the same.
            f.write(f"""workers: 1
listeners:
  - {{name: front, address: "198.18.30.100:{free_port()}", pool: p}}
pools:
  - name: p
    backends: [{{name: b0, address: "127.0.0.1:1"}}]
    health: {{type: tcp, interval: 100ms, timeout: 500ms, rise: 1, fall: 1}}
admin: {{address: "127.0.0.1:{admin}"}}
bgp:
  local_as: 64512
  router_id: 198.18.30.11
  peers: [{{address: 198.18.30.1, remote_as: 64500}}]
  vips: [198.18.30.100]
  withdraw_wait: 0s
  vty_socket_dir: {tmp}/no-frr
log: {{level: info}}
""")
        log_path = os.path.join(tmp, "apilb-bgp.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([ip, "netns", "exec", ns, binary, "run", "--config", config], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        body = ""
        while time.monotonic() < deadline and proc.poll() is None:
            r = subprocess.run([ip, "netns", "exec", ns, curl, "-s", "--max-time", "5",
                                f"http://127.0.0.1:{admin}/metrics"], capture_output=True, text=True, timeout=30)
            # The FRR question has failed once (no FRR here): every family is there.
            if r.returncode == 0 and "apilb_bgp_frr_query_failures_total 1" in r.stdout:
                body = r.stdout
                break
            time.sleep(0.05)
        if not body:
            raise SystemExit(f"FAIL: the bgp apilb gave no /metrics within 15 s; log:\n{open(log_path).read()}")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
        if rc != 0:
            problem(f"the bgp apilb exited {rc} after SIGTERM; log:\n{open(log_path).read()}")
        return body
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run([ip, "netns", "del", ns], capture_output=True, timeout=30)


def run_promtool(args: list[str], stdin: str | None = None) -> None:
    r = subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        problem(f"promtool {' '.join(args)} exited {r.returncode}:\n{out}")
    else:
        print(f"ok: promtool {' '.join(args)}" + (f"\n{out}" if out else ""), flush=True)


def main() -> int:
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    binary, rules, metrics_md = sys.argv[1:4]
    promtool_tests = sys.argv[4] if len(sys.argv) == 5 else None
    with tempfile.TemporaryDirectory(prefix="apilb-alerts-") as tmp:
        exposition = scrape_running_apilb(binary, tmp)
        bgp_exposition = scrape_bgp_apilb(binary, tmp)
    families, samples = parse_exposition(exposition)
    if bgp_exposition is not None:
        bgp_families, bgp_samples = parse_exposition(bgp_exposition)
        for name, kind in bgp_families.items():
            if name.startswith("apilb_bgp_"):
                families[name] = kind
        for name, labels in bgp_samples.items():
            if name.startswith("apilb_bgp_"):
                samples[name] = labels
    print(f"scraped {len(families)} families, {len(samples)} sample names", flush=True)
    n = check_rules(rules, families, samples)
    check_metrics_md(metrics_md, families, bgp_exposition is not None)
    if shutil.which("promtool"):
        run_promtool(["check", "rules", rules])
        if promtool_tests:
            run_promtool(["test", "rules", promtool_tests])
        run_promtool(["check", "metrics"], stdin=exposition)
        if bgp_exposition is not None:
            run_promtool(["check", "metrics"], stdin=bgp_exposition)
    else:
        print("not run: promtool check rules / test rules / check metrics (promtool is not installed; "
              "Debian's `prometheus` package has it)", flush=True)
    if problems:
        print(f"{len(problems)} problem(s)", flush=True)
        return 1
    print(f"ok: {n} alert rules use only what apilb exposes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
