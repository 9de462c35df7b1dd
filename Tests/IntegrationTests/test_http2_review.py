"""Regressions from the adversarial review of http-proxy's HTTP/2 connection manager: a client
that stops reading (or never opens its windows) must not pin its streams, their queued bytes or
the connection; :scheme/:path must not smuggle an absolute-form target to an HTTP/1 origin;
idle_timeout must re-arm after a long stream; request_timeout must stop when a request ends with
trailers; a SIGHUP that changes stat_prefix must not skew the active-request gauges."""

import signal
import struct

import hpack
import pytest
from h2_peers import PREFACE, H2Client, RecordingOrigin, frames
from harness import Proxy, Server, wait_for, wait_read_by_peer
from test_http2_protections import (DATA, END_HEADERS, END_STREAM, HEADERS, RST_STREAM, SETTINGS,
                                    WINDOW_UPDATE, Raw, config, ended, frame, proxy, rst_codes)

SETTINGS_INITIAL_WINDOW_SIZE = 0x4
MAX_WINDOW = 2 ** 31 - 1
TIMEOUTS = "      stream_idle_timeout: 1s\n      idle_timeout: 1s\n"


def initial_window(n):
    """A SETTINGS frame setting SETTINGS_INITIAL_WINDOW_SIZE to `n`."""
    return frame(SETTINGS, 0, 0, struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, n))


def endless_origin():
    """An HTTP/1.1 origin answering `GET /stream/N` with a Content-Length N body it writes as
    fast as the proxy reads it (generated on the fly: 50 MB costs nothing until it moves)."""
    def handler(c, server):
        c.settimeout(60)
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            n = int(head.split(b" ", 2)[1].split(b"/")[2])
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
            block = b"x" * 65536
            while n > 0:
                c.sendall(block[:min(n, len(block))])
                n -= len(block)
    return Server(handler)


def gauges(p, *names):
    s = p.stats()
    return {n: s.get("http.main." + n, 0) for n in names}


def start_non_reader(p, paths, rcvbuf=4096):
    """A client with a tiny receive buffer that opens every window wide, asks for `paths` and
    then never reads its socket again."""
    c = Raw(p, rcvbuf=rcvbuf)
    c.send(PREFACE + initial_window(MAX_WINDOW) + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535))
           + b"".join(c.request(2 * i + 1, path=path) for i, path in enumerate(paths)))
    return c


# --- 1. A client that stops reading: its streams time out, their queued bytes go, the
# connection is closed (idle_timeout's GOAWAY cannot be delivered: cut after 1 s). The second
# case adds a connection error (DATA on stream 0) once the client has stopped reading; the proxy
# may not even read it while its writes are blocked, but either way the connection must end.

@pytest.mark.parametrize("then", [b"", frame(DATA, 0, 0, b"x")], ids=["stops-reading", "then-protocol-error"])
def test_a_client_that_never_reads_loses_its_queued_bytes_and_its_connection(then):
    with endless_origin() as o, proxy(o, TIMEOUTS) as p:
        c = start_non_reader(p, ["/stream/50000000"] * 4)
        try:
            wait_for(lambda: p.stat("http.main.http2.pending_send_bytes") > 0, timeout=10,
                     what="response bytes queued for the client that does not read")
            if then:
                c.send(then)
            last = {}

            def released():
                last.update(gauges(p, "http2.pending_send_bytes", "http2.streams_active",
                                   "downstream_rq_active", "downstream_cx_active"))
                return not any(last.values())
            try:
                wait_for(released, timeout=10, interval=0.1, what="the non-reader's streams and connection released")
            except AssertionError:
                raise AssertionError(f"still held 10 s after the timeouts (1 s) fired: {last}") from None
        finally:
            c.close()


# --- 2. A client that reads but never opens its stream windows (INITIAL_WINDOW_SIZE 0): the
# responses, complete upstream, must not sit in the send queue for ever.

def test_responses_held_by_a_zero_window_are_dropped_after_stream_idle_timeout():
    with RecordingOrigin() as o, proxy(o, TIMEOUTS) as p:
        c = Raw(p)
        c.send(PREFACE + initial_window(0)
               + b"".join(c.request(2 * i + 1, path="/size/200000") for i in range(100)))
        c.s.setblocking(False)

        def drain():
            while True:
                try:
                    d = c.s.recv(1 << 20)
                except BlockingIOError:
                    return
                except ConnectionResetError:
                    d = b""
                if not d:
                    return
                c.got += d
        last = {}

        def released():
            drain()
            last.update(gauges(p, "http2.pending_send_bytes", "http2.streams_active", "downstream_rq_active"))
            return not any(last.values())
        try:
            wait_for(lambda: drain() or p.stat("http.main.downstream_rq_total") == 100, what="100 requests received")
        except AssertionError:
            c.close()
            raise
        want = {2 * i + 1 for i in range(100)}
        rst = set()

        def all_reset():
            # The gauges fall when a reset is queued; its frame may reach the socket a moment
            # later (by then the test may have stopped reading), so poll for the frames too.
            drain()
            rst.update(s for t, _, s, _ in frames(bytes(c.got)) if t == RST_STREAM)
            return rst == want
        try:
            try:
                wait_for(released, timeout=10, interval=0.1, what="the zero-window streams released")
            except AssertionError:
                raise AssertionError(f"still held 10 s after stream_idle_timeout (1 s): {last}") from None
            try:
                wait_for(all_reset, timeout=10, interval=0.05, what="a RST_STREAM for every stream")
            except AssertionError:
                raise AssertionError(f"{len(rst)} of 100 streams reset; none for {sorted(want - rst)}") from None
        finally:
            c.close()


# --- 3. Only http/https :scheme and an origin-form :path reach an HTTP/1 origin.

def statuses(got):
    """{stream id: :status} of the response HEADERS in `got` (one connection, in order)."""
    dec = hpack.Decoder()
    out = {}
    for t, _, s, pl in frames(got):
        if t == HEADERS:
            h = dict(dec.decode(pl))
            if ":status" in h:
                out[s] = h[":status"]
    return out


def ask(p, scheme, path, method="GET"):
    """One request with exactly these pseudo-header fields on a new connection: its :status,
    or `RST_STREAM <code>` when the stream was reset instead."""
    c = Raw(p)
    block = c.enc.encode([(":method", method), (":scheme", scheme), (":authority", "public.example"), (":path", path)])
    c.start(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    try:
        fs = c.read_until(lambda fs: any(s == 1 and (t == RST_STREAM or (t in (HEADERS, DATA) and f & END_STREAM))
                                         for t, f, s, _ in fs))
    finally:
        c.close()
    for t, _, s, pl in fs:
        if t == RST_STREAM and s == 1:
            return f"RST_STREAM {int.from_bytes(pl[:4], 'big')}"
    return statuses(bytes(c.got)).get(1)


def test_a_path_that_is_not_origin_form_or_a_foreign_scheme_gets_400_and_is_never_forwarded():
    # A catch-all regex route, as a prefix route would not match these paths.
    with RecordingOrigin() as o, Proxy("http-proxy", config=config(o).replace(
            "match: { prefix: / }", 'match: { safe_regex: ".*" }')) as p:
        cases = [("foo", "http://internal.example/admin"), ("foo", "admin"),
                 ("https", "http://internal.example/admin"), ("http", "admin")]
        seen = {(scheme, path): ask(p, scheme, path) for scheme, path in cases}
        forwarded = list(o.paths())
        # With :scheme http/https nghttp2 checks :path itself and resets the stream (RFC 9113
        # 8.1.1: a malformed request is a stream error PROTOCOL_ERROR); other schemes get 400.
        rejected = {k: v for k, v in seen.items() if v in ("400", "RST_STREAM 1")}
        assert rejected == seen and forwarded == [], f"answers {seen}; origin saw {forwarded}"
        assert seen[("foo", "http://internal.example/admin")] == seen[("foo", "admin")] == "400", seen
        # The same route does serve an ordinary request.
        assert ask(p, "https", "/admin") == "200"
        assert o.paths() == ["/admin"]


# --- 4. idle_timeout re-arms after a stream that outlived the first idle deadline.

def test_idle_timeout_closes_the_connection_after_a_stream_longer_than_it():
    with RecordingOrigin() as o, proxy(o, "      idle_timeout: 1s\n") as p:
        with H2Client(p.addr()) as c:
            (st,) = c.wait_done(c.get("/delay/1500"))
            assert st.status == 200 and st.ended
            try:
                c.run_until(lambda: c.eof, timeout=6, what="the idle connection closed")
            except AssertionError as e:
                raise AssertionError(f"{e}; goaway={c.goaway} "
                                     f"cx_idle_timeout={p.stat('http.main.downstream_cx_idle_timeout')}") from None
            assert c.goaway == (0, 1)
        wait_for(lambda: p.stat("http.main.downstream_cx_idle_timeout") == 1, what="the idle close counted")


# --- 5. request_timeout stops when the request ends, also when it ends with trailers (a
# HEADERS frame with END_STREAM, read on its own after the body).

def test_request_timeout_does_not_fire_after_a_request_ended_with_trailers():
    with RecordingOrigin() as o, proxy(o, "      request_timeout: 1s\n") as p:
        c = Raw(p)
        c.start(c.request(1, path="/delay/2000", method="POST", end=False) + frame(DATA, 0, 1, b"abc")
                + c.request(3, path="/delay/2000", method="POST", end=False) + frame(DATA, 0, 3, b"abc"))
        wait_read_by_peer(c.s)
        # Stream 1 ends with trailers, stream 3 (the control) with an empty DATA frame.
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, c.enc.encode([("x-trailer", "1")]))
               + frame(DATA, END_STREAM, 3))
        try:
            fs = c.read_until(lambda fs: {1, 3} <= ended(fs), timeout=10)
        finally:
            c.close()
        assert statuses(bytes(c.got)) == {1: "200", 3: "200"}, f"rst={rst_codes(fs)}"
        assert p.stat("http.main.downstream_rq_timeout") == 0
        assert sorted(x["trailers"] for x in o.find("/delay/2000")) == [[], [("x-trailer", "1")]]


# --- 6. A SIGHUP changing stat_prefix under a stream in flight keeps both prefixes' gauges right.

def test_stat_prefix_change_on_sighup_leaves_no_request_counted_active():
    with RecordingOrigin() as o, proxy(o) as p:
        with H2Client(p.addr()) as c:
            first = c.get("/delay/1500")
            c.run_until(lambda: p.stat("http.main.downstream_rq_active") == 1, what="the first request in flight")
            with open(p.config_path, "w") as f:
                f.write(config(o).replace("    http:\n", "    http:\n      stat_prefix: edge2\n"))
            p.signal(signal.SIGHUP)
            c.run_until(lambda: p.stat("server.reload_success") == 1, what="the reload")
            second = c.get("/size/10")
            a, b = c.wait_done(first, second, timeout=10)
            assert a.status == 200 and b.status == 200, c.state()
        last = {}

        def settled():
            s = p.stats()
            last.update({n: s.get(n, 0) for n in ("http.main.downstream_rq_active", "http.edge2.downstream_rq_active",
                                                   "http.main.downstream_cx_active", "http.edge2.downstream_cx_active")})
            return not any(last.values())
        try:
            wait_for(settled, timeout=5, what="both prefixes' gauges back to 0")
        except AssertionError:
            raise AssertionError(f"after both streams ended and the client closed: {last}") from None
