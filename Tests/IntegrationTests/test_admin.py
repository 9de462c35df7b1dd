"""Admin endpoint hardening (issue 8, fault 5): no cross-site mutations from a browser, a warning
when the admin endpoint is not on loopback, and drained listeners stay drained across SIGHUP."""

import json
import signal
import urllib.error
import urllib.parse
import urllib.request

import pytest

from harness import Proxy, Server, connect, echo_handler, port_refuses, recv_exact, tcp_config, wait_for


def post_with(p, path, headers):
    """POSTs like a browser would (extra headers); returns the status, error statuses included."""
    req = urllib.request.Request(p.admin + path, method="POST", data=b"", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def echo_once(addr):
    s = connect(addr)
    s.sendall(b"ping")
    got = recv_exact(s, 4)
    s.close()
    return got


def test_admin_refuses_cross_site_mutations():
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=tcp_config([up.endpoint])) as p:
            # What a page on another site makes a browser send.
            assert post_with(p, "/healthcheck/fail", {"Origin": "http://evil.example"}) == 403
            assert post_with(p, "/quitquitquit", {"Sec-Fetch-Site": "cross-site"}) == 403
            assert post_with(p, "/drain_listeners", {"Sec-Fetch-Site": "same-site"}) == 403
            assert post_with(p, "/logging?level=trace", {"Origin": "null"}) == 403
            # None of them took effect.
            assert p.proc.poll() is None
            assert p.get("/ready") == (200, "LIVE\n")
            assert echo_once(p.addr()) == b"ping"
            assert p.stat("http.admin.downstream_rq_cross_site_rejected") == 4
            # Reads stay open to anyone who can reach the port (a browser cannot read the reply
            # cross-site anyway), and tools that send neither header (curl) still mutate.
            req = urllib.request.Request(p.admin + "/server_info", headers={"Origin": "http://evil.example"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
            assert post_with(p, "/healthcheck/fail", {"Sec-Fetch-Site": "same-origin"}) == 200
            assert post_with(p, "/healthcheck/ok", {}) == 200
            assert p.stat("http.admin.downstream_rq_cross_site_rejected") == 4


def test_admin_warns_when_not_on_loopback():
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=tcp_config([up.endpoint])) as p:
            assert "admin endpoint is not on loopback" not in p.stderr()
        with Proxy("tcp-proxy", config=tcp_config([up.endpoint]), args=["--admin", ":0"]) as p:
            assert p.ready["admin"].startswith("0.0.0.0:")
            wait_for(lambda: "admin endpoint is not on loopback" in p.stderr(), timeout=10, what="the warning")


def test_drained_listeners_stay_drained_across_sighup():
    with Server(echo_handler) as up:
        cfg = tcp_config([up.endpoint])
        with Proxy("tcp-proxy", config=cfg) as p:
            addr = p.addr()
            assert echo_once(addr) == b"ping"
            # A keep-alive session open across the drain keeps relaying (a TCP relay's drain
            # hook has nothing to say); /ready tells a balancer in front to stop sending.
            held = connect(addr)
            assert p.get("/ready")[0] == 200
            assert p.post("/drain_listeners")[0] == 200
            wait_for(lambda: port_refuses(addr), what="listeners drained")
            with pytest.raises(urllib.error.HTTPError) as e:
                p.get("/ready")
            assert e.value.code == 503
            # The ready file says no listener is bound any more, before any reload.
            ready = wait_for(lambda: (r := p.reread_ready()) and r["listeners"] == {} and r, what="ready file after drain")
            assert ready["generation"] == 1
            held.sendall(b"still")
            assert recv_exact(held, 5) == b"still"
            held.close()
            # A reload (the same file, plus a new listener) keeps every listener stopped.
            with open(p.config_path, "w") as f:
                f.write(cfg.replace("clusters:", """  - name: second
    address: 127.0.0.1:0
    tcp: { cluster: backend }
clusters:""", 1))
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_success", lambda v: v == 1)
            assert p.get("/listeners") == (200, "")
            assert json.loads(p.get("/listeners?format=json")[1]) == {"listener_statuses": []}
            ready = wait_for(lambda: (r := p.reread_ready()) and r["generation"] == 2 and r, what="ready file rewritten")
            assert ready["listeners"] == {}
            assert port_refuses(addr)
            assert p.proc.poll() is None


def test_hostile_admin_queries_get_answers_not_crashes():
    # Review of issue 8: "/stats?=" trapped on an empty key/value split (SIGILL), and a
    # back-referencing filter froze the main thread for seconds (glibc ERE backtracks).
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=tcp_config([up.endpoint])) as p:
            for q in ["/stats?=", "/ready?=", "/stats?&=&", "/stats?a==b", "/stats?%", "/clusters?=&=", "/stats?filter="]:
                try:
                    code = p.get(q)[0]
                except urllib.error.HTTPError as e:
                    code = e.code
                assert code in (200, 400), q
            with pytest.raises(urllib.error.HTTPError) as e:
                p.get("/stats?filter=" + urllib.parse.quote("(.*)(.*)(.*)\\3\\2\\1zz"))
            assert e.value.code == 400
            with pytest.raises(urllib.error.HTTPError) as e:
                p.get("/stats?filter=" + "a" * 300)
            assert e.value.code == 400
            assert p.get("/stats?filter=" + urllib.parse.quote("^server\\.live$"))[1].strip() == "server.live: 1"
            assert p.proc.poll() is None
            assert echo_once(p.addr()) == b"ping"
