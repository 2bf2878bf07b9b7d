"""free_port() for the Python tests, as tests/integration/harness.cpp does it.

A port for a server the test starts later (apilb's listener or admin
endpoint) that no other test can take meanwhile: it lies below the kernel's
ephemeral range, which every port-0 bind and connect draws from, and this
process claims it (an abstract Unix socket named after it, the same name the
C++ harness uses) until it exits, so tests running at the same time never
get the same port.
"""
import itertools, random, socket

_claims = []  # the claiming sockets, open for the life of the process


def _port_range():
    lo, hi = 32768, 60999
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        pass
    span = 8192
    if lo >= 1024 + span:
        return lo - span, lo
    if hi + span <= 65535:
        return hi + 1, hi + 1 + span
    return lo, hi + 1


def _claim(port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(f"\0apilb-test-port-{port}")
    except OSError:
        s.close()
        return False
    _claims.append(s)
    return True


def _bindable(ip, port):
    with socket.socket() as s:
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


_first, _end = _port_range()
_next = itertools.count(random.randrange(_end - _first))


def free_port(ip="127.0.0.1"):
    """A port free on `ip`, claimed by this process (see the module doc)."""
    span = _end - _first
    for _ in range(span):
        port = _first + next(_next) % span
        if _claim(port) and _bindable(ip, port):
            return port
    raise SystemExit(f"FAIL: no port in {_first}-{_end - 1} is both unclaimed by other tests and free on {ip}")
