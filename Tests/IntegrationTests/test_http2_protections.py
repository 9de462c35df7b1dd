"""http-proxy's HTTP/2 protections (issue 11, must-show 3) and its GOAWAY drain (must-show 6):
each attack is sent as raw frames (built here, encoded with the `hpack` library, not the proxy's
nghttp2), then the test checks the proxy's answer (GOAWAY or RST_STREAM with the right code),
its counter, and that another connection is still served."""

import signal
import socket
import struct
import subprocess
import threading
import time

import hpack
from h2_peers import PREFACE, H2Client, RecordingOrigin, frames, goaway_codes
from harness import Proxy, connect, wait_for
from test_http_proxy import curl, hp

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 1, 2, 7, 8, 11
MAX_ID = 0x7FFFFFFF


def frame(ftype, flags, sid, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def config(origin, http_extra="", drain=""):
    return f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    http:
{http_extra}      routes: [{{ match: {{ prefix: / }}, cluster: web }}]
clusters:
  - name: web
    endpoints: [{origin.endpoint}]
    http_protocol_options: {{ idle_timeout: 1s }}
{drain}"""


def proxy(origin, http_extra="", drain=""):
    return Proxy("http-proxy", config=config(origin, http_extra, drain))


class Raw:
    """A client connection that writes whatever frames it is given."""

    def __init__(self, p, rcvbuf=None):
        if rcvbuf:
            self.s = socket.socket()
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.s.settimeout(10)
            self.s.connect(p.addr())
        else:
            self.s = connect(p.addr())
        self.enc = hpack.Encoder()
        self.got = bytearray()

    def block(self, path="/size/10", method="GET", extra=()):
        return self.enc.encode([(":method", method), (":scheme", "http"), (":path", path), (":authority", "t"), *extra])

    def request(self, sid, path="/size/10", end=True, **kw):
        return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, self.block(path, **kw))

    def send(self, data):
        self.s.sendall(data)

    def start(self, extra=b""):
        self.send(PREFACE + frame(SETTINGS, 0, 0) + extra)

    def read_until(self, pred, timeout=10):
        """Reads until `pred(frames so far)` holds or the peer closes; the frames."""
        deadline = time.monotonic() + timeout
        while not pred(frames(bytes(self.got))):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; frames so far: {[(t, f, s) for t, f, s, _ in frames(bytes(self.got))][-10:]}"
            self.s.settimeout(left)
            try:
                d = self.s.recv(1 << 20)
            except ConnectionResetError:
                d = b""
            if not d:
                self.closed = True
                break
            self.got += d
        return frames(bytes(self.got))

    def read_to_close(self, timeout=10):
        self.closed = False
        self.read_until(lambda fs: False if not getattr(self, "closed", False) else True, timeout)
        return frames(bytes(self.got))

    def close(self):
        self.s.close()


def still_serves(p):
    rc, out, err = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                        f"http://{hp(p)}/size/100")
    assert (rc, out) == (0, b"200 2"), err


def rst_codes(fs):
    return {sid: int.from_bytes(pl[:4], "big") for t, _, sid, pl in fs if t == RST_STREAM}


def test_rapid_reset_in_one_read_never_reaches_an_upstream_and_gets_goaway():
    # 1200 streams opened and reset back to back (CVE-2023-44487): nghttp2's reset rate limit
    # (burst 200) ends the connection, and no stream reached the router (started after the read).
    with RecordingOrigin() as o, proxy(o) as p:
        c = Raw(p)
        attack = b"".join(c.request(2 * i + 1) + frame(RST_STREAM, 0, 2 * i + 1, CANCEL.to_bytes(4, "big")) for i in range(1200))
        c.start(attack)
        fs = c.read_to_close()
        assert INTERNAL_ERROR in goaway_codes(bytes(c.got)), fs[-3:]
        wait_for(lambda: p.stat("http.main.http2.rapid_reset_goaway") == 1, what="rapid_reset_goaway")
        assert p.stat("http.main.http2.rx_reset") >= 200
        assert p.stat("cluster.web.upstream_rq_total") < 50, "reset streams went upstream"
        still_serves(p)


def test_premature_resets_past_half_of_500_streams_close_the_connection():
    # A deep reset budget (max_concurrent_streams 1000: burst 2000) leaves Envoy's premature-reset
    # rule to act: 500 streams, all reset before their response.
    with RecordingOrigin() as o, proxy(o, "      http2_protocol_options: { max_concurrent_streams: 1000 }\n") as p:
        c = Raw(p)
        c.start(b"".join(c.request(2 * i + 1) + frame(RST_STREAM, 0, 2 * i + 1, CANCEL.to_bytes(4, "big")) for i in range(600)))
        c.read_to_close()
        assert goaway_codes(bytes(c.got)) == [ENHANCE_YOUR_CALM]
        assert p.stat("http.main.http2.premature_reset_close") == 1
        assert p.stat("http.main.http2.rapid_reset_goaway") == 0
        still_serves(p)


def test_continuation_flood_gets_goaway_enhance_your_calm():
    with RecordingOrigin() as o, proxy(o) as p:
        c = Raw(p)
        block = c.block(extra=[(f"x-h{i}", "v" * 50) for i in range(60)])
        pieces = [block[i * len(block) // 21:(i + 1) * len(block) // 21] for i in range(21)]
        flood = frame(HEADERS, END_STREAM, 1, pieces[0]) + b"".join(frame(CONTINUATION, 0, 1, x) for x in pieces[1:])
        c.start(flood)
        c.read_to_close()
        assert goaway_codes(bytes(c.got)) == [ENHANCE_YOUR_CALM]
        assert p.stat("http.main.http2.continuation_flood") == 1
        assert p.stat("cluster.web.upstream_rq_total") == 0
        still_serves(p)


def test_hpack_bomb_is_reset_then_closes_and_big_headers_get_431():
    with RecordingOrigin() as o, proxy(o) as p:
        c = Raw(p)
        # 70 KB of headers (over max_request_headers_kb 60, under 4x): an ordinary 431.
        big = c.block(extra=[("x-big", "B" * 70000)])
        pieces = [big[i:i + 16000] for i in range(0, len(big), 16000)]
        msg = frame(HEADERS, END_STREAM, 1, pieces[0])
        msg += b"".join(frame(CONTINUATION, END_HEADERS if i == len(pieces) - 2 else 0, 1, x) for i, x in enumerate(pieces[1:]))
        c.start(msg)
        fs = c.read_until(lambda fs: any(t == HEADERS and s == 1 for t, _, s, _ in fs))
        block = next(pl for t, _, s, pl in fs if t == HEADERS and s == 1)
        assert dict(hpack.Decoder().decode(block))[":status"] == "431"
        # One 4000-byte field indexed once, then referenced 100 times: 400 KB decoded from 4 KB.
        bomb = [("x-bomb", "A" * 4000)] * 100
        c.send(c.request(3, extra=bomb))
        fs = c.read_until(lambda fs: 3 in rst_codes(fs))
        assert rst_codes(fs)[3] == ENHANCE_YOUR_CALM
        assert p.stat("http.main.http2.header_overflow") == 2
        c.send(c.request(5, extra=bomb))  # a second bomb ends the connection
        c.read_to_close()
        assert goaway_codes(bytes(c.got)) == [ENHANCE_YOUR_CALM]
        assert p.stat("http.main.http2.hpack_bomb_close") == 1
        assert p.stat("cluster.web.upstream_rq_total") == 0
        still_serves(p)


def test_ping_flood_from_a_client_that_never_reads_is_cut():
    # Acknowledgements pile up while the client does not read; nghttp2's outbound limit (1000
    # queued) ends the connection instead of queueing without bound.
    with RecordingOrigin() as o, proxy(o) as p:
        c = Raw(p, rcvbuf=4096)
        c.start()
        pings = frame(PING, 0, 0, b"12345678") * 10000
        deadline = time.monotonic() + 30
        sent = 0
        while p.stat("http.main.http2.outbound_control_flood") == 0:
            assert time.monotonic() < deadline, f"no flood verdict after {sent} PINGs"
            try:
                c.send(pings)
            except OSError:
                break
            sent += 10000
        wait_for(lambda: p.stat("http.main.http2.outbound_control_flood") == 1, what="outbound_control_flood")
        wait_for(lambda: p.stat("http.main.downstream_cx_active") == 0, what="the flooding connection closed")
        c.close()
        still_serves(p)


def test_settings_flood_from_a_client_that_never_reads_is_cut():
    with RecordingOrigin() as o, proxy(o) as p:
        c = Raw(p, rcvbuf=4096)
        c.start()
        flood = frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 65535)) * 10000
        deadline = time.monotonic() + 30
        while p.stat("http.main.http2.outbound_control_flood") == 0:
            assert time.monotonic() < deadline, "no flood verdict"
            try:
                c.send(flood)
            except OSError:
                break
        wait_for(lambda: p.stat("http.main.http2.outbound_control_flood") == 1, what="outbound_control_flood")
        c.close()
        still_serves(p)


def empty_data_flood(c):
    return c.request(1, method="POST", end=False) + frame(DATA, 0, 1) * 3


def priority_flood(c):
    return frame(PRIORITY, 0, 3, struct.pack(">IB", 0, 15)) * 101


def window_update_flood(c):
    return frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)) * 10


def data_on_stream_zero(c):
    return frame(DATA, 0, 0, b"x")


import pytest  # noqa: E402


@pytest.mark.parametrize("attack,code,counter", [
    (empty_data_flood, ENHANCE_YOUR_CALM, "inbound_empty_frames_flood"),
    (priority_flood, ENHANCE_YOUR_CALM, "inbound_priority_frames_flood"),
    (window_update_flood, ENHANCE_YOUR_CALM, "inbound_window_update_frames_flood"),
    (data_on_stream_zero, PROTOCOL_ERROR, None),
], ids=["empty-data", "priority", "window-update", "data-on-stream-0"])
def test_frame_floods_and_invalid_frames_get_goaway_with_the_right_code(attack, code, counter):
    with RecordingOrigin() as o, proxy(o) as p:
        c = Raw(p)
        c.start(attack(c))
        c.read_to_close()
        assert goaway_codes(bytes(c.got)) == [code]
        if counter:
            assert p.stat(f"http.main.http2.{counter}") == 1
        wait_for(lambda: p.stat("http.main.downstream_cx_protocol_error") == 1, what="the protocol error counted")
        still_serves(p)


def test_streams_over_the_limit_are_refused_before_settings_ack_and_end_the_connection_after():
    with RecordingOrigin() as o, proxy(o, "      http2_protocol_options: { max_concurrent_streams: 4 }\n") as p:
        # Before the client acknowledged our SETTINGS: the excess streams get REFUSED_STREAM and
        # the rest are served.
        c = Raw(p)
        c.start(b"".join(c.request(2 * i + 1, path="/delay/300") for i in range(6)))
        fs = c.read_until(lambda fs: sum(1 for t, f, s, _ in fs if t == DATA and f & END_STREAM) == 4)
        assert sorted(s for s, code in rst_codes(fs).items() if code == REFUSED_STREAM) == [9, 11]
        assert p.stat("http.main.http2.too_many_streams") == 2
        assert p.stat("http.main.downstream_rq_2xx") == 4
        c.close()
        # After the ACK, nghttp2 treats it as a connection error (RFC 9113 5.1.2 allows either).
        d = Raw(p)
        d.start()
        d.read_until(lambda fs: any(t == SETTINGS and not f & ACK for t, f, _, _ in fs))
        d.send(frame(SETTINGS, ACK, 0) + b"".join(d.request(2 * i + 1, path="/delay/300") for i in range(6)))
        d.read_to_close()
        assert PROTOCOL_ERROR in goaway_codes(bytes(d.got))
        assert p.stat("http.main.http2.too_many_streams") == 3
        still_serves(p)


# --- Drain (must-show 6)

def goaways(fs):
    """(last stream id, error code) of each GOAWAY."""
    return [(int.from_bytes(pl[:4], "big") & MAX_ID, int.from_bytes(pl[4:8], "big")) for t, _, s, pl in fs if t == GOAWAY]


def ended(fs):
    """Stream ids whose response ended (END_STREAM on DATA or HEADERS)."""
    return {s for t, f, s, _ in fs if t in (DATA, HEADERS) and f & END_STREAM}


def test_sigterm_sends_goaway_twice_and_open_streams_finish():
    with RecordingOrigin() as o, proxy(o, "      drain_timeout: 1s\n", "drain_timeout: 10s\n") as p:
        c = Raw(p)
        c.start(c.request(1, path="/delay/1500") + c.request(3, path="/delay/1500"))
        wait_for(lambda: p.stat("http.main.downstream_rq_active") == 2, what="two requests in flight")
        p.signal(signal.SIGTERM)
        c.read_until(lambda fs: (MAX_ID, 0) in goaways(fs))
        # Between the notice and the final GOAWAY, a new stream is still served.
        c.send(c.request(5, path="/size/1000"))
        fs = c.read_to_close(timeout=15)
        assert goaways(fs) == [(MAX_ID, 0), (5, 0)]
        assert ended(fs) == {1, 3, 5}
        assert not rst_codes(fs)
        dec = hpack.Decoder()
        statuses = {s: dict(dec.decode(pl)).get(":status") for t, _, s, pl in fs if t == HEADERS}
        assert statuses == {1: "200", 3: "200", 5: "200"}
        assert sum(len(pl) for t, _, s, pl in fs if t == DATA and s == 5) == 1000
        assert p.wait(15) == 0


def h2load(p, *args):
    return subprocess.Popen(["h2load", *args, f"http://{hp(p)}/size/1000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_no_request_fails_across_sighup_under_h2load():
    with RecordingOrigin() as o, proxy(o) as p:
        run = h2load(p, "-c4", "-m10", "-D", "3")
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") > 1000, what="load flowing")
        with open(p.config_path, "w") as f:
            f.write(config(o).replace("idle_timeout: 1s", "idle_timeout: 2s"))
        p.signal(signal.SIGHUP)
        p.wait_stat("server.reload_success", lambda v: v == 1)
        out = run.communicate(timeout=30)[0].decode()
        assert run.returncode == 0, out
        assert " 0 failed, 0 errored, 0 timeout" in out, out
        # h2load's -D ends by dropping the streams still in flight (counted as client resets).
        assert p.stat("http.main.downstream_rq_2xx") > 2000
        assert p.stat("http.main.downstream_rq_4xx") == p.stat("http.main.downstream_rq_5xx") == 0


def test_no_started_request_fails_across_sigterm_under_h2load():
    # h2load stops opening streams at the first GOAWAY and does not reconnect (the listener is
    # closed by then): the requests it never started are its own count of "failed". Every request
    # it did start must succeed: none is cut or refused by the drain.
    import re
    with RecordingOrigin() as o, proxy(o, "      drain_timeout: 1s\n", "drain_timeout: 10s\n") as p:
        run = h2load(p, "-c4", "-m10", "-n", "1000000")
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") > 500, what="load flowing")
        p.signal(signal.SIGTERM)
        out = run.communicate(timeout=60)[0].decode()
        m = re.search(r"requests: \d+ total, (\d+) started, (\d+) done, (\d+) succeeded, \d+ failed, \d+ errored, (\d+) timeout", out)
        assert m, out
        started, done, succeeded, timeouts = map(int, m.groups())
        assert started > 500 and started == done == succeeded and timeouts == 0, out
        assert "0 4xx, 0 5xx" in out, out
        assert p.wait(15) == 0


def test_raised_abuse_limits_let_the_same_frames_through():
    # Three empty DATA frames and 150 PRIORITY frames trip the defaults (above); limits raised
    # by Envoy's option names let the stream finish on a connection that stays open.
    opts = ("      http2_protocol_options: { max_consecutive_inbound_frames_with_empty_payload: 5,"
            " max_inbound_priority_frames_per_stream: 200 }\n")
    with RecordingOrigin() as o, proxy(o, opts) as p:
        c = Raw(p)
        c.start(c.request(1, method="POST", end=False) + frame(DATA, 0, 1) * 3
                + frame(PRIORITY, 0, 3, struct.pack(">IB", 0, 15)) * 150 + frame(DATA, END_STREAM, 1, b"x"))
        fs = c.read_until(lambda fs: 1 in ended(fs) or goaway_codes(bytes(c.got)))
        assert 1 in ended(fs) and goaway_codes(bytes(c.got)) == [], [(t, f, s) for t, f, s, _ in fs]
        assert p.stat("http.main.downstream_cx_protocol_error") == 0
        c.close()


@pytest.mark.parametrize("opts,attack,counter", [
    ("max_inbound_priority_frames_per_stream: 10", lambda c: frame(PRIORITY, 0, 3, struct.pack(">IB", 0, 15)) * 20,
     "inbound_priority_frames_flood"),
    ("premature_reset_total_stream_count: 50, max_concurrent_streams: 1000",
     lambda c: b"".join(c.request(2 * i + 1) + frame(RST_STREAM, 0, 2 * i + 1, CANCEL.to_bytes(4, "big")) for i in range(60)),
     "premature_reset_close"),
], ids=["priority", "premature-reset"])
def test_lowered_abuse_limits_trip_on_fewer_frames(opts, attack, counter):
    # 20 PRIORITY frames and 60 early resets pass the defaults (100 per stream, 500 streams).
    with RecordingOrigin() as o, proxy(o, f"      http2_protocol_options: {{ {opts} }}\n") as p:
        c = Raw(p)
        c.start(attack(c))
        c.read_to_close()
        assert goaway_codes(bytes(c.got)) == [ENHANCE_YOUR_CALM]
        assert p.stat(f"http.main.http2.{counter}") == 1
        still_serves(p)


def test_streams_the_client_cancels_after_a_second_are_not_premature_resets():
    # Envoy's rule counts resets within premature_reset_min_stream_lifetime (1 s): long calls a
    # client cancels (gRPC streams, tunnels) must not close the connection.
    with RecordingOrigin() as o, proxy(o, "      http2_protocol_options: { premature_reset_total_stream_count: 10 }\n") as p:
        c = Raw(p)
        c.start(b"".join(c.request(2 * i + 1, path="/delay/8000") for i in range(12)))
        wait_for(lambda: len(o.paths()) == 12, what="12 requests upstream")
        import select
        end = time.monotonic() + 1.2  # the streams age past 1 s (reading what comes meanwhile)
        while (left := end - time.monotonic()) > 0:
            if select.select([c.s], [], [], left)[0]:
                c.got += c.s.recv(65536)
        c.send(b"".join(frame(RST_STREAM, 0, 2 * i + 1, CANCEL.to_bytes(4, "big")) for i in range(12)) + c.request(25))
        fs = c.read_until(lambda fs: 25 in ended(fs) or goaway_codes(bytes(c.got)))
        assert 25 in ended(fs) and goaway_codes(bytes(c.got)) == [], [(t, f, s) for t, f, s, _ in fs][-5:]
        assert p.stat("http.main.http2.premature_reset_close") == 0
        c.close()
