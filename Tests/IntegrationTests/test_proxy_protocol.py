"""PROXY protocol v1/v2 in both directions with HAProxy as the peer (Must show 9)."""

import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from harness import Proxy, Server, connect, free_port, port_refuses, read_line, recv_all, recv_exact, wait_for

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def proxy_header_reporter(c, server):
    """Reads a PROXY header (v1 or v2) and answers with the source it names."""
    first = recv_exact(c, 12)
    if first.startswith(b"PROXY "):
        line = first
        while not line.endswith(b"\r\n"):
            line += recv_exact(c, 1)
        parts = line.decode().split()
        c.sendall(f"v1 {parts[2]}:{parts[4]}\n".encode())
    elif first == b"\r\n\r\n\x00\r\nQUIT\n":
        rest = recv_exact(c, 4)
        length = int.from_bytes(rest[2:4], "big")
        body = recv_exact(c, length)
        if rest[1] == 0x11:
            src = socket.inet_ntop(socket.AF_INET, body[0:4])
            port = int.from_bytes(body[8:10], "big")
            c.sendall(f"v2 {src}:{port}\n".encode())
        else:
            c.sendall(f"v2 family {rest[1]:#x}\n".encode())
    else:
        c.sendall(b"no header\n")
    # Then echo, so data after the header is checked too.
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)


class HAProxy:
    def __init__(self, cfg):
        self.dir = tempfile.mkdtemp(prefix="haproxy-")
        self.path = os.path.join(self.dir, "haproxy.cfg")
        with open(self.path, "w") as f:
            f.write(cfg)
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


HAPROXY_GLOBAL = """
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""


def wait_port(port):
    wait_for(lambda: not port_refuses(("127.0.0.1", port)), timeout=10, what=f"port {port}")


@pytest.mark.parametrize("haproxy_sends,we_send", [("send-proxy", "v1"), ("send-proxy-v2", "v2"), ("send-proxy-v2", "v1")])
def test_haproxy_in_front_sends_proxy_we_accept_and_forward(haproxy_sends, we_send):
    """client → haproxy (send-proxy[-v2]) → tcp-proxy (accept, send_proxy_protocol) → reporter.
    The reporter must see the client's own address, carried across both hops."""
    if not os.path.exists(HAPROXY):
        pytest.skip("haproxy not installed")
    with Server(proxy_header_reporter) as rep:
        cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    proxy_protocol: accept
    tcp: {{ cluster: rep }}
clusters:
  - name: rep
    send_proxy_protocol: {we_send}
    endpoints: [ "{rep.endpoint}" ]
"""
        with Proxy("tcp-proxy", config=cfg) as p:
            front = free_port()
            ha = HAProxy(HAPROXY_GLOBAL + f"""
listen front
    bind 127.0.0.1:{front}
    server us 127.0.0.1:{p.addr()[1]} {haproxy_sends}
""")
            try:
                wait_port(front)
                s = connect(("127.0.0.1", front))
                me = s.getsockname()
                line = read_line(s)
                assert line.decode().strip() == f"{we_send} {me[0]}:{me[1]}"
                s.sendall(b"payload after the header")
                assert recv_exact(s, 24) == b"payload after the header"
                s.close()
                found = "listener.main.proxy_proto.v1.found" if haproxy_sends == "send-proxy" else "listener.main.proxy_proto.v2.found"
                assert p.stat(found) >= 1
            finally:
                ha.stop()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_we_send_proxy_to_haproxy_accept_proxy(version):
    """client → tcp-proxy (send_proxy_protocol) → haproxy (bind accept-proxy, send-proxy) → reporter:
    HAProxy parses our header and passes the client's address on."""
    if not os.path.exists(HAPROXY):
        pytest.skip("haproxy not installed")
    with Server(proxy_header_reporter) as rep:
        back = free_port()
        ha = HAProxy(HAPROXY_GLOBAL + f"""
listen back
    bind 127.0.0.1:{back} accept-proxy
    server rep {rep.endpoint} send-proxy
""")
        try:
            wait_port(back)
            with Proxy("tcp-proxy", ["--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{back}",
                                     "--send-proxy-protocol", version, "--admin", "127.0.0.1:0", "--workers", "1"]) as p:
                s = connect(p.addr())
                me = s.getsockname()
                line = read_line(s)
                assert line.decode().strip() == f"v1 {me[0]}:{me[1]}"
                s.sendall(b"ok?")
                assert recv_exact(s, 3) == b"ok?"
                s.close()
        finally:
            ha.stop()


def test_malformed_header_closes_and_counts():
    with Server(proxy_header_reporter) as rep:
        with Proxy("tcp-proxy", ["--listen", "127.0.0.1:0", "--upstream", rep.endpoint, "--proxy-protocol", "accept",
                                 "--admin", "127.0.0.1:0", "--workers", "1"]) as p:
            for bad in [b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", b"PROXY TCP9 x\r\n", b"GET / HTTP/1.1\r\n\r\n",
                        b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + b"\x00" * 12, b"PROXY " + b"A" * 200]:
                s = connect(p.addr())
                s.sendall(bad)
                assert recv_all(s, timeout=5) == b""
                s.close()
            p.wait_stat("listener.main.downstream_cx_proxy_proto_error", lambda v: v == 5)
            assert rep.connections == 0
            # A good one still works.
            s = connect(p.addr())
            s.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 80\r\nhello reporter")
            assert recv_exact(s, 10) == b"no header\n"
            s.close()
            assert p.stat("listener.main.proxy_proto.v1.found") == 1


def test_optional_mode_serves_connections_without_header():
    with Server(proxy_header_reporter) as rep:
        cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    proxy_protocol: optional
    tcp: {{ cluster: rep }}
clusters:
  - name: rep
    send_proxy_protocol: v1
    endpoints: [ "{rep.endpoint}" ]
"""
        with Proxy("tcp-proxy", config=cfg) as p:
            s = connect(p.addr())
            s.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 80\r\n")
            assert recv_exact(s, len("v1 192.0.2.7:4242\n")) == b"v1 192.0.2.7:4242\n"
            s.close()
            s = connect(p.addr())
            me = s.getsockname()
            s.sendall(b"plain client data")
            line = read_line(s)
            assert line.decode().strip() == f"v1 {me[0]}:{me[1]}"
            assert recv_exact(s, 17) == b"plain client data"
            s.close()
            assert p.stat("listener.main.proxy_proto.not_found") == 1


def test_slow_header_times_out():
    with Server(proxy_header_reporter) as rep:
        cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    proxy_protocol: accept
    proxy_protocol_timeout: 200ms
    tcp: {{ cluster: rep }}
clusters:
  - name: rep
    endpoints: [ "{rep.endpoint}" ]
"""
        with Proxy("tcp-proxy", config=cfg) as p:
            s = connect(p.addr())
            s.sendall(b"PROXY TCP4 ")
            assert recv_all(s, timeout=5) == b""
            assert p.stat("listener.main.downstream_pre_cx_timeout") == 1
