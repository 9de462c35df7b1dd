"""HTTP origins for the http-proxy tests, on plain Python (http.server and raw sockets), not on
the project's code. `Origin` is a well-behaved HTTP/1.1 server that reports what it received;
raw-socket handlers play broken or hostile upstreams."""

import hashlib
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def pattern(n, seed=7):
    """n deterministic bytes."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    while len(out) < n:
        out += block[: n - len(out)]
    return bytes(out)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        # A TLS origin: the handshake runs in the connection's own thread, not the accept loop.
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            with self.server.origin.lock:
                self.server.origin.alpns.append(self.request.selected_alpn_protocol())
        super().setup()

    def _body(self):
        """(body, chunked); chunked trailers land in self.trailers as (lowercase name, value)."""
        self.trailers = []
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while (t := self.rfile.readline()) not in (b"\r\n", b""):
                        k, v = t.split(b":", 1)
                        self.trailers.append((k.strip().lower().decode(), v.strip().decode()))
                    return bytes(data), True
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n), False

    def _reply(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        srv = self.server.origin
        with srv.lock:
            srv.requests.append((self.command, self.path, dict(self.headers.items())))
            count = len(srv.requests)
        body, chunked = self._body()
        path = self.path.split("?")[0]
        if path.startswith("/size/"):
            n = int(path.split("/")[2])
            return self._reply(200, pattern(n), [("X-Origin", srv.name)])
        if path.startswith("/chunked/"):
            n = int(path.split("/")[2])
            data = pattern(n)
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            trailers = "trailers" in self.path
            if trailers:
                self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            for i in range(0, n, 10000):
                piece = data[i:i + 10000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n")
            if trailers:
                self.wfile.write(b"X-Checksum: " + hashlib.sha256(data).hexdigest().encode() + b"\r\n")
            self.wfile.write(b"\r\n")
            return
        if path.startswith("/delay/"):
            # Answers after N ms (a request still in flight when the test acts), or at once
            # when the origin closes (no handler thread outlives its test).
            srv.closing.wait(int(path.split("/")[2]) / 1000)
            return self._reply(200, b"delayed\n", [("X-Origin", srv.name)])
        if path.startswith("/status/"):
            return self._reply(int(path.split("/")[2]), b"status\n", [("X-Origin", srv.name)])
        if path.startswith("/flaky/"):
            # The first N requests get 503, then 200.
            n = int(path.split("/")[2])
            return self._reply(503 if count <= n else 200, srv.name.encode(), [("X-Origin", srv.name)])
        info = {
            "origin": srv.name, "method": self.command, "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_sha256": hashlib.sha256(body).hexdigest(), "body_len": len(body), "chunked": chunked,
        }
        self._reply(200, json.dumps(info).encode(), [("Content-Type", "application/json"), ("X-Origin", srv.name)])

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


class Origin:
    """A threaded HTTP/1.1 origin on 127.0.0.1:0 that records every request it served. With
    `tls` = (cert file, key file), it speaks TLS, offering ALPN `alpn` (a list, or None for no
    ALPN at all); `alpns` records what each TLS connection agreed on (None: nothing)."""

    def __init__(self, name="origin", tls=None, alpn=None):
        self.name = name
        self.requests = []
        self.alpns = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            if alpn:
                ctx.set_alpn_protocols(alpn)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.httpd.daemon_threads = True
        self.httpd.origin = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def paths(self):
        with self.lock:
            return [r[1] for r in self.requests]

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_response(sock, timeout=10, head=False):
    """Reads one HTTP/1.1 response: (status, headers dict, body). `sock` is a socket (one
    response) or a reader from `sock.makefile("rb")` (several on one connection). Handles
    Content-Length, chunked and close-delimited bodies; raises on a cut-short message.
    `head`: the request was HEAD (no body follows whatever the headers say)."""
    own = hasattr(sock, "makefile")
    if own:
        sock.settimeout(timeout)
        f = sock.makefile("rb")
    else:
        f = sock
    status_line = f.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    parts = status_line.split(b" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, v = line.split(b":", 1)
        headers[k.strip().lower().decode()] = v.strip().decode()
    body = b""
    if head or status < 200 or status in (204, 304):
        pass
    elif "content-length" in headers:
        n = int(headers["content-length"])
        body = f.read(n)
        if len(body) != n:
            raise ConnectionError(f"body cut short: {len(body)} of {n}")
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError("chunked body cut short")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while True:
                    t = f.readline()
                    if t in (b"\r\n",):
                        break
                    if t == b"":
                        raise ConnectionError("chunked body cut short (no last CRLF)")
                    k, v = t.split(b":", 1)
                    headers["trailer:" + k.strip().lower().decode()] = v.strip().decode()
                break
            piece = f.read(size)
            if len(piece) != size or f.read(2) != b"\r\n":
                raise ConnectionError("chunked body cut short")
            body += piece
    else:
        body = f.read()
    if own:
        f.close()
    return status, headers, body
