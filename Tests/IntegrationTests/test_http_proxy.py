"""http-proxy (HTTP/1.1) against real clients (curl, Python's http.client, raw sockets) and
real origins (Python's http.server; raw-socket upstreams for broken ones)."""

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading

import pytest
from harness import Proxy, Server, connect, port_refuses, wait_for, wait_read_by_peer
from http_peers import Origin, pattern, read_response

IDLE = ["--upstream-idle-timeout", "1s"]  # pooled connections close before the leak check


def proxy_for(*origins, args=()):
    ups = ",".join(o.endpoint for o in origins)
    return Proxy("http-proxy", args=["--listen", "127.0.0.1:0", "--upstream", ups, "--workers", "1",
                                     "--admin", "127.0.0.1:0", *IDLE, *args])


def http_config(http_block, clusters):
    """A one-listener config: `http_block` (YAML lines under `http:`, 6 spaces in) and
    `clusters` ({name: endpoint}), each pool closing idle connections after 1s."""
    cl = "".join(f"""  - name: {n}
    endpoints: [{e}]
    http_protocol_options: {{ idle_timeout: 1s }}
""" for n, e in clusters.items())
    return f"""admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    http:
{http_block}
clusters:
{cl}"""


def concurrently(fn, n, timeout=60):
    """Runs fn(0) ... fn(n-1) on n threads at once and re-raises the first failure here (a
    thread's assertion fails the test; nothing is caught and dropped)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(fn, i) for i in range(n)]:
            f.result(timeout)


def client(p):
    host, port = p.addr()
    return http.client.HTTPConnection(host, port, timeout=10)


def hp(p):
    """The proxy's listener as host:port."""
    host, port = p.addr()
    return f"{host}:{port}"


def curl(*args):
    r = subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)
    return r.returncode, r.stdout, r.stderr.decode()


def test_get_head_post_bodies_arrive_byte_exact():
    with Origin() as o, proxy_for(o) as p:
        c = client(p)
        # A 1 MiB download (Content-Length), then a chunked one with trailers, on one connection.
        c.request("GET", "/size/1048576")
        r = c.getresponse()
        assert r.status == 200 and r.read() == pattern(1048576)
        c.request("GET", "/chunked/300000?trailers")
        r = c.getresponse()
        assert r.getheader("transfer-encoding") == "chunked" and r.read() == pattern(300000)
        c.request("HEAD", "/size/5000")
        r = c.getresponse()
        assert r.status == 200 and r.getheader("content-length") == "5000" and r.read() == b""
        # Uploads: Content-Length and chunked, checked at the origin.
        body = pattern(1048576, seed=3)
        c.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
        info = json.loads(c.getresponse().read())
        assert info["body_len"] == len(body) and info["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert not info["chunked"]
        c.request("PUT", "/echo", body=iter([body[:100000], body[100000:]]), encode_chunked=True)
        info = json.loads(c.getresponse().read())
        assert info["chunked"] and info["body_sha256"] == hashlib.sha256(body).hexdigest()
        c.close()
        # Counted when the stream settles, just after its last bytes are written.
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == 5, what="5 responses counted")
        # curl too, with its own framing.
        rc, out, err = curl("-X", "POST", "--data-binary", "@-", f"http://{hp(p)}/echo")
        assert rc == 0, err


def test_trailers_and_chunked_download_reach_curl():
    with Origin() as o, proxy_for(o) as p:
        rc, out, err = curl("-D", "-", "--raw", f"http://{hp(p)}/chunked/50000?trailers")
        assert rc == 0, err
        assert b"x-checksum: " + hashlib.sha256(pattern(50000)).hexdigest().encode() in out.lower()


def test_keep_alive_hundred_requests_reuse_one_upstream_connection():
    with Origin() as o, proxy_for(o) as p:
        c = client(p)
        for i in range(100):
            c.request("GET", f"/n/{i}")
            r = c.getresponse()
            assert r.status == 200 and json.loads(r.read())["path"] == f"/n/{i}"
        c.close()
        assert p.stat("http.main.downstream_cx_total") == 1
        assert p.stat("cluster.upstream.upstream_cx_total") == 1
        assert p.stat("cluster.upstream.upstream_rq_total") == 100
        # The host's own request stats in /clusters (Envoy's rq_total, rq_success, rq_active).
        clusters = p.get("/clusters")[1]
        assert f"upstream::{o.endpoint}::rq_total::100" in clusters
        assert f"upstream::{o.endpoint}::rq_success::100" in clusters
        assert f"upstream::{o.endpoint}::rq_active::0" in clusters


def test_pipelined_requests_are_answered_in_order():
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        s.sendall(b"".join(b"GET /p/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(10)))
        f = s.makefile("rb")
        paths = [json.loads(read_response(f)[2])["path"] for _ in range(10)]
        assert paths == [f"/p/{i}" for i in range(10)]
        f.close()
        s.close()


def test_expect_100_continue_gets_continue_then_the_response():
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        s.sendall(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        f = s.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 100")
        assert f.readline() == b"\r\n"
        s.sendall(b"hello")
        status, _, body = read_response(f)
        assert status == 200 and json.loads(body)["body_len"] == 5
        assert "expect" not in json.loads(body)["headers"]
        f.close()
        s.close()


def test_http10_client_gets_http10_answer_and_close():
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        s.sendall(b"GET /x HTTP/1.0\r\n\r\n")
        f = s.makefile("rb")
        line = f.readline()
        assert line.startswith(b"HTTP/1.0 200")
        rest = f.read()  # the proxy closes after the response
        assert b"connection: close" in rest.lower()
        f.close()
        s.close()


def test_hop_by_hop_headers_are_removed_and_forwarding_headers_added():
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        s.sendall(b"GET /h HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
                  b"Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 10.1.1.1\r\nX-Request-Id: abc-123\r\n\r\n")
        status, headers, body = read_response(s)
        h = json.loads(body)["headers"]
        for gone in ("x-secret", "keep-alive", "te"):
            assert gone not in h, gone
        assert h["host"] == "example"
        assert h["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
        assert h["x-forwarded-proto"] == "http"
        # An external request id is replaced at the edge (use_remote_address, Envoy's default).
        assert h["x-request-id"] != "abc-123" and len(h["x-request-id"]) == 36
        s.close()


# Each case: (request bytes, expected status, counter). The origin must never see a request.
SMUGGLING = [
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400,
     "content_length_and_transfer_encoding"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nContent-Length: 5\r\n\r\nhello!", 400, "conflicting_content_length"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello", 400, "invalid_content_length"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400, "invalid_transfer_encoding"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, "whitespace_before_colon"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "transfer_encoding_http10"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400, "obs_fold"),
    (b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400, "whitespace_before_first_header"),
    (b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400, "bare_lf"),
    (b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400, "bare_cr"),
    (b"GET / HTTP/1.1\r\nHost: x\x00\r\n\r\n", 400, "nul_byte"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "missing_host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate_host"),
    (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_method"),
    (b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_target"),
    (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505, "unsupported_version"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431, "too_many_headers"),
]


@pytest.mark.parametrize("raw,status,counter", SMUGGLING, ids=[c for _, _, c in SMUGGLING])
def test_ambiguous_or_malformed_requests_are_refused_and_never_forwarded(raw, status, counter):
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        s.sendall(raw)
        st, headers, _ = read_response(s)
        assert st == status
        assert headers.get("connection") == "close"
        s.close()
        assert p.stat(f"http.main.http1.{counter}") == 1
        assert o.paths() == []
        # Nothing lost for the next client.
        rc, out, err = curl(f"http://{hp(p)}/after")
        assert rc == 0 and json.loads(out)["path"] == "/after", err


def test_malformed_chunk_mid_body_closes_without_a_second_request():
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        # A chunk size with garbage, followed by what would be a smuggled request.
        s.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                  b"zz\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        assert p.stat("http.main.http1.invalid_chunk_size") == 1
        assert "/smuggled" not in o.paths()


def garbage_upstream(c, server):
    c.recv(65536)
    c.sendall(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nhi")


def truncating_upstream(c, server):
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
    c.shutdown(socket.SHUT_RDWR)


def truncating_chunked_upstream(c, server):
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + b"y" * 4096 + b"\r\n")
    c.shutdown(socket.SHUT_RDWR)


def test_garbage_status_line_from_upstream_is_a_502():
    with Server(garbage_upstream) as up, proxy_for(up) as p:
        s = connect(p.addr())
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            st, _, body = read_response(s)
        except ConnectionError:
            raise AssertionError(f"{p.stats()} {p.stderr()}")
        assert st == 502 and b"2OO" not in body
        s.close()
        assert p.stat("cluster.upstream.http1.invalid_status_line") == 1


@pytest.mark.parametrize("handler", [truncating_upstream, truncating_chunked_upstream], ids=["length", "chunked"])
def test_truncated_upstream_body_is_never_delivered_as_complete(handler):
    with Server(handler) as up, proxy_for(up) as p:
        s = connect(p.addr())
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionError):
            read_response(s)
        s.close()
        assert p.stat("http.main.rq_reset_after_downstream_response_started") == 1


def test_direct_response_redirect_routes_and_virtual_hosts():
    with Origin("api") as api, Origin("web") as web:
        cfg = http_config("""      virtual_hosts:
        - name: api
          domains: [api.example.com]
          routes:
            - match: { prefix: /v1/ }
              cluster: api
              prefix_rewrite: /internal/
            - match: { path: /ping }
              direct_response: { status: 200, body: "pong" }
        - name: rest
          domains: ["*"]
          routes:
            - match: { prefix: /old/ }
              redirect: { prefix_rewrite: /new/, response_code: 308 }
            - match: { prefix: /, headers: [{ name: x-canary, exact: "1" }] }
              cluster: api
            - match: { prefix: / }
              cluster: web""", {"api": api.endpoint, "web": web.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            base = f"http://{hp(p)}"
            rc, out, _ = curl("-H", "Host: api.example.com", base + "/v1/users?id=3")
            assert json.loads(out)["origin"] == "api" and json.loads(out)["path"] == "/internal/users?id=3"
            rc, out, _ = curl("-H", "Host: api.example.com", base + "/ping")
            assert out == b"pong"
            rc, out, _ = curl("-H", "Host: api.example.com", "-o", "/dev/null", "-w", "%{http_code}", base + "/nothing")
            assert out == b"404"
            rc, out, _ = curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", base + "/old/page?q=1")
            assert out.decode().startswith("308 ") and out.decode().endswith("/new/page?q=1")
            rc, out, _ = curl("-H", "X-Canary: 1", base + "/x")
            assert json.loads(out)["origin"] == "api"
            rc, out, _ = curl(base + "/x")
            assert json.loads(out)["origin"] == "web"
            assert p.stat("http.main.no_route") == 1
            assert p.stat("http.main.rq_redirect") == 1
            assert p.stat("http.main.rq_direct_response") == 1


def test_retry_on_503_gives_the_client_200_and_counts_the_retry():
    with Origin("a") as o, proxy_for(o, args=["--retries", "1"]) as p:
        rc, out, err = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{hp(p)}/flaky/1")
        assert out == b"200", err
        assert p.stat("cluster.upstream.upstream_rq_retry") == 1
        assert p.stat("cluster.upstream.upstream_rq_503") == 1
        assert p.stat("cluster.upstream.upstream_rq_200") == 1


def test_connect_failure_gives_503_with_uf_and_nothing_stays_open():
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()
    with Proxy("http-proxy", args=["--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{port}", "--workers", "1",
                                   "--admin", "127.0.0.1:0"]) as p:
        rc, out, _ = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{hp(p)}/")
        assert out == b"503"
        assert p.stat("cluster.upstream.upstream_cx_connect_fail") >= 1


def slow_upstream(c, server):
    c.recv(65536)
    server.results.setdefault("ev", threading.Event()).wait(20)


def test_route_timeout_gives_504():
    with Server(slow_upstream) as up, proxy_for(up, args=["--timeout", "300ms"]) as p:
        try:
            rc, out, _ = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{hp(p)}/")
            assert out == b"504"
            assert p.stat("cluster.upstream.upstream_rq_timeout") == 1
        finally:
            up.results.setdefault("ev", threading.Event()).set()


@pytest.mark.parametrize("client", ["http1", "h2"])
def test_the_route_timeout_starts_when_the_request_has_ended(client):
    # Envoy's rule: a slow upload (1.5 s here) is not cut by a 500 ms route timeout, which
    # bounds the wait for the response once the request is whole.
    with Origin() as o, proxy_for(o, args=["--timeout", "500ms"]) as p:
        body = b"x" * 10
        if client == "http1":
            s = connect(p.addr())
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
            for i in range(10):
                s.sendall(body[i:i + 1])
                if i == 9:
                    break
                s.settimeout(0.15)  # paces the upload; an early answer (a 504) ends it
                try:
                    early = s.recv(65536)
                except socket.timeout:
                    continue
                raise AssertionError(f"answered mid-upload: {early[:60]!r}")
            s.settimeout(10)
            status, _, got = read_response(s)
            s.close()
        else:
            from h2_peers import H2Client, H2Stream
            with H2Client(p.addr()) as c:
                sid = c.conn.get_next_available_stream_id()
                c.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "t"), (":path", "/echo"),
                                          ("content-length", "10")])
                c.streams[sid] = H2Stream(sid, True, True)
                for i in range(10):
                    c.conn.send_data(sid, body[i:i + 1], end_stream=i == 9)
                    c.step(wait=0.15)  # paces the upload, reading meanwhile
                    assert i == 9 or not c.streams[sid].done, f"answered mid-upload: {c.streams[sid].status}"
                c.wait_done(sid, timeout=10)
                status, got = c.streams[sid].status, bytes(c.streams[sid].body)
        assert status == 200 and json.loads(got)["body_len"] == 10, (status, got[:200])
        assert p.stat("cluster.upstream.upstream_rq_timeout") == 0


def test_slowloris_is_cut_at_the_headers_timeout():
    with Origin() as o:
        cfg = http_config("""      request_headers_timeout: 500ms
      routes: [{ match: { prefix: / }, cluster: web }]""", {"web": o.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            s = connect(p.addr())
            s.sendall(b"GET / HTTP/1.1\r\nHo")
            # A byte at a time, never finishing: the proxy closes within the timeout.
            s.settimeout(10)

            def closed():
                try:
                    s.sendall(b"s")
                    return s.recv(1, socket.MSG_DONTWAIT) == b""
                except BlockingIOError:
                    return False
                except OSError:
                    return True
            wait_for(closed, timeout=10, interval=0.1, what="the headers timeout")
            s.close()
            assert p.stat("http.main.downstream_rq_header_timeout") == 1
            assert o.paths() == []


def test_health_check_filter_answers_and_fails_with_the_admin():
    with Origin() as o:
        cfg = http_config("""      http_filters: [{ name: health_check, path: /healthz }]
      routes: [{ match: { prefix: / }, cluster: web }]""", {"web": o.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            code = lambda: curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{hp(p)}/healthz")[1]
            assert code() == b"200"
            assert p.post("/healthcheck/fail")[0] == 200
            assert code() == b"503"
            assert p.post("/healthcheck/ok")[0] == 200
            assert code() == b"200"
            assert o.paths() == []


def test_sigterm_drains_keep_alive_clients_with_connection_close():
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        f = s.makefile("rb")
        s.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(f)[0] == 200
        # A request in flight when draining starts is answered with Connection: close. SIGTERM
        # reaches the worker through the main thread: the worker stops listening and drains its
        # connections in one step, so once the port refuses, the drain has begun here (the
        # request could otherwise be answered before it, keep-alive).
        p.allow_open_at_end("the proxy exits during the test")
        s.sendall(b"GET /two HTTP/1.1\r\nHost: x\r\n")
        p.signal(signal.SIGTERM)
        wait_for(lambda: port_refuses(p.addr()), what="the worker to begin draining")
        s.sendall(b"\r\n")
        st, headers, _ = read_response(f)
        assert st == 200 and headers.get("connection") == "close"
        assert f.read() == b""
        f.close()
        s.close()
        assert p.wait(timeout=20) == 0


def test_sigterm_answers_a_request_the_worker_has_not_read_yet():
    # The drain is posted to the worker from the main thread, and libevent runs posted work
    # before the I/O events of the same loop turn. A keep-alive connection whose next request
    # sat unread in its socket looked idle to the drain and was closed: the request was lost,
    # and closing a socket with unread input sends RST (a ConnectionResetError, seen once
    # under TSan in the test above, where it depends on thread timing). Here strace holds the
    # worker's return from epoll_wait, so the request's read event waits behind the drain.
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("needs strace (scripts/install-deps.sh installs it)")
    with Origin() as o, proxy_for(o) as p:
        p.allow_open_at_end("the proxy exits during the test")
        s = connect(p.addr())
        f = s.makefile("rb")
        s.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(f)[0] == 200
        tasks = f"/proc/{p.proc.pid}/task"
        worker = next(t for t in os.listdir(tasks) if open(f"{tasks}/{t}/comm").read().strip() == "worker_0")
        tracer = subprocess.Popen([strace, "-qq", "-o", "/dev/null", "-p", worker, "-e", "trace=epoll_wait",
                                   "-e", "inject=epoll_wait:delay_exit=300000"], stderr=subprocess.PIPE)
        try:
            def attached():
                if tracer.poll() is not None:
                    pytest.skip(f"strace cannot attach here: {tracer.stderr.read().decode().strip()}")
                with open(f"{tasks}/{worker}/status") as st:
                    return any(line.split() == ["TracerPid:", str(tracer.pid)] for line in st)
            wait_for(attached, what="strace attached to the worker")
            s.sendall(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
            p.signal(signal.SIGTERM)
            st, headers, _ = read_response(f)
            assert st == 200 and headers.get("connection") == "close"
            assert f.read() == b""
        finally:
            tracer.terminate()
            tracer.wait()
        f.close()
        s.close()
        assert p.wait(timeout=20) == 0


def head_then_held_body_upstream(c, server):
    """Answers a request with its head and half its body, and the rest once told to
    (`results["go"]`, with a deadline); then waits for the proxy to close."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = c.recv(65536)
        if not got:
            return
        data += got
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    server.results["go"].wait(10)
    c.sendall(b"cd")
    while c.recv(65536):
        pass


def test_sigterm_closes_a_connection_whose_response_began_keep_alive():
    # The response's head went out keep-alive before the drain began: the connection stayed
    # open after the response, idle, until drain_timeout (30s) closed it and let the process
    # exit. It now ends with that response.
    with Server(head_then_held_body_upstream) as up, proxy_for(up) as p:
        up.results["go"] = threading.Event()
        p.allow_open_at_end("the proxy exits during the test")
        s = connect(p.addr())
        f = s.makefile("rb")
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = []
        while (line := f.readline()) not in (b"\r\n", b""):
            head.append(line.lower())
        assert head[0].startswith(b"http/1.1 200") and not any(h.startswith(b"connection:") for h in head), head
        assert f.read(2) == b"ab"
        p.signal(signal.SIGTERM)
        wait_for(lambda: port_refuses(p.addr()), what="the worker to begin draining")
        up.results["go"].set()
        assert f.read(2) == b"cd"
        assert f.read() == b""  # at once: the socket's 10s timeout is well under drain_timeout
        f.close()
        s.close()
        assert p.wait(timeout=20) == 0
        assert "drain timeout" not in p.stderr()


def test_concurrent_clients_sharing_few_pooled_connections_get_their_own_responses():
    # More clients than upstream connections: requests queue in the pool and are handed a
    # connection the moment the response before them completes. Each client checks that it got
    # its own answer, byte-exact, and the origin sees only well-formed requests. (A response's
    # last piece once shared a buffer with the next request's head: the origin got body bytes
    # in front of a request line and answered 400.)
    with Origin() as o:
        cfg = http_config("""      routes: [{ match: { prefix: / }, cluster: web }]""", {"web": o.endpoint})
        cfg = cfg.replace("    http_protocol_options:", "    circuit_breakers: { max_connections: 2 }\n    http_protocol_options:")
        with Proxy("http-proxy", config=cfg) as p:

            def run(n):
                c = client(p)
                for i in range(40):
                    if i % 3 == 0:
                        body = pattern(1000 + n * 37 + i, seed=n)
                        c.request("POST", f"/echo/{n}/{i}", body=body)
                        info = json.loads(c.getresponse().read())
                        assert info["path"] == f"/echo/{n}/{i}" and info["body_sha256"] == hashlib.sha256(body).hexdigest()
                    else:
                        c.request("GET", f"/size/{128 + n}")
                        r = c.getresponse()
                        assert r.status == 200 and r.read() == pattern(128 + n), (n, i)
                c.close()

            concurrently(run, 8)
            assert p.stat("cluster.web.upstream_rq_4xx") == 0
            assert p.stat("cluster.web.upstream_cx_total") <= 4
            assert p.stat("cluster.web.upstream_rq_pending_total") > 8


def test_wrk_and_h2load_h1_get_only_2xx():
    with Origin() as o, proxy_for(o) as p:
        r = subprocess.run(["wrk", "-t1", "-c8", "-d2s", f"http://{hp(p)}/size/128"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert "Non-2xx" not in r.stdout and "Socket errors" not in r.stdout, r.stdout
        done = int(r.stdout.split(" requests in")[0].split()[-1])
        assert done > 100
        r = subprocess.run(["h2load", "--h1", "-n", "2000", "-c", "10", f"http://{hp(p)}/size/1000"],
                           capture_output=True, text=True, timeout=60)
        assert "2000 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout
        # Every request the tools sent was answered and counted (wrk's last in-flight ones too).
        wait_for(lambda: p.stat("http.main.downstream_rq_2xx") == p.stat("http.main.downstream_rq_total"),
                 what="every request answered 2xx")


@pytest.mark.heavy
def test_a_100_mib_download_arrives_byte_exact_with_bounded_memory():
    size = 100 << 20
    with Origin() as o, proxy_for(o) as p:
        base = p.rss_kib()
        s = connect(p.addr())
        s.sendall(b"GET /size/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        s.settimeout(30)
        # Read nothing for a while: the origin keeps sending, the proxy must push back rather
        # than buffer the body (flow control from the client's socket to the origin's).
        peak = 0
        deadline = __import__("time").monotonic() + 1.5
        while __import__("time").monotonic() < deadline:
            peak = max(peak, p.rss_kib())
        f = s.makefile("rb")
        status, headers, body = read_response(f, timeout=60)
        f.close()
        s.close()
        assert status == 200 and len(body) == size
        assert hashlib.sha256(body).digest() == hashlib.sha256(pattern(size)).digest()
        peak = max(peak, p.rss_kib())
        assert peak - base < 32 << 10, f"RSS grew {peak - base} KiB for a 100 MiB body"


@pytest.mark.heavy
def test_weighted_clusters_split_within_tolerance():
    with Origin("a") as a, Origin("b") as b:
        cfg = http_config("""      routes:
        - match: { prefix: / }
          weighted_clusters: [{ name: a, weight: 30 }, { name: b, weight: 70 }]""", {"a": a.endpoint, "b": b.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            r = subprocess.run(["h2load", "--h1", "-n", "10000", "-c", "8", f"http://{hp(p)}/w"],
                               capture_output=True, text=True, timeout=120)
            assert "10000 succeeded" in r.stdout, r.stdout
            na, nb = len(a.paths()), len(b.paths())
            assert na + nb == 10000
            assert abs(na / 10000 - 0.30) < 0.03, (na, nb)


def test_sighup_with_changed_routes_under_load_drops_nothing():
    with Origin("a") as a:
        cfg = http_config("""      routes: [{ match: { prefix: / }, cluster: a }]""", {"a": a.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            from concurrent.futures import ThreadPoolExecutor
            statuses, done = [], [0]
            stop = threading.Event()

            def load():
                c = client(p)
                while not stop.is_set():
                    c.request("GET", "/x")  # a reset or a dropped connection raises: the test fails
                    r = c.getresponse()
                    body = r.read()
                    if r.status != 200:
                        statuses.append((r.status, body))
                    done[0] += 1
                c.close()

            with ThreadPoolExecutor(4) as pool:
                loads = [pool.submit(load) for _ in range(4)]
                running = lambda n: done[0] > n or any(f.done() for f in loads)
                wait_for(lambda: running(200), timeout=30, what="load running")
                with open(p.config_path, "w") as f:
                    f.write(cfg.replace("      routes: [{ match: { prefix: / }, cluster: a }]",
                                        "      routes:\n        - match: { path: /new }\n          direct_response: { status: 200, body: new }\n"
                                        "        - match: { prefix: / }\n          cluster: a"))
                p.signal(signal.SIGHUP)
                p.wait_stat("server.reload_success", lambda v: v == 1)
                before = done[0]
                wait_for(lambda: running(before + 200), timeout=30, what="load after the reload")
                stop.set()
                for f in loads:
                    f.result(30)
            assert statuses == []
            assert curl(f"http://{hp(p)}/new")[1] == b"new"


@pytest.mark.heavy
def test_ten_thousand_idle_keep_alive_connections_on_one_worker():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20000
    if hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    n = 10000
    with Origin() as o, proxy_for(o) as p:
        # One request first, so the pool's connection and the worker's tables exist.
        assert curl(f"http://{hp(p)}/size/10")[0] == 0
        base = p.rss_kib()
        clients = []
        try:
            for i in range(n):
                s = connect(p.addr())
                s.sendall(b"GET /size/10 HTTP/1.1\r\nHost: x\r\n\r\n")
                clients.append(s)
                if len(clients) % 20 == 0:  # a few at a time: the origin's backlog is small
                    for c in clients[-20:]:
                        assert read_response(c.makefile("rb"))[0] == 200
            p.wait_stat("http.main.downstream_cx_active", lambda v: v == n, timeout=60)
            p.wait_stat("http.main.downstream_rq_completed", lambda v: v == n + 1, timeout=60)
            per_conn = (p.rss_kib() - base) * 1024 / n
            print(f"\nmemory per idle keep-alive HTTP/1.1 connection: {per_conn:.0f} bytes (RSS delta over {n})")
            with open("/tmp/http-idle-conn-bytes.txt", "w") as f:
                f.write(f"{per_conn:.0f}\n")
            assert per_conn < 16384
        finally:
            for c in clients:
                c.close()


def test_websocket_through_the_proxy_with_real_client_and_server():
    # A real WebSocket server and client (the websockets package): after the 101 the proxy
    # relays frames both ways; several connections at once, each writing and reading
    # concurrently, repeated, then a clean close. The upgrade is counted and nothing stays open.
    from websockets.sync.client import connect as ws_connect
    from websockets.sync.server import serve

    def echo(ws):
        for msg in ws:
            ws.send(msg)

    with serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        with Proxy("http-proxy", args=["--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{port}", "--workers", "1",
                                       "--admin", "127.0.0.1:0", *IDLE]) as p:

            def run(n):
                with ws_connect(f"ws://{hp(p)}/chat/{n}", open_timeout=10, close_timeout=10) as ws:
                    got = []
                    reader = threading.Thread(target=lambda: got.extend(ws.recv(timeout=20) for _ in range(50)))
                    reader.start()
                    sent = [pattern(1000 + 997 * i, seed=n * 100 + i) for i in range(50)]
                    for m in sent:
                        ws.send(m)
                    reader.join(30)
                    assert got == sent, f"stream {n}: {len(got)} of {len(sent)} echoed right"

            concurrently(run, 4)
            assert p.stat("http.main.downstream_cx_upgrades_total") == 4
            wait_for(lambda: p.stat("http.main.downstream_cx_upgrades_active") == 0, what="tunnels closed")
        server.shutdown()


def unsolicited_101_upstream(c, server):
    c.recv(65536)
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nxx")


def test_an_upgrade_nobody_asked_for_is_a_502():
    with Server(unsolicited_101_upstream) as up, proxy_for(up) as p:
        s = connect(p.addr())
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        st, _, _ = read_response(s)
        assert st == 502
        s.close()


def test_chunked_request_with_trailers_reaches_the_origin_whole():
    # Review of issue 9: a request trailer was held for the router forever (504 at the timeout).
    with Origin() as o, proxy_for(o, args=["--timeout", "5s"]) as p:
        s = connect(p.addr())
        s.sendall(b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: ok\r\n\r\n")
        st, _, body = read_response(s)
        assert st == 200 and json.loads(body)["body_len"] == 3 and json.loads(body)["chunked"]
        s.close()


def trailer_pieces_upstream(c, server):
    """For each whole chunked request with its trailer on the connection, answers chunked with
    the last chunk, each trailer line and the final CRLF in separate reads at the proxy (each
    sent once the proxy has read what came before)."""
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = b""
    while True:
        while b"x-t: ok\r\n\r\n" not in data.lower():
            got = c.recv(65536)
            if not got:
                return
            data += got
        end = data.lower().index(b"x-t: ok\r\n\r\n") + len(b"x-t: ok\r\n\r\n")
        server.results.setdefault("requests", []).append(data[:end])
        data = data[end:]
        c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        for piece in (b"0\r\n", b"X-Sum: 1\r\n", b"X-More: 2\r\n", b"\r\n"):
            wait_read_by_peer(c)
            c.sendall(piece)


def test_trailers_split_across_reads_are_kept_both_ways():
    # Found under load: a trailer line read apart from the last chunk was dropped. Each piece
    # goes once the proxy has read the one before, so each is a read of its own both ways.
    with Server(trailer_pieces_upstream) as up, proxy_for(up) as p:
        for _ in range(3):
            s = connect(p.addr())
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"POST /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            for piece in (b"0\r\n", b"X-T: ok\r\n", b"\r\n"):
                wait_read_by_peer(s)
                s.sendall(piece)
            raw = b""
            # Until the last chunk and the empty line after the trailers (or the proxy closes).
            while not (b"\r\n0\r\n" in raw and raw.endswith(b"\r\n\r\n")):
                got = s.recv(65536)
                if not got:
                    break
                raw += got
            s.close()
            assert b"hello" in raw and b"x-sum: 1\r\n" in raw.lower() and b"x-more: 2\r\n" in raw.lower(), raw
        assert all(b"abc" in r and b"x-t: ok" in r.lower() for r in up.results["requests"])
        assert len(up.results["requests"]) == 3


def test_connections_opened_before_a_reload_use_the_new_routes():
    # Review of issue 9: an open keep-alive connection kept the old route table, so a reload
    # that renamed a cluster turned all its requests into 503s.
    with Origin("a") as a, Origin("b") as b:
        cfg = http_config("""      routes: [{ match: { prefix: / }, cluster: a }]""", {"a": a.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            c = client(p)
            c.request("GET", "/1")
            assert json.loads(c.getresponse().read())["origin"] == "a"
            with open(p.config_path, "w") as f:
                f.write(http_config("""      routes: [{ match: { prefix: / }, cluster: b }]""", {"b": b.endpoint}))
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_success", lambda v: v == 1)

            def answered_by_b():
                c.request("GET", "/2")
                r = c.getresponse()
                body = r.read()
                assert r.status == 200, (r.status, body)
                return json.loads(body)["origin"] == "b"
            wait_for(answered_by_b, what="the old connection routed by the new table")
            c.close()


def always_503_then_close(c, server):
    while True:
        d = c.recv(65536)
        if not d:
            return
        c.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")


def hang_upstream(c, server):
    c.recv(65536)
    server.results.setdefault("ev", threading.Event()).wait(20)


def test_a_retry_after_a_bodyless_503_keeps_the_route_timeout():
    # Review of issue 9: the first try's completion cleared the route deadline before the retry
    # was decided, so a retry to a host that hangs hung the client past the timeout.
    with Server(always_503_then_close) as bad, Server(hang_upstream) as hang:
        cfg = http_config("""      routes:
        - match: { prefix: / }
          cluster: c
          timeout: 1s
          retry_policy: { retry_on: 5xx, num_retries: 1 }""", {"c": f"{bad.endpoint}, {hang.endpoint}"})
        cfg = cfg.replace("    http_protocol_options:", "    lb_policy: round_robin\n    http_protocol_options:")
        try:
            with Proxy("http-proxy", config=cfg) as p:
                for _ in range(2):  # one of the two starts on the 503 host
                    rc, out, _ = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{hp(p)}/")
                    assert out in (b"504",), out
                assert p.stat("cluster.c.upstream_rq_timeout") == 2
        finally:
            hang.results.setdefault("ev", threading.Event()).set()


def test_http10_request_without_host_gets_one_upstream():
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        s.sendall(b"GET /h10 HTTP/1.0\r\n\r\n")
        st, _, body = read_response(s)
        assert st == 200 and json.loads(body)["headers"]["host"] == o.endpoint
        s.close()


def test_duplicate_x_forwarded_for_lines_cannot_spoof_the_client():
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\r\n")
        st, _, body = read_response(s)
        assert json.loads(body)["headers"]["x-forwarded-for"] == "6.6.6.6, 7.7.7.7, 127.0.0.1"
        s.close()


def test_per_try_timeout_retries_on_another_host():
    with Server(hang_upstream) as hang, Origin("ok") as ok:
        cfg = http_config("""      routes:
        - match: { prefix: / }
          cluster: c
          timeout: 10s
          retry_policy: { retry_on: 5xx, num_retries: 1, per_try_timeout: 300ms }""", {"c": f"{hang.endpoint}, {ok.endpoint}"})
        try:
            with Proxy("http-proxy", config=cfg) as p:
                for _ in range(2):  # one of the two starts on the host that hangs
                    rc, out, _ = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{hp(p)}/")
                    assert out == b"200"
                timeouts = p.stat("cluster.c.upstream_rq_per_try_timeout")
                assert timeouts >= 1 and p.stat("cluster.c.upstream_rq_retry") == timeouts
        finally:
            hang.results.setdefault("ev", threading.Event()).set()


def test_the_retry_budget_stops_a_retry_storm_when_every_host_fails():
    # Every host answers 503. With 3 retries allowed per request, 40 concurrent requests would
    # make 120 retries; the budget (20% of active requests, at least 3 in flight) refuses most,
    # and every client still gets its answer (the 503) at once.
    with Server(always_503_then_close) as a, Server(always_503_then_close) as b:
        cfg = http_config("""      routes:
        - match: { prefix: / }
          cluster: c
          retry_policy: { retry_on: 5xx, num_retries: 3, retry_back_off: { base_interval: 200ms, max_interval: 400ms } }""",
                          {"c": f"{a.endpoint}, {b.endpoint}"})
        with Proxy("http-proxy", config=cfg) as p:
            codes = []

            def one():
                codes.append(curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{hp(p)}/")[1])
            threads = [threading.Thread(target=one) for _ in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert codes == [b"503"] * 40
            assert p.stat("cluster.c.upstream_rq_retry_overflow") > 0
            assert p.stat("cluster.c.upstream_rq_retry") < 120


def start_then_die_upstream(c, server):
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000)
    c.shutdown(socket.SHUT_RDWR)


def test_no_retry_once_the_response_started():
    with Server(start_then_die_upstream) as up, proxy_for(up, args=["--retries", "2"]) as p:
        s = connect(p.addr())
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionError):
            read_response(s)
        s.close()
        assert p.stat("cluster.upstream.upstream_rq_retry") == 0
        assert up.connections == 1


def tunnel_roundtrip(addr, n, size=300000):
    """CONNECT through the proxy at `addr`, expect a 200, then write `size` bytes while reading
    them back (the far end is an echo) and check them."""
    s = connect(addr)
    s.sendall(b"CONNECT echo.internal:7 HTTP/1.1\r\nHost: echo.internal:7\r\n\r\n")
    f = s.makefile("rb")
    status = f.readline()
    assert status.startswith(b"HTTP/1.1 200"), (n, status)
    while f.readline() not in (b"\r\n", b""):
        pass
    data = pattern(size, seed=n)
    got = bytearray()

    def read():
        while len(got) < len(data):
            d = f.read1(65536)
            if not d:
                break
            got.extend(d)
    r = threading.Thread(target=read)
    r.start()
    s.sendall(data)
    r.join(30)
    assert bytes(got) == data, f"tunnel {n}: {len(got)} of {len(data)} bytes back"
    f.close()
    s.close()


def test_connect_is_terminated_into_a_tcp_tunnel_to_an_echo():
    # CONNECT termination: the proxy connects to a host of the route's cluster (plain TCP),
    # answers 200, and relays. Several tunnels at once, each writing and reading concurrently.
    from harness import echo_handler
    with Server(echo_handler) as echo, Origin("web") as web:
        cfg = http_config("""      routes:
        - match: { connect_matcher: {} }
          cluster: echo
        - match: { prefix: / }
          cluster: web""", {"echo": echo.endpoint, "web": web.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            concurrently(lambda n: tunnel_roundtrip(p.addr(), n), 4)
            assert p.stat("http.main.downstream_cx_upgrades_total") == 4
            # The same listener still routes ordinary requests; CONNECT is matched only by its route.
            rc, out, _ = curl(f"http://{hp(p)}/x")
            assert json.loads(out)["origin"] == "web"
            wait_for(lambda: p.stat("http.main.downstream_cx_upgrades_active") == 0, what="tunnels closed")


def test_connect_is_forwarded_to_an_upstream_proxy_tier():
    # connect_mode: forward: the edge sends the CONNECT itself to its cluster (here a second
    # http-proxy that terminates it) and relays after that proxy's 200. Tunnels run at once,
    # curl's proxy tunnel (-p -x) works through both tiers, and a CONNECT the inner tier
    # refuses reaches the client as that refusal, with the connection closed.
    from harness import echo_handler
    with Server(echo_handler) as echo, Origin("web") as web:
        inner_cfg = http_config("""      virtual_hosts:
        - name: tunnels
          domains: ["echo.internal:7"]
          routes: [{ match: { connect_matcher: {} }, cluster: echo }]
        - name: web
          domains: ["web.internal:80"]
          routes: [{ match: { connect_matcher: {} }, cluster: web }]""", {"echo": echo.endpoint, "web": web.endpoint})
        with Proxy("http-proxy", config=inner_cfg) as inner:
            edge_cfg = http_config("""      routes:
        - match: { connect_matcher: {} }
          cluster: inner
          connect_mode: forward""", {"inner": hp(inner)})
            with Proxy("http-proxy", config=edge_cfg) as edge:
                for _ in range(2):
                    concurrently(lambda n: tunnel_roundtrip(edge.addr(), n), 4)
                rc, out, err = curl("-p", "-x", f"http://{hp(edge)}", "http://web.internal:80/size/200000")
                assert rc == 0 and out == pattern(200000), err
                # No virtual host for this authority at the inner tier: its 404 comes back.
                s = connect(edge.addr())
                s.sendall(b"CONNECT nowhere.internal:9 HTTP/1.1\r\nHost: nowhere.internal:9\r\n\r\nearly bytes")
                st, h, _ = read_response(s)
                assert st == 404 and h.get("connection") == "close"
                assert s.recv(100) == b""  # closed: the early bytes were not read as a request
                s.close()
                assert edge.stat("http.main.downstream_cx_upgrades_total") == 9
                assert inner.stat("http.main.downstream_cx_upgrades_total") == 9
                wait_for(lambda: edge.stat("http.main.downstream_cx_upgrades_active") == 0, what="edge tunnels closed")
                wait_for(lambda: inner.stat("http.main.downstream_cx_upgrades_active") == 0, what="inner tunnels closed")


def test_connect_without_a_connect_route_is_a_404():
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        st, _, _ = read_response(s)
        assert st == 404 and o.paths() == []
        s.close()


def ws_echo_server():
    from websockets.sync.server import serve

    def echo(ws):
        for msg in ws:
            ws.send(msg)
    server = serve(echo, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_tunnels_outlive_route_and_idle_deadlines_and_keep_relaying_through_a_drain():
    # Review of issue 9: with stream_idle_timeout 0 the route timeout (1s here) killed busy
    # tunnels, and a graceful drain cut them at once (leaving gauges up). A tunnel is a relay:
    # only stream_idle_timeout or drain_timeout ends it.
    from websockets.sync.client import connect as ws_connect
    server = ws_echo_server()
    try:
        port = server.socket.getsockname()[1]
        cfg = http_config("""      stream_idle_timeout: 0s
      idle_timeout: 1s
      routes: [{ match: { prefix: / }, cluster: ws, timeout: 1s }]""", {"ws": f"127.0.0.1:{port}"})
        cfg = cfg.replace("workers: 1", "workers: 1\ndrain_timeout: 20s")
        with Proxy("http-proxy", config=cfg) as p:
            p.allow_open_at_end("the proxy exits during the test")
            with ws_connect(f"ws://{hp(p)}/t", open_timeout=10) as ws:
                start = __import__("time").monotonic()
                while __import__("time").monotonic() - start < 2.5:
                    ws.send("ping")
                    assert ws.recv(timeout=5) == "ping"
                assert p.post("/drain_listeners?graceful")[0] == 200
                for _ in range(5):
                    ws.send("still")
                    assert ws.recv(timeout=5) == "still"
            wait_for(lambda: p.stat("http.main.downstream_cx_upgrades_active") == 0, what="the tunnel to close")
            assert p.stat("cluster.ws.upstream_cx_active") == 0
            assert p.stat("http.main.downstream_rq_idle_timeout") == 0
    finally:
        server.shutdown()


def test_connect_with_a_body_or_a_bad_port_is_refused():
    from harness import echo_handler
    with Server(echo_handler) as echo:
        cfg = http_config("""      routes: [{ match: { connect_matcher: {} }, cluster: echo }]""", {"echo": echo.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            for raw, counter in [(b"CONNECT e:7 HTTP/1.1\r\nHost: e:7\r\nContent-Length: 5\r\n\r\nabcde", "connect_with_body"),
                                 (b"CONNECT e:7 HTTP/1.1\r\nHost: e:7\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "connect_with_body"),
                                 (b"CONNECT e:99999 HTTP/1.1\r\nHost: e:99999\r\n\r\n", "invalid_target"),
                                 (b"CONNECT e: HTTP/1.1\r\nHost: e\r\n\r\n", "invalid_target")]:
                s = connect(p.addr())
                s.sendall(raw)
                assert read_response(s)[0] == 400, raw
                s.close()
                assert p.stat(f"http.main.http1.{counter}") >= 1
            assert echo.connections == 0


def test_only_websocket_upgrades_are_forwarded():
    with Origin() as o, proxy_for(o) as p:
        s = connect(p.addr())
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        st, _, body = read_response(s)
        h = json.loads(body)["headers"]
        assert st == 200 and "upgrade" not in h and "http2-settings" not in h
        s.close()


@pytest.mark.parametrize("use_remote,hops,xff,client", [
    ("true", 0, "9.9.9.9", "127.0.0.1"),          # the edge default: the socket peer
    ("true", 1, "9.9.9.9", "9.9.9.9"),            # one trusted proxy in front: the entry before it
    ("true", 3, "9.9.9.9", "127.0.0.1"),          # list too short: the peer
    ("false", 0, "1.1.1.1, 2.2.2.2", "2.2.2.2"),  # behind a trusted tier: rightmost entry
    ("false", 1, "1.1.1.1, 2.2.2.2", "1.1.1.1"),
])
def test_xff_num_trusted_hops_picks_the_client_address(use_remote, hops, xff, client):
    with Origin() as o:
        cfg = http_config(f"""      use_remote_address: {use_remote}
      xff_num_trusted_hops: {hops}
      http_filters:
        - name: header_mutation
          request_headers_to_add: [{{ header: {{ key: x-client, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }} }}]
      routes: [{{ match: {{ prefix: / }}, cluster: web }}]""", {"web": o.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            rc, out, _ = curl("-H", f"X-Forwarded-For: {xff}", f"http://{hp(p)}/")
            assert json.loads(out)["headers"]["x-client"] == client


def test_per_route_filter_overrides_disable_or_replace_listener_filters():
    """`typed_per_filter_config`: a route that disables health_check passes /healthz to the
    origin; a virtual host that disables header_mutation sends requests without its headers
    (its routes inherit that, merged with their own entries);
    a route with its own header_mutation settings uses those instead of the listener's."""
    with Origin() as o:
        cfg = http_config("""      http_filters:
        - { name: health_check, path: /healthz }
        - name: header_mutation
          request_headers_to_add: [{ header: { key: x-listener, value: "yes" } }]
          response_headers_to_add: [{ header: { key: x-listener-resp, value: "yes" } }]
      virtual_hosts:
        - name: plain
          domains: [plain.example]
          typed_per_filter_config: { header_mutation: { disabled: true } }
          routes:
            - match: { path: /healthz }
              cluster: web
              typed_per_filter_config: { health_check: { disabled: true } }
            - { match: { prefix: / }, cluster: web }
        - name: main
          domains: ["*"]
          routes:
            - match: { prefix: /own/ }
              cluster: web
              typed_per_filter_config:
                header_mutation: { request_headers_to_add: [{ header: { key: x-route, value: "%REQ(:PATH)%" } }] }
            - { match: { prefix: / }, cluster: web }""", {"web": o.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            def get(path, host=None):
                c = client(p)
                c.request("GET", path, headers={"Host": host} if host else {})
                r = c.getresponse()
                body = r.read()
                c.close()
                return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body

            for i in range(3):  # the same connection manager serves routes with and without overrides
                st, h, _ = get("/healthz")
                assert st == 200 and o.paths().count("/healthz") == i  # answered by the filter
                st, h, body = get("/x")
                seen = json.loads(body)["headers"]
                assert seen.get("x-listener") == "yes" and "x-route" not in seen and h.get("x-listener-resp") == "yes"
                st, h, body = get("/x", host="plain.example")
                seen = json.loads(body)["headers"]
                assert "x-listener" not in seen and "x-listener-resp" not in h
                st, h, body = get("/own/a")
                seen = json.loads(body)["headers"]
                assert seen.get("x-route") == "/own/a" and "x-listener" not in seen and "x-listener-resp" not in h
                # The plain host's /healthz route disables the health check: the origin answers.
                st, h, body = get("/healthz", host="plain.example")
                assert st == 200 and json.loads(body)["path"] == "/healthz"
            assert o.paths().count("/healthz") == 3
            dump = json.loads(p.get("/config_dump")[1])
            assert "typed_per_filter_config" in json.dumps(dump)


def held_origin(c, server):
    """Holds each answer until an event, each wait with a deadline (then it answers anyway, and
    the test's asserts fail): a request for /quick until the proxy closes the connection (its
    idle timeout gave up on it), which sets `results["quick_gave_up"]`; any other request
    (after setting `results["other_held"]`) until that has happened."""
    c.settimeout(30)
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            got = c.recv(65536)
            if not got:
                return
            data += got
        head, data = data.split(b"\r\n\r\n", 1)
        if head.split(b" ", 2)[1].startswith(b"/quick"):
            c.settimeout(10)
            try:
                closed = c.recv(65536) == b""
            except TimeoutError:
                closed = False
            c.settimeout(30)
            if closed:
                server.results["quick_gave_up"].set()
                return
        else:
            server.results["other_held"].set()
            server.results["quick_gave_up"].wait(10)
        try:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return


def test_a_route_idle_timeout_replaces_the_stream_idle_timeout():
    # Review of issue 9: the route's idle_timeout was parsed and dumped but never applied.
    # /other goes first and its answer is held until /quick's 200ms idle timeout has fired, so
    # it stays silent longer than that and must not time out (it keeps the 20s one).
    with Server(held_origin) as up:
        up.results.update(other_held=threading.Event(), quick_gave_up=threading.Event())
        cfg = http_config("""      stream_idle_timeout: 20s
      routes:
        - { match: { prefix: /quick }, cluster: slow, idle_timeout: 200ms }
        - { match: { prefix: / }, cluster: slow }""", {"slow": up.endpoint})
        with Proxy("http-proxy", config=cfg) as p:
            other = []
            t = threading.Thread(target=lambda: other.append(curl(f"http://{hp(p)}/other")))
            t.start()
            assert up.results["other_held"].wait(10)
            rc, out, _ = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{hp(p)}/quick")
            assert out == b"408"
            assert up.results["quick_gave_up"].wait(10)  # the proxy closed the upstream connection
            t.join(30)
            assert other and other[0][1] == b"ok", other
            assert p.stat("http.main.downstream_rq_idle_timeout") == 1
