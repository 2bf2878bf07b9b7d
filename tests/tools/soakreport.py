"""soakreport: the verdict and the summary table of soakload.py (the soak and
the reload storm): what fails a run, with its tolerances, and what is printed."""

from __future__ import annotations

from pathlib import Path


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


def median(xs):
    """The middle value (the upper one of an even count); NaN when empty."""
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def verdict(args, stats, rows: list[dict], idle: dict, after: dict) -> list[str]:
    """The checks that fail the run; returns what failed (empty: passed)."""
    bad = []
    if stats.corrupt:
        bad.append(f"{len(stats.corrupt)} corrupted transfer(s): {stats.corrupt[:5]}")
    if stats.failures:
        bad.append(f"{len(stats.failures)} failure(s) the schedule did not excuse: {stats.failures[:5]}")
    if stats.reloads_failed:
        bad.append(f"{len(stats.reloads_failed)} reload(s) failed: {stats.reloads_failed[:3]}")
    if args.reloads and stats.reloads_ok < args.reloads:
        bad.append(f"only {stats.reloads_ok} of {args.reloads} reloads done in the time")
    # Growth: the median of the last minute's samples against the median of
    # the minute after warm-up (the load keeps the same concurrency).
    warm = [r for r in rows if args.warmup <= r["t_s"] < args.warmup + 60]
    last = [r for r in rows if r["t_s"] >= rows[-1]["t_s"] - 60] if rows else []
    if warm and last and rows[-1]["t_s"] >= args.warmup + 120:
        for key, tol in (("rss_kib", lambda w: max(args.rss_tolerance_kib, w * args.rss_tolerance)),
                         ("fds", lambda w: args.fd_tolerance), ("threads", lambda w: 0)):
            w, l = median([r[key] for r in warm]), median([r[key] for r in last])
            if l > w + tol(w):
                bad.append(f"{key} grew from {w} after warm-up to {l} at the end (tolerance +{tol(w):.0f})")
    # Latency: the first and last windows of args.window seconds after warm-up.
    t_end = max(x[0] for x in stats.latencies) if stats.latencies else 0
    t0 = args.t_start + args.warmup
    if t_end - t0 >= 2 * args.window:
        # "direct" (straight to b1) is no bar: it shows what the machine did.
        for kind, f50, f99 in (("keepalive", 2.0, 3.0), ("newconn", 2.0, 3.0), ("direct", None, None),
                               ("direct_newconn", None, None)):
            first = [x[2] * 1000 for x in stats.latencies if x[1] == kind and t0 <= x[0] < t0 + args.window]
            lastw = [x[2] * 1000 for x in stats.latencies if x[1] == kind and x[0] >= t_end - args.window]
            if first and lastw:
                a50, a99, b50, b99 = pct(first, 50), pct(first, 99), pct(lastw, 50), pct(lastw, 99)
                stats.latency[kind] = (a50, a99, b50, b99)
                if f50 is not None and (b50 > f50 * a50 + 2 or b99 > f99 * a99 + 20):
                    bad.append(f"{kind} latency regressed: p50 {a50:.1f}->{b50:.1f} ms, p99 {a99:.1f}->{b99:.1f} ms "
                               f"(allowed p50 x{f50}+2 ms, p99 x{f99}+20 ms)")
    # After the load: every session closed, descriptors back to the idle count.
    if after.get("sessions_active") not in (0, 0.0):
        bad.append(f"{after.get('sessions_active')} session(s) still open {args.settle:.0f}s after the load stopped")
    if after and idle:
        other_idle, other_after = idle["fds"] - idle["pipe_fds"], after["fds"] - after["pipe_fds"]
        if other_after > other_idle + 4:
            bad.append(f"descriptors other than pipes: {other_idle} before the load, {other_after} after it "
                       "(tolerance +4: probe and admin connections)")
        if after["pipe_fds"] > 2 * 64 * 2:
            bad.append(f"{after['pipe_fds']} pipe descriptors after the load: more than 64 idle pipes per worker")
    if after and idle and after["threads"] != idle["threads"]:
        bad.append(f"threads {idle['threads']} before the load, {after['threads']} after it")
    return bad


def sanitizer_findings(log_path: Path) -> list[str]:
    """An ASan/UBSan/LSan report in apilb's log (when run from a sanitizer build)."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return [f"apilb's log has a sanitizer report ({m}): see {log_path}"
            for m in ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer") if m in text]


def summary(args, stats, rows: list[dict], idle: dict, after: dict, bad: list[str], elapsed: float) -> str:
    """The table printed at the end of a run, and the verdict's reasons."""
    warm = [r for r in rows if args.warmup <= r["t_s"] < args.warmup + 60] or rows[:1]
    last = [r for r in rows if r["t_s"] >= rows[-1]["t_s"] - 60] if rows else []
    lines = [f"{args.mode}: {elapsed / 60:.1f} min, apilb pid {args.apilb_pid}, work dir {args.work}",
             f"{'metric':<34}{'value':>30}"]

    def row(k, v):
        lines.append(f"{k:<34}{v!s:>30}")

    requests = sum(stats.ok[k] for k in ("keepalive", "newconn", "bulk"))
    row("requests ok (keepalive/new/bulk)", f"{requests} ({stats.ok['keepalive']}/{stats.ok['newconn']}/{stats.ok['bulk']})")
    row("control: straight to b1 (ka/new)", f"{stats.ok['direct']}/{stats.ok['direct_newconn']}")
    row("watches complete / events", f"{stats.ok['watches']} / {stats.ok['watch_events']}")
    row("TLS sessions opened", stats.sessions)
    row("bytes checked", f"{stats.bytes_checked} ({stats.bytes_checked / 2**30:.2f} GiB)")
    row("corrupt", len(stats.corrupt))
    row("failed (not excused)", len(stats.failures))
    for k, v in sorted(stats.excused.items()):
        row(f"excused: {k}", v)
    row("excused by backend:class", " ".join(f"{k}={v}" for k, v in sorted(stats.excused_by_backend.items())) or "-")
    row("reloads ok / failed", f"{stats.reloads_ok} / {len(stats.reloads_failed)}")
    row("backend restarts", len(stats.restarts))
    if warm and last:
        for key in ("rss_kib", "fds", "threads"):
            row(f"{key} warm-up -> end (median)", f"{median([r[key] for r in warm])} -> {median([r[key] for r in last])}")
        row("rss_kib min / max", f"{min(r['rss_kib'] for r in rows)} / {max(r['rss_kib'] for r in rows)}")
    for kind, (a50, a99, b50, b99) in stats.latency.items():
        row(f"{kind} p50 first -> last (ms)", f"{a50:.1f} -> {b50:.1f}")
        row(f"{kind} p99 first -> last (ms)", f"{a99:.1f} -> {b99:.1f}")
    if args.reload_delay and stats.reloads_until:
        # Latency with the load alone (the seconds before the first reload)
        # and while the reloads ran.
        q0, q1 = args.t_start + args.reload_delay / 3, stats.reloads_from
        for kind in ("keepalive", "newconn", "direct", "direct_newconn"):
            quiet = [x[2] * 1000 for x in stats.latencies if x[1] == kind and q0 <= x[0] < q1]
            storm = [x[2] * 1000 for x in stats.latencies
                     if x[1] == kind and stats.reloads_from <= x[0] < stats.reloads_until]
            row(f"{kind} p50 no reloads / reloads", f"{pct(quiet, 50):.1f} / {pct(storm, 50):.1f}")
            row(f"{kind} p99 no reloads / reloads", f"{pct(quiet, 99):.1f} / {pct(storm, 99):.1f}")
        row("reloads per second", f"{stats.reloads_ok / (stats.reloads_until - stats.reloads_from):.1f}")
    if idle and after:
        row("idle before / after: fds (pipes)", f"{idle['fds']} ({idle['pipe_fds']}) / {after['fds']} ({after['pipe_fds']})")
        row("idle before / after: threads", f"{idle['threads']} / {after['threads']}")
        row("idle before / after: rss_kib", f"{idle['rss_kib']} / {after['rss_kib']}")
        row("sessions open after the load", after.get("sessions_active"))
    lines.append("RESULT: " + ("PASS" if not bad else "FAIL"))
    lines += [f"  - {b}" for b in bad]
    return "\n".join(lines)
