"""HTTP/2 peers for the http-proxy tests, on the Python `h2` library (a sans-I/O HTTP/2 state
machine, not the project's nghttp2 code): `H2Client`, a raw client with explicit flow control
(per stream: acknowledge what arrives, or never), request trailers and RST_STREAM; a
`RecordingOrigin` that also reports the request trailers and the raw header lines it received;
an `H2Origin` (HTTP/2 upstream with the HTTP/1 Origin's endpoints, recording per connection
what it saw); and small helpers for HTTP/2 frames and kernel socket queues."""

import hashlib
import json
import select
import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from http_peers import Origin, _Handler, pattern

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


# --- H2Origin: an HTTP/2 origin (h2c prior knowledge, or TLS with ALPN h2)

REFUSED_STREAM = int(h2.errors.ErrorCodes.REFUSED_STREAM)
CANCEL = int(h2.errors.ErrorCodes.CANCEL)


class _Pattern:
    """pattern(n) is a prefix of pattern(m) for n < m: one buffer, grown on demand, sliced."""

    def __init__(self):
        self.lock = threading.Lock()
        self.buf = b""

    def get(self, n):
        with self.lock:
            if len(self.buf) < n:
                self.buf = pattern(max(n, 2 * len(self.buf)))
            return memoryview(self.buf)[:n]


_PATTERN = _Pattern()


class H2OriginStream:
    """One request an H2Origin received, and its response in progress."""

    def __init__(self, conn, sid, headers):
        self.conn = conn
        self.id = sid
        self.headers = list(headers)        # [(name, value)] as received, pseudo-fields first
        self.h = dict(headers)
        self.trailers = []
        self.sha = hashlib.sha256()
        self.body_len = 0
        self.body = bytearray()             # kept for gRPC-style echo only
        self.request_ended = False
        self.reset = None                   # RST_STREAM code received, if any
        self.due = None                     # monotonic time its response starts
        self.left = None                    # memoryview of the body still to send
        self.resp_trailers = None
        self.done = False                   # END_STREAM sent, or reset either way

    @property
    def path(self):
        return self.h.get(":path", "")


class H2OriginConnection:
    """What one accepted connection saw (read it after the exchange; lists are appended to by
    the connection's thread)."""

    def __init__(self, cid):
        self.id = cid
        self.requests = 0               # streams served (not refused)
        self.stream_ids = []            # of the streams served, in order
        self.max_concurrent = 0         # most streams the client had open at once (refused ones too)
        self.refused = []               # stream ids we reset with REFUSED_STREAM (refuse_next, GOAWAY)
        self.excess = []                # stream ids over our SETTINGS_MAX_CONCURRENT_STREAMS (refused too)
        self.excess_after_ack = []      # those of them opened after the client ACKed our SETTINGS
        self.resets = []                # (stream id, error code) of each RST_STREAM received
        self.errors = []                # h2 protocol errors (the connection was then closed)
        self.goaway_sent = None         # last stream id of the GOAWAY we sent
        self.goaway_received = None     # (error code, last stream id) from the client
        self.ignored = []               # streams above our GOAWAY's last stream id (never answered)
        self.settings_acked = False
        self.pings = 0                  # PING frames received (h2 answers each with its ACK)
        self.alpn = None
        self.sni = None
        self.closed = False             # the socket is closed (either side)
        self.eof = False                # the client closed first (or reset the socket)


class H2Origin:
    """A threaded HTTP/2 origin on 127.0.0.1:0 on the Python `h2` library: h2c with prior
    knowledge, or TLS with ALPN h2 (`tls=True`: certificate `tls_peers.cert(cert_name)`).
    It serves the HTTP/1 `Origin`'s endpoints, answering when the request has ended:
      /size/N             N bytes of pattern(N), with content-length (`?trailers`: plus a
                          trailer x-checksum, which an HTTP/1.1 client cannot be given)
      /chunked/N          the same without content-length, `?trailers`: trailer x-checksum =
                          sha256 hex of the body
      /delay/MS           "delayed\\n" MS ms after the request ended (other streams go on)
      /hold/ANY           the JSON answer below, once `release()` was called
      /status/N           status N, body "status\\n"
      content-type application/grpc*: gRPC style, the request body echoed with
                          content-type application/grpc, then trailers grpc-status (the request's
                          `x-grpc-status`, default 0) and grpc-message
      anything else       JSON: origin, protocol "HTTP/2", method, path, authority, scheme,
                          headers (dict, pseudo-fields too), header_lines (list), trailers
                          (request trailers, list), body_sha256, body_len, chunked (False),
                          connection (its index), stream_id
    Response bodies go out as the client's windows allow; request DATA is acknowledged as it
    arrives (the connection window is opened to 16 MiB, streams stay at 65535).
    Options: `max_concurrent_streams` (SETTINGS; streams over it get REFUSED_STREAM and are
    recorded in `excess`, and in `excess_after_ack` when the client had already acknowledged
    our SETTINGS, so it knew the limit); `goaway_after=N` (GOAWAY NO_ERROR with the Nth stream as last stream
    id when the Nth request on a connection arrives; earlier streams finish, the connection
    closes after them); `refuse_next=N` with `refuse_with="rst"` (RST_STREAM REFUSED_STREAM)
    or `"goaway"` (GOAWAY whose last stream id is below the stream, which is never answered):
    the next N streams, across connections; `goaway()` sends a GOAWAY on every open connection
    now. Records: `connections` (H2OriginConnection each, in accept order), `seen` (every
    served request: H2OriginStream), `accepted` (count)."""

    def __init__(self, name="h2origin", max_concurrent_streams=100, tls=False, cert_name="api.example.com",
                 goaway_after=None, refuse_next=0, refuse_with="rst", backlog=256):
        self.name = name
        self.max_concurrent_streams = max_concurrent_streams
        self.goaway_after = goaway_after
        self.refuse_next = refuse_next
        assert refuse_with in ("rst", "goaway")
        self.refuse_with = refuse_with
        self.lock = threading.Lock()
        self.connections = []
        self.seen = []
        self.commands = []              # callables, each run once by every connection open then
        self.released = False
        self.ctx = None
        if tls:
            from tls_peers import cert
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(*cert(cert_name))
            self.ctx.set_alpn_protocols(["h2"])
            self.ctx.sni_callback = self._on_sni
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.addr = self.sock.getsockname()
        self.closed = False
        self.threads = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    @staticmethod
    def _on_sni(sock, name, ctx):
        sock.sni = name

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.addr[1]}"

    @property
    def accepted(self):
        with self.lock:
            return len(self.connections)

    def paths(self):
        with self.lock:
            return [s.path for s in self.seen]

    def find(self, path):
        with self.lock:
            return [s for s in self.seen if s.path == path]

    def requests_per_connection(self):
        with self.lock:
            return [c.requests for c in self.connections]

    def resets(self):
        """[(connection index, stream id, error code)] of every RST_STREAM received."""
        with self.lock:
            return [(c.id, sid, code) for c in self.connections for sid, code in c.resets]

    def open_streams(self):
        """Streams served and not yet finished, over all connections."""
        with self.lock:
            return sum(1 for s in self.seen if not s.done)

    def release(self):
        """Answers every /hold/ request, waiting or still to come."""
        with self.lock:
            self.released = True
            self.commands.append(lambda c: c.release_held())

    def goaway(self, last_stream_id=None):
        """Sends GOAWAY(NO_ERROR) on every open connection, with `last_stream_id` (default: the
        highest stream id it received): streams up to it are answered, later ones ignored, and
        the connection closes once they are done."""
        with self.lock:
            self.commands.append(lambda c: c.send_goaway(last_stream_id))

    def _take(self, seen):
        with self.lock:
            return self.commands[seen:], len(self.commands)

    def _accept_loop(self):
        while not self.closed:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                rec = H2OriginConnection(len(self.connections))
                self.connections.append(rec)
                first_cmd = len(self.commands)  # commands given before it was accepted do not apply
            t = threading.Thread(target=self._serve, args=(s, rec, first_cmd), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, s, rec, first_cmd):
        try:
            _H2OriginLoop(self, s, rec, first_cmd).run()
        except (OSError, ssl.SSLError):
            rec.eof = True
        except h2.exceptions.ProtocolError as e:
            rec.errors.append(f"{type(e).__name__}: {e}")
        finally:
            rec.closed = True
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for t in self.threads:
            t.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _H2OriginLoop:
    """One connection of an H2Origin, on its own thread: select, h2 events, responses."""

    def __init__(self, origin, sock, rec, first_cmd):
        self.o = origin
        self.rec = rec
        self.cmd_seen = first_cmd
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if origin.ctx is not None:
            sock.settimeout(10)
            sock = origin.ctx.wrap_socket(sock, server_side=True)
            rec.alpn = sock.selected_alpn_protocol()
            rec.sni = getattr(sock, "sni", None)
        self.sock = sock
        self.sock.setblocking(False)
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(cfg)
        # SETTINGS_MAX_CONCURRENT_STREAMS goes out in the first SETTINGS frame; the limit is then
        # enforced here (REFUSED_STREAM, recorded), not by h2 (which would close the connection).
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: origin.max_concurrent_streams,
            h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2 ** 31 - 1,
            h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.increment_flow_control_window(16 << 20)
        self.out = bytearray()
        self.streams = {}               # sid -> H2OriginStream (served ones)
        self.open = set()               # stream ids the client has open (from our side)
        self.closing = False            # GOAWAY sent: close once streams up to it are done

    # -- the loop

    def run(self):
        while not self.o.closed:
            self._commands()
            self._respond_due()
            self._pump()
            if not self._flush():
                return
            if self.closing and not self.out and all(s.done for s in self.streams.values()
                                                     if s.id <= self.rec.goaway_sent):
                self._shutdown()
                return
            wait = 0.02
            now = time.monotonic()
            due = [s.due for s in self.streams.values() if s.due is not None and s.left is None and not s.done]
            if due:
                wait = max(0, min(wait, min(due) - now))
            if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                r = [self.sock]
            else:
                r, _, _ = select.select([self.sock], [self.sock] if self.out else [], [], wait)
            if r and not self._read():
                return

    def _shutdown(self):
        """Our FIN after everything we wrote, then reads (and drops) what the client still sends
        until its EOF (at most 2 s): closing with unread bytes would send a TCP RST, and the
        client could lose the GOAWAY still in its receive queue."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.sock], [], [], 0.05)
            if not r:
                continue
            try:
                if not self.sock.recv(1 << 16):
                    return
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except (OSError, ssl.SSLError):
                return

    def _read(self):
        """False when the connection is over (EOF, reset, protocol error)."""
        while True:
            try:
                d = self.sock.recv(1 << 18)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return True
            except (ConnectionResetError, ssl.SSLError):
                d = b""
            if not d:
                self.rec.eof = True
                return False
            try:
                events = self.conn.receive_data(d)
            except h2.exceptions.ProtocolError as e:
                self.rec.errors.append(f"{type(e).__name__}: {e}")
                self._flush()
                return False
            self._handle(events)
            if not isinstance(self.sock, ssl.SSLSocket) or not self.sock.pending():
                return True

    def _flush(self):
        """Writes what can go; False when the peer is gone."""
        self.out += self.conn.data_to_send()
        while self.out:
            try:
                n = self.sock.send(self.out[:1 << 18])
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return True
            except (OSError, ssl.SSLError):
                self.rec.eof = True
                return False
            del self.out[:n]
        return True

    def _commands(self):
        cmds, self.cmd_seen = self.o._take(self.cmd_seen)
        for c in cmds:
            c(self)

    # -- frames in

    def _handle(self, events):
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev)
            elif isinstance(ev, h2.events.DataReceived):
                if ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.sha.update(ev.data)
                    st.body_len += len(ev.data)
                    if st.h.get("content-type", "").startswith("application/grpc"):
                        st.body += ev.data
            elif isinstance(ev, h2.events.TrailersReceived):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.trailers = list(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                st = self.streams.get(ev.stream_id)
                if st is not None and not st.done:
                    st.request_ended = True
                    st.due = time.monotonic() + self._delay(st)
            elif isinstance(ev, h2.events.StreamReset):
                self.rec.resets.append((ev.stream_id, int(ev.error_code)))
                self.open.discard(ev.stream_id)
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.reset = int(ev.error_code)
                    st.done = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.rec.goaway_received = (int(ev.error_code), ev.last_stream_id)
            elif isinstance(ev, h2.events.SettingsAcknowledged):
                self.rec.settings_acked = True
            elif isinstance(ev, h2.events.PingReceived):
                self.rec.pings += 1

    def _request(self, ev):
        sid = ev.stream_id
        o, rec = self.o, self.rec
        if rec.goaway_sent is not None and sid > rec.goaway_sent:
            rec.ignored.append(sid)
            return
        self.open.add(sid)
        rec.max_concurrent = max(rec.max_concurrent, len(self.open))
        if len(self.open) > o.max_concurrent_streams:
            rec.excess.append(sid)
            if rec.settings_acked:
                rec.excess_after_ack.append(sid)
            self._refuse(sid)
            return
        with o.lock:
            refuse = o.refuse_next > 0
            if refuse:
                o.refuse_next -= 1
        if refuse:
            if o.refuse_with == "rst":
                self._refuse(sid)
            else:
                # A GOAWAY that leaves this stream out: the client must treat it as refused.
                rec.ignored.append(sid)
                self.open.discard(sid)
                self.send_goaway(sid - 2 if sid > 2 else 0)
            return
        st = H2OriginStream(rec, sid, ev.headers)
        self.streams[sid] = st
        rec.requests += 1
        rec.stream_ids.append(sid)
        with o.lock:
            o.seen.append(st)
        if ev.stream_ended:
            st.request_ended = True
            st.due = time.monotonic() + self._delay(st)
        if o.goaway_after is not None and rec.requests == o.goaway_after:
            self.send_goaway(sid)

    def _refuse(self, sid):
        self.rec.refused.append(sid)
        self.open.discard(sid)
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)

    def send_goaway(self, last_stream_id=None):
        """GOAWAY(NO_ERROR, last_stream_id), written after what h2 has queued. Built by hand: h2's
        close_connection() would refuse to send anything more on the connection, while streams
        up to the last id must still be answered."""
        from hyperframe.frame import GoAwayFrame
        if self.rec.goaway_sent is not None or self.rec.closed:
            return
        if last_stream_id is None:
            last_stream_id = max([0, *self.streams, *self.rec.refused])
        self.out += self.conn.data_to_send()
        self.out += GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0).serialize()
        self.rec.goaway_sent = last_stream_id
        self.closing = True

    # -- responses

    def _delay(self, st):
        p = st.path.split("?")[0]
        if p.startswith("/delay/"):
            return int(p.split("/")[2]) / 1000
        if p.startswith("/hold/") and not self.o.released:
            return float("inf")
        return 0

    def release_held(self):
        now = time.monotonic()
        for st in self.streams.values():
            if st.due == float("inf"):
                st.due = now

    def _respond_due(self):
        now = time.monotonic()
        for st in list(self.streams.values()):
            if st.due is not None and st.left is None and not st.done and st.due <= now:
                self._respond(st)

    def _respond(self, st):
        o = self.o
        path, _, query = st.path.partition("?")
        method = st.h.get(":method")
        hdrs = [("x-origin", o.name)]
        trailers = None
        body = b""
        status = 200
        if st.h.get("content-type", "").startswith("application/grpc"):
            hdrs.append(("content-type", "application/grpc"))
            body = bytes(st.body)
            code = st.h.get("x-grpc-status", "0")
            trailers = [("grpc-status", code), ("grpc-message", "ok" if code == "0" else "failed")]
        elif path.startswith("/size/") or path.startswith("/chunked/"):
            n = int(path.split("/")[2])
            body = _PATTERN.get(n)
            if path.startswith("/size/"):
                hdrs.append(("content-length", str(n)))
            if "trailers" in query:
                trailers = [("x-checksum", hashlib.sha256(body).hexdigest())]
        elif path.startswith("/delay/"):
            body = b"delayed\n"
            hdrs.append(("content-length", str(len(body))))
        elif path.startswith("/status/"):
            status = int(path.split("/")[2])
            body = b"status\n"
            hdrs.append(("content-length", str(len(body))))
        else:
            info = {
                "origin": o.name, "protocol": "HTTP/2", "method": method, "path": st.path,
                "authority": st.h.get(":authority"), "scheme": st.h.get(":scheme"),
                "headers": {k: v for k, v in st.headers}, "header_lines": [list(x) for x in st.headers],
                "trailers": [list(x) for x in st.trailers], "body_sha256": st.sha.hexdigest(),
                "body_len": st.body_len, "chunked": False, "connection": self.rec.id, "stream_id": st.id,
            }
            body = json.dumps(info).encode()
            hdrs += [("content-type", "application/json"), ("content-length", str(len(body)))]
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        no_body = not len(body) and trailers is None
        self.conn.send_headers(st.id, [(":status", str(status))] + hdrs, end_stream=no_body)
        st.left = memoryview(body)
        st.resp_trailers = trailers
        if no_body:
            self._finished(st)

    def _finished(self, st):
        st.done = True
        self.open.discard(st.id)

    def _pump(self):
        """DATA as the client's windows allow (and while our own output is not piling up)."""
        progress = True
        while progress and len(self.out) < (1 << 20):
            progress = False
            for st in list(self.streams.values()):
                if st.left is None or st.done:
                    continue
                if len(st.left):
                    n = min(self.conn.local_flow_control_window(st.id), self.conn.max_outbound_frame_size,
                            len(st.left))
                    if n <= 0:
                        continue
                    self.conn.send_data(st.id, st.left[:n].tobytes())
                    st.left = st.left[n:]
                    progress = True
                if not len(st.left):
                    if st.resp_trailers is not None:
                        self.conn.send_headers(st.id, st.resp_trailers, end_stream=True)
                    else:
                        self.conn.end_stream(st.id)
                    self._finished(st)
            self.out += self.conn.data_to_send()
