"""Active health checks, the health-checker binary and file discovery (issue 3, Must show 3, 4)."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading

import pytest

from harness import BIN_DIR, Proxy, Server, connect, free_port, name_handler, recv_exact, refused_endpoint, tcp_config, wait_for

HC = os.path.join(BIN_DIR, "health-checker")


def once(*args):
    r = subprocess.run([HC, "--once", *args], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout, r.stderr


def http_server(status=200):
    def h(c, server):
        c.recv(65536)
        code = server.results.get("status", status)
        c.sendall(f"HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
    return Server(h)


class UdpResponder:
    def __init__(self, reply=b"pong"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = reply
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(2048)
            except OSError:
                return
            if data == b"ping":
                self.sock.sendto(self.reply, peer)

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def redis():
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(exe):
        pytest.skip("redis-server not installed")
    port = free_port()
    d = tempfile.mkdtemp(prefix="redis-")
    p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            s.sendall(b"PING\r\n")
            ok = s.recv(10).startswith(b"+PONG")
            s.close()
            return ok
        except OSError:
            return False
    wait_for(up, timeout=20, what="redis-server")
    yield f"127.0.0.1:{port}"
    p.terminate()
    p.wait(10)


def redis_cmd(endpoint, *args):
    host, port = endpoint.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)).encode())
    r = s.recv(100)
    s.close()
    return r


def test_once_exit_codes_for_all_four_cases():
    with Server(name_handler("a")) as a, Server(name_handler("b")) as b:
        bad = refused_endpoint()
        assert once("--upstream", f"{a.endpoint},{b.endpoint}")[0] == 0
        code, out, _ = once("--upstream", f"{a.endpoint},{bad}")
        assert code == 1 and out.startswith("WARNING - 1/2 hosts up") and "L4CON connection refused" in out
        code, out, _ = once("--upstream", f"{bad},{refused_endpoint()}")
        assert code == 2 and out.startswith("CRITICAL - 0/2")
        code, _, err = once("--upstream", a.endpoint, "--check", "smtp")
        assert code == 3 and err.startswith("UNKNOWN")
        assert once("--nonsense")[0] == 3
        code, _, err = once("--upstream", "127.0.0.1:99999")
        assert code == 3 and "port out of range" in err


def test_http_check_statuses_and_output_formats():
    with http_server() as ok, http_server(status=503) as failing:
        code, out, _ = once("--upstream", f"{ok.endpoint},{failing.endpoint}", "--check", "http", "--path", "/healthz", "--output", "json")
        doc = json.loads(out)
        assert code == 1 and doc["status"] == "WARNING" and doc["up"] == 1
        bad = [h for h in doc["hosts"] if not h["healthy"]][0]
        assert bad["host"] == failing.endpoint and bad["code"] == "L7STS" and bad["detail"] == "HTTP status 503"
        code, out, _ = once("--upstream", failing.endpoint, "--check", "http", "--expect-status", "200,500-503", "--output", "table")
        assert code == 0 and "UP" in out and "HTTP status" not in out


def test_tcp_send_expect_and_udp_checks():
    def banner(c, server):
        if c.recv(100) == b"HELLO\r\n":
            c.sendall(b"+OK ready\r\n")
    with Server(banner) as srv:
        assert once("--upstream", srv.endpoint, "--send", "HELLO\\r\\n", "--expect", "+OK")[0] == 0
        code, out, _ = once("--upstream", srv.endpoint, "--send", "HELLO\\r\\n", "--expect=-ERR")
        assert code == 2 and "L7RSP" in out
    udp = UdpResponder()
    try:
        assert once("--upstream", udp.endpoint, "--check", "udp", "--send", "ping", "--expect", "pong")[0] == 0
        code, out, _ = once("--upstream", udp.endpoint, "--check", "udp", "--send", "ping", "--expect", "other", "--timeout", "300ms")
        assert code == 2
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        code, out, _ = once("--upstream", f"127.0.0.1:{port}", "--check", "udp", "--send", "ping", "--timeout", "500ms")
        assert code == 2 and ("L4CON" in out or "L7TOUT" in out)
    finally:
        udp.close()


def test_redis_check_ping_and_maintenance_key(redis):
    assert once("--upstream", redis, "--check", "redis")[0] == 0
    assert once("--upstream", redis, "--check", "redis", "--key", "maint")[0] == 0
    assert redis_cmd(redis, "SET", "maint", "1").startswith(b"+OK")
    code, out, _ = once("--upstream", redis, "--check", "redis", "--key", "maint")
    assert code == 2 and "Redis replied :1" in out
    redis_cmd(redis, "DEL", "maint")


def proxy_with_checks(endpoints, rise=2, fall=3, kind="tcp: {}"):
    # A generous timeout (a loaded machine must not fail a live host), and fast checks once a
    # result points the other way (edge) or the host is down, so flips come quickly anyway.
    hc = (f"    health_check: {{ interval: 1s, timeout: 1s, edge_interval: 100ms, unhealthy_interval: 100ms, "
          f"rise: {rise}, fall: {fall}, {kind} }}")
    return Proxy("tcp-proxy", config=tcp_config(endpoints, workers=2, cluster=hc))


def names_seen(p, n=12):
    seen = {}
    for _ in range(n):
        s = connect(p.addr())
        name = recv_exact(s, 2, timeout=5).decode().strip()
        seen[name] = seen.get(name, 0) + 1
        s.close()
    return seen


def test_tcp_proxy_ejects_a_failing_host_and_takes_it_back():
    a = Server(name_handler("a"))
    with Server(name_handler("b")) as b:
        port_a = a.addr[1]
        with proxy_with_checks([a.endpoint, b.endpoint], rise=2, fall=3) as p:
            assert set(names_seen(p)) == {"a", "b"}
            assert p.stat("cluster.backend.health_check.failure") == 0
            a.close()  # a goes down
            # Ejected by the checks (counted below), within a deadline only a hang would miss.
            p.wait_stat("cluster.backend.health_check.healthy", lambda v: v == 1, timeout=30)
            assert p.stat("cluster.backend.membership_healthy") == 1
            assert names_seen(p) == {"b": 12}
            assert p.stat("cluster.backend.health_check.failure") >= 3
            _, clusters = p.get("/clusters")
            assert f"backend::{a.endpoint}::health_flags::/failed_active_hc" in clusters
            assert f"backend::{a.endpoint}::last_check::L4CON connection refused" in clusters
            events = [json.loads(l) for l in p.stderr().splitlines() if l.startswith("{")]
            assert {"cluster": "backend", "host": a.endpoint, "from": "healthy", "to": "unhealthy"}.items() <= events[-1].items()
            # a comes back on the same port: after `rise` passes it gets traffic again.
            with Server(name_handler("a"), port=port_a):
                p.wait_stat("cluster.backend.health_check.healthy", lambda v: v == 2, timeout=30)
                wait_for(lambda: "a" in names_seen(p, 6), timeout=30, what="traffic back on a")


def test_health_checker_daemon_feeds_tcp_proxy_file_discovery():
    tmp = tempfile.mkdtemp(prefix="hc-")
    eps_path = os.path.join(tmp, "endpoints.json")
    with Server(name_handler("a")) as a, Server(name_handler("b")) as b:
        port_a = a.addr[1]
        # A generous timeout: a live host must not time out on a loaded machine.
        hc = Proxy("health-checker", ["--upstream", f"{a.endpoint},{b.endpoint}", "--interval", "1s", "--timeout", "1s",
                                      "--rise", "1", "--fall", "2", "--endpoints-out", eps_path, "--admin", "127.0.0.1:0"])
        try:
            wait_for(lambda: os.path.exists(eps_path), what="endpoints file")
            with Proxy("tcp-proxy", config=f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    tcp: {{ cluster: backend }}
clusters:
  - name: backend
    discovery: file
    path: {eps_path}
""") as p:
                assert set(names_seen(p)) == {"a", "b"}
                a.close()
                # The checker marks a down and rewrites the file; the proxy follows, no restart.
                def a_down():
                    with open(eps_path) as f:
                        doc = json.load(f)
                    return any(e["address"] == a.endpoint and e["health_status"] == "UNHEALTHY" for e in doc["endpoints"])
                wait_for(a_down, timeout=30, what="endpoints file marks a down")
                p.wait_stat("cluster.backend.membership_healthy", lambda v: v == 1, timeout=30)
                assert names_seen(p) == {"b": 12}
                _, clusters = hc.get("/clusters")
                assert f"upstream::{a.endpoint}::health_flags::/failed_active_hc" in clusters
                # a is back: the file says so and traffic returns.
                with Server(name_handler("a"), port=port_a):
                    p.wait_stat("cluster.backend.membership_healthy", lambda v: v == 2, timeout=30)
                    wait_for(lambda: "a" in names_seen(p, 6), timeout=30, what="traffic back on a")
                    assert p.stat("cluster.backend.update_success") >= 2
                # A broken file is refused; the last good set stays.
                with open(eps_path + ".tmp", "w") as f:
                    f.write("{ not json")
                os.rename(eps_path + ".tmp", eps_path)
                p.wait_stat("cluster.backend.update_failure", lambda v: v >= 1, timeout=10)
                assert p.stat("cluster.backend.membership_total") == 2
        finally:
            hc.stop()


GRPC_SERVER = """
import grpc
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
h = health.HealthServicer()
h.set("", health_pb2.HealthCheckResponse.SERVING)
h.set("db", health_pb2.HealthCheckResponse.NOT_SERVING)
health_pb2_grpc.add_HealthServicer_to_server(h, server)
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
server.wait_for_termination()
"""


def test_grpc_health_check_against_grpcio():
    try:
        import grpc  # noqa: F401
        import grpc_health.v1.health  # noqa: F401
    except ImportError:
        pytest.skip("grpcio / grpcio-health-checking not installed")
    srv = subprocess.Popen(["python3", "-c", GRPC_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline())
        ep = f"127.0.0.1:{port}"
        assert once("--upstream", ep, "--check", "grpc")[0] == 0
        code, out, _ = once("--upstream", ep, "--check", "grpc", "--service", "db")
        assert code == 2 and "gRPC health NOT_SERVING" in out
        code, out, _ = once("--upstream", ep, "--check", "grpc", "--service", "unknown")
        assert code == 2 and "grpc-status 5" in out  # NOT_FOUND
        with http_server() as h1:  # an HTTP/1 server is not a gRPC server
            code, out, _ = once("--upstream", h1.endpoint, "--check", "grpc")
            # It answers HTTP/1 (L7RSP), or closes with our preface unread, which the kernel
            # turns into a reset before we read its answer (L4CON): racy, both are failures.
            assert code == 2 and ("L7RSP" in out or "L4CON connection reset" in out), out
    finally:
        srv.terminate()
        srv.wait(10)


def test_watch_redraws_a_table_on_a_terminal():
    import pty
    import select
    with Server(name_handler("a")) as a:
        bad = refused_endpoint()
        master, slave = pty.openpty()
        proc = subprocess.Popen([HC, "--upstream", f"{a.endpoint},{bad}", "--interval", "1s", "--timeout", "1s",
                                 "--fall", "1", "--watch"], stdout=slave, stderr=subprocess.DEVNULL)
        os.close(slave)
        screen = b""
        try:
            def drawn():
                nonlocal screen
                r, _, _ = select.select([master], [], [], 0.2)
                if r:
                    screen += os.read(master, 65536)
                last = screen.rsplit(b"\x1b[2J", 1)[-1].decode(errors="replace")
                return "1/2 hosts up" in last and f"{bad}" in last and "DOWN" in last and "L4CON" in last and "UP" in last
            wait_for(drawn, timeout=30, what="the watch table")
            assert screen.count(b"\x1b[H\x1b[2J") >= 1
        finally:
            proc.terminate()
            proc.wait(10)
            os.close(master)


def write_endpoints(path, entries):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"endpoints": [dict(address=a, priority=p, health_status="HEALTHY" if up else "UNHEALTHY")
                                 for a, p, up in entries]}, f)
    os.rename(tmp, path)


def test_priority_failover_by_health_and_explicit_panic_threshold():
    tmp = tempfile.mkdtemp(prefix="prio-")
    path = os.path.join(tmp, "eps.json")
    with Server(name_handler("a")) as a, Server(name_handler("b")) as b, Server(name_handler("c")) as c:
        write_endpoints(path, [(a.endpoint, 0, True), (b.endpoint, 0, True), (c.endpoint, 1, True)])
        cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    tcp: {{ cluster: backend }}
clusters:
  - name: backend
    discovery: file
    path: {path}
"""
        with Proxy("tcp-proxy", config=cfg) as p:
            assert set(names_seen(p, 20)) == {"a", "b"}  # priority 0 healthy: 1 gets nothing
            write_endpoints(path, [(a.endpoint, 0, True), (b.endpoint, 0, False), (c.endpoint, 1, True)])
            p.wait_stat("cluster.backend.membership_healthy", lambda v: v == 2)
            seen = names_seen(p, 200)  # 50% x 1.4 = 70% stays on priority 0
            assert set(seen) == {"a", "c"} and 100 < seen["a"] < 180, seen
            write_endpoints(path, [(a.endpoint, 0, False), (b.endpoint, 0, False), (c.endpoint, 1, True)])
            p.wait_stat("cluster.backend.membership_healthy", lambda v: v == 1)
            assert names_seen(p, 12) == {"c": 12}
            # Nothing healthy and no panic threshold: connections are refused, never sent to
            # unhealthy hosts.
            write_endpoints(path, [(a.endpoint, 0, False), (b.endpoint, 0, False), (c.endpoint, 1, False)])
            p.wait_stat("cluster.backend.membership_healthy", lambda v: v == 0)
            s = connect(p.addr())
            assert s.recv(10) == b""
            s.close()
            assert p.stat("cluster.backend.upstream_cx_none_healthy") >= 1
        # With an explicit panic threshold, the same state balances over every host.
        with Proxy("tcp-proxy", config=cfg + "    panic_threshold: 50\n") as p:
            assert set(names_seen(p, 30)) == {"a", "b", "c"}
            assert p.stat("cluster.backend.lb_healthy_panic") >= 30
