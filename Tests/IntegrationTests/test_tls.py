"""tcp-proxy's TLS termination: a listener's (or filter chain's) `tls` block decrypts with
OpenSSL and relays plain bytes to the cluster. Clients are `openssl s_client` and Python's ssl
module verifying the proxy's certificate."""

import hashlib
import json
import os
import random
import socket
import ssl
import subprocess
import threading

import pytest

from harness import Proxy, Server, echo_handler, read_line, recv_exact, tcp_config, validate, wait_for
from tls_peers import TlsServer, cert, s_client


def tls_config(upstream, tls="", extra=""):
    c, k = cert("api.example.com")
    return tcp_config([upstream], workers=2, listener=f'    tls: {{ cert: "{c}", key: "{k}" {tls} }}\n{extra}')


def client(addr, name="api.example.com", **kw):
    ctx = ssl.create_default_context(cafile=cert(name)[0])
    for k, v in kw.items():
        setattr(ctx, k, v)
    s = socket.create_connection(addr, timeout=20)
    return ctx.wrap_socket(s, server_hostname=name, suppress_ragged_eofs=False)


def echo_rounds(sock, rounds, seed):
    """Sends `rounds` random 64 KiB chunks through an echo, each read back before the next;
    asserts every byte came back in order."""
    rng = random.Random(seed)
    sent, got = hashlib.sha256(), hashlib.sha256()
    for _ in range(rounds):
        chunk = rng.randbytes(65536)
        sent.update(chunk)
        sock.sendall(chunk)
        n = 0
        while n < len(chunk):
            d = sock.recv(65536)
            assert d, "EOF in the middle of the echo"
            got.update(d)
            n += len(d)
    assert sent.digest() == got.digest()


def test_terminates_tls_and_relays_bytes_exactly_both_ways():
    with Server(echo_handler) as up, Proxy("tcp-proxy", config=tls_config(up.endpoint)) as p:
        t = client(p.addr())
        assert t.version() in ("TLSv1.3", "TLSv1.2")
        echo_rounds(t, 128, seed=5)  # 8 MiB
        # close_notify from us ends the upstream's input; its close comes back as close_notify.
        t.unwrap()
        t.close()
        p.wait_stat("listener.main.ssl.handshake", lambda v: v == 1)
        assert p.stat("listener.main.ssl.connection_error") == 0
        assert p.stat("tcp.main.downstream_cx_rx_bytes_total") == 8 << 20


def test_s_client_verifies_and_negotiates_alpn():
    with Server(echo_handler) as up, Proxy("tcp-proxy", config=tls_config(up.endpoint, tls=', alpn: [h2, "http/1.1"]')) as p:
        c = cert("api.example.com")[0]
        r = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % p.addr(), "-servername", "api.example.com",
                            "-CAfile", c, "-verify_return_error", "-verify_hostname", "api.example.com",
                            "-alpn", "spdy/3,http/1.1,h2"], input=b"ping\n", capture_output=True, timeout=20)
        out = r.stdout.decode(errors="replace")
        assert "Verify return code: 0 (ok)" in out, out + r.stderr.decode()
        assert "ALPN protocol: h2" in out  # our preference order wins
        # A client offering none of ours still connects, without ALPN.
        t = client(p.addr())
        assert t.selected_alpn_protocol() is None
        t.close()


def test_server_speaks_first_behind_tls():
    """The upstream's banner reaches the proxy before the client finished its handshake: the
    TLS write waits for the handshake, then goes out."""
    def banner(c, server):
        c.sendall(b"220 ready\r\n")
        echo_handler(c, server)
    with Server(banner) as up, Proxy("tcp-proxy", config=tls_config(up.endpoint)) as p:
        for _ in range(5):
            t = client(p.addr())
            assert read_line(t) == b"220 ready\r\n"
            t.sendall(b"EHLO x\r\n")
            assert read_line(t) == b"EHLO x\r\n"
            t.close()


def test_upstream_close_is_a_clean_tls_close():
    def bye(c, server):
        c.sendall(b"bye\n")
    with Server(bye) as up, Proxy("tcp-proxy", config=tls_config(up.endpoint)) as p:
        t = client(p.addr())
        assert read_line(t) == b"bye\n"
        assert t.recv(10) == b""  # close_notify: a ragged EOF would raise SSLEOFError here
        t.close()


def test_handshake_failures_are_counted_and_other_clients_unaffected():
    with Server(echo_handler) as up, Proxy("tcp-proxy", config=tls_config(up.endpoint, tls=", min_version: TLSv1.3")) as p:
        s = socket.create_connection(p.addr(), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain text to a TLS listener
        try:
            assert s.recv(100)[:1] in (b"", b"\x15")  # closed, or a TLS alert first
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset
        s.close()
        r = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % p.addr(), "-tls1_2"],
                           input=b"", capture_output=True, timeout=20)
        assert r.returncode != 0  # TLS 1.2 refused by min_version
        p.wait_stat("listener.main.ssl.connection_error", lambda v: v == 2)
        assert up.connections == 0  # no handshake, no upstream connection
        t = client(p.addr())
        t.sendall(b"still fine\n")
        assert read_line(t) == b"still fine\n"
        t.close()


def test_each_chain_terminates_with_its_own_certificate():
    api, web = cert("api.example.com"), cert("web.example.com")
    with Server(echo_handler) as echo, TlsServer("other.example.org") as other:
        cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: main
    address: 127.0.0.1:0
    filter_chains:
      - name: api
        match: {{ server_names: [api.example.com] }}
        tls: {{ cert: "{api[0]}", key: "{api[1]}" }}
        tcp: {{ cluster: echo }}
      - name: web
        match: {{ server_names: ["*.example.com"] }}
        tls: {{ cert: "{web[0]}", key: "{web[1]}" }}
        tcp: {{ cluster: echo }}
      - name: passthrough
        tcp: {{ cluster: other }}
clusters:
  - name: echo
    endpoints: [ "{echo.endpoint}" ]
  - name: other
    endpoints: [ "{other.endpoint}" ]
"""
        with Proxy("tcp-proxy", config=cfg) as p:
            for name, trust in (("api.example.com", "api.example.com"), ("web.example.com", "web.example.com")):
                t = client(p.addr(), name=trust) if name == trust else None
                t.sendall(name.encode() + b"\n")
                assert read_line(t) == name.encode() + b"\n"
                t.close()
            # No chain terminates other names' TLS: the backend does, with its own certificate.
            rc, out, err = s_client(p.addr(), "other.example.org", "other.example.org")
            assert rc == 0 and out.startswith("other.example.org"), err
            assert p.stat("listener.main.ssl.handshake") == 2


def test_tls_config_errors_name_the_key(tmp_path):
    c, k = cert("api.example.com")
    _, wrong_key = cert("web.example.com")
    base = tls_config("127.0.0.1:1")
    cases = [
        (base.replace(c, "/nonexistent.pem", 1), 'listeners[0].tls.cert: cannot read "/nonexistent.pem"'),
        (base.replace(k, wrong_key), "listeners[0].tls: the private key does not match the certificate"),
        (base.replace(f'key: "{k}"', f'key: "{k}", min_version: TLSv1.1'), 'listeners[0].tls.min_version: "TLSv1.1" is not one of'),
    ]
    bad_pem = tmp_path / "bad.pem"
    bad_pem.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cases.append((base.replace(c, str(bad_pem)), "listeners[0].tls: cannot load the certificate chain"))
    for text, expected in cases:
        r = validate(text)
        assert r.returncode == 1 and expected in r.stderr, r.stderr
    udp = f"""
listeners:
  - name: dns
    address: 127.0.0.1:0
    tls: {{ cert: "{c}", key: "{k}" }}
    udp: {{ cluster: c }}
clusters:
  - name: c
    endpoints: [ "127.0.0.1:53" ]
"""
    r = validate(udp, binary="udp-proxy")
    assert r.returncode == 1 and "listeners[0].tls: udp-proxy listens on UDP" in r.stderr, r.stderr


def test_flags_alone_terminate_tls():
    c, k = cert("api.example.com")
    with Server(echo_handler) as up, Proxy("tcp-proxy", args=["--listen", "127.0.0.1:0", "--upstream", up.endpoint,
                                                              "--tls-cert", c, "--tls-key", k]) as p:
        t = client(p.addr())
        t.sendall(b"one line\n")
        assert read_line(t) == b"one line\n"
        t.close()


def origin_config(upstream, tls):
    return tcp_config([upstream], cluster=f"    tls: {tls}")


def test_upstream_tls_verifies_the_host_and_sends_sni():
    with TlsServer("api.example.com") as up:
        ca = cert("api.example.com")[0]
        with Proxy("tcp-proxy", config=origin_config(up.endpoint, f'{{ sni: api.example.com, ca: "{ca}" }}')) as p:
            c = socket.create_connection(p.addr(), timeout=10)
            assert read_line(c) == b"api.example.com sni=api.example.com\n"
            c.close()
            p.wait_stat("cluster.backend.ssl.handshake", lambda v: v == 1)
        # The host's certificate does not chain to the configured CA: the handshake fails.
        wrong = cert("web.example.com")[0]
        with Proxy("tcp-proxy", config=origin_config(up.endpoint, f'{{ sni: api.example.com, ca: "{wrong}" }}')) as p:
            c = socket.create_connection(p.addr(), timeout=10)
            assert c.recv(100) == b""
            c.close()
            p.wait_stat("cluster.backend.ssl.connection_error", lambda v: v == 1)
            assert p.stat("cluster.backend.ssl.handshake") == 0
            # As Envoy counts it: a handshake that fails is a connect that failed.
            assert p.stat("cluster.backend.upstream_cx_connect_fail") == 1
        # Or names another host.
        with Proxy("tcp-proxy", config=origin_config(up.endpoint, f'{{ sni: other.example.com, ca: "{ca}" }}')) as p:
            c = socket.create_connection(p.addr(), timeout=10)
            assert c.recv(100) == b""
            c.close()
            p.wait_stat("cluster.backend.ssl.connection_error", lambda v: v == 1)
        # verify: false trusts anything (for lab setups only).
        with Proxy("tcp-proxy", config=origin_config(up.endpoint, "{ verify: false }")) as p:
            c = socket.create_connection(p.addr(), timeout=10)
            assert read_line(c) == b"api.example.com sni=None\n"
            c.close()


def test_two_tiers_tunnel_plain_clients_over_tls():
    """client ─plain─► edge tcp-proxy ─TLS─► sidecar tcp-proxy (terminates) ─plain─► echo,
    with the PROXY header in clear ahead of the TLS, and 16 MiB each way intact."""
    c, k = cert("api.example.com")
    with Server(echo_handler) as up:
        sidecar_cfg = tls_config(up.endpoint, extra="    proxy_protocol: accept")
        with Proxy("tcp-proxy", config=sidecar_cfg) as sidecar:
            host, port = sidecar.addr()
            edge_cfg = origin_config(f"{host}:{port}", f'{{ sni: api.example.com, ca: "{c}" }}') + "    send_proxy_protocol: v1\n"
            with Proxy("tcp-proxy", config=edge_cfg) as edge:
                s = socket.create_connection(edge.addr(), timeout=30)
                echo_rounds(s, 256, seed=9)  # 16 MiB
                s.shutdown(socket.SHUT_WR)
                assert s.recv(10) == b""  # the FIN went through both tiers and came back
                s.close()
                assert sidecar.stat("listener.main.proxy_proto.v1.found") == 1
                assert sidecar.stat("listener.main.ssl.handshake") == 1
                assert edge.stat("cluster.backend.ssl.handshake") == 1


@pytest.mark.heavy
def test_1000_idle_tls_connections_one_worker():
    """Memory per idle TLS-terminated connection (RSS growth over 1,000), recorded in
    docs/tcp-proxy.md; each connection still relays afterwards."""
    n = 1000
    held = []

    def hold(c, server):
        held.append(c)
        echo_handler(c, server)
    threading.stack_size(64 * 1024)
    try:
        with Server(hold, backlog=2048) as up, Proxy("tcp-proxy", config=tls_config(up.endpoint).replace("workers: 2", "workers: 1")) as p:
            base = p.rss_kib()
            clients = [client(p.addr()) for _ in range(n)]
            p.wait_stat("cluster.backend.upstream_cx_active", lambda v: v == n, timeout=60)
            p.wait_stat("listener.main.ssl.handshake", lambda v: v == n, timeout=60)
            per_conn = (p.rss_kib() - base) * 1024 / n
            print(f"\nmemory per idle TLS-terminated connection: {per_conn:.0f} bytes (RSS delta over {n})")
            for t in clients[:: n // 20]:
                t.sendall(b"still here\n")
                assert read_line(t) == b"still here\n"
            for t in clients:
                t.close()
            p.wait_stat("listener.main.downstream_cx_active", lambda v: v == 0, timeout=60)
    finally:
        threading.stack_size(0)


def test_access_log_shows_the_tls_version_and_server_name():
    log = '    access_log: [ { path: /dev/stdout, format: "sni=%REQUESTED_SERVER_NAME% tls=%DOWNSTREAM_TLS_VERSION% %BYTES_RECEIVED%\\n" } ]'
    with Server(echo_handler) as up, Proxy("tcp-proxy", config=tls_config(up.endpoint, extra=log)) as p:
        t = client(p.addr())
        t.sendall(b"12345\n")
        assert read_line(t) == b"12345\n"
        version = t.version()
        t.close()
        wait_for(lambda: f"sni=api.example.com tls={version} 6" in p.stdout(), what="the log line")


def test_a_client_too_slow_to_handshake_is_closed_without_an_upstream_connection():
    with Server(echo_handler) as up, Proxy("tcp-proxy", config=tls_config(up.endpoint, tls=", handshake_timeout: 300ms")) as p:
        silent = socket.create_connection(p.addr(), timeout=10)
        partial = socket.create_connection(p.addr(), timeout=10)
        partial.sendall(client_hello_prefix())
        for s in (silent, partial):
            try:
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
            s.close()
        assert p.stat("listener.main.ssl.handshake_timeout") == 2
        assert up.connections == 0 and p.stat("cluster.backend.upstream_cx_total") == 0
        t = client(p.addr())  # a prompt client is served
        t.sendall(b"quick\n")
        assert read_line(t) == b"quick\n"
        t.close()


def client_hello_prefix():
    """The first 40 bytes of a real ClientHello: a handshake that never completes."""
    ctx = ssl.create_default_context()
    out, inc = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="api.example.com")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()[:40]


def test_a_failed_upstream_handshake_retries_on_another_host_and_the_connect_timeout_covers_it():
    ca = cert("api.example.com")[0]

    def silent(c, server):
        while c.recv(4096):
            pass
    with TlsServer("api.example.com") as good, TlsServer("web.example.com") as wrong, Server(silent) as quiet:
        cluster = f"""    tls: {{ sni: api.example.com, ca: "{ca}" }}
    connect_timeout: 300ms"""
        cfg = tcp_config([wrong.endpoint, quiet.endpoint, good.endpoint], tcp=", max_connect_attempts: 3", cluster=cluster)
        with Proxy("tcp-proxy", config=cfg) as p:
            for _ in range(3):  # whichever host round robin tries first, the good one answers
                c = socket.create_connection(p.addr(), timeout=10)
                assert read_line(c) == b"api.example.com sni=api.example.com\n"
                c.close()
            assert p.stat("cluster.backend.ssl.connection_error") >= 1      # the wrong certificate
            assert p.stat("cluster.backend.upstream_cx_connect_timeout") >= 1  # the silent host
            assert p.stat("cluster.backend.upstream_rq_retry") >= 2


def test_certs_endpoint_and_the_expiry_gauge():
    api = cert("api.example.com")[0]
    with Server(echo_handler) as up:
        cfg = tls_config(up.endpoint).replace("    endpoints:", f'    tls: {{ sni: api.example.com, ca: "{api}" }}\n    endpoints:')
        with Proxy("tcp-proxy", config=cfg) as p:
            doc = json.loads(p.get("/certs")[1])
            listener = [c for c in doc["certificates"] if "listener" in c][0]
            chain = listener["cert_chain"][0]
            assert listener["listener"] == "main" and chain["path"] == cert("api.example.com")[0]
            assert chain["subject_alt_names"] == [{"dns": "api.example.com"}]
            assert "CN=api.example.com" in chain["subject"] and chain["serial_number"]
            assert chain["days_until_expiration"] in (1, 2)  # made with -days 2
            assert chain["expiration_time"].endswith("Z")
            cluster = [c for c in doc["certificates"] if "cluster" in c][0]
            assert cluster == {"cluster": "backend", "ca_cert": [{"path": api}], "verify": True}
            p.wait_stat("server.days_until_first_cert_expiring", lambda v: v in (1, 2))
        # No certificate, no gauge (a dashboard alerting on it must not fire for plain proxies).
        with Proxy("tcp-proxy", config=tcp_config([up.endpoint])) as p:
            assert "server.days_until_first_cert_expiring" not in p.stats()
            assert json.loads(p.get("/certs")[1]) == {"certificates": []}


def test_auto_sni_sends_and_verifies_the_clients_server_name():
    c, k = cert("api.example.com")
    with TlsServer("api.example.com") as up:
        cfg = tcp_config([up.endpoint], listener=f'    tls: {{ cert: "{c}", key: "{k}" }}',
                         cluster=f'    tls: {{ auto_sni: true, ca: "{c}" }}')
        with Proxy("tcp-proxy", config=cfg) as p:
            t = client(p.addr())
            assert read_line(t) == b"api.example.com sni=api.example.com\n"
            t.close()
            # Another name goes upstream as asked, and the host's certificate is not for it.
            lax = ssl.create_default_context()
            lax.check_hostname = False
            lax.verify_mode = ssl.CERT_NONE
            t = lax.wrap_socket(socket.create_connection(p.addr(), timeout=10), server_hostname="other.example.com")
            assert t.recv(100) == b""
            t.close()
            p.wait_stat("cluster.backend.upstream_cx_connect_fail", lambda v: v == 1)


def test_connections_to_hosts_resume_the_tls_session():
    ca = cert("api.example.com")[0]
    with TlsServer("api.example.com") as up:
        with Proxy("tcp-proxy", config=origin_config(up.endpoint, f'{{ sni: api.example.com, ca: "{ca}" }}')) as p:
            for _ in range(4):
                c = socket.create_connection(p.addr(), timeout=10)
                assert read_line(c) == b"api.example.com sni=api.example.com\n"
                c.close()
            p.wait_stat("cluster.backend.ssl.handshake", lambda v: v == 4)
            # The first connection takes the host's ticket; the next ones offer it.
            assert p.stat("cluster.backend.ssl.session_reused") >= 2


def _hello_offers(hello):
    """(SNI, whether the ClientHello offers a session: a TLS 1.3 pre_shared_key or a non-empty
    session ticket) from a raw ClientHello record."""
    i = 5 + 4 + 2 + 32  # record header, handshake header, version, random
    i += 1 + hello[i]  # session id
    i += 2 + int.from_bytes(hello[i:i + 2], "big")  # cipher suites
    i += 1 + hello[i]  # compression
    end = i + 2 + int.from_bytes(hello[i:i + 2], "big")
    i += 2
    sni, offers = None, False
    while i + 4 <= end:
        t, n = int.from_bytes(hello[i:i + 2], "big"), int.from_bytes(hello[i + 2:i + 4], "big")
        body = hello[i + 4:i + 4 + n]
        if t == 0:
            sni = body[5:].decode()
        elif t == 41 or (t == 35 and n > 0):
            offers = True
        i += 4 + n
    return sni, offers


def test_session_tickets_are_kept_per_server_name():
    """Fault 7 of issue 8: with auto_sni the server name changes per connection; a ticket one
    name got must never be offered to another (one slot per cluster did that)."""
    import threading
    c, k = cert("api.example.com")
    seen = []

    with TlsServer("api.example.com") as origin:
        def tap(conn, server):
            hdr = recv_exact(conn, 5)
            hello = hdr + recv_exact(conn, int.from_bytes(hdr[3:5], "big"))
            seen.append(_hello_offers(hello))
            up = socket.create_connection(origin.addr, timeout=10)
            up.sendall(hello)

            def back():
                try:
                    while d := up.recv(65536):
                        conn.sendall(d)
                except OSError:
                    pass
                finally:
                    try:
                        conn.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
            t = threading.Thread(target=back, daemon=True)
            t.start()
            try:
                while d := conn.recv(65536):
                    up.sendall(d)
            except OSError:
                pass
            t.join(10)
            up.close()

        with Server(tap) as front:
            cfg = tcp_config([front.endpoint], listener=f'    tls: {{ cert: "{c}", key: "{k}" }}',
                             cluster="    tls: { auto_sni: true, verify: false }")
            with Proxy("tcp-proxy", config=cfg) as p:
                lax = ssl.create_default_context()
                lax.check_hostname = False
                lax.verify_mode = ssl.CERT_NONE
                for name in ["a.example.com", "a.example.com", "b.example.com", "b.example.com", "a.example.com"]:
                    t = lax.wrap_socket(socket.create_connection(p.addr(), timeout=10), server_hostname=name)
                    assert read_line(t) == f"api.example.com sni={name}\n".encode()
                    t.close()  # the host's ticket came before its line: the next connection may offer it
                assert [s for s, _ in seen] == ["a.example.com", "a.example.com", "b.example.com", "b.example.com", "a.example.com"]
                # First of each name: nothing to offer (a's ticket is not b's); then each resumes its own.
                assert [o for _, o in seen] == [False, True, False, True, True], (seen, p.stats())


def test_a_host_closing_without_close_notify_is_a_clean_end_and_keeps_its_session():
    """Many servers end TLS 1.3 with a bare FIN. Our BIO could not report EOF, so OpenSSL took
    the FIN for an error: a connection_error per connection, and the ticket the host had just
    given was marked not resumable (found by the review of issue 8)."""
    c, k = cert("api.example.com")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(c, k)

    def serve(conn, server):
        conn.settimeout(10)
        t = ctx.wrap_socket(conn, server_side=True)
        t.sendall(b"hello\n")
        t.close()  # FIN, no close_notify

    with Server(serve) as up:
        with Proxy("tcp-proxy", config=origin_config(up.endpoint, f'{{ sni: api.example.com, ca: "{c}" }}')) as p:
            for _ in range(4):
                s = socket.create_connection(p.addr(), timeout=10)
                assert read_line(s) == b"hello\n"
                assert s.recv(10) == b""  # the FIN arrives as a FIN
                s.close()
            p.wait_stat("cluster.backend.ssl.handshake", lambda v: v == 4)
            assert p.stat("cluster.backend.ssl.connection_error") == 0
            assert p.stat("cluster.backend.ssl.session_reused") >= 2


@pytest.mark.heavy
def test_tls_tunnel_echo_streams_read_and_write_at_once():
    """The TLS I/O mode of the concurrent echo test (issue 8): through two tiers, client-side
    TLS in the edge and server-side TLS in the sidecar, 8 streams of 16 MiB, 4 at a time,
    each written and read at once, half-closed only after the whole echo."""
    import concurrent.futures
    from test_tcp_relay import _echo_stream
    c, k = cert("api.example.com")
    size = 16 << 20
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=tls_config(up.endpoint)) as sidecar:
            host, port = sidecar.addr()
            edge_cfg = origin_config(f"{host}:{port}", f'{{ sni: api.example.com, ca: "{c}" }}').replace("workers: 1", "workers: 2")
            with Proxy("tcp-proxy", config=edge_cfg) as edge:
                with concurrent.futures.ThreadPoolExecutor(4) as ex:
                    counts = list(ex.map(lambda seed: _echo_stream(edge.addr(), seed, size), range(1, 9)))
                short = {i + 1: n for i, n in enumerate(counts) if n != size}
                assert not short, f"streams stalled (stream: bytes echoed of {size}): {short}"
                edge.wait_stat("cluster.backend.upstream_cx_active", lambda v: v == 0)
                assert edge.stat("cluster.backend.upstream_cx_tx_bytes_total") == 8 * size
                assert edge.stat("cluster.backend.ssl.connection_error") == 0
                assert sidecar.stat("listener.main.ssl.connection_error") == 0
