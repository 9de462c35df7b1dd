"""http-proxy's HTTP/2 upstreams (issue 11, increment 3): clusters with
`http_protocol_options: {protocol: http2}` (or `--upstream-protocol http2`) in front of
h2_peers.H2Origin, an HTTP/2 origin on the Python `h2` library that records per connection
what it saw (streams served, most streams open at once, RST_STREAM codes, GOAWAYs, ALPN).
Clients are curl, h2load, raw sockets and h2_peers.H2Client. As in test_http2.py, the exchanges
are functions of an address (`fetch_*`), so the same client code can be run through another
proxy with HTTP/2 upstreams (HAProxy's `proto h2`) as a check of the tests themselves."""

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest
from h2_peers import CANCEL, PREFACE, H2Client, H2Origin, RecordingOrigin, frames
from harness import Proxy, Server, connect, validate, wait_for
from http_peers import Origin, pattern, read_response
from test_http_proxy import concurrently, curl, hp, proxy_for
from tls_peers import cert

MIB = 1 << 20
NAME = "api.example.com"  # the name in H2Origin(tls=True)'s certificate
RETRY_REFUSED = ", retry_policy: { retry_on: refused-stream, num_retries: 2 }"


def sha(b):
    return hashlib.sha256(b).hexdigest()


def pattern_sha(n):
    return sha(pattern(n))


def config(origin, protocol="http2", http2="", route="", tls=""):
    """One listener `main` (codec auto) routing everything to cluster `web` = `origin`.
    `protocol` None leaves the key out (the default, http1); `http2` is the inside of the
    cluster's `http2: {...}`; `route` is appended to the route's flow mapping; `tls` is the
    inside of the cluster's `tls: {...}`. Pooled connections close after 1 s idle (leak check)."""
    opts = ["idle_timeout: 1s"]
    if protocol:
        opts.append(f"protocol: {protocol}")
    if http2:
        opts.append(f"http2: {{ {http2} }}")
    tls_line = f"    tls: {{ {tls} }}\n" if tls else ""
    return f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    http:
      routes: [{{ match: {{ prefix: / }}, cluster: web{route} }}]
clusters:
  - name: web
    endpoints: [{origin.endpoint}]
{tls_line}    http_protocol_options: {{ {", ".join(opts)} }}
"""


def proxy(origin, **kw):
    return Proxy("http-proxy", config=config(origin, **kw))


def cstat(p, name, cluster="web"):
    return p.stat(f"cluster.{cluster}.{name}")


def curl_to_file(tmp_path, *args):
    """curl writing the body to a file: (exit code, body, %{http_version}, stderr)."""
    out = tmp_path / "body"
    if out.exists():
        out.unlink()
    rc, wout, err = curl("-o", str(out), "-w", "%{http_version}", *args)
    return rc, out.read_bytes() if out.exists() else b"", wout.decode(), err


def status_of(url, *args):
    """curl over HTTP/1.1: the response status (000 when there was none)."""
    rc, out, err = curl("--http1.1", "-o", "/dev/null", "-w", "%{http_code}", *args, url)
    return int(out or b"0")


def origin_errors(o):
    """Protocol errors the H2Origin's h2 library raised (bad header fields, too many streams...)."""
    return [e for c in o.connections for e in c.errors]


# --- a) every client protocol × every upstream protocol, byte-exact both ways

CLIENT_FLAGS = {"h1": "--http1.1", "h2": "--http2-prior-knowledge"}


def fetch_download_and_upload(tmp_path, base, client):
    """A 5 MiB download and a 1 MiB upload with curl: (download body, its http_version,
    the origin's JSON for the upload, its http_version)."""
    flag = CLIENT_FLAGS[client]
    rc, body, version, err = curl_to_file(tmp_path, flag, f"{base}/size/{5 * MIB}")
    assert rc == 0, err
    data = pattern(MIB, seed=21)
    (tmp_path / "up").write_bytes(data)
    rc, up, up_version, err = curl_to_file(tmp_path, flag, "--data-binary", f"@{tmp_path / 'up'}", f"{base}/echo")
    assert rc == 0, err
    return body, version, json.loads(up), up_version


@pytest.mark.parametrize("upstream", ["h1", "h2"])
@pytest.mark.parametrize("client", ["h1", "h2"])
def test_download_and_upload_are_byte_exact_for_each_client_and_upstream_protocol(tmp_path, client, upstream):
    origin = RecordingOrigin() if upstream == "h1" else H2Origin()
    with origin as o, proxy(o, protocol="http2" if upstream == "h2" else None) as p:
        body, version, info, up_version = fetch_download_and_upload(tmp_path, f"http://{hp(p)}", client)
        assert version == up_version == ("2" if client == "h2" else "1.1")
        assert len(body) == 5 * MIB and sha(body) == pattern_sha(5 * MIB)
        assert info["method"] == "POST" and info["body_len"] == MIB and info["body_sha256"] == sha(pattern(MIB, seed=21))
        assert info.get("protocol", "HTTP/1.1") == ("HTTP/2" if upstream == "h2" else "HTTP/1.1")
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == 2, what="2 responses counted")
        assert cstat(p, "upstream_rq_total") == 2
        assert cstat(p, "upstream_cx_http2_total") == (cstat(p, "upstream_cx_total") if upstream == "h2" else 0)
        assert cstat(p, "upstream_cx_total") >= 1
        if upstream == "h2":
            assert o.paths() == [f"/size/{5 * MIB}", "/echo"]
            assert origin_errors(o) == []


def test_the_upstream_protocol_flag_speaks_h2c_to_the_upstream():
    with H2Origin() as o, proxy_for(o, args=["--upstream-protocol", "http2"]) as p:
        rc, out, err = curl("--http1.1", f"http://{hp(p)}/size/70000")
        assert rc == 0, err
        assert out == pattern(70000)
        assert o.accepted == 1 and o.paths() == ["/size/70000"]
        assert cstat(p, "upstream_cx_http2_total", cluster="upstream") == 1


def test_an_unknown_upstream_protocol_is_refused():
    with H2Origin() as o:
        r = validate(config(o, protocol="http3"), binary="http-proxy")
        assert r.returncode != 0 and "protocol" in r.stderr, r.stderr


# --- b) header translation and trailers

def fetch_h2_trailers_both_ways(addr):
    """h2 client: an upload with `te: trailers` and request trailers (no content-length), a
    chunked download with response trailers, and a gRPC-style exchange (trailers only status)."""
    up_body = pattern(100000, seed=4)
    with H2Client(addr) as c:
        up = c.request("POST", "/upload-trailers", body=up_body, content_length=False,
                       headers=[("te", "trailers"), ("x-custom", "v")], trailers=[("x-t", "ok"), ("x-sum", "42")])
        down = c.get("/chunked/50000?trailers", headers=[("te", "trailers")])
        grpc = c.request("POST", "/pkg.Service/Method", body=b"\x00\x00\x00\x00\x03abc",
                         headers=[("content-type", "application/grpc"), ("te", "trailers"), ("x-grpc-status", "5")])
        return c.wait_done(up, down, grpc)


def test_h2_client_to_h2_origin_passes_te_and_trailers_both_ways():
    with H2Origin() as o, proxy(o) as p:
        up, down, grpc = fetch_h2_trailers_both_ways(p.addr())
        assert up.status == 200
        info = up.json()
        assert info["protocol"] == "HTTP/2"
        assert info["body_len"] == 100000 and info["body_sha256"] == sha(pattern(100000, seed=4))
        assert info["trailers"] == [["x-t", "ok"], ["x-sum", "42"]]
        assert info["headers"]["te"] == "trailers" and info["headers"]["x-custom"] == "v"
        assert info["scheme"] == "http" and info["authority"] == "test"
        assert down.status == 200 and bytes(down.body) == pattern(50000)
        assert down.trailers == [("x-checksum", pattern_sha(50000))]
        assert down.events[-2:] == ["TrailersReceived", "StreamEnded"]
        assert grpc.status == 200 and grpc.header("content-type") == "application/grpc"
        assert bytes(grpc.body) == b"\x00\x00\x00\x00\x03abc"
        assert grpc.trailers == [("grpc-status", "5"), ("grpc-message", "failed")]
        assert origin_errors(o) == []
        assert cstat(p, "upstream_cx_total") == 1


H1_CHUNKED_WITH_TRAILERS = (b"POST /echo/h1?q=1 HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: chunked\r\n"
                            b"Trailer: x-t, x-sum\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
                            b"Proxy-Connection: keep-alive\r\nX-Custom: v\r\n\r\n"
                            b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-t: ok\r\nx-sum: 42\r\n\r\n")


def fetch_h1_chunked_with_trailers(addr):
    """An HTTP/1.1 chunked upload with trailers and hop-by-hop fields: (status, origin JSON)."""
    s = connect(addr)
    s.sendall(H1_CHUNKED_WITH_TRAILERS)
    status, _, body = read_response(s)
    s.close()
    return status, json.loads(body)


def test_h1_client_to_h2_origin_translates_the_head_and_turns_chunked_trailers_into_h2_trailers():
    with H2Origin() as o, proxy(o) as p:
        status, info = fetch_h1_chunked_with_trailers(p.addr())
        assert status == 200
        assert info["protocol"] == "HTTP/2"
        assert info["method"] == "POST" and info["path"] == "/echo/h1?q=1"
        assert info["authority"] == "h1.example" and info["scheme"] == "http"
        assert info["body_len"] == 11 and info["body_sha256"] == sha(b"hello world")
        assert info["trailers"] == [["x-t", "ok"], ["x-sum", "42"]]
        names = [k for k, _ in info["header_lines"]]
        assert sorted(n for n in names if n.startswith(":")) == [":authority", ":method", ":path", ":scheme"]
        for hop in ("host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "trailer"):
            assert hop not in names, (hop, info["header_lines"])
        assert info["headers"]["x-custom"] == "v"
        assert origin_errors(o) == []


def fetch_h1_responses_from_trailers(addr):
    """On one HTTP/1.1 connection: a response with trailers and no content-length (chunked to
    the client, trailers kept), one with a content-length and trailers (the trailers cannot be
    carried), then a plain one (the connection is still in sync)."""
    s = connect(addr)
    f = s.makefile("rb")
    out = []
    for path in ("/chunked/50000?trailers", "/size/50000?trailers", "/size/10"):
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        out.append(read_response(f))
    f.close()
    s.close()
    return out


def test_h2_origin_trailers_reach_an_h1_client_as_chunked_trailers_unless_there_is_a_content_length():
    with H2Origin() as o, proxy(o) as p:
        (s1, h1, b1), (s2, h2_, b2), (s3, _, b3) = fetch_h1_responses_from_trailers(p.addr())
        assert s1 == 200 and h1.get("transfer-encoding") == "chunked" and b1 == pattern(50000)
        assert h1.get("trailer:x-checksum") == pattern_sha(50000), h1
        assert s2 == 200 and h2_.get("content-length") == "50000" and b2 == pattern(50000)
        assert "transfer-encoding" not in h2_
        assert s3 == 200 and b3 == pattern(10)
        assert o.accepted == 1 and o.connections[0].requests == 3


# --- c) multiplexing

def fetch_h2load(url, c, m, n, timeout=60):
    r = subprocess.run(["h2load", f"-c{c}", f"-m{m}", f"-n{n}", url], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def fetch_h1_concurrently(addr, path, n):
    """n HTTP/1.1 requests at once, each on its own connection: their statuses."""
    statuses = [None] * n

    def one(i):
        s = connect(addr)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        statuses[i] = read_response(s)[0]
        s.close()
    concurrently(one, n)
    return statuses


@pytest.mark.parametrize("client", ["h2load", "h1"])
def test_concurrent_requests_share_one_upstream_connection(client):
    with H2Origin() as o, proxy(o) as p:
        if client == "h2load":
            rc, out = fetch_h2load(f"http://{hp(p)}/delay/500", 1, 20, 20)
            assert rc == 0 and "20 succeeded, 0 failed, 0 errored" in out, out
        else:
            assert fetch_h1_concurrently(p.addr(), "/delay/500", 20) == [200] * 20
        assert cstat(p, "upstream_cx_total") == 1
        assert cstat(p, "upstream_cx_http2_total") == 1
        assert cstat(p, "upstream_rq_total") == 20
        assert o.accepted == 1 and o.connections[0].requests == 20
        assert o.connections[0].max_concurrent >= 2  # really multiplexed, not one after another
        assert o.connections[0].excess == [] and origin_errors(o) == []


def fetch_ten_delayed(addr, warm=True):
    """Optionally one request first (the pool then knows the origin's SETTINGS), then 10 at
    once on one h2 connection: their statuses (None: reset)."""
    with H2Client(addr) as c:
        if warm:
            (first,) = c.wait_done(c.get("/size/10"))
            assert first.status == 200
        sids = [c.get(f"/delay/300?i={i}") for i in range(10)]
        return [st.status for st in c.wait_done(*sids)]


def per_connection(o):
    return [dict(id=c.id, requests=c.requests, max_concurrent=c.max_concurrent, excess=c.excess,
                 excess_after_ack=c.excess_after_ack) for c in o.connections]


@pytest.mark.parametrize("limit_at", ["origin", "cluster"])
def test_streams_over_the_concurrency_limit_go_to_more_connections(limit_at):
    # The limit of 2 comes from the origin's SETTINGS_MAX_CONCURRENT_STREAMS, or from the
    # cluster's http2.max_concurrent_streams (the origin allowing 100). The first request
    # lets the pool learn the origin's SETTINGS; the 10 then need more connections, and each
    # new one must not carry more than 2 streams either, not even before its own SETTINGS
    # arrive (RFC 9113 5.1.2 lets the origin refuse those; H2Origin does, so they would 503).
    origin = H2Origin(max_concurrent_streams=2 if limit_at == "origin" else 100)
    with origin as o, proxy(o, http2="max_concurrent_streams: 2" if limit_at == "cluster" else "") as p:
        statuses = fetch_ten_delayed(p.addr())
        conns = per_connection(o)
        assert all(c.max_concurrent <= 2 and not c.excess for c in o.connections), conns
        assert statuses == [200] * 10, conns
        assert o.accepted >= 2, conns
        assert sum(c.requests for c in o.connections) == 11
        assert cstat(p, "upstream_cx_total") == o.accepted
        assert cstat(p, "upstream_rq_retry") == 0
        assert origin_errors(o) == []


def test_a_cold_pool_opens_no_more_streams_than_the_origin_allows():
    # Ten requests before any connection exists: the first connection's SETTINGS are not known
    # when they are dispatched (nghttp2's client assumes 100 until they arrive). Stricter than
    # HAProxy 2.6, which sends them all and gets 8 refused.
    with H2Origin(max_concurrent_streams=2) as o, proxy(o) as p:
        statuses = fetch_ten_delayed(p.addr(), warm=False)
        conns = per_connection(o)
        assert all(c.max_concurrent <= 2 and not c.excess for c in o.connections), conns
        assert statuses == [200] * 10, conns
        assert sum(c.requests for c in o.connections) == 10
        assert origin_errors(o) == []


# --- d) GOAWAY from the origin

def fetch_sequentially(addr, n, path="/size/20000"):
    """n requests one after another on one h2 connection: their (status, body ok)."""
    with H2Client(addr) as c:
        out = []
        for _ in range(n):
            (st,) = c.wait_done(c.get(path))
            out.append((st.status, bytes(st.body) == pattern(20000)))
        return out


def test_an_origin_goaway_after_n_requests_moves_later_requests_to_a_new_connection():
    with H2Origin(goaway_after=3) as o, proxy(o) as p:
        assert fetch_sequentially(p.addr(), 8) == [(200, True)] * 8
        # GOAWAY came with the 3rd request of each connection: the proxy sent nothing more on it.
        assert o.requests_per_connection() == [3, 3, 2]
        assert [c.ignored for c in o.connections] == [[], [], []]
        assert cstat(p, "upstream_cx_total") == 3
        wait_for(lambda: cstat(p, "http2.goaway_received") == 2, what="2 GOAWAYs counted")
        assert cstat(p, "upstream_rq_retry") == 0
        assert p.stat("http.main.downstream_rq_5xx") == 0


def test_streams_in_flight_below_the_goaway_last_stream_id_complete():
    with H2Origin() as o, proxy(o) as p:
        with H2Client(p.addr()) as c:
            held = [c.get(f"/hold/{i}") for i in range(3)]
            c.run_until(lambda: o.open_streams() == 3, what="3 requests at the origin")
            o.goaway()  # last stream id: the highest received, so all three stay
            wait_for(lambda: cstat(p, "http2.goaway_received") == 1, what="the GOAWAY counted")
            # A new request while the three are still held: a new upstream connection.
            (late,) = c.wait_done(c.get("/size/1000"))
            assert late.status == 200 and bytes(late.body) == pattern(1000)
            assert o.accepted == 2 and o.connections[1].requests == 1
            assert not any(c.streams[s].done for s in held)
            o.release()
            done = c.wait_done(*held)
            assert [st.status for st in done] == [200] * 3
            assert [st.json()["connection"] for st in done] == [0, 0, 0]
        assert o.connections[0].requests == 3 and o.connections[0].ignored == []
        assert cstat(p, "upstream_cx_total") == 2
        assert p.stat("http.main.downstream_rq_5xx") == 0


# --- e) refused streams and the refused-stream retry

@pytest.mark.parametrize("refuse_with", ["rst", "goaway"])
def test_a_refused_stream_is_retried_with_retry_on_refused_stream(refuse_with):
    with H2Origin(refuse_next=1, refuse_with=refuse_with) as o, proxy(o, route=RETRY_REFUSED) as p:
        rc, out, err = curl("--http1.1", f"http://{hp(p)}/size/1000")
        assert rc == 0, err
        assert out == pattern(1000)
        assert cstat(p, "upstream_rq_retry") >= 1
        assert o.paths() == ["/size/1000"]
        refused = [sid for c in o.connections for sid in (c.refused if refuse_with == "rst" else c.ignored)]
        assert len(refused) == 1
        if refuse_with == "goaway":
            assert cstat(p, "http2.goaway_received") == 1
            assert o.accepted == 2  # the retry had to open a new connection
        else:
            wait_for(lambda: cstat(p, "http2.rx_reset") >= 1, what="the REFUSED_STREAM counted")


@pytest.mark.parametrize("refuse_with", ["rst", "goaway"])
def test_a_refused_stream_without_the_retry_policy_is_a_503(refuse_with):
    with H2Origin(refuse_next=1, refuse_with=refuse_with) as o, proxy(o) as p:
        assert status_of(f"http://{hp(p)}/size/1000") == 503
        assert cstat(p, "upstream_rq_retry") == 0
        assert o.paths() == []
        # The next request is served (by a new connection after a GOAWAY).
        assert status_of(f"http://{hp(p)}/size/1000") == 200


# --- f) a client cancelling its request

def cancel_h2(addr):
    """h2: a 20 MiB download never acknowledged, reset (CANCEL) after its first DATA. Returns
    the client, still connected (so only the stream ends); the caller closes it."""
    c = H2Client(addr)
    sid = c.get(f"/size/{20 * MIB}", auto_ack=False, keep=False)
    c.run_until(lambda: c.streams[sid].received > 0, what="the first DATA")
    c.reset(sid)
    c.step()  # the RST_STREAM goes out
    return c


def cancel_h1(addr):
    """HTTP/1.1: a 20 MiB download, the client closes after its first bytes."""
    s = connect(addr)
    s.sendall(f"GET /size/{20 * MIB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert s.recv(1000)
    s.close()
    return None


@pytest.mark.parametrize("client", ["h2-rst", "h1-close"])
def test_a_client_cancel_resets_only_the_upstream_stream(client):
    with H2Origin() as o, proxy(o) as p:
        c = (cancel_h2 if client == "h2-rst" else cancel_h1)(p.addr())
        try:
            wait_for(lambda: o.resets(), what="the origin to see a RST_STREAM")
            (big,) = o.find(f"/size/{20 * MIB}")
            assert o.resets() == [(0, big.id, CANCEL)]
            wait_for(lambda: cstat(p, "http2.tx_reset") >= 1, what="the reset counted")
            wait_for(lambda: cstat(p, "upstream_rq_active") == 0, what="no upstream request left")
            # The connection stays and serves the next request (its window was not eaten by
            # the data the proxy dropped).
            rc, out, err = curl("--http1.1", f"http://{hp(p)}/size/{2 * MIB}")
            assert rc == 0, err
            assert sha(out) == pattern_sha(2 * MIB)
            assert o.accepted == 1 and o.connections[0].requests == 2
            assert cstat(p, "upstream_cx_total") == 1
            assert not o.connections[0].closed
        finally:
            if c is not None:
                c.close()


# --- g) TLS upstream, ALPN h2

def test_tls_upstream_negotiates_h2_by_alpn():
    ca = cert(NAME)[0]
    with H2Origin(tls=True, cert_name=NAME) as o, proxy(o, tls=f'sni: {NAME}, ca: "{ca}"') as p:
        rc, out, err = curl("--http2-prior-knowledge", f"http://{hp(p)}/size/100000")
        assert rc == 0, err
        assert out == pattern(100000)
        # An HTTP/1.1 request has no scheme of its own: the cluster's TLS makes it https.
        rc, out, err = curl("--http1.1", "--data-binary", "abc", f"http://{hp(p)}/echo")
        assert rc == 0, err
        info = json.loads(out)
        assert info["protocol"] == "HTTP/2" and info["scheme"] == "https" and info["body_len"] == 3
        assert o.accepted == 1
        assert o.connections[0].alpn == "h2" and o.connections[0].sni == NAME
        assert cstat(p, "upstream_cx_http2_total") == 1
        assert cstat(p, "ssl.handshake") == 1


# --- g2) protocol: auto, ALPN chooses per connection

def auto_tls(ca):
    return f'sni: {NAME}, ca: "{ca}"'


def fetch_concurrently(p, client, n):
    """n curl GETs of different sizes at once, each checked byte for byte."""
    def one(i):
        rc, out, err = curl(CLIENT_FLAGS[client], f"http://{hp(p)}/size/{1000 + i}")
        assert rc == 0, err
        assert out == pattern(1000 + i)
    concurrently(one, n)


@pytest.mark.parametrize("client", ["h1", "h2"])
def test_auto_speaks_h2_to_a_host_whose_alpn_agrees_on_h2(tmp_path, client):
    ca = cert(NAME)[0]
    with H2Origin(tls=True, cert_name=NAME) as o, proxy(o, protocol="auto", tls=auto_tls(ca)) as p:
        body, _, up, _ = fetch_download_and_upload(tmp_path, f"http://{hp(p)}", client)
        assert body == pattern(5 * MIB)
        assert up["protocol"] == "HTTP/2" and up["body_sha256"] == sha(pattern(MIB, seed=21))
        # Requests at once share the h2 connection ALPN chose (expected capacity follows it).
        fetch_concurrently(p, client, 8)
        assert o.accepted == 1 and o.connections[0].alpn == "h2"
        assert cstat(p, "upstream_cx_alpn_h2") == 1 and cstat(p, "upstream_cx_alpn_http1") == 0
        assert cstat(p, "upstream_cx_http2_total") == 1
        assert origin_errors(o) == []


@pytest.mark.parametrize("origin_alpn", [["http/1.1"], None], ids=["alpn-http1", "no-alpn"])
@pytest.mark.parametrize("client", ["h1", "h2"])
def test_auto_speaks_http1_to_a_host_whose_alpn_says_http1_or_nothing(tmp_path, client, origin_alpn):
    with Origin(tls=cert(NAME), alpn=origin_alpn) as o, \
            proxy(o, protocol="auto", tls=auto_tls(cert(NAME)[0])) as p:
        body, _, up, _ = fetch_download_and_upload(tmp_path, f"http://{hp(p)}", client)
        assert body == pattern(5 * MIB)
        assert up["body_sha256"] == sha(pattern(MIB, seed=21)) and up["body_len"] == MIB
        fetch_concurrently(p, client, 8)
        assert o.alpns and set(o.alpns) == {origin_alpn[0] if origin_alpn else None}
        # One HTTP/1.1 connection per request in flight: as many connections as ALPN rounds.
        assert cstat(p, "upstream_cx_alpn_http1") == len(o.alpns) and cstat(p, "upstream_cx_alpn_h2") == 0
        assert cstat(p, "upstream_cx_http2_total") == 0


def test_auto_on_a_plain_cluster_is_http1():
    with Origin() as o, proxy(o, protocol="auto") as p:
        rc, out, err = curl("--http2-prior-knowledge", f"http://{hp(p)}/echo")
        assert rc == 0, err
        assert json.loads(out)["method"] == "GET"
        assert cstat(p, "upstream_cx_alpn_http1") == 0 and cstat(p, "upstream_cx_http2_total") == 0


def test_auto_fails_over_when_the_tls_handshake_fails():
    # A host whose certificate the cluster does not trust: a connect failure (503), no crash,
    # and the next request tries again.
    with H2Origin(tls=True, cert_name="other.example.com") as o, \
            proxy(o, protocol="auto", tls=auto_tls(cert(NAME)[0])) as p:
        for _ in range(3):
            assert status_of(f"http://{hp(p)}/size/10") == 503
        assert cstat(p, "upstream_cx_connect_fail") >= 3
        assert cstat(p, "upstream_cx_alpn_h2") == 0 and cstat(p, "upstream_cx_alpn_http1") == 0


def test_h2load_through_auto_to_h2_and_to_http1_hosts():
    ca = cert(NAME)[0]
    with H2Origin(tls=True, cert_name=NAME) as o, proxy(o, protocol="auto", tls=auto_tls(ca)) as p:
        # As Envoy's ALPN pool: a connect is expected to take h2's streams until a host says
        # otherwise, so a cold burst of 40 waits for one handshake and shares its connection.
        rc, out = fetch_h2load(f"http://{hp(p)}/size/1000", 4, 10, 2000)
        assert rc == 0 and "2000 succeeded, 0 failed, 0 errored" in out, out
        assert o.accepted == 1 and origin_errors(o) == []
    with Origin(tls=cert(NAME), alpn=["http/1.1"]) as o, proxy(o, protocol="auto", tls=auto_tls(ca)) as p:
        # An http/1.1 answer: the queue behind the first handshake gets a connect each.
        rc, out = fetch_h2load(f"http://{hp(p)}/size/1000", 4, 10, 2000)
        assert rc == 0 and "2000 succeeded, 0 failed, 0 errored" in out, out
        assert cstat(p, "upstream_cx_alpn_h2") == 0 and cstat(p, "upstream_cx_alpn_http1") > 1


def test_a_reload_that_changes_the_protocol_gives_new_connections_the_new_protocol():
    # Review of issue 11: pools outlived a reload, so a cluster switched to `auto` kept its
    # old client (and an http1 → http2 switch kept speaking HTTP/1.1).
    ca = cert(NAME)[0]
    with H2Origin(tls=True, cert_name=NAME) as o, proxy(o, protocol="http2", tls=auto_tls(ca)) as p:
        rc, out, err = curl("--http1.1", f"http://{hp(p)}/size/10")
        assert rc == 0 and out == pattern(10), err
        assert cstat(p, "upstream_cx_http2_total") == 1 and cstat(p, "upstream_cx_alpn_h2") == 0
        with open(p.config_path, "w") as f:
            f.write(config(o, protocol="auto", tls=auto_tls(ca)))
        p.signal(signal.SIGHUP)
        p.wait_stat("server.reload_success", lambda v: v == 1)
        for i in range(3):
            rc, out, err = curl("--http1.1", f"http://{hp(p)}/size/{20 + i}")
            assert rc == 0 and out == pattern(20 + i), err
        # A new connection, chosen by ALPN; the old pool's idle connection closed.
        assert cstat(p, "upstream_cx_alpn_h2") == 1 and o.accepted == 2
        wait_for(lambda: cstat(p, "upstream_cx_active") == 1, what="the old pool's connection closed")


class QueuedBehindASlowRequest:
    """Through `p` (a cluster with `max_connections: 1`): GET /delay/1500 on the only
    connection, then three GETs /size/1..3 waiting in the pool's queue. `get(i, path)` adds
    another; `finish()` joins them all and returns {i: status}."""

    def __init__(self, p):
        import threading
        self.p, self.results, self.threads = p, {}, []
        self.threads.append(threading.Thread(target=self.get, args=(0, "/delay/1500")))
        self.threads[0].start()
        wait_for(lambda: cstat(p, "upstream_rq_active") == 1, what="the slow request on the only connection")
        for i in range(1, 4):
            self.threads.append(threading.Thread(target=self.get, args=(i, f"/size/{i}")))
            self.threads[-1].start()
        wait_for(lambda: cstat(p, "upstream_rq_pending_active") == 3, what="three requests queued")

    def get(self, i, path):
        rc, out, err = curl("--http1.1", "-o", "/dev/null", "-w", "%{http_code}", f"http://{hp(self.p)}{path}")
        self.results[i] = out.decode()

    def finish(self):
        for t in self.threads:
            t.join(30)
        return self.results


def test_requests_queued_in_a_pool_a_reload_replaces_move_to_the_new_pool():
    # Review of issue 11: a reload that changes a pool's definition drains the old pool; the
    # requests waiting in its queue go to the new pool (no 503, no retry spent), and the old
    # pool is freed only once nothing refers to it (it used to crash in a reload storm).
    with Origin() as o:
        def cfg(idle):
            return config(o, protocol=None).replace("idle_timeout: 1s", f"idle_timeout: {idle}").replace(
                "    http_protocol_options", "    circuit_breakers: { max_connections: 1 }\n    http_protocol_options")
        with Proxy("http-proxy", config=cfg("1s")) as p:
            q = QueuedBehindASlowRequest(p)
            with open(p.config_path, "w") as f:
                f.write(cfg("2s"))
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_success", lambda v: v == 1)
            # The first request after the reload gets the new pool (and drains the old one).
            q.get(4, "/size/4")
            results = q.finish()
            assert results == {0: "200", 1: "200", 2: "200", 3: "200", 4: "200"}, results
            assert cstat(p, "upstream_rq_retry") == 0
            assert cstat(p, "upstream_rq_pending_active") == 0


def test_requests_queued_at_a_host_that_leaves_the_cluster_are_retried_on_another(tmp_path):
    # The pool of a host that leaves drains: its busy connection finishes, its queued requests
    # are retried elsewhere (the drain may retry them at once, back into the pool table while
    # it is being updated: the books come first).
    path = str(tmp_path / "eps.json")

    def endpoints(o):
        with open(path + ".new", "w") as f:
            json.dump({"endpoints": [{"address": o.endpoint}]}, f)
        os.rename(path + ".new", path)
    with Origin("a") as a, Origin("b") as b:
        endpoints(a)
        cfg = config(a, protocol=None, route=", retry_policy: { retry_on: connect-failure, num_retries: 2 }").replace(
            f"    endpoints: [{a.endpoint}]", f"    discovery: file\n    path: {path}").replace(
            "    http_protocol_options", "    circuit_breakers: { max_connections: 1 }\n    http_protocol_options")
        with Proxy("http-proxy", config=cfg) as p:
            q = QueuedBehindASlowRequest(p)
            endpoints(b)
            p.wait_stat("cluster.web.update_success", lambda v: v >= 1)
            results = q.finish()
            assert results == {0: "200", 1: "200", 2: "200", 3: "200"}, results
            assert sorted(b.paths()) == ["/size/1", "/size/2", "/size/3"] and a.paths() == ["/delay/1500"], (a.paths(), b.paths(), cstat(p, "upstream_rq_retry"))
            rc, out, err = curl("--http1.1", f"http://{hp(p)}/size/5")
            assert rc == 0 and out == pattern(5) and b.paths()[-1] == "/size/5"


def test_an_h2_host_silent_after_the_handshake_fails_within_one_connect_timeout():
    # Review of issue 11: the wait for SETTINGS got a second full connect timeout.
    import socket, ssl, threading
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert(NAME))
    ctx.set_alpn_protocols(["h2"])
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held = []
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            try:
                stop.wait(1.2)  # a slow handshake: 1.2 s of the 2 s connect timeout
                held.append(ctx.wrap_socket(c, server_side=True))  # then silence
            except (OSError, ssl.SSLError):
                c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()

    class Silent:
        endpoint = f"127.0.0.1:{srv.getsockname()[1]}"
    cfg = config(Silent, protocol="auto", tls=auto_tls(cert(NAME)[0])).replace(
        "    endpoints:", "    connect_timeout: 2s\n    endpoints:")
    try:
        with Proxy("http-proxy", config=cfg) as p:
            started = time.monotonic()
            assert status_of(f"http://{hp(p)}/size/10") == 503
            took = time.monotonic() - started
            # 2 s from the connect; a fresh timeout after the handshake made it 3.2 s.
            assert took < 2.8, f"503 after {took:.2f} s, not one connect timeout (2 s)"
            assert cstat(p, "upstream_cx_connect_timeout") == 1
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


# --- h) load

def test_h2load_through_h2_downstream_and_h2_upstream_uses_few_upstream_connections():
    with H2Origin() as o, proxy(o) as p:
        rc, out = fetch_h2load(f"http://{hp(p)}/size/1000", 4, 10, 2000)
        assert rc == 0 and "2000 succeeded, 0 failed, 0 errored" in out, out
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == 2000, what="2000 responses counted")
        assert cstat(p, "upstream_rq_total") == 2000
        assert 1 <= cstat(p, "upstream_cx_total") <= 4
        assert o.accepted == cstat(p, "upstream_cx_total")
        assert sum(o.requests_per_connection()) == 2000
        assert all(c.excess == [] for c in o.connections) and origin_errors(o) == []


# --- Review faults (issue 11, second review)

@pytest.mark.parametrize("protocol", ["http1", "http2"])
def test_a_retriable_5xx_whose_retry_cannot_happen_reaches_the_client_whole(tmp_path, protocol):
    # retry_on 5xx, but the request body (200 KB) is over max_request_body_buffer: the retry is
    # impossible, so the 503 and its body must reach the client at once (it used to hang: the
    # upstream was abandoned before the retry was known to be impossible).
    origin = H2Origin() if protocol == "http2" else RecordingOrigin()
    with origin as o, proxy(o, protocol=protocol, route=", retry_policy: { retry_on: 5xx, num_retries: 2 }, timeout: 0s") as p:
        body = tmp_path / "up"
        body.write_bytes(b"x" * 200_000)
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "-w", " %{http_code}", "--data-binary", f"@{body}",
                            f"http://{hp(p)}/status/503"], capture_output=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert r.stdout.endswith(b" 503") and r.stdout.startswith(b"status"), r.stdout
        assert cstat(p, "upstream_rq_retry") == 0
        assert cstat(p, "upstream_rq_retry_success") == 0


def test_an_upstream_that_takes_no_streams_fails_fast_instead_of_waiting_for_the_timeout():
    with H2Origin(max_concurrent_streams=0) as o, proxy(o, route=", timeout: 20s") as p:
        t0 = time.monotonic()
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "--max-time", "15", "-w", "%{http_code}",
                            f"http://{hp(p)}/size/10"], capture_output=True, timeout=20)
        assert r.stdout == b"503", r
        assert time.monotonic() - t0 < 10, "waited for a timeout"
        assert cstat(p, "upstream_cx_protocol_error") >= 1


# --- i) connection_keepalive (PING) and hosts that break the protocol

KEEPALIVE = "connection_keepalive: { interval: 200ms, timeout: 500ms }"


def test_keepalive_pings_an_idle_connection_and_keeps_it_while_the_host_answers():
    with H2Origin() as o, Proxy("http-proxy", config=config(o, http2=KEEPALIVE).replace("idle_timeout: 1s", "idle_timeout: 3s")) as p:
        assert status_of(f"http://{hp(p)}/size/10") == 200
        wait_for(lambda: o.connections[0].pings >= 4, timeout=10, what="4 PINGs on the idle connection")
        assert status_of(f"http://{hp(p)}/size/10") == 200
        assert o.accepted == 1 and cstat(p, "upstream_cx_total") == 1
        assert cstat(p, "http2.keepalive_timeout") == 0 and not o.connections[0].closed


def silent_h2_host(seen):
    """An h2c host that completes the SETTINGS exchange, then reads everything and answers
    nothing (a peer behind a dead NAT entry looks like this): the bytes it got go to `seen`."""
    from test_http2_protections import SETTINGS, frame

    def handler(c, server):
        c.settimeout(30)
        c.sendall(frame(SETTINGS, 0, 0) + frame(SETTINGS, 1, 0))
        while True:
            d = c.recv(65536)
            if not d:
                seen.append(None)  # the proxy closed the connection
                return
            seen.append(d)
    return Server(handler)


def test_keepalive_closes_a_connection_whose_host_stops_answering_and_fails_its_request():
    seen = []
    with silent_h2_host(seen) as h, proxy(h, http2=KEEPALIVE, route=", timeout: 20s") as p:
        t0 = time.monotonic()
        assert status_of(f"http://{hp(p)}/size/10") == 503
        # Without the PINGs this request would wait for its 20 s route timeout (504).
        assert time.monotonic() - t0 < 10
        assert cstat(p, "http2.keepalive_timeout") == 1
        wait_for(lambda: None in seen, what="the proxy closing the silent connection")
        got = b"".join(d for d in seen if d)
        assert got.startswith(PREFACE)
        pings = [(flags, payload) for t, flags, _, payload in frames(got[len(PREFACE):]) if t == 0x6]
        assert pings and all(flags == 0 and len(payload) == 8 for flags, payload in pings), pings


def test_an_h2_host_answering_in_http1_counts_a_protocol_error():
    def handler(c, server):
        c.settimeout(10)
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        while c.recv(65536):
            pass
    with Server(handler) as h, proxy(h) as p:
        assert status_of(f"http://{hp(p)}/size/10") == 503
        assert cstat(p, "upstream_cx_protocol_error") == 1
        assert cstat(p, "upstream_cx_connect_fail") == 1


def test_keepalive_keys_are_checked():
    for bad, msg in [("connection_keepalive: { interval: 2d }", "interval"),
                     ("connection_keepalive: { interval: 1s, timeout: 0 }", "timeout"),
                     ("connection_keepalive: { interval: 1s, jitter: 5 }", "jitter")]:
        class Dummy:
            endpoint = "127.0.0.1:9"
        r = validate(config(Dummy, http2=bad), "http-proxy")
        assert r.returncode == 1 and f"http2.connection_keepalive.{msg}" in r.stderr, (bad, r.stderr)
