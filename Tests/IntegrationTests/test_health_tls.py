"""Health checks over TLS (the L6 layer): HTTPS, a TCP banner over TLS, and a tcp-proxy
cluster with `tls` whose checks go over TLS as its connections do."""

import json
import socket
import ssl

from harness import Proxy, Server, read_line, tcp_config
from test_health import once
from tls_peers import cert


class HttpsServer(Server):
    """HTTPS with `name`'s certificate: answers one request with `status`, or speaks first."""

    def __init__(self, name, status=200, banner=None):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*cert(name))
        self.status, self.banner = status, banner
        super().__init__(self.serve)

    def serve(self, c, server):
        c.settimeout(10)
        with self.ctx.wrap_socket(c, server_side=True) as t:
            if self.banner:
                t.sendall(self.banner)
                return
            req = b""
            while b"\r\n\r\n" not in req:
                d = t.recv(4096)
                if not d:
                    return
                req += d
            self.results["request"] = req
            t.sendall(f"HTTP/1.1 {self.status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())


def silent(c, server):
    while c.recv(4096):  # accepts, never answers the ClientHello
        pass


def test_https_checks_name_the_tls_layer():
    api_ca = cert("api.example.com")[0]
    with HttpsServer("api.example.com") as good, HttpsServer("web.example.com") as other_name, \
            HttpsServer("api.example.com", status=503) as failing, Server(silent) as quiet:
        hosts = ",".join(s.endpoint for s in (good, other_name, failing, quiet))
        code, out, _ = once("--upstream", hosts, "--check", "http", "--path", "/healthz", "--timeout", "500ms",
                            "--tls", "--tls-sni", "api.example.com", "--tls-ca", api_ca, "--output", "json")
        doc = json.loads(out)
        by_host = {h["host"]: h for h in doc["hosts"]}
        assert code == 1 and doc["up"] == 1
        assert by_host[good.endpoint]["healthy"]
        assert b"GET /healthz HTTP/1.1" in good.results["request"]
        # Its certificate is for another name (and from another CA): the handshake fails.
        assert by_host[other_name.endpoint]["code"] == "L6RSP"
        assert by_host[other_name.endpoint]["detail"].startswith("TLS: certificate: ")
        # TLS is fine, HTTP is not: L7.
        assert by_host[failing.endpoint]["code"] == "L7STS"
        # Connected, no handshake in time.
        assert by_host[quiet.endpoint]["code"] == "L6TOUT"
        # --tls-insecure skips the certificate check.
        code, out, _ = once("--upstream", other_name.endpoint, "--check", "http", "--tls", "--tls-insecure")
        assert code == 0, out


def test_plain_server_fails_the_handshake_and_banner_over_tls_passes():
    def plain_http(c, server):
        c.recv(4096)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    api_ca = cert("api.example.com")[0]
    with Server(plain_http) as plain, HttpsServer("api.example.com", banner=b"+OK ready\r\n") as banner:
        code, out, _ = once("--upstream", plain.endpoint, "--check", "http", "--tls", "--tls-ca", api_ca)
        assert code == 2 and "L6RSP" in out
        # A server that speaks first right after the handshake (its bytes arrive with it).
        code, out, _ = once("--upstream", banner.endpoint, "--expect", "+OK", "--tls", "--tls-sni", "api.example.com",
                            "--tls-ca", api_ca)
        assert code == 0, out
        code, _, err = once("--upstream", banner.endpoint, "--tls-sni", "api.example.com")
        assert code == 3 and "--tls" in err


def test_tcp_proxy_checks_a_tls_cluster_over_tls():
    api_ca = cert("api.example.com")[0]
    with HttpsServer("api.example.com") as good, HttpsServer("web.example.com") as wrong:
        cfg = tcp_config([good.endpoint, wrong.endpoint], cluster=f"""    tls: {{ sni: api.example.com, ca: "{api_ca}" }}
    health_check: {{ interval: 1s, timeout: 1s, rise: 1, fall: 1, http: {{ path: /ready }} }}""")
        with Proxy("tcp-proxy", config=cfg) as p:
            p.wait_stat("cluster.backend.health_check.healthy", lambda v: v == 1)
            clusters = p.get("/clusters")[1]
            assert f"backend::{wrong.endpoint}::last_check::L6RSP TLS: certificate: " in clusters, clusters
            # Traffic goes to the healthy host only, over TLS.
            for _ in range(4):
                c = socket.create_connection(p.addr(), timeout=10)
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_line(c).startswith(b"HTTP/1.1 200")
                c.close()
