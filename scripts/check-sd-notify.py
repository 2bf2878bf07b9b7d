#!/usr/bin/env python3
"""Runs apilb the way systemd/apilb.service does (Type=notify) and checks
the notifications the unit relies on, without systemd.

    check-sd-notify.py APILB_BINARY [USER]

Starts `APILB_BINARY run --config FILE` (as USER when given, like User=) with
NOTIFY_SOCKET pointing at a datagram socket held here, against a TCP backend
on loopback, and expects, each within 10 s:
  READY=1                       after the listener is bound (and it accepts)
                                and the first health round is done (one backend
                                hangs its probe for 1.5 s: READY must not come
                                before that)
  RELOADING=1 + MONOTONIC_USEC  after SIGHUP (ExecReload), then READY=1
  STOPPING=1                    after SIGTERM, then exit status 0
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

binary = sys.argv[1]
user = sys.argv[2] if len(sys.argv) > 2 else None
tmp = tempfile.mkdtemp(prefix="apilb-notify-")
os.chmod(tmp, 0o755)

backend = socket.socket()
backend.bind(("127.0.0.1", 0))
backend.listen(16)
# A backend whose accept queue is full: a probe's SYN is dropped and the
# probe hangs until its timeout.
hanging = socket.socket()
hanging.bind(("127.0.0.1", 0))
hanging.listen(0)
fillers = []
for _ in range(3):
    f = socket.socket()
    f.setblocking(False)
    f.connect_ex(hanging.getsockname())
    fillers.append(f)
time.sleep(0.2)
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
listen_port = probe.getsockname()[1]
probe.close()

config = os.path.join(tmp, "apilb.yaml")
with open(config, "w") as f:
    f.write(f"""listeners:
  - {{name: api, address: "127.0.0.1:{listen_port}", pool: p}}
pools:
  - name: p
    backends:
      - {{name: b1, address: "127.0.0.1:{backend.getsockname()[1]}"}}
      - {{name: b2, address: "127.0.0.1:{hanging.getsockname()[1]}"}}
    health: {{type: tcp, interval: 5s, timeout: 1500ms}}
timeouts: {{drain: 1s}}
""")
os.chmod(config, 0o644)

notify_path = os.path.join(tmp, "notify")
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind(notify_path)
os.chmod(notify_path, 0o777)
notify.settimeout(0.2)

cmd = [binary, "run", "--config", config]
if user:
    # setpriv execs in place (like systemd's User=): the signals reach apilb.
    import pwd
    pw = pwd.getpwnam(user)
    cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"] + cmd
env = dict(os.environ, NOTIFY_SOCKET=notify_path)
started = time.monotonic()
proc = subprocess.Popen(cmd, env=env)
seen = []


def expect(word, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            msg = notify.recv(4096).decode()
        except socket.timeout:
            if proc.poll() is not None and word != "exit":
                break
            continue
        seen.append(msg.replace("\n", " "))
        print("notify:", seen[-1], flush=True)
        if word in msg.split("\n"):
            return msg
    raise SystemExit(f"FAIL: no {word} within {within}s (saw {seen}, exit {proc.poll()})")


try:
    expect("READY=1")
    waited = time.monotonic() - started
    if waited < 1.3:
        raise SystemExit(f"FAIL: READY=1 after {waited:.2f}s, before the hanging first probe (1.5 s) ended")
    print(f"READY=1 after {waited:.2f}s (first round bounded by the 1.5 s probe timeout)")
    c = socket.create_connection(("127.0.0.1", listen_port), timeout=2)
    c.close()
    proc.send_signal(signal.SIGHUP)
    msg = expect("RELOADING=1")
    if "MONOTONIC_USEC=" not in msg:
        raise SystemExit(f"FAIL: RELOADING=1 without MONOTONIC_USEC: {msg!r}")
    expect("READY=1")
    proc.send_signal(signal.SIGTERM)
    expect("STOPPING=1")
    rc = proc.wait(timeout=10)
    if rc != 0:
        raise SystemExit(f"FAIL: exit status {rc} after SIGTERM")
    print("ok: READY, RELOADING/READY around SIGHUP, STOPPING, exit 0")
finally:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    notify.close()
    backend.close()
    for f in fillers:
        f.close()
    hanging.close()
    for n in os.listdir(tmp):
        os.unlink(os.path.join(tmp, n))
    os.rmdir(tmp)
