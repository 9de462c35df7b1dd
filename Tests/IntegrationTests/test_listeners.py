"""Listener behaviour: exact balancing, reloads that move or fail to bind a listener,
descriptor exhaustion, admin input limits."""

import os
import resource
import signal
import socket
import time
import urllib.request

from harness import BIN_DIR, Proxy, Server, connect, echo_handler, name_handler, port_refuses, recv_all, recv_exact, tcp_config, wait_for


def cfg(endpoint, address="127.0.0.1:0", balance="kernel", workers=2):
    return tcp_config([endpoint], workers=workers, listener=f"    connection_balance: {balance}").replace(
        "address: 127.0.0.1:0\n    connection", f"address: {address}\n    connection")


def test_exact_balance_serves_and_spreads():
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=cfg(up.endpoint, balance="exact")) as p:
            socks = [connect(p.addr()) for _ in range(8)]
            for i, s in enumerate(socks):
                s.sendall(b"%d" % i)
                assert recv_exact(s, 1) == b"%d" % i
            assert p.stat("listener.main.downstream_cx_active") == 8
            for s in socks:
                s.close()
            p.wait_stat("listener.main.downstream_cx_active", lambda v: v == 0)


def test_reload_moves_a_listener_and_a_failed_bind_keeps_the_old_one():
    with Server(name_handler("x")) as up:
        with Proxy("tcp-proxy", config=cfg(up.endpoint)) as p:
            old_port = p.addr()[1]
            # Move the listener to a new port: the new one serves, the old one stops.
            blocker = socket.socket()
            blocker.bind(("127.0.0.1", 0))
            new_port = blocker.getsockname()[1]
            blocker.close()
            with open(p.config_path, "w") as f:
                f.write(cfg(up.endpoint, address=f"127.0.0.1:{new_port}"))
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_success", lambda v: v == 1)
            s = connect(("127.0.0.1", new_port))
            assert recv_exact(s, 2) == b"x\n"
            s.close()

            wait_for(lambda: port_refuses(("127.0.0.1", old_port)), what="old port closed")

            # A port held by someone else (no SO_REUSEPORT): the reload is rejected and the
            # running listener keeps serving.
            taken = socket.socket()
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            with open(p.config_path, "w") as f:
                f.write(cfg(up.endpoint, address=f"127.0.0.1:{taken.getsockname()[1]}"))
            p.signal(signal.SIGHUP)
            p.wait_stat("server.reload_rejected", lambda v: v == 1)
            assert "cannot listen on" in p.stderr()
            s = connect(("127.0.0.1", new_port))
            assert recv_exact(s, 2) == b"x\n"
            s.close()
            taken.close()


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_descriptor_exhaustion_pauses_accepting_instead_of_spinning():
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    with Server(echo_handler) as up:
        import subprocess
        orig = subprocess.Popen.__init__

        def popen(self, *a, **kw):
            kw["preexec_fn"] = low_limit
            orig(self, *a, **kw)
        subprocess.Popen.__init__ = popen
        try:
            # Connections wait for a PROXY header: one descriptor each, so accept runs out.
            held = cfg(up.endpoint, workers=1).replace("    connection_balance: kernel\n",
                                                       "    proxy_protocol: accept\n    proxy_protocol_timeout: 60s\n")
            p = Proxy("tcp-proxy", config=held)
        finally:
            subprocess.Popen.__init__ = orig
        try:
            clients = []
            for _ in range(80):
                try:
                    clients.append(socket.create_connection(p.addr(), timeout=2))
                except OSError:
                    break
            # Out of descriptors (the admin endpoint cannot accept either, so watch /proc).
            wait_for(lambda: len(os.listdir(f"/proc/{p.proc.pid}/fd")) >= 64, timeout=20, what="descriptors used up")
            before = _cpu_seconds(p.proc.pid)
            t0 = time.monotonic()
            wait_for(lambda: time.monotonic() - t0 > 1.0, what="a second to pass")
            used = _cpu_seconds(p.proc.pid) - before
            assert used < 0.5, f"proxy burnt {used:.2f}s CPU in 1s while out of descriptors"
            for c in clients:
                c.close()
            p.wait_stat("listener.main.downstream_cx_accept_error", lambda v: v > 0, timeout=20)
            p.wait_stat("listener.main.downstream_cx_active", lambda v: v == 0, timeout=20)
            s = connect(p.addr())
            s.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\nok")
            assert recv_exact(s, 2) == b"ok"
            s.close()
        finally:
            p.stop()


def test_admin_refuses_oversized_requests_and_stays_up():
    with Server(echo_handler) as up:
        with Proxy("tcp-proxy", config=cfg(up.endpoint)) as p:
            host, port = p.ready["admin"].rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
            reply = recv_all(s, timeout=10)
            assert reply == b"" or b" 400 " in reply.split(b"\r\n")[0] or b" 413 " in reply.split(b"\r\n")[0]
            s.close()
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"\x00\x01garbage\r\n\r\n")
            recv_all(s, timeout=10)
            s.close()
            try:
                urllib.request.urlopen(p.admin + "/no/such/path", timeout=5)
            except urllib.error.HTTPError as e:
                assert e.code == 404
            try:
                urllib.request.urlopen(p.admin + "/quitquitquit", timeout=5)  # GET: refused
            except urllib.error.HTTPError as e:
                assert e.code == 405
            assert p.get("/ready")[0] == 200


def test_unix_listener_with_two_workers_and_a_stale_socket_file():
    import tempfile as tf
    path = os.path.join(tf.mkdtemp(prefix="uds-"), "proxy.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # a file left behind by a process that is gone
    stale.close()
    with Server(echo_handler) as up:
        cfg = tcp_config([up.endpoint], workers=2).replace("    address: 127.0.0.1:0", f"    address: unix:{path}", 1)
        with Proxy("tcp-proxy", config=cfg) as p:
            for i in range(8):
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(10)
                s.connect(path)
                s.sendall(b"u%d" % i)
                assert recv_exact(s, 2) == b"u%d" % i
                s.close()
            assert p.ready["listeners"]["main"] == f"unix:{path}"
            # A second proxy may not steal a live socket.
            import subprocess as sp
            r = sp.run([os.path.join(BIN_DIR, "tcp-proxy"), "--listen", f"unix:{path}", "--upstream", up.endpoint,
                        "--workers", "1"], capture_output=True, text=True, timeout=20)
            assert r.returncode == 1 and "Address already in use" in r.stderr
        assert not os.path.exists(path)  # removed at exit
