"""Integration-test harness: runs the real binaries on 127.0.0.1 with port 0 and --ready-file,
and scripted fake peers built on plain sockets (not on the project's code, so a bug there
cannot hide itself). Every wait polls with a deadline; nothing sleeps for a fixed time."""

import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN_DIR = os.environ.get("PROXY_BIN_DIR", ".build/release")
TSAN = os.environ.get("PROXY_TSAN") == "1"


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    """Polls `pred` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# Leak check at teardown (Envoy's test fixtures do the same: a free leak detector). Before a
# test's proxy stops, every gauge that counts something open must settle back to 0:
#   - /stats gauges whose name ends in `_active` (listener `downstream_cx_active`, cluster
#     `upstream_cx_active`, pool `upstream_rq_active` / `upstream_rq_pending_active`, udp
#     `downstream_sess_active`, ...) and `server.total_connections`;
#   - /clusters: each cluster's breaker counts `cx_open`, `rq_pending_open`, `rq_retry_open`
#     and each host's `cx_active` and `rq_active`.
# Not counted: gauges that describe state rather than open things (`membership_*`,
# `server.concurrency`, `server.days_until_*`, `*_buffered`, `health_check.healthy`, ...),
# `outlier_detection.ejections_active` (an ejection is state that outlives connections), and
# the admin listener's own stats (`http.admin.*`: the request reading them would be open; no
# such gauge exists yet). A proxy started without an admin address is not checked.
# Connections close asynchronously, so the check polls (bounded) until the gauges settle and
# then fails naming the ones that did not. A test that really ends with something open calls
# `Proxy.allow_open_at_end(reason)`; tests otherwise close their sockets first.
LEAK_CHECK_TIMEOUT = 30.0 if TSAN else 10.0
STATE_GAUGES = ("outlier_detection.ejections_active",)
BREAKER_COUNTS = ("cx_open", "rq_pending_open", "rq_retry_open")


def _counts_open_things(name):
    if name.startswith("http.admin.") or name.endswith(STATE_GAUGES):
        return False
    return name.endswith("_active") or name == "server.total_connections"


class Proxy:
    """A running proxy binary. Use as a context manager; stops it by PID. Leaving the `with`
    block normally (or calling `stop()`) first checks that nothing is left open (see above)."""

    def __init__(self, binary, args=None, config=None, tmp=None, env=None):
        self.open_at_end = None
        self.tmp = tmp or tempfile.mkdtemp(prefix="proxy-test-")
        self.ready_file = os.path.join(self.tmp, f"ready-{random.getrandbits(32)}.json")
        self.config_path = None
        argv = [os.path.join(BIN_DIR, binary)]
        if config is not None:
            self.config_path = os.path.join(self.tmp, f"config-{random.getrandbits(32)}.yaml")
            with open(self.config_path, "w") as f:
                f.write(config)
            argv += ["--config", self.config_path]
        argv += list(args or [])
        argv += ["--ready-file", self.ready_file]
        self.stderr_path = os.path.join(self.tmp, f"stderr-{random.getrandbits(32)}.log")
        self.stdout_path = self.stderr_path + ".out"
        self._stderr = open(self.stderr_path, "wb")
        self._stdout = open(self.stdout_path, "wb")
        e = dict(os.environ)
        if TSAN:
            e["TSAN_OPTIONS"] = "halt_on_error=1 exitcode=66 second_deadlock_stack=1"
        e.update(env or {})
        self.proc = subprocess.Popen(argv, stdout=self._stdout, stderr=self._stderr, env=e)
        self.ready = None
        try:
            self.ready = wait_for(self._read_ready, timeout=60 if TSAN else 20, what=f"{binary} ready file")
        except AssertionError:
            self.stop(check_leaks=False)
            raise AssertionError(f"{binary} did not become ready; stderr:\n{self.stderr()}")

    def _read_ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"process exited with {self.proc.returncode}; stderr:\n{self.stderr()}")
        try:
            with open(self.ready_file) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def reread_ready(self):
        self.ready = self._read_ready()
        return self.ready

    def stderr(self):
        if not self._stderr.closed:
            self._stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stdout(self):
        if not self._stdout.closed:
            self._stdout.flush()
        with open(self.stdout_path, "rb") as f:
            return f.read().decode(errors="replace")

    def addr(self, listener="main"):
        host, port = self.ready["listeners"][listener].rsplit(":", 1)
        return host.strip("[]"), int(port)

    @property
    def admin(self):
        return "http://" + self.ready["admin"]

    def get(self, path):
        with urllib.request.urlopen(self.admin + path, timeout=10) as r:
            return r.status, r.read().decode()

    def post(self, path):
        req = urllib.request.Request(self.admin + path, method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()

    def stats(self):
        _, body = self.get("/stats?format=json")
        out = {}
        for s in json.loads(body)["stats"]:
            if "name" in s:
                out[s["name"]] = s["value"]
        return out

    def stat(self, name):
        return self.stats().get(name, 0)

    def wait_stat(self, name, pred, timeout=10.0):
        return wait_for(lambda: pred(self.stat(name)), timeout=timeout, what=f"stat {name}")

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=30):
        return self.proc.wait(timeout=timeout)

    def allow_open_at_end(self, reason):
        """Skips the teardown leak check: this test legitimately ends with something open."""
        assert reason, "say why the test ends with something open"
        self.open_at_end = reason

    def open_gauges(self):
        """What the leak check counts: {name: value} for every non-zero one."""
        out = {n: v for n, v in self.stats().items() if _counts_open_things(n) and v != 0}
        try:
            _, body = self.get("/clusters")
        except urllib.error.HTTPError as e:
            if e.code != 404:  # a binary without clusters (health-checker) has no such page
                raise
            body = ""
        for line in body.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[2] in BREAKER_COUNTS + ("cx_active", "rq_active") and parts[3] not in ("", "0"):
                if parts[2] in ("cx_active", "rq_active") or parts[1] == "default_priority":
                    out[f"clusters:{parts[0]}::{parts[1]}::{parts[2]}"] = int(parts[3])
        return out

    def check_nothing_left_open(self):
        """Waits (bounded) for every open-connection/request/session gauge to reach 0."""
        if self.open_at_end or self.proc.poll() is not None or not (self.ready or {}).get("admin"):
            return
        last = {}

        def settled():
            nonlocal last
            last = self.open_gauges()
            return not last

        try:
            wait_for(settled, timeout=LEAK_CHECK_TIMEOUT, interval=0.05, what="gauges to return to 0")
        except AssertionError:
            listing = ", ".join(f"{n}={v}" for n, v in sorted(last.items()))
            raise AssertionError(f"left open at the end of the test (still non-zero after "
                                 f"{LEAK_CHECK_TIMEOUT:.0f}s): {listing}") from None

    def stop(self, check_leaks=True):
        try:
            if check_leaks:
                self.check_nothing_left_open()
        finally:
            self._stop()

    def _stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        self._stdout.close()
        if TSAN and "ThreadSanitizer" in self.stderr():
            raise AssertionError("ThreadSanitizer report:\n" + self.stderr()[-6000:])

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        # After a failure, report that failure, not what it left open.
        self.stop(check_leaks=exc_type is None)


def connect(addr, timeout=10):
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _tcp_queues(local, remote):
    """(send queue, receive queue) in bytes of this host's TCP socket `local` → `remote` (each
    (ip, port)), from /proc/net/tcp{,6}; None when there is no such socket (closed)."""
    def enc(addr):
        ip, port = addr[0], addr[1]
        if ":" in ip:
            words = struct.unpack("=4I", socket.inet_pton(socket.AF_INET6, ip))
            return "".join(f"{w:08X}" for w in words) + f":{port:04X}", "/proc/net/tcp6"
        return f"{struct.unpack('=I', socket.inet_aton(ip))[0]:08X}:{port:04X}", "/proc/net/tcp"
    (lo, table), (rem, _) = enc(local), enc(remote)
    with open(table) as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == lo and fields[2] == rem and fields[3] != "06":  # 06: TIME_WAIT
                tx, rx = fields[4].split(":")
                return int(tx, 16), int(rx, 16)
    return None


def wait_read_by_peer(sock, timeout=10.0):
    """Waits until the process at the other end of `sock` (a TCP socket to a process on this
    host) has read every byte written on it: our send queue is empty (its kernel has them) and
    its socket's receive queue is empty (its read() took them). Send, wait, send: each piece
    then arrives in a read of its own, with no sleep. Returns at once if the peer closed."""
    me, peer = sock.getsockname()[:2], sock.getpeername()[:2]

    def read():
        mine, theirs = _tcp_queues(me, peer), _tcp_queues(peer, me)
        assert mine is not None, f"no socket {me} -> {peer} in /proc/net/tcp"
        return theirs is None or (mine[0] == 0 and theirs[1] == 0)
    wait_for(read, timeout=timeout, interval=0.001, what=f"the peer {peer} to read what we sent")


def recv_all(sock, timeout=30):
    sock.settimeout(timeout)
    chunks = []
    while True:
        d = sock.recv(1 << 20)
        if not d:
            return b"".join(chunks)
        chunks.append(d)


def recv_exact(sock, n, timeout=30):
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(n - len(buf))
        if not d:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += d
    return bytes(buf)


class Server:
    """A threaded TCP server on 127.0.0.1:0 running `handler(conn, server)` per connection."""

    def __init__(self, handler, backlog=1024, port=0, host="127.0.0.1"):
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))  # a given port: a host restarting where it was
        self.sock.listen(backlog)
        self.addr = self.sock.getsockname()
        self.connections = 0
        self.lock = threading.Lock()
        self.closed = False
        self.results = {}
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @property
    def endpoint(self):
        return f"{self.addr[0]}:{self.addr[1]}"

    def _loop(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            self.handler(c, self)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def echo_handler(c, server):
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        c.sendall(d)


def name_handler(name):
    """Answers every connection with its name, then echoes."""
    def h(c, server):
        c.sendall(name.encode() + b"\n")
        echo_handler(c, server)
    return h


def stream_bytes(seed, total, chunk=1 << 20):
    """A deterministic pseudo-random byte stream, chunk by chunk."""
    r = random.Random(seed)
    left = total
    while left > 0:
        n = min(chunk, left)
        yield r.randbytes(n)
        left -= n


def stream_digest(seed, total):
    h = hashlib.sha256()
    for b in stream_bytes(seed, total):
        h.update(b)
    return h.hexdigest()


def duplex_handler(c, server):
    """Protocol of the byte-exactness tests: the client sends 16 bytes (seed, size to send back),
    then its own stream until EOF; the server sends `size` bytes of stream(seed) at the same
    time and records the sha256 and length of what it received under the seed."""
    hdr = recv_exact(c, 16)
    seed = int.from_bytes(hdr[:8], "big")
    size = int.from_bytes(hdr[8:], "big")

    def send():
        for b in stream_bytes(seed, size):
            c.sendall(b)
        c.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    h = hashlib.sha256()
    n = 0
    while True:
        d = c.recv(1 << 20)
        if not d:
            break
        h.update(d)
        n += len(d)
    t.join()
    with server.lock:
        server.results[seed] = (h.hexdigest(), n)


def duplex_client(addr, seed, up_size, down_size, up_seed):
    """Runs one duplex exchange; returns (digest received, bytes received)."""
    s = connect(addr, timeout=120)
    s.sendall(seed.to_bytes(8, "big") + down_size.to_bytes(8, "big"))

    def send():
        for b in stream_bytes(up_seed, up_size):
            s.sendall(b)
        s.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    h = hashlib.sha256()
    n = 0
    s.settimeout(120)
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        h.update(d)
        n += len(d)
    t.join()
    s.close()
    return h.hexdigest(), n


def port_refuses(addr):
    """True when nothing accepts on `addr` any more."""
    try:
        socket.create_connection(addr, timeout=1).close()
        return False
    except OSError:
        return True


def read_line(sock, timeout=30):
    """Reads up to and including the next newline."""
    sock.settimeout(timeout)
    line = b""
    while not line.endswith(b"\n"):
        d = sock.recv(1)
        if not d:
            raise AssertionError(f"EOF after {line!r}")
        line += d
    return line


def tcp_config(endpoints, workers=1, listener="", tcp="", cluster="", top=""):
    """The usual test config: admin on port 0, listener `main` on 127.0.0.1:0 relaying to
    cluster `backend`. Extra YAML lines go into each block (already indented by the caller
    for `listener`/`cluster`; `tcp` is appended inside the flow mapping). `endpoints=None`
    leaves them out, for clusters that discover them (`discovery: file` in `cluster`)."""
    eps_line = "" if endpoints is None else "    endpoints: [ %s ]" % ", ".join(f'"{e}"' for e in endpoints)
    return f"""
admin: {{ address: 127.0.0.1:0 }}
workers: {workers}
{top}
listeners:
  - name: main
    address: 127.0.0.1:0
{listener}
    tcp: {{ cluster: backend {tcp} }}
clusters:
  - name: backend
{eps_line}
{cluster}
"""


def refused_endpoint():
    """A loopback port with nothing listening (bound then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


def validate(text, binary="tcp-proxy"):
    """Runs `binary --config FILE --validate` on `text`: the CompletedProcess (text mode)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        return subprocess.run([os.path.join(BIN_DIR, binary), "--config", f.name, "--validate"],
                              capture_output=True, text=True, timeout=30)
    finally:
        os.unlink(f.name)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Blackhole:
    """A listening socket whose accept queue is full, so new SYNs are dropped and connects
    hang: a non-answering address on loopback, for connect timeouts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.addr = self.sock.getsockname()
        self.fillers = []
        # Fill the queue; later connects get no SYN-ACK.
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(self.addr)
            except BlockingIOError:
                pass
            self.fillers.append(f)
        # Make sure the queue is really full: a probe must not connect within 300 ms.
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(self.addr)
            connected = True
        except (socket.timeout, OSError):
            connected = False
        probe.close()
        assert not connected, "blackhole accepted a connection"

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.addr[1]}"

    def close(self):
        for f in self.fillers:
            f.close()
        self.sock.close()
