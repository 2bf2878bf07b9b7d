"""The tables of tests/bench/bench.py: medians, ratios, the issue's targets,
per-round ratios, the other load on the balancer's CPU, and system calls per
unit of work (--syscalls). Pure functions of the samples bench.py collects."""
from __future__ import annotations

import statistics

TARGETS = ("apilb", "haproxy", "nginx", "direct")
BALANCERS = ("apilb", "haproxy", "nginx")
TESTS = ("bulk", "conn_http", "conn_tls", "keepalive", "idle", "storm", "instructions", "scrape")

# (test, key, label, unit, better) ; better: "high" or "low"
ROWS = [
    ("bulk", "gbps", "Bulk throughput, iperf3 -P 4", "Gbit/s", "high"),
    ("bulk", "cpu_s_per_gb", "Bulk: balancer CPU per GB", "CPU s/GB", "low"),
    ("bulk", "user_per_unit", "Bulk: balancer user CPU per GB", "CPU s/GB", "low"),
    ("bulk", "sys_per_unit", "Bulk: balancer kernel CPU per GB", "CPU s/GB", "low"),
    ("bulk", "lb_cpu_busy_pct", "Bulk: balancer CPU busy", "%", None),
    ("bulk", "gen_cpu_per_unit", "Bulk: load CPU per GB (iperf3 both ends)", "CPU s/GB", "low"),
    ("bulk", "lb_threads", "Balancer threads (all its processes)", "count", None),
    ("conn_http", "rps", "New connections/s, HTTP, Connection: close", "conn/s", "high"),
    ("conn_http", "cpu_us_per_req", "New HTTP connections: balancer CPU per conn", "CPU µs", "low"),
    ("conn_http", "user_per_unit", "New HTTP connections: balancer user CPU per conn", "CPU µs", "low"),
    ("conn_http", "sys_per_unit", "New HTTP connections: balancer kernel CPU per conn", "CPU µs", "low"),
    ("conn_http", "lb_cpu_busy_pct", "New HTTP connections: balancer CPU busy", "%", None),
    ("conn_http", "gen_cpu_per_unit", "New HTTP connections: load CPU per conn (wrk, backends)", "CPU µs", "low"),
    ("conn_tls", "rps", "New connections/s, TLS 1.3 full handshake", "conn/s", "high"),
    ("conn_tls", "cpu_us_per_req", "New TLS connections: balancer CPU per conn", "CPU µs", "low"),
    ("conn_tls", "lb_cpu_busy_pct", "New TLS connections: balancer CPU busy", "%", None),
    ("keepalive", "rps", "Keep-alive requests/s, 64 connections", "req/s", "high"),
    ("keepalive", "p50_ms", "Keep-alive latency p50", "ms", "low"),
    ("keepalive", "p99_ms", "Keep-alive latency p99", "ms", "low"),
    ("keepalive", "cpu_us_per_req", "Keep-alive: balancer CPU per request", "CPU µs", "low"),
    ("keepalive", "user_per_unit", "Keep-alive: balancer user CPU per request", "CPU µs", "low"),
    ("keepalive", "sys_per_unit", "Keep-alive: balancer kernel CPU per request", "CPU µs", "low"),
    ("keepalive", "lb_cpu_busy_pct", "Keep-alive: balancer CPU busy", "%", None),
    ("keepalive", "gen_cpu_per_unit", "Keep-alive: load CPU per request (wrk, backends)", "CPU µs", "low"),
    ("idle", "rss_per_conn_5000", "Idle: balancer RSS per connection, 5000 conns", "bytes", "low"),
    ("idle", "rss_per_conn_9000", "Idle: balancer RSS per connection, 9000 conns", "bytes", "low"),
    ("idle", "kernel_slab_9000", "Idle: kernel socket slab per connection (all sockets on the path), 9000",
     "bytes", "low"),
    ("idle", "kernel_slab_9000-direct", "Idle: the balancer's two sockets' kernel slab (above, less direct)",
     "bytes", "low"),
    ("idle", "kernel_tcpmem_9000", "Idle: kernel TCP buffers per connection, 9000", "bytes", "low"),
    ("storm", "complete_ms", "Storm: 5000 clients at once, all answered after", "ms", "low"),
    ("storm", "p99_ms", "Storm: per-connection p99", "ms", "low"),
    ("storm", "listen_overflows", "Storm: accept-queue overflows (kernel ListenOverflows)", "count", "low"),
    ("instructions", "ir_per_conn", "Instructions per connection (callgrind, 64 KiB each)", "Ir", "low"),
    ("scrape", "scrape_p50_ms_0", "GET /metrics latency p50, no sessions", "ms", "low"),
    ("scrape", "scrape_cpu_us_per_scrape_0", "GET /metrics: apilb CPU per scrape, no sessions", "CPU µs", "low"),
    ("scrape", "scrape_p50_ms_9000", "GET /metrics latency p50, 9000 idle sessions", "ms", "low"),
    ("scrape", "scrape_cpu_us_per_scrape_9000", "GET /metrics: apilb CPU per scrape, 9000 idle sessions",
     "CPU µs", "low"),
]

# (test, key, comparison target, factor, rule): issue 17's targets (the same
# run, the same configuration, ratios); idle memory in bytes per session.
GOALS = [
    ("conn_http", "rps", "nginx", 1.15, ">="),
    ("keepalive", "rps", "nginx", 1.15, ">="),
    ("keepalive", "p99_ms", "nginx", 1.0, "<="),
    ("bulk", "gbps", "nginx", 1.1, ">="),
    ("conn_http", "cpu_us_per_req", "nginx", 0.85, "<="),
    ("keepalive", "cpu_us_per_req", "nginx", 0.85, "<="),
    ("bulk", "cpu_s_per_gb", "nginx", 0.85, "<="),
    ("storm", "complete_ms", "direct", 1.05, "<="),
    ("idle", "rss_per_conn_5000", None, 1126, "<="),
    ("idle", "rss_per_conn_9000", None, 1126, "<="),
]


def value(sample: dict, key: str):
    if key == "listen_overflows":
        return sample.get("tcp", {}).get("ListenOverflows")
    if key.startswith("kernel_slab_"):
        return sample.get(f"kernel_per_conn_{key.rsplit('_', 1)[1]}", {}).get("Slab")
    if key.startswith("kernel_tcpmem_"):
        return sample.get(f"kernel_per_conn_{key.rsplit('_', 1)[1]}", {}).get("tcp_mem")
    return sample.get(key)


def median_of(samples: list[dict], key: str):
    vals = [value(s, key) for s in samples]
    vals = [v for v in vals if v is not None]
    return (statistics.median(vals), vals) if vals else (None, [])


def fmt(v, unit: str) -> str:
    if v is None:
        return "–"
    if unit in ("Gbit/s",):
        return f"{v:.2f}"
    if unit in ("CPU s/GB",):
        return f"{v:.3f}"
    if unit in ("ms", "CPU µs"):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    if unit == "%":
        return f"{v:.0f}"
    return f"{v:,.0f}"


def table(samples) -> tuple[str, list[str]]:
    lines = ["| Measure | unit | apilb | HAProxy | nginx | direct | apilb/direct | apilb/HAProxy | apilb/nginx |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for test, key, label, unit, _ in ROWS:
        if key.endswith("-direct"):
            base = median_of(samples[test]["direct"], key[:-7])[0]
            med = {t: median_of(samples[test][t], key[:-7])[0] for t in BALANCERS}
            med = {t: (v - base if v is not None and base is not None else None) for t, v in med.items()}
            med["direct"] = None
        else:
            med = {t: median_of(samples[test][t], key)[0] for t in TARGETS}
        if all(v is None for v in med.values()):
            continue
        a = med["apilb"]

        def ratio(o):
            return f"{a / o:.2f}" if a is not None and o else "–"

        lines.append(f"| {label} | {unit} | " + " | ".join(fmt(med[t], unit) for t in TARGETS) +
                     f" | {ratio(med['direct'])} | {ratio(med['haproxy'])} | {ratio(med['nginx'])} |")
    goals = []
    for test, key, other, factor, rule in GOALS:
        a = median_of(samples[test]["apilb"], key)[0]
        label = next(r[2] for r in ROWS if r[0] == test and r[1] == key)
        if other is None:
            ref, desc = factor, f"≤ {factor:.0f} bytes"
        else:
            o = median_of(samples[test][other], key)[0]
            ref = o * factor if o is not None else None
            desc = f"{rule.replace('>=', '≥').replace('<=', '≤')} {factor} × {other}"
        if a is None or ref is None:
            status = "not measured"
        else:
            met = a >= ref if rule == ">=" else a <= ref
            have = f"{a / (ref / factor):.2f} ×" if other else f"{a:.0f} bytes"
            status = f"{'met' if met else 'MISSED'} ({have})"
        goals.append(f"| {label} | {desc} | {status} |")
    return "\n".join(lines), goals


def round_ratios(samples) -> str:
    """apilb against the reference of each target, round by round: how much
    of the median's verdict a single noisy round could change."""
    lines = ["Per round, apilb divided by the reference measured in the same round:", "",
             "| Measure | reference | rounds 1, 2, ... |", "|---|---|---|"]
    for test, key, other, _factor, _rule in GOALS:
        if other is None:
            continue
        by_round = {s["round"]: value(s, key) for s in samples[test][other]}
        ratios = []
        for s in samples[test]["apilb"]:
            a, o = value(s, key), by_round.get(s["round"])
            if a is not None and o:
                ratios.append(f"{a / o:.2f}")
        label = next(r[2] for r in ROWS if r[0] == test and r[1] == key)
        lines.append(f"| {label} | {other} | {', '.join(ratios) or '–'} |")
    return "\n".join(lines)


# The measures engine_table compares: the issue's, then what explains them.
ENGINE_ROWS = (("conn_http", "rps"), ("conn_http", "cpu_us_per_req"), ("conn_http", "sys_per_unit"),
               ("keepalive", "rps"), ("keepalive", "p99_ms"), ("keepalive", "cpu_us_per_req"),
               ("keepalive", "sys_per_unit"), ("bulk", "gbps"), ("bulk", "cpu_s_per_gb"),
               ("conn_tls", "cpu_us_per_req"), ("storm", "complete_ms"), ("idle", "rss_per_conn_9000"))


def engine_table(samples, first: str, other: str) -> str:
    """apilb on engine `other` (target apilb-OTHER) against apilb on `first`
    (target apilb), measured in the same rounds: medians and the ratio in
    each round, then the same against nginx."""
    alt = f"apilb-{other}"
    lines = [f"apilb with relay.io {other} against {first}, the same rounds (ratios {other}/{first}; "
             f"each against nginx's in its round):", "",
             f"| Measure | unit | {first} | {other} | {other}/{first} | per round | "
             f"{first}/nginx | {other}/nginx |", "|---|---|--:|--:|--:|---|--:|--:|"]
    for test, key in ENGINE_ROWS:
        row = [r for r in ROWS if r[0] == test and r[1] == key]
        if not row or test not in samples or alt not in samples[test]:
            continue
        label, unit = row[0][2], row[0][3]
        a, b = median_of(samples[test]["apilb"], key)[0], median_of(samples[test][alt], key)[0]
        if a is None and b is None:
            continue

        def by_round(target):
            return {s["round"]: value(s, key) for s in samples[test][target]}

        ra, rb, rn = by_round("apilb"), by_round(alt), by_round("nginx")
        per_round = [f"{rb[r] / ra[r]:.2f}" for r in sorted(ra) if ra[r] and rb.get(r) is not None]

        def vs_nginx(rx):
            vals = [rx[r] / rn[r] for r in rx if rx[r] is not None and rn.get(r)]
            return f"{statistics.median(vals):.2f}" if vals else "–"

        ratio = f"{b / a:.2f}" if a and b is not None else "–"
        lines.append(f"| {label} | {unit} | {fmt(a, unit)} | {fmt(b, unit)} | {ratio} | {', '.join(per_round) or '–'} "
                     f"| {vs_nginx(ra)} | {vs_nginx(rb)} |")
    return "\n".join(lines)


def noise_table(samples) -> str:
    """How busy the balancer's CPU was with other people's work during each
    test (median %): the direct column is the machine's background load."""
    lines = ["Other load on the balancer's CPU during the measurements (median %; for direct, "
             "everything on that CPU is other load):", "",
             "| Test | apilb | HAProxy | nginx | direct |", "|---|--:|--:|--:|--:|"]
    for test in TESTS:
        med = [median_of(samples[test][t], "foreign_lb_cpu_pct")[0] for t in TARGETS]
        if all(v is None for v in med):
            continue
        lines.append(f"| {test} | " + " | ".join("–" if v is None else f"{v:.0f}" for v in med) + " |")
    return "\n".join(lines)




# (test, unit of work) for the system-call table
SYSCALL_UNITS = (("conn_http", "connection"), ("conn_tls", "connection"), ("keepalive", "request"),
                 ("bulk", "GB"))


def count_cell(v) -> str:
    """A count per unit of work in a table: two decimals below 100."""
    return "–" if v is None else f"{v:,.2f}" if v < 100 else f"{v:,.0f}"


def syscall_table(samples) -> str:
    """System calls per unit of work (medians over the rounds), every call
    that any balancer makes at least once per 100 units, the most frequent
    first, with the context switches."""
    lines = ["System calls of the balancer per unit of work (perf stat on the syscalls tracepoints, "
             "all its threads; medians):", "",
             "| Test | per | system call | apilb | HAProxy | nginx | apilb/nginx |", "|---|---|---|--:|--:|--:|--:|"]
    for test, unit in SYSCALL_UNITS:
        per = {t: [s["syscalls_per_unit"] for s in samples[test][t] if "syscalls_per_unit" in s] for t in BALANCERS}
        if not any(per.values()):
            continue
        names = {k for t in BALANCERS for d in per[t] for k in d}

        def med(t, k):
            vals = [d.get(k, 0.0) for d in per[t]]
            return statistics.median(vals) if vals else None

        floor = 1e-2 if unit != "GB" else 1.0
        rest = sorted((k for k in names if k not in ("total", "context_switches") and
                       max((med(t, k) or 0.0) for t in BALANCERS) >= floor),
                      key=lambda k: -max((med(t, k) or 0.0) for t in BALANCERS))
        for k in ("total", "context_switches", *rest):
            m = {t: med(t, k) for t in BALANCERS}
            a, n = m["apilb"], m["nginx"]
            ratio = f"{a / n:.2f}" if a is not None and n else "–"
            label = {"total": "**all**", "context_switches": "(context switches)"}.get(k, k)
            lines.append(f"| {test} | {unit} | {label} | " +
                         " | ".join(count_cell(m[t]) for t in BALANCERS) + f" | {ratio} |")
    return "\n".join(lines)


def load_syscall_table(samples) -> str:
    """What each balancer makes the other side do: the system calls and
    context switches of everything on the load CPU (load generator and
    backends) per unit of work, with direct (no balancer) as the reference."""
    lines = ["System calls and context switches on the load CPU (load generator and backends) per unit of "
             "work (perf stat on that CPU; medians):", "",
             "| Test | per | count | apilb | HAProxy | nginx | direct | apilb/nginx |",
             "|---|---|---|--:|--:|--:|--:|--:|"]
    for test, unit in SYSCALL_UNITS:
        per = {t: [s["gen_syscalls_per_unit"] for s in samples.get(test, {}).get(t, [])
                   if "gen_syscalls_per_unit" in s] for t in TARGETS}
        if not any(per.values()):
            continue
        for k, label in (("total", "system calls"), ("context_switches", "context switches")):
            m = {t: statistics.median([d.get(k, 0.0) for d in per[t]]) if per[t] else None for t in TARGETS}
            a, n = m["apilb"], m["nginx"]
            ratio = f"{a / n:.2f}" if a is not None and n else "–"
            lines.append(f"| {test} | {unit} | {label} | " +
                         " | ".join(count_cell(m[t]) for t in TARGETS) + f" | {ratio} |")
    return "\n".join(lines)
