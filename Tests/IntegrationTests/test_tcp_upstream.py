"""Connect failures, retries, timeouts, circuit breakers, balancing (Must show 3)."""

import json
import socket
import time

from harness import Blackhole, Proxy, Server, connect, echo_handler, name_handler, recv_all, recv_exact, refused_endpoint, tcp_config, wait_for


def config(endpoints, attempts=1, connect_timeout="5s", extra_cluster="", extra_tcp="", lb="round_robin"):
    return tcp_config(endpoints, tcp=f", max_connect_attempts: {attempts} {extra_tcp}",
                      cluster=f"    lb_policy: {lb}\n    connect_timeout: {connect_timeout}\n{extra_cluster}")


def test_first_host_refuses_next_host_serves():
    with Server(name_handler("good")) as good:
        bad = refused_endpoint()
        with Proxy("tcp-proxy", config=config([bad, good.endpoint], attempts=2)) as p:
            for _ in range(6):  # every connection succeeds, whichever host round robin tries first
                s = connect(p.addr())
                assert recv_exact(s, 5) == b"good\n"
                s.sendall(b"ping")
                assert recv_exact(s, 4) == b"ping"
                s.close()
            s = p.stats()
            fails = s["cluster.backend.upstream_cx_connect_fail"]
            assert 1 <= fails <= 6
            assert s["cluster.backend.upstream_cx_connect_attempts_exceeded"] == 0
            assert s["cluster.backend.upstream_cx_total"] == 6 + fails
            _, clusters = p.get("/clusters")
            assert f"backend::{bad}::cx_connect_fail::{fails}" in clusters
            assert f"backend::{good.endpoint}::cx_total::6" in clusters


def test_all_hosts_down_closes_downstream_promptly():
    bad1, bad2 = refused_endpoint(), refused_endpoint()
    # Promptly: on the second refusal, not on a timer. The timers that could also close the
    # client (connect 5s, idle 1h, no duration cap) are counted and must stay at 0; the close
    # itself is awaited with a generous deadline, not timed.
    with Proxy("tcp-proxy", config=config([bad1, bad2], attempts=2)) as p:
        s = connect(p.addr())
        s.sendall(b"hello?")
        assert recv_all(s, timeout=30) == b""
        s.close()
        p.wait_stat("listener.main.downstream_cx_active", lambda v: v == 0)
        st = p.stats()
        assert st["cluster.backend.upstream_cx_connect_fail"] == 2
        assert st["cluster.backend.upstream_cx_connect_attempts_exceeded"] == 1
        assert st["cluster.backend.upstream_cx_active"] == 0
        assert st.get("cluster.backend.upstream_cx_connect_timeout", 0) == 0
        assert st.get("tcp.main.idle_timeout", 0) == 0


def test_connect_timeout_is_honoured():
    hole = Blackhole()
    try:
        with Proxy("tcp-proxy", config=config([hole.endpoint], connect_timeout="300ms")) as p:
            t0 = time.monotonic()
            s = connect(p.addr())
            # The kernel would keep retrying the SYN for about 2 minutes: a close within the
            # generous deadline, counted as a connect timeout, is the 300ms timer firing.
            assert recv_all(s, timeout=30) == b""
            took = time.monotonic() - t0
            assert took >= 0.25, f"closed after {took:.2f}s, before the connect timeout"  # a lower bound: load cannot break it
            p.wait_stat("cluster.backend.upstream_cx_connect_timeout", lambda v: v == 1)
            assert p.stat("cluster.backend.upstream_cx_connect_fail") == 1
            assert p.stat("tcp.main.idle_timeout") == 0
    finally:
        hole.close()


def test_connect_timeout_then_retry_on_next_host():
    hole = Blackhole()
    try:
        with Server(name_handler("alive")) as good:
            with Proxy("tcp-proxy", config=config([hole.endpoint, good.endpoint], attempts=2, connect_timeout="200ms")) as p:
                for _ in range(2):
                    s = connect(p.addr())
                    assert recv_exact(s, 6, timeout=10) == b"alive\n"
                    s.close()
                assert 1 <= p.stat("cluster.backend.upstream_cx_connect_timeout") <= 2
    finally:
        hole.close()


def test_circuit_breaker_overflow():
    with Server(echo_handler) as up:
        cfg = config([up.endpoint], extra_cluster="    circuit_breakers: { max_connections: 2 }")
        with Proxy("tcp-proxy", config=cfg) as p:
            a, b = connect(p.addr()), connect(p.addr())
            for s in (a, b):
                s.sendall(b"x")
                assert recv_exact(s, 1) == b"x"
            c = connect(p.addr())
            assert recv_all(c, timeout=5) == b""
            assert p.stat("cluster.backend.upstream_cx_overflow") == 1
            _, clusters = p.get("/clusters")
            assert "backend::default_priority::max_connections::2" in clusters
            assert "backend::default_priority::cx_open::2" in clusters
            a.close(); b.close(); c.close()


def test_max_connections_per_listener():
    with Server(echo_handler) as up:
        cfg = config([up.endpoint]).replace("    address: 127.0.0.1:0\n", "    address: 127.0.0.1:0\n    max_connections: 1\n", 1)
        with Proxy("tcp-proxy", config=cfg) as p:
            a = connect(p.addr())
            a.sendall(b"x")
            assert recv_exact(a, 1) == b"x"
            b = connect(p.addr())
            assert recv_all(b, timeout=5) == b""
            assert p.stat("listener.main.downstream_cx_overflow") == 1
            a.close()
            p.wait_stat("listener.main.downstream_cx_active", lambda v: v == 0)
            c = connect(p.addr())
            c.sendall(b"y")
            assert recv_exact(c, 1) == b"y"
            c.close()


def test_idle_timeout_closes_quiet_connections():
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=config([up.endpoint], extra_tcp=", idle_timeout: 300ms")) as p:
            s = connect(p.addr())
            s.sendall(b"a")
            assert recv_exact(s, 1) == b"a"
            t0 = time.monotonic()
            assert recv_all(s, timeout=10) == b""
            assert time.monotonic() - t0 >= 0.25
            assert p.stat("tcp.main.idle_timeout") == 1


def test_max_downstream_connection_duration():
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=config([up.endpoint], extra_tcp=", max_downstream_connection_duration: 400ms")) as p:
            s = connect(p.addr())
            t0 = time.monotonic()
            # Busy all along: the duration cap still applies.
            s.settimeout(0.05)
            closed = False
            while time.monotonic() - t0 < 10:
                try:
                    s.sendall(b"b")
                    d = s.recv(10)
                    if d == b"":
                        closed = True
                        break
                except socket.timeout:
                    pass
                except OSError:
                    closed = True
                    break
            assert closed and time.monotonic() - t0 >= 0.35
            assert p.stat("tcp.main.max_downstream_connection_duration") == 1


def test_weighted_round_robin_spreads_by_weight():
    with Server(name_handler("a")) as a, Server(name_handler("b")) as b:
        cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
    tcp: {{ cluster: backend }}
clusters:
  - name: backend
    endpoints: [ {{ address: "{a.endpoint}", weight: 3 }}, {{ address: "{b.endpoint}", weight: 1 }} ]
"""
        with Proxy("tcp-proxy", config=cfg) as p:
            seen = {"a": 0, "b": 0}
            for _ in range(40):
                s = connect(p.addr())
                seen[recv_exact(s, 2).decode().strip()] += 1
                s.close()
            assert seen == {"a": 30, "b": 10}


def test_weighted_clusters_and_source_ip_hash():
    with Server(name_handler("a")) as a, Server(name_handler("b")) as b, Server(name_handler("c")) as c:
        cfg = f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    tcp:
      hash_policy: source_ip
      weighted_clusters: [ {{ name: one, weight: 1 }}, {{ name: two, weight: 1 }} ]
clusters:
  - name: one
    lb_policy: maglev
    endpoints: [ "{a.endpoint}" ]
  - name: two
    lb_policy: maglev
    endpoints: [ "{b.endpoint}", "{c.endpoint}" ]
"""
        with Proxy("tcp-proxy", config=cfg) as p:
            # 40 client addresses (all of 127/8 is loopback), 4 connections from each.
            seen = {}
            for i in range(40):
                src = f"127.0.7.{i + 1}"
                for _ in range(4):
                    s = socket.socket()
                    s.settimeout(10)
                    s.bind((src, 0))
                    s.connect(p.addr())
                    seen.setdefault(src, []).append(recv_exact(s, 2).decode().strip())
                    s.close()
            names = [n for ns in seen.values() for n in ns]
            # The cluster is drawn per connection: both get traffic.
            assert names.count("a") > 10 and len(names) - names.count("a") > 10
            # Within cluster two, a source IP always reaches the same host, and different
            # source IPs reach both hosts (a hash that ignores the IP would give one).
            in_two = {src: {n for n in ns if n != "a"} for src, ns in seen.items()}
            assert all(len(hs) <= 1 for hs in in_two.values()), in_two
            assert set().union(*in_two.values()) == {"b", "c"}, in_two


def test_outlier_detection_ejects_and_returns_a_failing_host():
    with Server(name_handler("good")) as good:
        bad = refused_endpoint()
        cfg = config([bad, good.endpoint], attempts=2, extra_cluster="""    outlier_detection: { consecutive_failures: 3, base_ejection_time: 1s, max_ejection_percent: 50 }""")
        with Proxy("tcp-proxy", config=cfg.replace("workers: 1", "workers: 2")) as p:
            for _ in range(8):
                s = connect(p.addr())
                assert recv_exact(s, 5) == b"good\n"
                s.close()
            p.wait_stat("cluster.backend.outlier_detection.ejections_active", lambda v: v == 1)
            assert p.stat("cluster.backend.outlier_detection.ejections_total") == 1
            _, clusters = p.get("/clusters")
            assert f"backend::{bad}::health_flags::/failed_outlier_check" in clusters
            assert "backend::outlier::ejected::1" in clusters
            fails = p.stat("cluster.backend.upstream_cx_connect_fail")
            for _ in range(10):  # ejected: no more attempts on it
                s = connect(p.addr())
                assert recv_exact(s, 5) == b"good\n"
                s.close()
            assert p.stat("cluster.backend.upstream_cx_connect_fail") == fails
            events = [json.loads(l) for l in p.stderr().splitlines() if l.startswith("{")]
            assert any(e["to"] == "ejected" and e["host"] == bad for e in events)
            # After base_ejection_time it is tried again, fails again, and is ejected for longer.
            p.wait_stat("cluster.backend.outlier_detection.ejections_active", lambda v: v == 0, timeout=10)
            def reejected():
                s = connect(p.addr())
                recv_exact(s, 5)
                s.close()
                return p.stat("cluster.backend.outlier_detection.ejections_total") == 2
            wait_for(reejected, timeout=10, what="second ejection")
            assert "ejected for 2s" in p.stderr()


def test_outlier_multiplier_decays_while_a_host_stays_in():
    with Server(name_handler("good")) as good:
        bad = refused_endpoint()
        cfg = config([bad, good.endpoint], attempts=2, extra_cluster="""    outlier_detection: { consecutive_failures: 2, base_ejection_time: 300ms, max_ejection_percent: 50, interval: 100ms }""")
        with Proxy("tcp-proxy", config=cfg) as p:
            def traffic_until(total):
                def step():
                    s = connect(p.addr())
                    recv_exact(s, 5)
                    s.close()
                    return p.stat("cluster.backend.outlier_detection.ejections_total") >= total
                wait_for(step, timeout=10, what=f"ejection {total}")
            traffic_until(1)
            p.wait_stat("cluster.backend.outlier_detection.ejections_active", lambda v: v == 0, timeout=10)
            # Back in: the decay (every 100 ms) forgives it before the next streak, so the
            # second ejection lasts the base time again, not twice it.
            wait_for(lambda: f"backend::{bad}::ejection_multiplier::0" in p.get("/clusters")[1], timeout=10,
                     what="the multiplier to decay")
            traffic_until(2)
            assert "ejected for 300ms" in p.stderr() and "ejected for 600ms" not in p.stderr()


def test_outlier_ejection_cap_counts_overflow():
    with Server(name_handler("good")) as good:
        bad1, bad2 = refused_endpoint(), refused_endpoint()
        cfg = config([bad1, bad2, good.endpoint], attempts=3, lb="round_robin",
                     extra_cluster="""    outlier_detection: { consecutive_failures: 2, base_ejection_time: 30s, max_ejection_percent: 10 }""")
        with Proxy("tcp-proxy", config=cfg) as p:
            for _ in range(12):
                s = connect(p.addr())
                assert recv_exact(s, 5) == b"good\n"
                s.close()
            # 10% of 3 hosts rounds to 0: one host may still go; the second is refused.
            assert p.stat("cluster.backend.outlier_detection.ejections_active") == 1
            p.wait_stat("cluster.backend.outlier_detection.ejections_overflow", lambda v: v >= 1)


def test_pending_connect_and_retry_circuit_breakers():
    hole = Blackhole()
    try:
        cfg = config([hole.endpoint], connect_timeout="3s",
                     extra_cluster="    circuit_breakers: { max_pending_requests: 1 }")
        with Proxy("tcp-proxy", config=cfg) as p:
            first = connect(p.addr())  # its connect hangs: one pending
            p.wait_stat("cluster.backend.upstream_cx_total", lambda v: v == 1)
            second = connect(p.addr())
            assert recv_all(second, timeout=5) == b""
            assert p.stat("cluster.backend.upstream_rq_pending_overflow") == 1
            _, clusters = p.get("/clusters")
            assert "backend::default_priority::max_pending_requests::1" in clusters
            assert "backend::default_priority::rq_pending_open::1" in clusters
            first.close()
            second.close()
    finally:
        hole.close()
    with Server(name_handler("good")) as good:
        cfg = config([refused_endpoint(), good.endpoint], attempts=2,
                     extra_cluster="    circuit_breakers: { max_retries: 0 }")
        with Proxy("tcp-proxy", config=cfg) as p:
            served = refused = 0
            for _ in range(6):
                s = connect(p.addr())
                s.settimeout(5)
                if s.recv(5) == b"good\n":
                    served += 1
                else:
                    refused += 1
                s.close()
            # Round robin alternates the first host: the connections that start on the bad
            # host may not retry.
            assert served >= 1 and refused >= 1
            assert p.stat("cluster.backend.upstream_rq_retry_overflow") == refused
            p.wait_stat("listener.main.downstream_cx_active", lambda v: v == 0)
            _, clusters = p.get("/clusters")
            assert "backend::default_priority::rq_retry_open::0" in clusters


def test_outlier_ejection_never_leaves_a_cluster_without_a_host():
    """Fault 3 of issue 8: the only host fails, is ejected for an hour, then comes back. Outlier
    ejection alone must not refuse every connection until the hour is over."""
    port = int(refused_endpoint().rsplit(":", 1)[1])
    ep = f"127.0.0.1:{port}"
    cfg = config([ep], extra_cluster="    outlier_detection: { consecutive_failures: 2, base_ejection_time: 1h, max_ejection_time: 1h }")
    with Proxy("tcp-proxy", config=cfg) as p:
        for _ in range(2):
            s = connect(p.addr())
            assert s.recv(10) == b""  # refused upstream: closed
            s.close()
        p.wait_stat("cluster.backend.outlier_detection.ejections_active", lambda v: v == 1)
        with Server(name_handler("back"), port=port):
            s = connect(p.addr())
            assert recv_exact(s, 5) == b"back\n"
            s.close()
            assert p.stat("cluster.backend.lb_all_ejected") >= 1
            assert p.stat("cluster.backend.upstream_cx_none_healthy") == 0
            assert p.stat("cluster.backend.outlier_detection.ejections_active") == 1  # still ejected
            assert p.stat("cluster.backend.membership_healthy") == 0
            _, clusters = p.get("/clusters")
            assert f"backend::{ep}::health_flags::/failed_outlier_check" in clusters
