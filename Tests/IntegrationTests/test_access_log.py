"""Access logs that cannot keep up (issue 8, fault 8): a log whose reader stalls never blocks a
worker; lines past the buffer bound are dropped whole and counted, and once the reader drains,
the buffered lines arrive whole (never half a line)."""

import fcntl
import os
import re
import signal
import tempfile

import pytest

from harness import Proxy, Server, connect, echo_handler, recv_exact, tcp_config, wait_for

NL = b"\n"
PAD = "x" * 16000  # long lines fill the pipe and the proxy's buffer bound in few connections


@pytest.mark.parametrize("reload", [False, True])
def test_stalled_access_log_pipe_keeps_serving_drops_whole_lines_and_counts_them(reload):
    """With `reload`, a SIGHUP replaces the log writers while the reader is stalled: the new
    writer takes over what the old one had not written, the cut line's tail first (the old
    writer used to drop it, leaving half a line in the file)."""
    d = tempfile.mkdtemp(prefix="alog-")
    fifo = os.path.join(d, "access.fifo")
    os.mkfifo(fifo)
    # The reader exists (so the proxy's open succeeds) but reads nothing until told.
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, 4096)
    try:
        with Server(echo_handler) as up:
            log = f'    access_log: [ {{ path: {fifo}, format: "%CONNECTION_ID% {PAD} end\\n" }} ]'
            with Proxy("tcp-proxy", config=tcp_config([up.endpoint], workers=1, listener=log)) as p:
                served = 0
                # Keep connecting until the proxy had to drop; every connection must be served.
                while p.stat("access_log_file.dropped_lines") == 0:
                    assert served < 1000, "no access log line was ever dropped"
                    for _ in range(10):
                        s = connect(p.addr())
                        s.sendall(b"ping")
                        assert recv_exact(s, 4, timeout=10) == b"ping"
                        s.close()
                        served += 1
                p.wait_stat("listener.main.downstream_cx_active", lambda v: v == 0)
                dropped = p.stat("access_log_file.dropped_lines")
                assert p.stat("access_log_file.dropped_bytes") >= dropped * len(PAD)
                assert p.stat("access_log_file.write_total_buffered") > 0
                if reload:
                    p.signal(signal.SIGHUP)
                    p.wait_stat("server.reload_success", lambda v: v == 1)

                # Drain the pipe: what was buffered arrives on later flushes, whole lines only.
                got = bytearray()

                def drained():
                    while True:
                        try:
                            chunk = os.read(r, 1 << 16)
                        except BlockingIOError:
                            break
                        if not chunk:
                            break
                        got.extend(chunk)
                    # Every line is written or counted as dropped, once the buffer is empty.
                    st = p.stats()
                    return st["access_log_file.write_total_buffered"] == 0 and \
                        got.count(NL) == served - st["access_log_file.dropped_lines"]

                try:
                    wait_for(drained, timeout=30, what="the buffered access log lines")
                except AssertionError:
                    st = {k: v for k, v in p.stats().items() if k.startswith("access_log_file.")}
                    raise AssertionError(f"{got.count(NL)} lines of {served} arrived; {st}")
                dropped = p.stat("access_log_file.dropped_lines")
                assert got.endswith(b"\n")
                pattern = re.compile(rb"^\d+ " + PAD.encode() + rb" end$")
                lines = bytes(got).split(b"\n")[:-1]
                bad = [l[:40] + b"..." + l[-10:] for l in lines if not pattern.match(l)]
                assert bad == []
                ids = [int(l.split(b" ", 1)[0]) for l in lines]
                assert len(set(ids)) == len(ids)
                # The log keeps working once the reader keeps up.
                s = connect(p.addr())
                s.sendall(b"ping")
                assert recv_exact(s, 4) == b"ping"
                s.close()
                served += 1
                wait_for(drained, timeout=30, what="the next line")
                assert p.stat("access_log_file.dropped_lines") == dropped
                assert got.endswith(b" end\n")
    finally:
        os.close(r)
