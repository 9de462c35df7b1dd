"""Real Redis peers for redis-proxy's tests: redis-server instances and nutcracker (twemproxy),
each on a free 127.0.0.1 port, stopped by PID."""

import os
import shutil
import socket
import subprocess
import tempfile

from harness import wait_for


def free_ports(n):
    """n distinct free ports (all held until every one is picked, so none repeats)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _free_port():
    return free_ports(1)[0]


def resp(*args):
    """One request as a RESP array of bulk strings."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def _ping(port, password=None):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        if password:
            s.sendall(resp("AUTH", password))
            s.recv(100)
        s.sendall(resp("PING"))  # nutcracker takes no inline commands
        ok = s.recv(10).startswith(b"+PONG")
        s.close()
        return ok
    except OSError:
        return False


def start_nutcracker(exe, conf, port, stats_port, log):
    """nutcracker on `conf` with its stats on 127.0.0.1:`stats_port`; the process once it
    answers, or None when it exited (a port taken meanwhile)."""
    proc = subprocess.Popen([exe, "-c", conf, "-a", "127.0.0.1", "-s", str(stats_port), "-o", log],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _ping(port) or proc.poll() is not None, timeout=20, what="nutcracker")
    except AssertionError:
        proc.kill()
        proc.wait(10)
        raise
    if proc.poll() is not None:
        return None
    return proc


class _Process:
    """A peer process (`self.proc`), stopped by PID when the `with` block ends."""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class RedisServer(_Process):
    """redis-server on a free port, no persistence."""

    def __init__(self, password=None):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        assert os.path.exists(exe), "redis-server is not installed (scripts/install-deps.sh)"
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.password = password
        for _ in range(5):
            self.port = _free_port()
            args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir]
            if password:
                args += ["--requirepass", password]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for(lambda: _ping(self.port, password) or self.proc.poll() is not None, timeout=20, what="redis-server")
            except AssertionError:
                self.proc.kill()
                raise
            if self.proc.poll() is None:
                return
        raise AssertionError("redis-server did not start")

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=10, protocol=2)

    def keys(self):
        return set(self.client().keys("*"))



class Nutcracker(_Process):
    """twemproxy with one pool over `servers` (list of "host:port:weight name" strings)."""

    def __init__(self, servers, hash="fnv1a_64", distribution="ketama", hash_tag=None):
        exe = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
        assert os.path.exists(exe), "nutcracker is not installed (scripts/install-deps.sh)"
        self.dir = tempfile.mkdtemp(prefix="nutcracker-")
        conf = os.path.join(self.dir, "nutcracker.yml")
        # A port picked free can be taken again before nutcracker binds it: a few tries.
        for _ in range(5):
            self.port, stats_port = free_ports(2)
            with open(conf, "w") as f:
                f.write(f"pool:\n  listen: 127.0.0.1:{self.port}\n  redis: true\n  hash: {hash}\n  distribution: {distribution}\n")
                if hash_tag:
                    f.write(f'  hash_tag: "{hash_tag}"\n')
                f.write("  auto_eject_hosts: false\n  servers:\n")
                for sv in servers:
                    f.write(f"    - {sv}\n")
            self.proc = start_nutcracker(exe, conf, self.port, stats_port, os.path.join(self.dir, "log"))
            if self.proc:
                return
        raise AssertionError("nutcracker did not start")

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, protocol=2)

