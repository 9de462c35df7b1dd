"""Ketama placement equals twemproxy's (nutcracker from Debian), through tcp-proxy itself and
in lbtool's ring; a host going down moves only its own keys there too; ring moves ~1/N
(issue 3, Must show 1; issue 8, "Tests that cannot fail")."""

import bisect
import hashlib
import json
import math
import os
import random
import shutil
import socket
import struct
import subprocess
import tempfile

import pytest

from harness import BIN_DIR, Proxy, Server, free_port, name_handler, read_line, refused_endpoint, wait_for

NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
LBTOOL = os.path.join(BIN_DIR, "lbtool")
needs_nutcracker = pytest.mark.skipif(not os.path.exists(NUTCRACKER), reason="nutcracker not installed")

# The weighted servers of both parity tests: s4 (3/7) should get the most keys.
WEIGHTS = {"s1": 1, "s2": 2, "s3": 1, "s4": 3}


def fake_redis(name, seen):
    """Answers every RESP command with a nil bulk and records its key (bytes) under its name.
    Length-driven, so keys may hold any byte, CR and LF included."""
    def h(c, server):
        buf = b""

        def need(n):
            nonlocal buf
            while len(buf) < n:
                d = c.recv(65536)
                if not d:
                    raise EOFError
                buf += d

        def line():
            nonlocal buf
            while b"\r\n" not in buf:
                need(len(buf) + 1)
            i = buf.index(b"\r\n")
            out, buf = buf[:i], buf[i + 2:]
            return out

        try:
            while True:
                head = line()
                assert head.startswith(b"*"), head
                args = []
                for _ in range(int(head[1:])):
                    n = int(line()[1:])
                    need(n + 2)
                    args.append(buf[:n])
                    buf = buf[n + 2:]
                if len(args) >= 2:
                    seen[args[1]] = name
                c.sendall(b"$-1\r\n")
        except EOFError:
            return
    return h


class Nutcracker:
    """nutcracker (twemproxy) with `hash: fnv1a_64`, `distribution: ketama` in front of
    `servers` ({name: (endpoint, weight)})."""

    def __init__(self, servers, eject=False):
        self.port = free_port()
        d = tempfile.mkdtemp(prefix="nutcracker-")
        conf = os.path.join(d, "nutcracker.yml")
        # Ejection after one failure, and no return within the test (10 min).
        ej = "true\n  server_failure_limit: 1\n  server_retry_timeout: 600000" if eject else "false"
        with open(conf, "w") as f:
            f.write(f"""alpha:
  listen: 127.0.0.1:{self.port}
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: {ej}
  servers:
""" + "".join(f"   - {ep}:{w} {n}\n" for n, (ep, w) in servers.items()))
        self.proc = subprocess.Popen([NUTCRACKER, "-c", conf, "-s", str(free_port()), "-a", "127.0.0.1", "-o", os.path.join(d, "log")])

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        try:
            wait_for(up, timeout=10, what="nutcracker")
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except BaseException:
            self.close()
            raise

    def get(self, key):
        """Sends GET key; the reply line (b"$-1" from our fake servers, b"-ERR ..." when the
        host nutcracker chose failed)."""
        self.sock.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
        return read_line(self.sock, timeout=10).rstrip(b"\r\n")

    def close(self):
        if getattr(self, "sock", None):
            self.sock.close()
        self.proc.terminate()
        self.proc.wait(10)


def placement(keys, servers):
    out = subprocess.run([LBTOOL, "place", "ring_hash", ",".join(servers)] + keys, capture_output=True, text=True, check=True)
    return dict(line.split(" ", 1) for line in out.stdout.splitlines())


@needs_nutcracker
def test_ketama_placement_equals_nutcracker():
    seen = {}
    servers = {n: Server(fake_redis(n, seen)) for n in WEIGHTS}
    nc = Nutcracker({n: (servers[n].endpoint, w) for n, w in WEIGHTS.items()})
    try:
        keys = [f"user:{i}" for i in range(2000)] + ["a", "b", "session:42", "k" * 200]
        for k in keys:
            assert nc.get(k.encode()) == b"$-1"
        assert len(seen) == len(keys)
        ours = placement(keys, [f"{servers[n].endpoint}={w}/{n}" for n, w in WEIGHTS.items()])
        mismatches = [k for k in keys if ours[k] != seen[k.encode()]]
        assert not mismatches, f"{len(mismatches)} keys placed differently, e.g. {mismatches[:5]}"
        # Weights shape the shares: s4 (3/7) gets the most.
        counts = {n: sum(1 for k in keys if seen[k.encode()] == n) for n in WEIGHTS}
        assert max(counts, key=counts.get) == "s4"
    finally:
        nc.close()
        for srv in servers.values():
            srv.close()


def source_ips(n, seed):
    """n distinct loopback addresses 127.a.b.c with every byte in 1..127: for such bytes
    tcp-proxy's key (the low 32 bits of FNV-1a 64 over the IP's bytes) equals twemproxy's
    fnv1a_64 of the same bytes (which XORs each byte as a signed char), so nutcracker can
    serve as the oracle; see test_source_ip_bytes_over_127_hash_differently."""
    r = random.Random(seed)
    out = set()
    while len(out) < n:
        out.add(f"127.{r.randint(1, 127)}.{r.randint(1, 127)}.{r.randint(1, 127)}")
    return sorted(out)


def host_from(addr, src):
    """Connects to tcp-proxy at `addr` from the loopback address `src` (any port): the name
    the backend it reached answers with."""
    s = socket.socket()
    try:
        s.settimeout(10)
        s.bind((src, 0))
        s.connect(addr)
        return read_line(s, timeout=10).decode().strip()
    finally:
        s.close()


def nutcracker_places(nc, seen, ips):
    """Where nutcracker puts each IP's 4 raw bytes as a Redis key. A refused host answers one
    key with an error and is ejected (limit 1): that key is asked again on the rebuilt ring."""
    out = {}
    for ip in ips:
        key = socket.inet_aton(ip)
        for _ in range(3):
            if nc.get(key) == b"$-1":
                break
        out[ip] = seen[key]
    return out


def write_endpoints(path, eps, down=()):
    """The file-discovery document: (name, endpoint, weight) hosts, `hash_key` = the name."""
    with open(path + ".tmp", "w") as f:
        json.dump({"endpoints": [{"address": ep, "weight": w, "hash_key": n,
                                  "health_status": "UNHEALTHY" if n in down else "HEALTHY"}
                                 for n, ep, w in eps]}, f)
    os.rename(path + ".tmp", path)


@needs_nutcracker
def test_source_ip_placement_through_tcp_proxy_equals_nutcracker_also_with_a_host_down():
    ips = source_ips(400, seed=8)
    backends = {n: Server(name_handler(n)) for n in WEIGHTS}
    seen = {}
    redis = {n: Server(fake_redis(n, seen)) for n in WEIGHTS}
    tmp = tempfile.mkdtemp(prefix="ring-")
    eps_path = os.path.join(tmp, "endpoints.json")
    eps = [(n, backends[n].endpoint, w) for n, w in WEIGHTS.items()]
    write_endpoints(eps_path, eps)
    cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    tcp: {{ cluster: backend, hash_policy: source_ip }}
clusters:
  - name: backend
    lb_policy: ring_hash
    discovery: file
    path: {eps_path}
"""
    try:
        with Proxy("tcp-proxy", config=cfg) as p:
            p.wait_stat("cluster.backend.membership_healthy", lambda v: v == 4)
            proxied = {ip: host_from(p.addr(), ip) for ip in ips}

            nc = Nutcracker({n: (redis[n].endpoint, w) for n, w in WEIGHTS.items()})
            try:
                twem = nutcracker_places(nc, seen, ips)
            finally:
                nc.close()
            differ = [(ip, proxied[ip], twem[ip]) for ip in ips if proxied[ip] != twem[ip]]
            assert not differ, f"{len(differ)} of {len(ips)} source IPs placed differently (ip, ours, nutcracker): {differ[:5]}"
            # Not one host for everything: the keys spread by weight, s4 (3/7) the most.
            counts = {n: sum(1 for ip in ips if proxied[ip] == n) for n in WEIGHTS}
            assert all(c >= 20 for c in counts.values()), counts
            assert max(counts, key=counts.get) == "s4", counts
            # And a source IP sticks: again from each of 100 of them (a new source port each
            # time, and either worker), the same host.
            again = {ip: host_from(p.addr(), ip) for ip in ips[:100]}
            assert {ip: proxied[ip] for ip in again} == again

            # s2 goes down (the endpoints file says so; the ring is rebuilt over s1, s3, s4).
            write_endpoints(eps_path, eps, down={"s2"})
            p.wait_stat("cluster.backend.membership_healthy", lambda v: v == 3)
            down = {ip: host_from(p.addr(), ip) for ip in ips}

            # nutcracker with s2 refusing ejects it after one failure and rebuilds its ring
            # over the live servers as we do (weights shared among the live ones).
            seen.clear()
            live = {n: (redis[n].endpoint, w) for n, w in WEIGHTS.items() if n != "s2"}
            nc = Nutcracker(dict(live, s2=(refused_endpoint(), WEIGHTS["s2"])), eject=True)
            try:
                twem_down = nutcracker_places(nc, seen, ips)
            finally:
                nc.close()
            differ = [(ip, down[ip], twem_down[ip]) for ip in ips if down[ip] != twem_down[ip]]
            assert not differ, f"{len(differ)} of {len(ips)} source IPs placed differently with s2 down: {differ[:5]}"
            # What that means: s2's keys went to live hosts, and most keys of live hosts stayed.
            assert "s2" not in down.values()
            from_s2 = {down[ip] for ip in ips if proxied[ip] == "s2"}
            assert len(from_s2) >= 2, from_s2
            stayed = [ip for ip in ips if proxied[ip] != "s2" and down[ip] == proxied[ip]]
            moved = [ip for ip in ips if proxied[ip] != "s2" and down[ip] != proxied[ip]]
            print(f"\nwith s2 down: {len(moved)} of {len(moved) + len(stayed)} keys of live hosts moved")
            assert len(moved) <= 0.1 * (len(moved) + len(stayed))
    finally:
        for s in list(backends.values()) + list(redis.values()):
            s.close()


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_adding_a_host_moves_about_one_nth_of_keys(policy):
    keys = [f"key-{i}" for i in range(20000)]
    hosts = [f"10.0.0.{i}:6379" for i in range(1, 10)]
    def place(hs):
        out = subprocess.run([LBTOOL, "place", policy, ",".join(hs)] + keys, capture_output=True, text=True, check=True)
        return dict(line.split(" ", 1) for line in out.stdout.splitlines())
    before, after = place(hosts), place(hosts + ["10.0.0.10:6379"])
    moved = [k for k in keys if before[k] != after[k]]
    share = len(moved) / len(keys)
    to_new = sum(1 for k in moved if after[k] == "10.0.0.10:6379") / len(moved)
    print(f"\n{policy}: adding a 10th host moved {share:.3f} of keys (ideal 0.100), {to_new:.3f} of them to it")
    assert 0.05 < share < 0.16
    # Where moved keys go: on a ring only to the new host (its points are the only new ones);
    # maglev refills its table, so a few slots also change hands between old hosts.
    assert to_new == 1.0 if policy == "ring_hash" else to_new >= 0.9


def f32(x):
    """x rounded to a C float (single precision)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def ketama(servers):
    """twemproxy's ketama continuum for [(name, weight)] live servers, as a lookup function of
    a 32-bit key hash: the reference both nutcracker and our KetamaRing must agree with."""
    total = f32(sum(w for _, w in servers))
    points = []
    for name, w in servers:
        pct = f32(w / total)
        per_server = math.floor(f32(f32(f32(pct * 160) / 4) * len(servers)) + 1e-10) * 4
        for i in range(per_server // 4):
            d = hashlib.md5(f"{name}-{i}".encode()).digest()
            points += [(int.from_bytes(d[4 * x:4 * x + 4], "little"), name) for x in range(4)]
    points.sort()
    values = [v for v, _ in points]
    return lambda h: points[bisect.bisect_left(values, h) % len(points)][1]


def twemproxy_fnv1a_64(data):
    """nutcracker's `hash: fnv1a_64`: 32-bit FNV-1a with truncated 64-bit constants, each byte
    read as a signed char (so a byte >= 0x80 is XORed sign-extended)."""
    h = 0x84222325
    for b in data:
        h ^= b | 0xFFFFFF00 if b >= 0x80 else b
        h = (h * 0x1B3) & 0xFFFFFFFF
    return h


def proxy_source_ip_hash(data):
    """tcp-proxy's source_ip key, as the ring sees it: FNV-1a 64 over the unsigned bytes
    (`fnv1a64(ipBytes)`), truncated to 32 bits by RingHashLoadBalancer."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h & 0xFFFFFFFF


@needs_nutcracker
def test_source_ip_bytes_over_127_hash_differently():
    """Why parity with nutcracker holds only for bytes below 0x80: twemproxy XORs each key
    byte as a signed char, tcp-proxy hashes the unsigned bytes. Both then use the same ketama
    ring, so for IPs with a byte >= 0x80 the two place the same 4 bytes by different hashes.
    Checked against the reference model (which nutcracker itself must match), and the
    difference is shown to be real. If tcp-proxy's key ever becomes twemproxy's hash, the last
    assertion fails: fold these IPs into the parity test above."""
    r = random.Random(80)
    ips = sorted({f"127.{r.randint(128, 255)}.{r.randint(128, 255)}.{r.randint(128, 255)}" for _ in range(300)})
    ring = ketama(list(WEIGHTS.items()))
    backends = {n: Server(name_handler(n)) for n in WEIGHTS}
    seen = {}
    redis = {n: Server(fake_redis(n, seen)) for n in WEIGHTS}
    eps = ", ".join(f'{{ address: "{backends[n].endpoint}", weight: {w}, hash_key: {n} }}' for n, w in WEIGHTS.items())
    cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    tcp: {{ cluster: backend, hash_policy: source_ip }}
clusters:
  - name: backend
    lb_policy: ring_hash
    endpoints: [ {eps} ]
"""
    try:
        with Proxy("tcp-proxy", config=cfg) as p:
            proxied = {ip: host_from(p.addr(), ip) for ip in ips}
        nc = Nutcracker({n: (redis[n].endpoint, w) for n, w in WEIGHTS.items()})
        try:
            twem = nutcracker_places(nc, seen, ips)
        finally:
            nc.close()
        assert all(twem[ip] == ring(twemproxy_fnv1a_64(socket.inet_aton(ip))) for ip in ips)
        assert all(proxied[ip] == ring(proxy_source_ip_hash(socket.inet_aton(ip))) for ip in ips)
        differ = sum(1 for ip in ips if proxied[ip] != twem[ip])
        print(f"\n{differ} of {len(ips)} source IPs with bytes >= 0x80 land elsewhere than nutcracker puts the same bytes")
        assert differ > 0
    finally:
        for s in list(backends.values()) + list(redis.values()):
            s.close()
