#!/usr/bin/env python3
"""The status page in a real headless Chromium, driven over the DevTools
protocol (stdlib only: a minimal WebSocket client). Starts the real apilb
with two loopback backends, loads http://ADMIN/, and checks that the page
shows both backends, has no console errors or exceptions, and turns a
backend red without a reload when it goes down; the pool has discovery on
(a kubeconfig from mkcerts.sh; the backends do not speak TLS, so the watch
backs off) and the page shows its block with the seed. Saves a screenshot.

Usage: status_page_test.py APILB_BIN SCREENSHOT_PATH MKCERTS_SH
Exit 0 pass, 1 fail, 77 skip (meson's skip code) when chromium is missing.
No traffic leaves 127.0.0.1; every wait is bounded.
"""
import base64, json, os, re, shutil, signal, socket, struct, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from test_ports import free_port  # noqa: E402  (claims the port; see tests/tools/test_ports.py)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DEADLINE = time.monotonic() + 60


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)




class Backend:
    """A TCP server that accepts and closes; close() makes its port refuse."""
    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
                c.close()
            except OSError:
                return

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class WebSocket:
    """Just enough RFC 6455 for the DevTools protocol: text frames, client masking."""
    def __init__(self, url):
        assert url.startswith("ws://")
        hostport, path = url[5:].split("/", 1)
        host, port = hostport.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(1)
            if not chunk:
                fail("DevTools websocket handshake: connection closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n")[0]:
            fail("DevTools websocket handshake refused: " + head.decode(errors="replace"))
        self.next_id = 0
        self.events = []

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                fail("DevTools websocket closed")
            buf += chunk
        return buf

    def send(self, obj):
        data = json.dumps(obj).encode()
        header = bytes([0x81])
        n = len(data)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.s.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            payload = self._recv_exact(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                fail("DevTools websocket closed by the browser")
            if opcode in (0x9, 0xA):
                continue
            message += payload
            if b0 & 0x80:
                return json.loads(message)

    def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        self.send({"id": my_id, "method": method, "params": params})
        while time.monotonic() < DEADLINE:
            msg = self.recv()
            if msg.get("id") == my_id:
                if "error" in msg:
                    fail(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        fail(f"{method}: no answer in time")


def evaluate(ws, expr):
    r = ws.call("Runtime.evaluate", expression=expr, returnByValue=True)
    if "exceptionDetails" in r:
        fail(f"evaluate {expr}: {r['exceptionDetails']}")
    return r["result"].get("value")


def wait_page(ws, expr, what, timeout=15):
    end = min(DEADLINE, time.monotonic() + timeout)
    while time.monotonic() < end:
        if evaluate(ws, expr):
            return
        time.sleep(0.1)
    fail("the page never showed " + what + "; body: " + str(evaluate(ws, "document.body.innerText")))


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 64
    apilb_bin, screenshot, mkcerts = sys.argv[1], sys.argv[2], sys.argv[3]
    if not CHROMIUM:
        print("SKIP: chromium is not installed (apt-get install chromium); the status page was not tested in a browser")
        return 77
    tmp = tempfile.mkdtemp(prefix="apilb-browser-")
    procs = []
    b0, b1 = Backend(), Backend()
    try:
        listen, admin = free_port(), free_port()
        certs = os.path.join(tmp, "certs")
        subprocess.run(["bash", mkcerts, certs], check=True, timeout=60)
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with open(kubeconfig, "w") as f:
            f.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: k, cluster: {{server: "https://127.0.0.1:6443", certificate-authority: {certs}/ca.crt}}}}]
users: [{{name: u, user: {{client-certificate: {certs}/client.crt, client-key: {certs}/client.key}}}}]
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
current-context: c
""")
        cfg = os.path.join(tmp, "apilb.yaml")
        with open(cfg, "w") as f:
            f.write(f"""workers: 2
listeners:
  - {{name: front, address: "127.0.0.1:{listen}", pool: control-plane}}
pools:
  - name: control-plane
    health: {{type: tcp, interval: 200ms, timeout: 500ms, rise: 1, fall: 1}}
    backends:
      - {{name: cp1, address: "127.0.0.1:{b0.port}"}}
      - {{name: cp2, address: "127.0.0.1:{b1.port}"}}
    discovery: {{kubeconfig: {kubeconfig}}}
admin:
  address: "127.0.0.1:{admin}"
""")
        log = open(os.path.join(tmp, "apilb.log"), "w")
        apilb = subprocess.Popen([apilb_bin, "run", "--config", cfg], stdout=log, stderr=subprocess.STDOUT)
        procs.append(apilb)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", admin), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            fail("apilb's admin endpoint never came up")

        profile = os.path.join(tmp, "profile")
        chrome = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                   "--disable-extensions", "--disable-background-networking", "--disable-sync",
                                   "--disable-component-update", "--disable-default-apps",
                                   "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                                   f"--user-data-dir={profile}", "--window-size=1280,800", "about:blank"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(chrome)
        ws_url = None
        while time.monotonic() < DEADLINE and ws_url is None:
            line = chrome.stderr.readline()
            if not line:
                fail("chromium exited before it opened the DevTools port")
            if "DevTools listening on " in line:
                ws_url = line.split("DevTools listening on ", 1)[1].strip()
        threading.Thread(target=lambda: [None for _ in chrome.stderr], daemon=True).start()
        browser = WebSocket(ws_url)
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        port = ws_url.split("//", 1)[1].split("/", 1)[0]
        ws = WebSocket(f"ws://{port}/devtools/page/{target}")
        ws.call("Runtime.enable")
        ws.call("Log.enable")
        ws.call("Page.enable")
        ws.call("Page.navigate", url=f"http://127.0.0.1:{admin}/")

        wait_page(ws, "document.querySelectorAll('tr[data-backend]').length === 2", "two backend rows")
        # Discovery: the backends refuse TLS, so the watch backs off and counts errors.
        disc = "document.querySelector('[data-discovery=\"control-plane\"]')"
        wait_page(ws, disc + " && " + disc + ".textContent.includes('errors ') && !" + disc +
                  ".textContent.includes('errors 0')", "the discovery block with errors counted")
        text = evaluate(ws, disc + ".textContent")
        for want in ("Set fromthe seed", f"cp1 127.0.0.1:{b0.port}", "Discoverednone yet", "State filenone",
                     "last sync never", "API server127.0.0.1:", "Last errorTLS to 127.0.0.1:"):
            if want not in text:
                fail(f"the discovery block lacks {want!r}: {text}")
        # The last error is one line with its age.
        if not re.search(r"Last errorTLS to 127\.0\.0\.1:[0-9]+: [^\n]* \([0-9]+s ago\)", text):
            fail(f"the discovery block's last error lacks its text or age: {text}")
        wait_page(ws, "[...document.querySelectorAll('tr[data-backend]')].every(r => r.className === 'up')",
                  "both backends up")
        # The backend goes down; the open page must turn it red on its own.
        b1.close()
        wait_page(ws, "document.querySelector('tr[data-backend=\"cp2\"]').className === 'down'", "cp2 down")
        # The reason says why (a probe racing the close may first see a
        # reset; the next ones are refused, and the page follows).
        wait_page(ws, "document.querySelector('tr[data-backend=\"cp2\"] .reason').textContent.includes('tcp_refused')",
                  "cp2's reason tcp_refused")
        colour = evaluate(ws, "getComputedStyle(document.querySelector('tr[data-backend=\"cp2\"] .dot')).backgroundColor")
        if colour != "rgb(248, 81, 73)":
            fail("cp2's dot is not red: " + colour)
        wait_page(ws, "document.getElementById('eventlist').textContent.includes('cp2')", "the state change in the list")
        shot = ws.call("Page.captureScreenshot", format="png")["data"]
        os.makedirs(os.path.dirname(os.path.abspath(screenshot)), exist_ok=True)
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot))
        print("screenshot saved: " + os.path.abspath(screenshot), flush=True)

        # Drain what arrived while we waited and look for console errors.
        errors = []
        for ev in ws.events:
            m = ev.get("method")
            if m == "Runtime.exceptionThrown":
                errors.append(json.dumps(ev["params"]["exceptionDetails"])[:300])
            elif m == "Runtime.consoleAPICalled" and ev["params"]["type"] in ("error", "assert"):
                errors.append(json.dumps(ev["params"]["args"])[:300])
            elif m == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error":
                errors.append(ev["params"]["entry"].get("text", "")[:300])
        if errors:
            fail("console errors on the status page:\n" + "\n".join(errors))
        apilb.send_signal(signal.SIGTERM)
        if apilb.wait(15) != 0:
            fail(f"apilb exited with {apilb.returncode}")
        log.close()
        text = open(os.path.join(tmp, "apilb.log")).read()
        for marker in ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "ThreadSanitizer:"):
            if marker in text:
                fail("apilb reported a sanitizer finding:\n" + text[max(0, text.find(marker) - 200):][:3000])
        print("PASS: the status page showed both backends and the pool's discovery, turned cp2 red (tcp_refused) "
              "without a reload, and logged no console error", flush=True)
        return 0
    finally:
        b0.close()
        b1.close()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
