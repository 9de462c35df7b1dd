"""Ketama placement equals twemproxy's (nutcracker from Debian); ring moves ~1/N (issue 3, Must show 1)."""

import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from harness import BIN_DIR, Server, free_port, wait_for

NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
LBTOOL = os.path.join(BIN_DIR, "lbtool")


def fake_redis(name, seen):
    """Answers every RESP command with a nil bulk and records the key under its name."""
    def h(c, server):
        buf = b""
        while True:
            d = c.recv(65536)
            if not d:
                return
            buf += d
            while True:
                # *2\r\n$3\r\nGET\r\n$N\r\nKEY\r\n
                parts = buf.split(b"\r\n")
                if len(parts) < 6 or not buf.startswith(b"*"):
                    break
                n = int(parts[0][1:])
                if len(parts) < 1 + 2 * n + 1:
                    break
                args = [parts[2 + 2 * i] for i in range(n)]
                consumed = sum(len(p) + 2 for p in parts[: 1 + 2 * n])
                buf = buf[consumed:]
                if len(args) >= 2:
                    seen[args[1].decode()] = name
                c.sendall(b"$-1\r\n")
    return h


def placement(keys, servers):
    out = subprocess.run([LBTOOL, "place", "ring_hash", ",".join(servers)] + keys, capture_output=True, text=True, check=True)
    return dict(line.split(" ", 1) for line in out.stdout.splitlines())


@pytest.mark.skipif(not os.path.exists(NUTCRACKER), reason="nutcracker not installed")
def test_ketama_placement_equals_nutcracker():
    seen = {}
    weights = {"s1": 1, "s2": 2, "s3": 1, "s4": 3}
    servers = {n: Server(fake_redis(n, seen)) for n in weights}
    port = free_port()
    d = tempfile.mkdtemp(prefix="nutcracker-")
    conf = os.path.join(d, "nutcracker.yml")
    with open(conf, "w") as f:
        f.write(f"""alpha:
  listen: 127.0.0.1:{port}
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  servers:
""" + "".join(f"   - {servers[n].endpoint}:{w} {n}\n" for n, w in weights.items()))
    proc = subprocess.Popen([NUTCRACKER, "-c", conf, "-s", str(free_port()), "-a", "127.0.0.1", "-o", os.path.join(d, "log")])
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait_for(up, timeout=10, what="nutcracker")
        keys = [f"user:{i}" for i in range(2000)] + ["a", "b", "session:42", "k" * 200]
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        for k in keys:
            s.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k.encode()))
            assert s.recv(100) == b"$-1\r\n"
        s.close()
        assert len(seen) == len(keys)
        ours = placement(keys, [f"{servers[n].endpoint}={w}/{n}" for n, w in weights.items()])
        mismatches = [k for k in keys if ours[k] != seen[k]]
        assert not mismatches, f"{len(mismatches)} keys placed differently, e.g. {mismatches[:5]}"
        # Weights shape the shares: s4 (3/7) gets the most.
        counts = {n: sum(1 for k in keys if seen[k] == n) for n in weights}
        assert max(counts, key=counts.get) == "s4"
    finally:
        proc.terminate()
        proc.wait(10)
        for srv in servers.values():
            srv.close()


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_adding_a_host_moves_about_one_nth_of_keys(policy):
    keys = [f"key-{i}" for i in range(20000)]
    hosts = [f"10.0.0.{i}:6379" for i in range(1, 10)]
    def place(hs):
        out = subprocess.run([LBTOOL, "place", policy, ",".join(hs)] + keys, capture_output=True, text=True, check=True)
        return dict(line.split(" ", 1) for line in out.stdout.splitlines())
    before, after = place(hosts), place(hosts + ["10.0.0.10:6379"])
    moved = sum(1 for k in keys if before[k] != after[k])
    share = moved / len(keys)
    print(f"\n{policy}: adding a 10th host moved {share:.3f} of keys (ideal 0.100)")
    assert 0.05 < share < 0.16
    # Every moved key moved to the new host.
    assert all(after[k] == "10.0.0.10:6379" for k in keys if before[k] != after[k]) or policy == "maglev"
