"""gRPC through http-proxy (issue 11, must-show 2): a real grpcio client and server (generic
handlers on raw bytes, no protoc), unary and streaming calls over h2c and TLS, deadlines via
grpc-timeout, retries on gRPC statuses, and the proxy's own errors arriving as gRPC statuses."""

import threading
import time
from concurrent import futures

import grpc
import hpack
import pytest
from h2_peers import H2Client, H2Origin
from harness import Proxy, wait_for
from tls_peers import cert

NAME = "api.example.com"


class Service:
    """test.Echo: Unary (echo), ServerStream (request split into n replies), ClientStream (joined),
    Bidi (each message echoed), Slow (sleeps then echoes), Fail (NOT_FOUND with a message),
    Flaky (UNAVAILABLE for the first `flaky` calls, then OK)."""

    def __init__(self, flaky=0):
        self.flaky = flaky
        self.calls = {}
        self.lock = threading.Lock()
        self.metadata = []
        self.stopping = threading.Event()
        h = grpc.method_handlers_generic_handler("test.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Flaky": grpc.unary_unary_rpc_method_handler(self.flaky_call),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((h,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{self.port}"

    def count(self, name):
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            return self.calls[name]

    def unary(self, req, ctx):
        self.count("Unary")
        with self.lock:
            self.metadata.append(dict(ctx.invocation_metadata()))
        ctx.set_trailing_metadata((("x-trailer", "t1"),))
        return req

    def server_stream(self, req, ctx):
        n = int(req[:4])
        for i in range(n):
            yield req[4:] + b"-%d" % i

    def client_stream(self, it, ctx):
        return b"|".join(it)

    def bidi(self, it, ctx):
        for m in it:
            yield m[::-1]

    def slow(self, req, ctx):
        # Answers after 3 s (longer than any deadline the tests set), or when the server stops.
        self.stopping.wait(3)
        return req

    def fail(self, req, ctx):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    def flaky_call(self, req, ctx):
        if self.count("Flaky") <= self.flaky:
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return req

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.stop(0)


def config(svc_endpoint, tls=False, route_extra="", cluster_extra="", http_extra=""):
    c, k = cert(NAME)
    tls_line = f'    tls: {{ cert: "{c}", key: "{k}" }}\n' if tls else ""
    return f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
{tls_line}    http:
{http_extra}      routes:
        - match: {{ prefix: /test.Echo/ }}
          cluster: grpc
{route_extra}clusters:
  - name: grpc
    endpoints: [{svc_endpoint}]
    http_protocol_options: {{ protocol: http2, idle_timeout: 1s }}
{cluster_extra}"""


def channel(p, tls=False):
    addr = f"127.0.0.1:{p.addr()[1]}"
    if not tls:
        return grpc.insecure_channel(addr)
    with open(cert(NAME)[0], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(addr, creds, options=(("grpc.ssl_target_name_override", NAME),))


def call(ch, method, req=b"", kind="unary_unary", timeout=10, **kw):
    return getattr(ch, kind)(f"/test.Echo/{method}")(req, timeout=timeout, **kw)


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_unary_and_streaming_calls_pass_through_unchanged(tls):
    with Service() as svc, Proxy("http-proxy", config=config(svc.endpoint, tls=tls)) as p, channel(p, tls) as ch:
        big = bytes(range(256)) * 4096  # 1 MiB message
        for _ in range(3):
            resp, c = ch.unary_unary("/test.Echo/Unary").with_call(big, timeout=10, metadata=(("x-meta", "m1"),))
            assert resp == big
            assert c.code() == grpc.StatusCode.OK
            assert dict(c.trailing_metadata())["x-trailer"] == "t1"
        assert svc.metadata[-1]["x-meta"] == "m1"
        assert list(call(ch, "ServerStream", b"0100abc", kind="unary_stream")) == [b"abc-%d" % i for i in range(100)]
        assert call(ch, "ClientStream", iter([b"a", b"bb", b"ccc"] * 50), kind="stream_unary") == b"|".join([b"a", b"bb", b"ccc"] * 50)
        msgs = [b"msg-%d" % i * (i + 1) for i in range(200)]
        assert list(call(ch, "Bidi", iter(msgs), kind="stream_stream")) == [m[::-1] for m in msgs]
        # Several calls at once on the one channel (streams multiplexed both ways).
        with futures.ThreadPoolExecutor(8) as ex:
            outs = list(ex.map(lambda i: call(ch, "Unary", b"x%d" % i * 1000), range(64)))
        assert outs == [b"x%d" % i * 1000 for i in range(64)]
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == p.stat("http.main.downstream_rq_total"), what="every call counted 2xx")
        assert p.stat("http.main.downstream_cx_http2_total") == 1
        assert p.stat("cluster.grpc.upstream_cx_http2_total") == 1


def test_a_server_error_status_arrives_unchanged():
    with Service() as svc, Proxy("http-proxy", config=config(svc.endpoint)) as p, channel(p) as ch:
        with pytest.raises(grpc.RpcError) as e:
            call(ch, "Fail", b"x")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert e.value.details() == "no such thing"


def trailers_only(client, sid):
    s = client.streams[sid]
    return dict(s.headers)


def test_grpc_timeout_bounds_the_route_timeout_and_the_proxy_answers_deadline_exceeded():
    # A raw HTTP/2 client sends grpc-timeout and does not enforce it itself: the proxy must.
    # The upstream is an h2 origin holding the call (a gRPC server would enforce the forwarded
    # deadline too and race the proxy to answer it).
    with H2Origin() as o, Proxy("http-proxy", config=config(o.endpoint, route_extra="          prefix_rewrite: /hold/\n")) as p:
        with H2Client(p.addr()) as c:
            frame = b"\x00\x00\x00\x00\x02hi"
            t0 = time.monotonic()
            sid = c.request("POST", "/test.Echo/Slow", headers=[("content-type", "application/grpc"), ("te", "trailers"),
                                                                ("grpc-timeout", "300m")], body=frame)
            c.wait_done(sid, timeout=10)
            took = time.monotonic() - t0
            h = trailers_only(c, sid)
            assert h[":status"] == "200" and h["grpc-status"] == "4", h
            assert h["grpc-message"] == "upstream request timeout"
            assert took < 2.5, "the route timeout (15 s) ended it, not grpc-timeout"
        assert p.stat("cluster.grpc.upstream_rq_timeout") == 1
        # The deadline goes on to the host, as Envoy forwards it.
        seen = o.find("/hold/Slow")
        assert len(seen) == 1 and ("grpc-timeout", "300m") in seen[0].headers, seen


def test_max_grpc_timeout_caps_a_longer_client_deadline():
    route = "          max_grpc_timeout: 200ms\n"
    with Service() as svc, Proxy("http-proxy", config=config(svc.endpoint, route_extra=route)) as p, channel(p) as ch:
        with pytest.raises(grpc.RpcError) as e:
            call(ch, "Slow", b"x", timeout=20)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert e.value.details() == "upstream request timeout"
        assert p.stat("cluster.grpc.upstream_rq_timeout") == 1


def test_the_proxys_own_errors_arrive_as_grpc_statuses():
    # No healthy host: UNAVAILABLE; no route: UNIMPLEMENTED (Envoy's HTTP-to-gRPC mapping).
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    with Proxy("http-proxy", config=config(dead)) as p, channel(p) as ch:
        with pytest.raises(grpc.RpcError) as e:
            call(ch, "Unary", b"x")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "upstream connect error" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/other.Service/Method")(b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert e.value.details() == "no route"
        assert p.stat("http.main.downstream_rq_local_reply") == 2


def test_unavailable_is_retried_when_the_route_says_so():
    retry = "          retry_policy: { retry_on: unavailable, num_retries: 2 }\n"
    with Service(flaky=1) as svc, Proxy("http-proxy", config=config(svc.endpoint, route_extra=retry)) as p, channel(p) as ch:
        assert call(ch, "Flaky", b"ok") == b"ok"
        assert svc.calls["Flaky"] == 2
        assert p.stat("cluster.grpc.upstream_rq_retry") == 1
    with Service(flaky=1) as svc, Proxy("http-proxy", config=config(svc.endpoint)) as p, channel(p) as ch:
        with pytest.raises(grpc.RpcError) as e:
            call(ch, "Flaky", b"ok")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and e.value.details() == "try again"
        assert p.stat("cluster.grpc.upstream_rq_retry") == 0


# --- grpc_stats: per-cluster call stats, per method for the allowlisted ones

GRPC_STATS = """      http_filters:
        - name: grpc_stats
          individual_method_stats_allowlist:
            services: [{ name: test.Echo, method_names: [Unary, Bidi, Fail, Slow] }]
"""


def grpc_stats(p, method=None):
    base = "cluster.grpc.grpc." + (f"test.Echo.{method}." if method else "")
    s = p.stats()
    return {k: s.get(base + k, 0) for k in ("success", "failure", "total", "request_message_count", "response_message_count")}


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_grpc_stats_count_calls_by_status_and_messages_per_allowlisted_method(tls):
    with Service() as svc, Proxy("http-proxy", config=config(svc.endpoint, tls=tls, http_extra=GRPC_STATS)) as p, channel(p, tls) as ch:
        with futures.ThreadPoolExecutor(8) as ex:
            outs = list(ex.map(lambda i: call(ch, "Unary", b"u%d" % i * 5000), range(20)))
        assert outs == [b"u%d" % i * 5000 for i in range(20)]
        # 300 messages each way, some large enough to span DATA frames and reads.
        msgs = [b"m%d" % i * (i * 50 + 1) for i in range(300)]
        assert list(call(ch, "Bidi", iter(msgs), kind="stream_stream")) == [m[::-1] for m in msgs]
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as e:
                call(ch, "Fail", b"x")
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
        # Not in the allowlist: the cluster's unprefixed stats.
        assert list(call(ch, "ServerStream", b"0007abc", kind="unary_stream")) == [b"abc-%d" % i for i in range(7)]
        wait_for(lambda: grpc_stats(p, "Fail")["total"] == 3 and grpc_stats(p)["total"] == 1, what="every call counted")
        assert grpc_stats(p, "Unary") == {"success": 20, "failure": 0, "total": 20, "request_message_count": 20, "response_message_count": 20}
        assert grpc_stats(p, "Bidi") == {"success": 1, "failure": 0, "total": 1, "request_message_count": 300, "response_message_count": 300}
        assert grpc_stats(p, "Fail") == {"success": 0, "failure": 3, "total": 3, "request_message_count": 3, "response_message_count": 0}
        assert grpc_stats(p) == {"success": 1, "failure": 0, "total": 1, "request_message_count": 1, "response_message_count": 7}
        # Stats exist for the pairs that saw calls only (made on first use, as Envoy's): Slow,
        # allowlisted but never called, has none.
        assert not any(k.startswith("cluster.grpc.grpc.test.Echo.Slow.") for k in p.stats())


def test_grpc_stats_count_the_proxys_own_errors_and_a_client_cannot_make_stat_names():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    with Proxy("http-proxy", config=config(dead, http_extra=GRPC_STATS)) as p, channel(p) as ch:
        for method in ["Unary", "Nope", "Unary.x", "../../admin"]:
            with pytest.raises(grpc.RpcError) as e:
                call(ch, method, b"x")
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        wait_for(lambda: grpc_stats(p)["failure"] == 3, what="the unlisted calls counted")
        assert grpc_stats(p, "Unary")["failure"] == 1 and grpc_stats(p, "Unary")["total"] == 1
        names = [k for k in p.stats() if ".grpc.grpc." in k]
        assert not any("Nope" in k or "admin" in k for k in names), names


def test_grpc_stats_config_is_checked():
    from harness import validate
    for bad, where in [("stats_for_all_methods: true", "stats_for_all_methods"),
                       ("individual_method_stats_allowlist: { services: [{ name: 'a b', method_names: [M] }] }", "services[0].name"),
                       ("individual_method_stats_allowlist: { services: [{ name: s, method_names: [M.x] }] }", "method_names[0]"),
                       ("individual_method_stats_allowlist: { services: [{ name: s, method_names: [M, M] }] }", "method_names[1]"),
                       ("individual_method_stats_allowlist: { services: [{ name: s }] }", "method_names")]:
        cfg = config("127.0.0.1:9", http_extra=f"      http_filters: [{{ name: grpc_stats, {bad} }}]\n")
        r = validate(cfg, "http-proxy")
        assert r.returncode == 1 and where in r.stderr, (bad, r.stderr)


def grpc_body(sizes):
    """gRPC length-prefixed messages of the given sizes, back to back."""
    return b"".join(b"\x00" + n.to_bytes(4, "big") + bytes([i % 251]) * n for i, n in enumerate(sizes))


def test_grpc_stats_count_messages_packed_into_one_frame_or_split_across_frames():
    # grpcio writes one message per DATA frame; a raw client packs 50 small ones into one frame
    # and splits 70 KB ones across several, and the h2 origin echoes the body in its own frames.
    sizes = [3] * 50 + [70_000, 0, 70_000] + [1] * 10
    with H2Origin() as o, Proxy("http-proxy", config=config(o.endpoint, http_extra=GRPC_STATS)) as p:
        with H2Client(p.addr()) as c:
            sid = c.request("POST", "/test.Echo/Unary", headers=[("content-type", "application/grpc"), ("te", "trailers")],
                            body=grpc_body(sizes))
            c.wait_done(sid, timeout=10)
            assert dict(c.streams[sid].trailers)["grpc-status"] == "0" and bytes(c.streams[sid].body) == grpc_body(sizes)
        wait_for(lambda: grpc_stats(p, "Unary")["total"] == 1, what="the call counted")
        assert grpc_stats(p, "Unary") == {"success": 1, "failure": 0, "total": 1,
                                          "request_message_count": len(sizes), "response_message_count": len(sizes)}


def test_grpc_stats_for_many_clusters_and_methods_take_stat_slots_only_when_called():
    # 40 clusters x 1000 allowlisted methods would be over a million stat slots if made up
    # front (the store has 65536): they are made on a pair's first call.
    services = ", ".join(f"{{ name: s{i}, method_names: [{', '.join(f'M{j}' for j in range(100))}] }}" for i in range(10))
    routes = "".join(f"        - {{ match: {{ prefix: /s{i}/ }}, cluster: c{i} }}\n" for i in range(40))
    clusters = "".join(f"  - name: c{i}\n    endpoints: [127.0.0.1:9]\n" for i in range(40))
    cfg = f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    http:
      http_filters: [{{ name: grpc_stats, individual_method_stats_allowlist: {{ services: [{services}] }} }}]
      routes:
{routes}clusters:
{clusters}"""
    with Proxy("http-proxy", config=cfg) as p, channel(p) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/s7/M42")(b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        wait_for(lambda: p.stat("cluster.c7.grpc.s7.M42.failure") == 1, what="the call counted")
        s = p.stats()
        assert s.get("server.stats_overflow", 0) == 0
        assert [k for k in s if ".grpc." in k and not k.startswith("cluster.c7.grpc.s7.M42.")] == []


def test_grpc_web_and_look_alike_content_types_are_not_grpc():
    # gRPC-Web carries its status in the body: not counted by grpc_stats, and the proxy's own
    # answers to it (and to application/grpcfoo) are not gRPC trailers-only responses.
    with H2Origin() as o, Proxy("http-proxy", config=config(o.endpoint, http_extra=GRPC_STATS)) as p:
        with H2Client(p.addr()) as c:
            for ctype in ("application/grpc-web+proto", "application/grpcfoo"):
                sid = c.request("POST", "/test.Echo/Unary", headers=[("content-type", ctype)], body=b"\x00\x00\x00\x00\x01x")
                c.wait_done(sid, timeout=10)
                assert c.streams[sid].status == 200
                sid = c.request("POST", "/nowhere", headers=[("content-type", ctype)], body=b"x")
                c.wait_done(sid, timeout=10)
                assert c.streams[sid].status == 404 and c.streams[sid].header("grpc-status") is None, c.streams[sid].headers
            sid = c.request("POST", "/nowhere", headers=[("content-type", "application/grpc+proto")], body=b"x")
            c.wait_done(sid, timeout=10)
            assert c.streams[sid].status == 200 and c.streams[sid].header("grpc-status") == "12"
        assert grpc_stats(p, "Unary")["total"] == 0 and grpc_stats(p)["total"] == 0
