"""TLS peers for the integration tests: self-signed certificates made with the openssl CLI,
a TLS backend on Python's ssl module (OpenSSL), and `openssl s_client` / Python clients."""

import os
import socket
import ssl
import subprocess
import tempfile

from harness import Server, read_line

CERTS = tempfile.mkdtemp(prefix="test-certs-")


def cert(name):
    """A self-signed certificate for `name` (cached per test run): (certfile, keyfile)."""
    c, k = os.path.join(CERTS, name + ".pem"), os.path.join(CERTS, name + ".key")
    if not os.path.exists(c):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", k, "-out", c, "-days", "2", "-subj", "/CN=" + name,
                        "-addext", "subjectAltName=DNS:" + name], check=True, capture_output=True)
    return c, k


class TlsServer(Server):
    """A TLS backend: after the handshake it sends its name and the SNI it was asked for."""

    def __init__(self, name):
        self.name = name
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*cert(name))
        self.ctx.sni_callback = self.on_sni
        super().__init__(self.serve)

    @staticmethod
    def on_sni(sock, name, ctx):
        sock.sni = name

    def serve(self, c, server):
        c.settimeout(10)
        with self.ctx.wrap_socket(c, server_side=True) as t:
            t.sendall(f"{self.name} sni={getattr(t, 'sni', None)}\n".encode())
            t.unwrap()  # close_notify, so clients see a clean end


def s_client(addr, servername, trust):
    """openssl s_client through the proxy; the handshake must verify against `trust`'s cert."""
    argv = ["openssl", "s_client", "-connect", f"{addr[0]}:{addr[1]}", "-CAfile", cert(trust)[0],
            "-verify_return_error", "-verify_hostname", trust, "-quiet"]
    argv += ["-servername", servername] if servername else ["-noservername"]
    r = subprocess.run(argv, input=b"", capture_output=True, timeout=20)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def py_client(addr, servername, trust, pre=b""):
    """Python ssl through the proxy (optionally after raw bytes, a PROXY header): first line."""
    ctx = ssl.create_default_context(cafile=cert(trust)[0])
    ctx.check_hostname = False
    s = socket.create_connection(addr, timeout=10)
    if pre:
        s.sendall(pre)
    with ctx.wrap_socket(s, server_hostname=servername) as t:
        return read_line(t).decode().strip()


