"""http-proxy's HTTP/2 downstream (issue 11, increment 1) against real HTTP/2 clients (curl,
nghttp, h2load) and a raw one on the Python `h2` library (h2_peers.H2Client: explicit flow
control, trailers, RST_STREAM, header fields the tools would not send), in front of the
HTTP/1.1 Origin. The exchanges are written as functions of an address (`fetch_*`), so the same
client code can be checked against another HTTP/2 server (HAProxy's `proto h2`) as well."""

import hashlib
import json
import socket
import subprocess
import time

import pytest
from h2_peers import PREFACE, H2Client, RecordingOrigin, goaway_codes, tls_context, upstream_queues
from harness import Proxy, connect, recv_all, wait_for, wait_read_by_peer
from http_peers import pattern, read_response
from test_http_proxy import concurrently, curl, hp, proxy_for
from tls_peers import cert

NAME = "api.example.com"  # the name in the listener's certificate
MIB = 1 << 20


def sha(b):
    return hashlib.sha256(b).hexdigest()


def pattern_sha(n):
    return sha(pattern(n))


def tls_args():
    c, k = cert(NAME)
    return ["--tls-cert", c, "--tls-key", k]


def h2_config(origin, codec=None, tls=False, listener=""):
    """One listener `main` (optionally TLS from a config `tls` block without `alpn`, and
    `http.codec`) routing everything to cluster `web` (the origin)."""
    c, k = cert(NAME)
    tls_line = f'    tls: {{ cert: "{c}", key: "{k}" }}\n' if tls else ""
    codec_line = f"      codec: {codec}\n" if codec else ""
    return f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
{tls_line}{listener}    http:
{codec_line}      routes: [{{ match: {{ prefix: / }}, cluster: web }}]
clusters:
  - name: web
    endpoints: [{origin.endpoint}]
    http_protocol_options: {{ idle_timeout: 1s }}
"""


def https(p, path):
    """curl arguments for https://api.example.com:PORT/path pinned to the proxy and trusting
    its certificate."""
    port = p.addr()[1]
    return ["--cacert", cert(NAME)[0], "--resolve", f"{NAME}:{port}:127.0.0.1", f"https://{NAME}:{port}{path}"]


def curl_to_file(tmp_path, *args):
    """curl writing the body to a file: (exit code, body, %{http_version}, stderr)."""
    out = tmp_path / "body"
    rc, wout, err = curl("-o", str(out), "-w", "%{http_version}", *args)
    return rc, out.read_bytes() if out.exists() else b"", wout.decode(), err


# --- 1-3: curl, cleartext (prior knowledge) and TLS (ALPN)

def test_h2c_prior_knowledge_download_is_byte_exact(tmp_path):
    with RecordingOrigin() as o, proxy_for(o) as p:
        rc, body, version, err = curl_to_file(tmp_path, "--http2-prior-knowledge", f"http://{hp(p)}/size/{5 * MIB}")
        assert rc == 0, err
        assert version == "2"
        assert len(body) == 5 * MIB and sha(body) == pattern_sha(5 * MIB)
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == 1, what="the response counted")
        assert p.stat("http.main.downstream_cx_http2_total") == 1
        assert p.stat("http.main.downstream_rq_http2_total") == 1
        assert p.stat("http.main.downstream_cx_http1_total") == 0
        assert o.paths() == [f"/size/{5 * MIB}"]


def test_h2c_prior_knowledge_upload_reaches_the_origin_byte_exact(tmp_path):
    data = pattern(MIB, seed=11)
    (tmp_path / "up").write_bytes(data)
    with RecordingOrigin() as o, proxy_for(o) as p:
        rc, body, version, err = curl_to_file(tmp_path, "--http2-prior-knowledge", "--data-binary",
                                              f"@{tmp_path / 'up'}", f"http://{hp(p)}/echo")
        assert rc == 0, err
        assert version == "2"
        info = json.loads(body)
        assert info["method"] == "POST" and info["body_len"] == MIB and info["body_sha256"] == sha(data)
        assert p.stat("http.main.downstream_cx_http2_total") == 1


def test_tls_alpn_h2_download_and_upload_and_http11_on_the_same_port(tmp_path):
    data = pattern(MIB, seed=12)
    (tmp_path / "up").write_bytes(data)
    with RecordingOrigin() as o, proxy_for(o, args=tls_args()) as p:
        rc, body, version, err = curl_to_file(tmp_path, "--http2", *https(p, f"/size/{5 * MIB}"))
        assert rc == 0, err
        assert version == "2"  # ALPN chose h2: the --tls-cert flags offer h2 and http/1.1
        assert len(body) == 5 * MIB and sha(body) == pattern_sha(5 * MIB)
        rc, body, version, err = curl_to_file(tmp_path, "--http2", "--data-binary", f"@{tmp_path / 'up'}",
                                              *https(p, "/echo"))
        assert rc == 0, err
        assert version == "2"
        info = json.loads(body)
        assert info["body_len"] == MIB and info["body_sha256"] == sha(data)
        rc, body, version, err = curl_to_file(tmp_path, "--http1.1", *https(p, "/size/1000"))
        assert rc == 0, err
        assert version == "1.1" and body == pattern(1000)
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == 3, what="3 responses counted")
        assert p.stat("http.main.downstream_cx_http2_total") == 2
        assert p.stat("http.main.downstream_cx_http1_total") == 1


def negotiated(addr, offer):
    """The ALPN protocol the server picks for a client offering `offer`."""
    s = socket.create_connection(addr, timeout=10)
    with tls_context(cert(NAME)[0], alpn=offer).wrap_socket(s, server_hostname=NAME) as t:
        return t.selected_alpn_protocol()


@pytest.mark.parametrize("codec, offer, chosen", [
    (None, ["h2", "http/1.1"], "h2"),           # auto: h2 preferred
    (None, ["http/1.1"], "http/1.1"),           # auto: HTTP/1.1 clients still served
    ("http1", ["h2", "http/1.1"], "http/1.1"),  # http1 offers only http/1.1
    ("http2", ["h2", "http/1.1"], "h2"),        # http2 offers h2
], ids=["auto", "auto-http1-client", "http1", "http2"])
def test_a_tls_block_without_alpn_offers_what_the_codec_serves(codec, offer, chosen):
    with RecordingOrigin() as o, Proxy("http-proxy", config=h2_config(o, codec=codec, tls=True)) as p:
        assert negotiated(p.addr(), offer) == chosen


# --- 4: nghttp

def nghttp(*args, timeout=30):
    r = subprocess.run(["nghttp", *args], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def fetch_nghttp_settings(base):
    """nghttp -nv GET: (exit code, verbose output)."""
    rc, out, err = nghttp("-nv", f"{base}/size/1000")
    return rc, out + err


def server_settings(verbose):
    """The entries of the first SETTINGS frame nghttp received, as {name: value}."""
    lines = verbose.splitlines()
    start = next(i for i, line in enumerate(lines) if "recv SETTINGS frame" in line)
    out = {}
    for line in lines[start + 1:]:
        line = line.strip()
        if not line.startswith("[SETTINGS_") and not line.startswith("(niv="):
            break
        if line.startswith("[SETTINGS_"):
            name, value = line.strip("[]").split(":")
            out[name.split("(")[0]] = int(value)
    return out


def trailer_after_data(verbose, name):
    """From nghttp -v: the value of trailer `name` and whether it came in a HEADERS frame after
    the last DATA frame that ended the stream. (nghttp prints a block's fields, "recv
    (stream_id=N) name: value", before the "recv HEADERS frame" line of their frame.)"""
    lines = verbose.splitlines()
    last_data = max(i for i, line in enumerate(lines) if "recv DATA frame" in line)
    after = [i for i, line in enumerate(lines) if i > last_data and "recv HEADERS frame" in line]
    assert after, f"no HEADERS frame after the last DATA frame:\n{verbose[-3000:]}"
    i = after[0]
    ends = "END_STREAM" in lines[i + 1]
    value = None
    for line in lines[last_data:i]:
        if line.split("] ", 1)[-1].startswith("recv (stream_id=") and f") {name}: " in line:
            value = line.split(f") {name}: ", 1)[1].strip()
    return value, ends


def test_nghttp_sees_max_concurrent_streams_100_uploads_and_gets_trailers_after_data(tmp_path):
    data = pattern(300000, seed=5)
    (tmp_path / "up").write_bytes(data)
    with RecordingOrigin() as o, proxy_for(o) as p:
        base = f"http://{hp(p)}"
        rc, verbose = fetch_nghttp_settings(base)
        assert rc == 0, verbose
        assert server_settings(verbose).get("SETTINGS_MAX_CONCURRENT_STREAMS") == 100, verbose
        rc, out, err = nghttp("-d", str(tmp_path / "up"), f"{base}/echo")
        assert rc == 0, err
        info = json.loads(out)
        assert info["method"] == "POST" and info["body_len"] == len(data) and info["body_sha256"] == sha(data)
        rc, out, err = nghttp("-nv", f"{base}/chunked/50000?trailers")
        assert rc == 0, out + err
        value, ends = trailer_after_data(out, "x-checksum")
        assert value == pattern_sha(50000) and ends, out[-3000:]
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == 3, what="3 responses counted")
        assert p.stat("http.main.downstream_cx_http2_total") == 3


# --- 5: h2load

def run_h2load(url):
    r = subprocess.run(["h2load", "-c10", "-m10", "-n2000", url], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_h2load_ten_connections_ten_streams_each_get_only_2xx(tls):
    with RecordingOrigin() as o, proxy_for(o, args=tls_args() if tls else ()) as p:
        rc, out = run_h2load(f"{'https' if tls else 'http'}://{hp(p)}/size/1000")
        assert rc == 0 and "2000 succeeded, 0 failed, 0 errored" in out, out
        assert "Application protocol: h2" in out, out
        wait_for(lambda: p.stat("http.main.downstream_rq_total") == 2000, what="2000 requests counted")
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == p.stat("http.main.downstream_rq_total"),
                 what="every request answered 2xx")
        assert p.stat("http.main.downstream_cx_http2_total") == 10
        assert p.stat("http.main.downstream_rq_http2_total") == 2000


# --- 6: codec selection

def test_http1_is_still_served_on_an_auto_listener():
    with RecordingOrigin() as o, proxy_for(o) as p:
        rc, out, err = curl("-w", "\n%{http_version}", f"http://{hp(p)}/size/1000")
        assert rc == 0, err
        body, version = out.rsplit(b"\n", 1)
        assert version == b"1.1" and body == pattern(1000)
        # Methods starting with P (like the preface's PRI), the first byte in a read of its own.
        for method in (b"POST", b"PUT", b"PATCH"):
            s = connect(p.addr())
            s.sendall(method[:1])
            wait_read_by_peer(s)
            s.sendall(method[1:] + b" /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
            status, _, body = read_response(s)
            s.close()
            info = json.loads(body)
            assert status == 200 and info["method"] == method.decode() and info["body_len"] == 3
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == 4, what="4 responses counted")
        assert p.stat("http.main.downstream_cx_http1_total") == 4
        assert p.stat("http.main.downstream_cx_http2_total") == 0


def test_a_preface_split_across_reads_is_still_http2_on_an_auto_listener():
    with RecordingOrigin() as o, proxy_for(o) as p:
        for split in (1, 3, 23):  # "P", "PRI", all but the last byte
            c = H2Client(p.addr(), preface_split=split)
            wait_read_by_peer(c.sock)
            sid = c.get("/size/70000")
            (st,) = c.wait_done(sid)
            c.close()
            assert st.status == 200 and bytes(st.body) == pattern(70000), split
        assert p.stat("http.main.downstream_cx_http2_total") == 3
        assert p.stat("http.main.downstream_cx_http1_total") == 0


def test_codec_http1_answers_the_http2_preface_with_505():
    with RecordingOrigin() as o, Proxy("http-proxy", config=h2_config(o, codec="http1")) as p:
        s = connect(p.addr())
        s.sendall(PREFACE)
        status, _, _ = read_response(s)
        assert recv_all(s, timeout=10) == b""  # and closes
        s.close()
        assert status == 505
        assert p.stat("http.main.http1.unsupported_version") == 1
        assert p.stat("http.main.downstream_cx_http2_total") == 0
        assert o.paths() == []


def test_codec_http2_answers_http1_with_goaway_protocol_error_and_closes():
    with RecordingOrigin() as o, Proxy("http-proxy", config=h2_config(o, codec="http2")) as p:
        s = connect(p.addr())
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_all(s, timeout=10)  # returns at EOF: the proxy closed
        s.close()
        assert not data.startswith(b"HTTP/"), data[:100]
        assert goaway_codes(data) == [1], data.hex()  # PROTOCOL_ERROR
        wait_for(lambda: p.stat("http.main.downstream_cx_protocol_error") == 1, what="the protocol error counted")
        assert o.paths() == []
        # The listener still serves HTTP/2.
        with H2Client(p.addr()) as c:
            (st,) = c.wait_done(c.get("/size/1000"))
            assert st.status == 200 and bytes(st.body) == pattern(1000)


# --- 7: header translation, trailers, access log

def fetch_translated(addr):
    """Requests whose header fields HTTP/1 spells differently; returns the streams."""
    with H2Client(addr) as c:
        cookies = c.get("/cookies", headers=[("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers"),
                                             ("x-custom", "v")])
        host_only = c.get("/host-only", authority=None, headers=[("host", "only.example")])
        both = c.get("/both", authority="same.example", headers=[("host", "same.example")])
        return c.wait_done(cookies, host_only, both)


def test_request_fields_are_translated_for_the_http1_origin():
    with RecordingOrigin() as o, proxy_for(o) as p:
        cookies, host_only, both = fetch_translated(p.addr())
        assert cookies.status == 200 and host_only.status == 200 and both.status == 200
        (seen,) = o.find("/cookies")
        lines = seen["header_lines"]
        assert [v for k, v in lines if k == "cookie"] == ["a=1; b=2"]  # one field, RFC 9113 8.2.3
        assert "te" not in dict(lines)
        assert dict(lines)["x-custom"] == "v" and dict(lines)["host"] == "test"
        assert [v for k, v in lines if k == "host"] == ["test"]  # from :authority, once
        (seen,) = o.find("/host-only")
        assert [v for k, v in seen["header_lines"] if k == "host"] == ["only.example"]
        (seen,) = o.find("/both")
        assert [v for k, v in seen["header_lines"] if k == "host"] == ["same.example"]
        assert p.stat("http.main.http2.host_authority_mismatch") == 0


def fetch_mismatch(addr):
    with H2Client(addr, validate_outbound=False) as c:
        (st,) = c.wait_done(c.get("/mismatch", authority="a.example", headers=[("host", "b.example")]))
        return st


def test_host_differing_from_authority_is_a_400_never_forwarded():
    with RecordingOrigin() as o, proxy_for(o) as p:
        st = fetch_mismatch(p.addr())
        assert st.status == 400
        assert o.paths() == []
        assert p.stat("http.main.http2.host_authority_mismatch") == 1
        wait_for(lambda: p.stat("http.main.downstream_rq_4xx") == 1, what="the 400 counted")


def fetch_trailers(addr):
    """A request with trailers (no content-length), and a chunked response with trailers."""
    with H2Client(addr) as c:
        up = c.request("POST", "/upload-trailers", body=b"abc" * 1000, content_length=False,
                       trailers=[("x-t", "ok"), ("x-sum", "42")])
        down = c.get("/chunked/50000?trailers")
        return c.wait_done(up, down)


def test_trailers_cross_both_ways_between_http2_and_chunked_http1():
    with RecordingOrigin() as o, proxy_for(o) as p:
        up, down = fetch_trailers(p.addr())
        assert up.status == 200
        (seen,) = o.find("/upload-trailers")
        assert seen["chunked"] and seen["body_len"] == 3000
        assert seen["trailers"] == [("x-t", "ok"), ("x-sum", "42")]
        assert down.status == 200 and bytes(down.body) == pattern(50000)
        assert down.trailers == [("x-checksum", pattern_sha(50000))]
        assert down.events[-2:] == ["TrailersReceived", "StreamEnded"]
        assert down.header("transfer-encoding") is None
        assert p.stat("http.main.http2.trailers") >= 1


def test_access_log_protocol_is_http2(tmp_path):
    log = tmp_path / "access.log"
    with RecordingOrigin() as o:
        cfg = h2_config(o, listener=f'    access_log: [ {{ path: "{log}", format: "%PROTOCOL% %RESPONSE_CODE%\\n" }} ]\n')
        with Proxy("http-proxy", config=cfg) as p:
            with H2Client(p.addr()) as c:
                (st,) = c.wait_done(c.get("/size/10"))
                assert st.status == 200
            s = connect(p.addr())
            s.sendall(b"GET /size/10 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s)[0] == 200
            s.close()
            wait_for(lambda: log.exists() and log.read_text().count("\n") == 2, what="two access log lines")
            assert sorted(log.read_text().splitlines()) == ["HTTP/1.1 200", "HTTP/2 200"]


# --- 8: per-stream flow control

STUCK = 100 * MIB
FLOWING = 5 * MIB


def fetch_stuck_and_flowing(addr, origin_port, rss_kib, during=None):
    """Stream 1 downloads 100 MiB and never hands its window back; stream 3 downloads 5 MiB on
    the same connection, acknowledged. Waits for stream 3 to end and then until the origin's
    write to the proxy is held (back-pressure), sampling RSS all along. Returns
    (stuck stream, flowing stream, peak RSS KiB); `during(client)` runs before closing."""
    peak = [0]

    def sample():
        peak[0] = max(peak[0], rss_kib())

    with H2Client(addr) as c:
        stuck = c.get(f"/size/{STUCK}", auto_ack=False, keep=False)
        # The proxy fills the stream's whole initial window (65535), then stops.
        c.run_until(lambda: c.streams[stuck].received == 65535, what="stream 1's window filled", on_step=sample)
        flowing = c.get(f"/size/{FLOWING}")
        c.wait_done(flowing)
        # Back-pressure, not buffering: the proxy stopped reading stream 1's response, so the
        # origin's send queue and the proxy's receive queue hold bytes and stay put.
        last = []

        def held():
            sample()
            q = [x for x in upstream_queues(origin_port) if x[0] > 0 and x[1] > 0]
            last.append(q)
            return len(last) >= 10 and q and all(x == q for x in last[-10:])
        c.run_until(held, what="the origin's response to be held back", on_step=sample)
        sample()
        if during is not None:
            during(c)
        return c.streams[stuck], c.streams[flowing], peak[0]


def test_a_stream_whose_window_stays_shut_pauses_alone_with_bounded_memory():
    with RecordingOrigin() as o, proxy_for(o) as p:
        with H2Client(p.addr()) as warm:  # first-use allocations out of the baseline
            warm.wait_done(warm.get("/size/70000"))
        base = p.rss_kib()
        gauges = {}

        def during(c):
            gauges.update({n: p.stat("http.main." + n) for n in
                           ("downstream_cx_http2_active", "http2.streams_active", "downstream_rq_active")})
        stuck, flowing, peak = fetch_stuck_and_flowing(p.addr(), o.httpd.server_address[1], p.rss_kib, during)
        assert flowing.status == 200 and flowing.ended and flowing.received == FLOWING
        assert flowing.digest() == pattern_sha(FLOWING)
        assert stuck.status == 200 and not stuck.done and stuck.received == 65535
        assert gauges == {"downstream_cx_http2_active": 1, "http2.streams_active": 1, "downstream_rq_active": 1}
        assert peak - base < 16 << 10, f"RSS grew {peak - base} KiB while a 100 MiB response was held"
        # Closing the connection resets stream 1; its upstream request ends (leak check).


# --- 9: many streams on many connections

def exchange_mix(addr, n, rounds=2, tls_ctx=None):
    """Connection `n`: each round, 3 uploads (with and without content-length) and 3 downloads
    at once; every body checked byte-exact (uploads by the origin's sha256)."""
    with H2Client(addr, tls_ctx=tls_ctx, server_hostname=NAME if tls_ctx else None) as c:
        for r in range(rounds):
            ups, downs = {}, {}
            for i in range(3):
                body = pattern(200000 + 150000 * i + 997 * n + r, seed=100 * n + 10 * r + i)
                sid = c.request("POST", f"/echo/{n}/{r}/{i}", body=body, content_length=i != 1)
                ups[sid] = body
                size = 300000 + 250000 * i + 991 * n + r
                downs[c.get(f"/size/{size}")] = size
            c.wait_done(*ups, *downs)
            for sid, body in ups.items():
                st = c.streams[sid]
                assert st.status == 200, c.state()
                info = st.json()
                assert info["body_len"] == len(body) and info["body_sha256"] == sha(body), (n, r, sid)
            for sid, size in downs.items():
                st = c.streams[sid]
                assert st.status == 200 and st.received == size and st.digest() == pattern_sha(size), (n, r, sid)


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_concurrent_uploads_and_downloads_on_several_connections_are_byte_exact(tls):
    with RecordingOrigin() as o, proxy_for(o, args=tls_args() if tls else ()) as p:
        ctx = tls_context(cert(NAME)[0]) if tls else None
        concurrently(lambda n: exchange_mix(p.addr(), n, tls_ctx=ctx), 3)
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == 36, what="36 responses counted")
        assert p.stat("http.main.downstream_cx_http2_total") == 3
        assert p.stat("http.main.downstream_rq_total") == 36


# --- 10: RST_STREAM from the client

def fetch_with_a_reset(addr, after_reset=None):
    """Stream 1 (20 MiB, never acknowledged) and stream 3 (2 MiB) start together; stream 1 is
    reset by the client after its first DATA; stream 5 starts after the reset. Returns the
    three streams; `after_reset(client)` runs once stream 5 ended, before closing."""
    with H2Client(addr) as c:
        big = c.get(f"/size/{20 * MIB}", auto_ack=False, keep=False)
        mid = c.get(f"/size/{2 * MIB}")
        c.run_until(lambda: c.streams[big].received > 0, what="stream 1's first DATA")
        c.reset(big)
        late = c.get(f"/size/{MIB}")
        c.wait_done(mid, late)
        if after_reset is not None:
            after_reset(c)
        return c.streams[big], c.streams[mid], c.streams[late]


def test_a_client_reset_ends_only_its_stream_and_its_upstream_request():
    with RecordingOrigin() as o, proxy_for(o) as p:
        def after_reset(c):
            # The connection is still open; the reset request holds nothing upstream.
            wait_for(lambda: p.stat("cluster.upstream.upstream_rq_active") == 0, what="no upstream request left")
            wait_for(lambda: p.stat("http.main.http2.streams_active") == 0, what="no stream left")
            assert f"upstream::{o.endpoint}::rq_active::0" in p.get("/clusters")[1].splitlines()
            assert p.stat("http.main.downstream_cx_http2_active") == 1

        big, mid, late = fetch_with_a_reset(p.addr(), after_reset)
        assert big.status == 200 and not big.ended and big.received <= 65535
        assert mid.status == 200 and mid.received == 2 * MIB and mid.digest() == pattern_sha(2 * MIB)
        assert late.status == 200 and late.received == MIB and late.digest() == pattern_sha(MIB)
        # At least the client's CANCEL: DATA already on its way to the reset stream makes the
        # h2 library answer each such frame with RST_STREAM(STREAM_CLOSED) too.
        wait_for(lambda: p.stat("http.main.http2.rx_reset") >= 1, what="the client's reset counted")
        assert p.stat("http.main.http2.tx_reset") == 0
        # Teardown's leak check: the reset response's upstream connection does not stay open.


# --- WebSocket over HTTP/2 (RFC 8441 extended CONNECT) to an HTTP/1.1 WebSocket server

def ws_frame(payload, opcode=0x2):
    """A masked client WebSocket frame (RFC 6455 5.2)."""
    import os as _os
    mask = _os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_messages(buf):
    """Complete unmasked server frames in `buf`: ([payloads], bytes used)."""
    out, i = [], 0
    while i + 2 <= len(buf):
        n = buf[i + 1] & 0x7F
        j = i + 2
        if n == 126:
            if j + 2 > len(buf):
                break
            n = int.from_bytes(buf[j:j + 2], "big"); j += 2
        elif n == 127:
            if j + 8 > len(buf):
                break
            n = int.from_bytes(buf[j:j + 8], "big"); j += 8
        if j + n > len(buf):
            break
        out.append(bytes(buf[j:j + n]))
        i = j + n
    return out, i


def test_websocket_over_http2_extended_connect_reaches_an_http1_websocket_server():
    import h2.config
    import h2.connection
    import h2.events
    from test_http_proxy import ws_echo_server
    server = ws_echo_server()
    try:
        port = server.socket.getsockname()[1]
        cfg = f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    http:
      routes: [{{ match: {{ prefix: / }}, cluster: ws }}]
clusters:
  - name: ws
    endpoints: [127.0.0.1:{port}]
    http_protocol_options: {{ idle_timeout: 1s }}
"""
        with Proxy("http-proxy", config=cfg) as p:
            sock = socket.create_connection(p.addr(), timeout=10)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            settings_seen = False
            while not settings_seen:
                for ev in conn.receive_data(sock.recv(65536)):
                    if isinstance(ev, h2.events.RemoteSettingsChanged) and 0x8 in ev.changed_settings:
                        settings_seen = ev.changed_settings[0x8].new_value == 1
                sock.sendall(conn.data_to_send())
            streams = {}
            for k in range(3):  # three WebSocket streams on one HTTP/2 connection
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                        (":path", f"/chat/{k}"), (":authority", "ws.test"), ("sec-websocket-version", "13")])
                streams[sid] = {"status": None, "buf": bytearray(), "got": [], "sent": [pattern(500 + 4000 * i, seed=k * 10 + i) for i in range(20)]}
            sock.sendall(conn.data_to_send())
            deadline = time.monotonic() + 20
            sent_all = False
            while any(len(s["got"]) < len(s["sent"]) for s in streams.values()):
                assert time.monotonic() < deadline, {sid: (s["status"], len(s["got"])) for sid, s in streams.items()}
                if not sent_all and all(s["status"] for s in streams.values()):
                    for sid, s in streams.items():
                        s["out"] = bytearray(b"".join(ws_frame(m) for m in s["sent"]))
                    sent_all = True
                for sid, s in streams.items():  # as the windows allow, while reading the echoes
                    while s.get("out"):
                        n = min(len(s["out"]), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                        if n <= 0:
                            break
                        conn.send_data(sid, bytes(s["out"][:n]))
                        del s["out"][:n]
                sock.sendall(conn.data_to_send())
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                data = sock.recv(1 << 20)
                assert data, "the proxy closed the connection"
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        streams[ev.stream_id]["status"] = dict(ev.headers)[b":status"]
                    elif isinstance(ev, h2.events.DataReceived):
                        s = streams[ev.stream_id]
                        s["buf"] += ev.data
                        msgs, used = ws_messages(s["buf"])
                        s["got"] += msgs
                        del s["buf"][:used]
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        raise AssertionError(f"stream {ev.stream_id} reset: {ev.error_code}")
            for s in streams.values():
                assert s["status"] == b"200"
                assert s["got"] == s["sent"]
            assert p.stat("http.main.downstream_cx_upgrades_total") == 3
            for sid in streams:
                conn.end_stream(sid)
            sock.sendall(conn.data_to_send())
            wait_for(lambda: p.stat("http.main.downstream_cx_upgrades_active") == 0, what="the tunnels closed")
            sock.close()
    finally:
        server.shutdown()


# --- connection_keepalive toward clients

KEEPALIVE = "      http2_protocol_options: { connection_keepalive: { interval: 200ms, timeout: 500ms } }\n"


def keepalive_config(origin, extra=""):
    from test_http2_protections import config
    return config(origin, KEEPALIVE + extra)


def test_keepalive_pings_an_answering_client_and_its_idle_connection_still_times_out():
    import h2.config
    import h2.connection
    import h2.events
    with RecordingOrigin() as o, Proxy("http-proxy", config=keepalive_config(o, "      idle_timeout: 2s\n")) as p:
        sock = socket.create_connection(p.addr(), timeout=10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":path", "/size/10"), (":authority", "t")], end_stream=True)
        sock.sendall(conn.data_to_send())
        pings, status, closed = 0, None, False
        deadline = time.monotonic() + 15
        while not closed:
            assert time.monotonic() < deadline, f"still open after 15 s (idle_timeout 2 s): {pings} PINGs"
            data = sock.recv(65536)
            if not data:
                closed = True
                break
            for ev in conn.receive_data(data):  # h2 answers each PING with its ACK
                if isinstance(ev, h2.events.PingReceived):
                    pings += 1
                elif isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[b":status"]
            sock.sendall(conn.data_to_send())
        sock.close()
        assert status == b"200" and pings >= 3, (status, pings)
        assert p.stat("http.main.downstream_cx_idle_timeout") == 1
        assert p.stat("http.main.http2.keepalive_timeout") == 0


def test_keepalive_closes_a_client_that_stops_answering_and_resets_its_stream_upstream():
    from test_http2_protections import Raw
    with RecordingOrigin() as o, Proxy("http-proxy", config=keepalive_config(o)) as p:
        c = Raw(p)
        c.start(c.request(1, path="/delay/8000"))
        fs = c.read_to_close(timeout=10)  # reads everything, answers nothing
        pings = [f for t, f, _, _ in fs if t == 0x6]
        assert pings and all(f == 0 for f in pings), fs
        assert p.stat("http.main.http2.keepalive_timeout") == 1
        wait_for(lambda: p.stat("http.main.downstream_rq_active") == 0 and p.stat("cluster.web.upstream_rq_active") == 0,
                 what="the stream and its upstream request gone")
        c.close()


def test_a_client_pinging_on_its_own_does_not_keep_an_idle_connection_open():
    # Envoy's idle_timeout counts streams, not frames: PINGs every 300 ms do not defer it.
    from test_http2_protections import PING, Raw, config, frame
    with RecordingOrigin() as o, Proxy("http-proxy", config=config(o, "      idle_timeout: 1s\n")) as p:
        c = Raw(p)
        c.start()
        deadline = time.monotonic() + 10
        closed = False
        while not closed:
            assert time.monotonic() < deadline, "still open 10 s into a 1 s idle_timeout"
            try:
                c.send(frame(PING, 0, 0, b"12345678"))
            except OSError:
                break
            c.s.settimeout(0.3)
            try:
                closed = c.s.recv(65536) == b""
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
        c.close()
        assert p.stat("http.main.downstream_cx_idle_timeout") == 1
