"""HTTP/2 peers for the http-proxy tests, on the Python `h2` library (a sans-I/O HTTP/2 state
machine, not the project's nghttp2 code): `H2Client`, a raw client with explicit flow control
(per stream: acknowledge what arrives, or never), request trailers and RST_STREAM; a
`RecordingOrigin` that also reports the request trailers and the raw header lines it received;
and small helpers for HTTP/2 frames and kernel socket queues."""

import hashlib
import json
import select
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from http_peers import Origin, _Handler

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY = 0x7


class H2Stream:
    """What one stream received."""

    def __init__(self, sid, keep, auto_ack):
        self.id = sid
        self.keep = keep              # keep the body bytes (else only their sha256 and length)
        self.auto_ack = auto_ack      # hand the window back as data arrives (else never)
        self.status = None
        self.headers = []             # [(name, value)] of the final response, pseudo-fields too
        self.trailers = None          # [(name, value)] of a trailers HEADERS frame
        self.body = bytearray()
        self.sha = hashlib.sha256()
        self.received = 0             # DATA payload bytes
        self.ended = False            # END_STREAM seen
        self.reset = None             # RST_STREAM error code (ours or the peer's)
        self.events = []              # event class names in order ("ResponseReceived", ...)

    def header(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def digest(self):
        return self.sha.hexdigest()

    def json(self):
        return json.loads(bytes(self.body))

    @property
    def done(self):
        return self.ended or self.reset is not None


class H2Client:
    """One HTTP/2 connection (prior knowledge on cleartext, ALPN h2 on TLS) driven by one thread:
    `request()` queues a stream, `run_until(pred)` moves bytes both ways until `pred()` holds.
    Request bodies are sent as the peer's windows allow; response bodies are acknowledged per
    stream (`auto_ack`) or never, so a test can hold one stream's window shut."""

    def __init__(self, addr, tls_ctx=None, server_hostname=None, conn_window=16 << 20,
                 validate_outbound=True, preface_split=None, timeout=30):
        self.timeout = timeout
        raw = socket.create_connection(addr, timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_ctx is not None:
            raw = tls_ctx.wrap_socket(raw, server_hostname=server_hostname)
            assert raw.selected_alpn_protocol() == "h2", raw.selected_alpn_protocol()
        self.sock = raw
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=validate_outbound)
        self.conn = h2.connection.H2Connection(cfg)
        # The stream windows stay at the default 65535 (SETTINGS_INITIAL_WINDOW_SIZE is not
        # changed); the connection window is opened wide, so a stream that is never acknowledged
        # holds at most its own 64 KiB and cannot starve the others.
        self.conn.initiate_connection()
        if conn_window:
            self.conn.increment_flow_control_window(conn_window)
        self.streams = {}
        self.uploads = {}             # sid -> [memoryview left, trailers or None]
        self.out = bytearray()
        self.eof = False
        self.goaway = None            # (error code, last stream id) of the last GOAWAY received
        self.goaways = []             # every GOAWAY received, in order
        self.remote_settings = {}     # SettingCodes value -> value, as received
        if preface_split is not None:
            # The first `preface_split` bytes alone (the caller waits for the peer to read them).
            first = self.conn.data_to_send()
            self.sock.sendall(first[:preface_split])
            self.out += first[preface_split:]
        self.sock.setblocking(False)

    # -- requests

    def request(self, method, path, authority="test", scheme="http", headers=(), body=None,
                content_length=True, trailers=None, auto_ack=True, keep=True):
        """Opens a stream; returns its id. `authority=None` leaves `:authority` out. `body`
        (bytes) goes out as DATA as the windows allow, then `trailers` (a HEADERS frame with
        END_STREAM) when given."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", scheme), (":path", path)]
        if authority is not None:
            hdrs.insert(2, (":authority", authority))
        if body is not None and content_length:
            hdrs.append(("content-length", str(len(body))))
        hdrs += list(headers)
        no_body = body is None and trailers is None
        self.conn.send_headers(sid, hdrs, end_stream=no_body)
        self.streams[sid] = H2Stream(sid, keep, auto_ack)
        if not no_body:
            self.uploads[sid] = [memoryview(body or b""), trailers]
        self._pump_uploads()
        return sid

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def reset(self, sid, code=h2.errors.ErrorCodes.CANCEL):
        self.conn.reset_stream(sid, code)
        self.uploads.pop(sid, None)
        self.streams[sid].reset = int(code)

    def ack(self, sid, n):
        self.conn.acknowledge_received_data(n, sid)

    # -- I/O

    def _pump_uploads(self):
        for sid in list(self.uploads):
            left, trailers = self.uploads[sid]
            st = self.streams[sid]
            if st.reset is not None:
                del self.uploads[sid]
                continue
            while len(left):
                n = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, len(left))
                if n <= 0:
                    break
                self.conn.send_data(sid, left[:n].tobytes())
                left = left[n:]
            self.uploads[sid][0] = left
            if not len(left):
                if trailers is not None:
                    self.conn.send_headers(sid, list(trailers), end_stream=True)
                else:
                    self.conn.end_stream(sid)
                del self.uploads[sid]

    def _flush(self):
        self.out += self.conn.data_to_send()
        while self.out:
            try:
                n = self.sock.send(self.out[:1 << 18])
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except (BrokenPipeError, ConnectionResetError):
                self.eof = True
                self.out.clear()
                return
            del self.out[:n]

    def _read(self):
        while True:
            try:
                d = self.sock.recv(1 << 18)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except ConnectionResetError:
                d = b""
            if not d:
                self.eof = True
                return
            self._handle(self.conn.receive_data(d))
            if not isinstance(self.sock, ssl.SSLSocket) or not self.sock.pending():
                return

    def _handle(self, events):
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            st = self.streams.get(sid) if sid else None
            if st is not None:
                st.events.append(type(ev).__name__)
            if isinstance(ev, h2.events.ResponseReceived):
                st.headers = list(ev.headers)
                st.status = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                if st is None:
                    continue
                st.received += len(ev.data)
                st.sha.update(ev.data)
                if st.keep:
                    st.body += ev.data
                if st.auto_ack and ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived):
                st.trailers = list(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                st.ended = True
                self.uploads.pop(sid, None)
            elif isinstance(ev, h2.events.StreamReset):
                if st is not None:
                    st.reset = int(ev.error_code)
                self.uploads.pop(sid, None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = (int(ev.error_code), ev.last_stream_id)
                self.goaways.append(self.goaway)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                for code, change in ev.changed_settings.items():
                    self.remote_settings[int(code)] = change.new_value

    def step(self, wait=0.05):
        """One turn: send what can go, wait up to `wait` s for input, take it in."""
        self._pump_uploads()
        self._flush()
        if self.eof:
            return
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            r = [self.sock]
        else:
            r, _, _ = select.select([self.sock], [self.sock] if self.out else [], [], wait)
        if r:
            self._read()
        self._pump_uploads()
        self._flush()

    def run_until(self, pred, timeout=None, what="condition", on_step=None):
        """Drives the connection until `pred()` is true; fails (naming the streams' state) at
        the deadline or when the peer closes first."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if pred():
                return
            if self.eof:
                raise AssertionError(f"connection closed before {what}; goaway={self.goaway} {self.state()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; {self.state()}")
            self.step()
            if on_step is not None:
                on_step()

    def wait_done(self, *sids, timeout=None):
        self.run_until(lambda: all(self.streams[s].done for s in sids), timeout=timeout,
                       what=f"streams {sids} to end")
        return [self.streams[s] for s in sids]

    def state(self):
        return "; ".join(f"stream {s.id}: status={s.status} got={s.received} ended={s.ended} reset={s.reset}"
                         for s in self.streams.values())

    def close(self):
        """GOAWAY(NO_ERROR), then close the socket."""
        if not self.eof:
            try:
                self.conn.close_connection()
                self.sock.setblocking(True)
                self.sock.settimeout(2)
                self.sock.sendall(self.conn.data_to_send())
            except (OSError, h2.exceptions.ProtocolError):
                pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tls_context(cafile=None, alpn=("h2",)):
    """A client context trusting `cafile` (hostnames not checked: the test certificates name
    api.example.com and the proxy listens on 127.0.0.1) offering `alpn`."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    if cafile is None:
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def frames(data):
    """Splits raw HTTP/2 bytes (after any preface) into [(type, flags, stream id, payload)];
    a cut-short last frame is left out."""
    out = []
    i = 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        if i + 9 + n > len(data):
            break
        out.append((data[i + 3], data[i + 4], int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF,
                    data[i + 9:i + 9 + n]))
        i += 9 + n
    return out


def goaway_codes(data):
    """The error codes of every GOAWAY frame in `data`."""
    return [int.from_bytes(p[4:8], "big") for t, _, sid, p in frames(data) if t == GOAWAY and sid == 0]


class _RecordingHandler(_Handler):
    """The Origin's handler, also keeping the raw header lines and any chunked trailers."""

    def _body(self):
        body, chunked = super()._body()
        srv = self.server.origin
        with srv.lock:
            srv.seen.append({"path": self.path, "header_lines": [(k.lower(), v) for k, v in self.headers.items()],
                             "trailers": self.trailers, "body_len": len(body), "chunked": chunked})
        return body, chunked


class RecordingOrigin(Origin):
    """`Origin`, and `seen`: per request its path, raw header lines (repeated names kept),
    request trailers, body length and framing. Its listen backlog is 256, not http.server's 5:
    one HTTP/2 connection's 100 streams each open an HTTP/1.1 connection to the origin at once,
    and a full backlog drops SYNs (retried after 1 s: slow, and 5xx from connect timeouts)."""

    def __init__(self, name="origin"):
        super().__init__(name)
        self.seen = []
        self.httpd.RequestHandlerClass = _RecordingHandler
        self.httpd.socket.listen(256)

    def find(self, path):
        with self.lock:
            return [s for s in self.seen if s["path"] == path]


def _established():
    """{(local port, remote port): (send queue, receive queue)} of this host's established IPv4
    loopback sockets, from /proc/net/tcp."""
    out = {}
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "01":
                tx, rx = fields[4].split(":")
                out[(int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16))] = (int(tx, 16), int(rx, 16))
    return out


def upstream_queues(origin_port):
    """For each connection to the origin listening on `origin_port`: (the origin's send queue,
    the proxy's receive queue). Both non-zero and not moving: the proxy has stopped reading
    that response (back-pressure reached the origin)."""
    socks = _established()
    return sorted((tx, socks.get((rport, lport), (0, 0))[1])
                  for (lport, rport), (tx, _) in socks.items() if lport == origin_port)
