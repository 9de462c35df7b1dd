"""CONNECT over HTTP/2 (RFC 9113 8.5) into http-proxy: a plain CONNECT stream (`:method`
CONNECT, `:authority` host:port, no `:scheme`/`:path`) is terminated into a TCP tunnel by a
`connect_matcher` route, or forwarded to an upstream proxy tier with `connect_mode: forward`,
several tunnels on one connection, each with its own flow control. A CONNECT's bytes sent
before its tunnel is up are held within the stream's window (which the proxy does not reopen
until then). The client is a raw one on the Python `h2` library."""

import select
import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from harness import Proxy, Server, echo_handler, wait_for
from http_peers import Origin, pattern
from test_http_proxy import http_config


class Tunnels:
    """One HTTP/2 connection to the proxy carrying CONNECT streams: `open(authority, data)`
    starts one, `run(deadline)` sends every stream's data as the windows allow while it reads
    what comes back (windows handed back as bytes arrive)."""

    def __init__(self, p):
        self.sock = socket.create_connection(p.addr(), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.streams = {}
        self.sent = {}
        self.goaway = None

    def open(self, authority, data=b"", end=True, websocket=False, data_now=b""):
        sid = self.conn.get_next_available_stream_id()
        if websocket:  # RFC 8441, once the proxy's SETTINGS allow it
            self.run_until(lambda: self.conn.remote_settings.get(0x8) == 1, what="SETTINGS_ENABLE_CONNECT_PROTOCOL")
            self.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                         (":path", "/chat"), (":authority", authority), ("sec-websocket-version", "13")])
        else:
            self.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
        sent = 0
        while sent < len(data_now):  # in the same write as the HEADERS (one read at the proxy)
            n = min(len(data_now) - sent, self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if n <= 0:
                break
            self.conn.send_data(sid, data_now[sent:sent + n])
            sent += n
        self.streams[sid] = {"status": None, "out": bytearray(data), "got": bytearray(), "ended": False,
                             "reset": None, "end": end, "end_sent": False}
        self.sent[sid] = sent
        self.sock.sendall(self.conn.data_to_send())
        return sid

    def step(self, wait=0.05):
        for sid, s in self.streams.items():
            if s["reset"] is not None or s["status"] != "200" or s["end_sent"]:
                continue
            while s["out"]:
                n = min(len(s["out"]), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if n <= 0:
                    break
                self.conn.send_data(sid, bytes(s["out"][:n]))
                self.sent[sid] += n
                del s["out"][:n]
            if not s["out"] and s["end"] and not s["end_sent"]:
                self.conn.end_stream(sid)
                s["end_sent"] = True
        self.sock.sendall(self.conn.data_to_send())
        r, _, _ = select.select([self.sock], [], [], wait)
        if not r:
            return
        data = self.sock.recv(1 << 20)
        assert data, "the proxy closed the connection"
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                self.streams[ev.stream_id]["status"] = dict(ev.headers)[b":status"].decode()
            elif isinstance(ev, h2.events.DataReceived):
                self.streams[ev.stream_id]["got"] += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.streams[ev.stream_id]["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                self.streams[ev.stream_id]["reset"] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
        self.sock.sendall(self.conn.data_to_send())

    def run_until(self, pred, timeout=30, what="condition"):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"{what}: {self.state()}"
            self.step()

    def state(self):
        return {sid: (s["status"], len(s["got"]), s["ended"], s["reset"]) for sid, s in self.streams.items()}

    def close(self):
        self.sock.close()


def test_plain_connect_streams_are_tunnelled_to_a_tcp_cluster_byte_exact():
    with Server(echo_handler) as echo, Origin("web") as web:
        cfg = http_config("""      routes:
        - match: { connect_matcher: {} }
          cluster: echo
        - match: { prefix: / }
          cluster: web""", {"echo": echo.endpoint, "web": web.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            t = Tunnels(p)
            try:
                # Four tunnels at once on one connection, 1 MiB each way (16 windows' worth),
                # written and read together; each client END_STREAM half-closes its upstream,
                # whose FIN (the echo closing) ends the stream.
                sent = {t.open("echo.test:7", pattern(1 << 20, seed=k)): pattern(1 << 20, seed=k) for k in range(4)}
                t.run_until(lambda: all(t.streams[sid]["ended"] for sid in sent), what="every tunnel echoed and ended")
                for sid, data in sent.items():
                    assert t.streams[sid]["status"] == "200" and bytes(t.streams[sid]["got"]) == data, t.state()
                assert p.stat("http.main.downstream_cx_upgrades_total") == 4
                wait_for(lambda: p.stat("http.main.downstream_cx_upgrades_active") == 0, what="tunnels closed")
                # The connection goes on: an ordinary request on it still routes by path.
                sid = t.conn.get_next_available_stream_id()
                t.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":path", "/x"), (":authority", "w")],
                                    end_stream=True)
                t.streams[sid] = {"status": None, "out": bytearray(), "got": bytearray(), "ended": False, "reset": None,
                                  "end": False, "end_sent": True}
                t.run_until(lambda: t.streams[sid]["ended"], what="the GET answered")
                assert t.streams[sid]["status"] == "200" and b'"origin": "web"' in bytes(t.streams[sid]["got"])
            finally:
                t.close()


def test_a_bad_or_unrouted_plain_connect_is_refused_without_touching_a_host():
    with Server(echo_handler) as echo, Origin("web") as web:
        cfg = http_config("""      virtual_hosts:
        - name: tunnels
          domains: ["echo.test:7"]
          routes: [{ match: { connect_matcher: {} }, cluster: echo }]
        - name: web
          domains: ["*"]
          routes: [{ match: { prefix: / }, cluster: web }]""", {"echo": echo.endpoint, "web": web.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            t = Tunnels(p)
            try:
                bad = [t.open(a) for a in ("echo.test", "echo.test:0", "echo.test:99999", "echo.test:7x")]
                unrouted = t.open("other.test:7")
                t.run_until(lambda: all(t.streams[s]["status"] for s in bad + [unrouted]), what="every CONNECT answered")
                assert [t.streams[s]["status"] for s in bad] == ["400"] * 4, t.state()
                assert t.streams[unrouted]["status"] == "404"
                assert echo.connections == 0 and web.paths() == []
                assert p.stat("http.main.downstream_cx_upgrades_total") == 0
            finally:
                t.close()


@pytest.mark.parametrize("kind", ["connect", "websocket"])
def test_bytes_sent_before_the_tunnel_is_up_stay_within_the_stream_window(kind):
    # A host that takes the CONNECT (connect_mode: forward, to an upstream proxy tier) or the
    # WebSocket upgrade (RFC 8441 to HTTP/1.1) and never answers: the tunnel never comes up,
    # so the client may send one stream window (65535) and no more.
    held = []

    def silent(c, server):
        held.append(c)
        c.settimeout(30)
        while c.recv(65536):
            pass
    with Server(silent) as tier:
        route = ("""        - match: { connect_matcher: {} }
          cluster: tier
          connect_mode: forward""" if kind == "connect" else """        - match: { prefix: / }
          cluster: tier""")
        cfg = http_config(f"""      routes:
{route}
          timeout: 30s""", {"tier": tier.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            t = Tunnels(p)
            try:
                # As much as the window takes in the same write as the HEADERS, then more.
                sid = t.open("far.test:443", end=False, websocket=kind == "websocket", data_now=bytes(65535))
                t.streams[sid]["status"] = "200"  # send at once, before any answer (as a client may)
                t.streams[sid]["out"] = bytearray(8 << 20)
                wait_for(lambda: tier.connections == 1, what="the CONNECT forwarded")
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    t.step()
                assert t.sent[sid] == 65535, f"the client could send {t.sent[sid]} bytes before the tunnel was up"
                assert t.conn.local_flow_control_window(sid) == 0
                # The proxy did not consume the held bytes' window; its memory for them is bounded.
                assert p.stat("http.main.downstream_cx_upgrades_total") == 0
            finally:
                t.close()
                for c in held:
                    c.close()


def tunnel_config(host):
    return http_config("""      routes:
        - match: { connect_matcher: {} }
          cluster: host""", {"host": host.endpoint})


@pytest.mark.parametrize("when", ["at-accept", "after-client-bytes"])
def test_a_host_that_resets_after_its_last_bytes_ends_the_stream_with_connect_error(when):
    # The bytes and the TCP RST arrive in one event: the reset must still be read (it used to be
    # missed until the client wrote again or stream_idle_timeout); the bytes go to the client
    # before the RST_STREAM. At accept, the kernel may drop them with the reset, or the reset
    # may fail the connect (a 503).
    import struct

    def bye_then_reset(c, server):
        c.settimeout(10)
        if when != "at-accept":
            c.recv(10)  # the client's first bytes: the tunnel is up
        c.sendall(b"bye")
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    with Server(bye_then_reset) as host, Proxy("http-proxy", config=tunnel_config(host)) as p:
        t = Tunnels(p)
        try:
            sids = [t.open("h.test:1", b"go", end=False) for _ in range(4)]
            t.run_until(lambda: all(t.streams[s]["reset"] is not None or t.streams[s]["ended"] for s in sids),
                        timeout=10, what="every tunnel ended")
            for s in sids:
                st = t.streams[s]
                if when == "at-accept" and st["status"] == "503":
                    continue  # the reset came before the proxy saw the connection up: a failed connect
                got = bytes(st["got"])
                assert (got == b"bye" or when == "at-accept" and got == b"") and st["reset"] == 0xA, t.state()  # CONNECT_ERROR
            wait_for(lambda: p.stat("http.main.downstream_cx_upgrades_active") == 0 and p.stat("cluster.host.upstream_cx_active") == 0,
                     what="tunnels and host connections released")
        finally:
            t.close()


def test_a_host_half_close_leaves_the_client_direction_open():
    # RFC 9113 8.5: the host's FIN is END_STREAM, a half-close; the client goes on sending
    # until its own END_STREAM, as over HTTP/1.1.
    got = []

    def banner_then_read(c, server):
        c.sendall(b"banner")
        c.shutdown(socket.SHUT_WR)
        n = 0
        while True:
            d = c.recv(65536)
            if not d:
                break
            n += len(d)
        got.append(n)
    with Server(banner_then_read) as host, Proxy("http-proxy", config=tunnel_config(host)) as p:
        t = Tunnels(p)
        try:
            sid = t.open("h.test:1", end=False)
            t.run_until(lambda: t.streams[sid]["ended"], what="the host's END_STREAM")
            assert bytes(t.streams[sid]["got"]) == b"banner" and t.streams[sid]["reset"] is None, t.state()
            t.streams[sid]["out"] = bytearray(pattern(300_000))
            t.streams[sid]["end"] = True
            t.run_until(lambda: got, what="the host reading the client's bytes to their end")
            assert got == [300_000] and t.streams[sid]["reset"] is None, (got, t.state())
            wait_for(lambda: p.stat("http.main.downstream_cx_upgrades_active") == 0, what="the tunnel closed")
        finally:
            t.close()


def test_connect_forwarding_to_an_http2_cluster_is_refused_locally():
    from h2_peers import H2Origin
    with H2Origin() as o:
        cfg = http_config("""      routes:
        - match: { connect_matcher: {} }
          cluster: tier
          connect_mode: forward""", {"tier": o.endpoint}).replace("idle_timeout: 1s }", "idle_timeout: 1s, protocol: http2 }")
        with Proxy("http-proxy", config=cfg) as p:
            t = Tunnels(p)
            try:
                sid = t.open("far.test:443")
                t.run_until(lambda: t.streams[sid]["status"], what="an answer")
                assert t.streams[sid]["status"] == "501" and o.accepted == 0
            finally:
                t.close()


def test_a_tunnel_half_closed_by_its_host_is_still_bounded_by_stream_idle_timeout():
    # The host sends and closes; the client never ends its side: stream_idle_timeout must still
    # release the stream and the host's connection (one client could otherwise pin them all).
    def hello_then_fin(c, server):
        c.sendall(b"hello")
        c.shutdown(socket.SHUT_WR)
        c.settimeout(30)
        while c.recv(65536):
            pass
    with Server(hello_then_fin) as host:
        cfg = http_config("""      stream_idle_timeout: 1s
      routes:
        - match: { connect_matcher: {} }
          cluster: host""", {"host": host.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            t = Tunnels(p)
            try:
                sid = t.open("h.test:1", end=False)
                t.run_until(lambda: t.streams[sid]["reset"] is not None, timeout=10, what="the silent half-closed tunnel reset")
                assert bytes(t.streams[sid]["got"]) == b"hello" and t.streams[sid]["ended"], t.state()
                wait_for(lambda: p.stat("http.main.downstream_cx_upgrades_active") == 0 and p.stat("cluster.host.upstream_cx_active") == 0,
                         what="the tunnel and the host's connection released")
                assert p.stat("http.main.downstream_rq_idle_timeout") == 1
            finally:
                t.close()
