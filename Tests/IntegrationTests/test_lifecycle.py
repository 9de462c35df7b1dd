"""Drain on SIGTERM, reload on SIGHUP (good and broken), admin endpoints (Must show 6, 8)."""

import json
import signal
import socket
import threading
import urllib.error

import pytest

from harness import Proxy, Server, connect, echo_handler, name_handler, port_refuses, recv_all, recv_exact, tcp_config, wait_for

MiB = 1 << 20


def cfg_for(endpoint, drain="30s"):
    return tcp_config([endpoint], workers=2, top=f"drain_timeout: {drain}")


def test_sigterm_drains_in_flight_transfers_then_exits_0():
    total = 16 * MiB
    gate = threading.Event()
    resume = threading.Event()

    def slow_sender(c, server):
        c.recv(1)
        chunk = b"z" * (256 * 1024)
        for i in range(total // len(chunk)):
            if i == 4:
                gate.set()  # the transfer is under way
                resume.wait(30)  # ... and stays so until SIGTERM has been sent
            c.sendall(chunk)
        c.shutdown(socket.SHUT_WR)
        recv_all(c)

    with Server(slow_sender) as up:
        p = Proxy("tcp-proxy", config=cfg_for(up.endpoint))
        try:
            clients = [connect(p.addr()) for _ in range(3)]
            for s in clients:
                s.sendall(b"g")
            assert gate.wait(10)
            results = [None] * 3

            def drain(i, s):
                results[i] = len(recv_all(s, timeout=60))
                s.close()

            threads = [threading.Thread(target=drain, args=(i, s)) for i, s in enumerate(clients)]
            for t in threads:
                t.start()
            p.signal(signal.SIGTERM)
            # New connections are refused once draining started.
            wait_for(lambda: port_refuses(p.addr()), timeout=10, what="listener closed")
            resume.set()  # the rest of each transfer flows while the proxy drains
            for t in threads:
                t.join(60)
            assert results == [total] * 3
            assert p.wait(30) == 0
            assert "drained" in p.stderr()
        finally:
            p.stop()


def test_drain_timeout_closes_stragglers_and_exits_0():
    with Server(echo_handler) as up:
        p = Proxy("tcp-proxy", config=cfg_for(up.endpoint, drain="300ms"))
        try:
            s = connect(p.addr())
            s.sendall(b"x")
            assert recv_exact(s, 1) == b"x"
            p.signal(signal.SIGTERM)
            # The straggler is idle (idle timeout 1h): only the 300ms drain timeout can end it,
            # and the log says that is what happened; no stopwatch.
            assert p.wait(30) == 0
            assert recv_all(s, timeout=30) == b""
            assert "drain timeout, closing open connections" in p.stderr()
        finally:
            p.stop()


def test_sighup_switches_new_connections_and_keeps_open_ones():
    with Server(name_handler("old")) as old, Server(name_handler("new")) as new:
        with Proxy("tcp-proxy", config=cfg_for(old.endpoint)) as p:
            first = connect(p.addr())
            assert recv_exact(first, 4) == b"old\n"
            with open(p.config_path, "w") as f:
                f.write(cfg_for(new.endpoint))
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_success", lambda v: v == 1)
            for _ in range(4):
                s = connect(p.addr())
                assert recv_exact(s, 4) == b"new\n"
                s.close()
            # The connection opened before the reload still talks to the old host.
            first.sendall(b"still here")
            assert recv_exact(first, 10) == b"still here"
            first.close()

            # A broken config is refused: logged, counted, the running one keeps serving.
            with open(p.config_path, "w") as f:
                f.write(cfg_for(new.endpoint).replace("endpoints:", "endpoinds:"))
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_rejected", lambda v: v == 1)
            assert "reload rejected" in p.stderr()
            assert "clusters[0].endpoints: missing required key" in p.stderr()
            s = connect(p.addr())
            assert recv_exact(s, 4) == b"new\n"
            s.close()
            assert p.proc.poll() is None


def test_sighup_can_add_a_listener():
    with Server(name_handler("x")) as up:
        with Proxy("tcp-proxy", config=cfg_for(up.endpoint)) as p:
            two = cfg_for(up.endpoint).replace("clusters:", """  - name: second
    address: 127.0.0.1:0
    tcp: { cluster: backend }
clusters:""", 1)
            with open(p.config_path, "w") as f:
                f.write(two)
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_success", lambda v: v == 1)
            wait_for(lambda: "second" in (p.reread_ready() or {}).get("listeners", {}), what="ready file update")
            s = connect(p.addr("second"))
            assert recv_exact(s, 2) == b"x\n"
            s.close()
            s = connect(p.addr("main"))
            assert recv_exact(s, 2) == b"x\n"
            s.close()


def test_admin_endpoints():
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=cfg_for(up.endpoint)) as p:
            s = connect(p.addr())
            s.sendall(b"12345")
            assert recv_exact(s, 5) == b"12345"
            p.wait_stat("listener.main.downstream_cx_active", lambda v: v == 1)
            st = p.stats()
            assert st["cluster.backend.upstream_cx_active"] == 1
            assert st["server.total_connections"] == 1
            assert st["server.concurrency"] == 2
            s.close()
            p.wait_stat("listener.main.downstream_cx_active", lambda v: v == 0)
            st = p.stats()
            assert st["listener.main.downstream_cx_total"] == 1
            assert st["listener.main.downstream_cx_destroy"] == 1
            assert st["tcp.main.downstream_cx_rx_bytes_total"] == 5
            assert st["tcp.main.downstream_cx_tx_bytes_total"] == 5
            assert st["cluster.backend.upstream_cx_active"] == 0

            code, text = p.get("/stats?filter=^tcp\\.main\\.downstream_cx_rx")
            assert code == 200 and text.strip() == "tcp.main.downstream_cx_rx_bytes_total: 5"
            _, prom = p.get("/stats/prometheus")
            assert 'envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"} 1' in prom
            assert "# TYPE envoy_listener_downstream_cx_length_ms histogram" in prom
            _, listeners = p.get("/listeners")
            host, port = p.addr()
            assert f"main::{host}:{port}" in listeners
            _, info = p.get("/server_info")
            assert json.loads(info)["state"] == "LIVE"
            _, dump = p.get("/config_dump")
            assert json.loads(dump)["clusters"][0]["endpoints"][0]["address"] == up.endpoint
            _, cl = p.get("/clusters?format=json")
            assert json.loads(cl)["cluster_statuses"][0]["host_statuses"][0]["stats"]["cx_total"] == 1
            assert p.get("/ready") == (200, "LIVE\n")
            assert p.post("/healthcheck/fail")[0] == 200
            # (This check used to sit in a try/except that also caught its own "expected 503"
            # assertion, whose message contains 503: it could not fail.)
            with pytest.raises(urllib.error.HTTPError) as e:
                p.get("/ready")
            assert e.value.code == 503
            assert p.post("/healthcheck/ok")[0] == 200
            assert p.get("/ready")[0] == 200
            assert p.post("/drain_listeners")[0] == 200
            wait_for(lambda: port_refuses(p.addr()), what="listeners drained")
            assert p.post("/quitquitquit")[0] == 200
            assert p.wait(10) == 0


def test_access_log_lines():
    with Server(echo_handler) as up:
        cfg = cfg_for(up.endpoint).replace("    tcp:", """    access_log:
      - path: /dev/stdout
        format: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_HOST% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS%\\n"
    tcp:""")
        with Proxy("tcp-proxy", config=cfg) as p:
            s = connect(p.addr())
            s.sendall(b"abc")
            assert recv_exact(s, 3) == b"abc"
            s.close()
            wait_for(lambda: f"127.0.0.1 {up.endpoint} 3 3 -" in p.stdout(), timeout=10, what="access log line")


def test_sighup_changes_the_listener_block_of_a_kept_listener():
    """The listener keeps its socket; its new tcp block (another cluster) takes effect."""
    with Server(name_handler("one")) as one, Server(name_handler("two")) as two:
        def conf(target):
            return f"""
admin: {{ address: 127.0.0.1:0 }}
workers: 2
listeners:
  - name: main
    address: 127.0.0.1:0
    tcp: {{ cluster: {target} }}
clusters:
  - {{ name: c1, endpoints: [ "{one.endpoint}" ] }}
  - {{ name: c2, endpoints: [ "{two.endpoint}" ] }}
"""
        with Proxy("tcp-proxy", config=conf("c1")) as p:
            addr = p.addr()
            s = connect(addr)
            assert recv_exact(s, 4) == b"one\n"
            s.close()
            with open(p.config_path, "w") as f:
                f.write(conf("c2"))
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_success", lambda v: v == 1)
            p.reread_ready()
            assert p.addr() == addr  # same socket kept
            for _ in range(4):
                s = connect(addr)
                assert recv_exact(s, 4) == b"two\n"
                s.close()


def test_json_access_log_lines():
    with Server(echo_handler) as up:
        cfg = cfg_for(up.endpoint).replace("    tcp:", """    access_log:
      - path: /dev/stdout
        json_format: { client: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", upstream: "%UPSTREAM_HOST%", rx: "%BYTES_RECEIVED%", tx: "%BYTES_SENT%", flags: "%RESPONSE_FLAGS%" }
    tcp:""")
        with Proxy("tcp-proxy", config=cfg) as p:
            s = connect(p.addr())
            s.sendall(b"hello")
            assert recv_exact(s, 5) == b"hello"
            s.close()
            def logged():
                lines = [l for l in p.stdout().splitlines() if l.startswith("{")]
                return [json.loads(l) for l in lines]
            entries = wait_for(logged, timeout=10, what="a JSON access log line")
            assert entries[0] == {"client": "127.0.0.1", "upstream": up.endpoint, "rx": 5, "tx": 5, "flags": "-"}


def test_sigusr1_reopens_access_logs_after_rotation():
    import os
    import tempfile as tf
    d = tf.mkdtemp(prefix="logs-")
    log = os.path.join(d, "access.log")
    with Server(echo_handler) as up:
        cfg = cfg_for(up.endpoint).replace("    tcp:", f"""    access_log: [ {{ path: {log}, format: "%BYTES_RECEIVED%\\n" }} ]
    tcp:""")
        with Proxy("tcp-proxy", config=cfg) as p:
            def one(msg):
                s = connect(p.addr())
                s.sendall(msg)
                recv_exact(s, len(msg))
                s.close()
            one(b"abc")
            wait_for(lambda: os.path.exists(log) and open(log).read() == "3\n", timeout=10, what="first line")
            os.rename(log, log + ".1")  # logrotate
            p.signal(signal.SIGUSR1)
            wait_for(lambda: os.path.exists(log), timeout=10, what="log reopened")
            one(b"abcdef")
            wait_for(lambda: open(log).read() == "6\n", timeout=10, what="line in the new file")
            assert open(log + ".1").read() == "3\n"


def test_admin_logging_changes_the_level_at_run_time():
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=cfg_for(up.endpoint), args=["--log-level", "warning"]) as p:
            code, body = p.post("/logging?level=info")
            assert code == 200 and "tcp-proxy: info" in body
            p.signal(signal.SIGHUP)  # logs "reloaded" at info: visible only after the change
            wait_for(lambda: "reloaded" in p.stderr(), timeout=10, what="an info line")
            with pytest.raises(urllib.error.HTTPError) as e:
                p.post("/logging?level=loud")
            assert e.value.code == 400
