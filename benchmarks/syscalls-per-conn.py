#!/usr/bin/env python3
"""Counts the proxy's system calls per proxied connection (connect, 64 B each way, close),
with `perf stat -e 'syscalls:sys_enter_*'` attached to the proxy only. Not a test.

    benchmarks/syscalls-per-conn.py .build/release/tcp-proxy [N] [--label NAME]

Prints total calls per connection and the calls that make it up (per connection, >= 0.05)."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import json

binary = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 3000

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(1024)


def echo():
    while True:
        try:
            c, _ = srv.accept()
        except OSError:
            return
        try:
            d = c.recv(64)
            if d:
                c.sendall(d)
        except OSError:
            pass
        c.close()


threading.Thread(target=echo, daemon=True).start()
d = tempfile.mkdtemp()
ready = os.path.join(d, "ready.json")
p = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--upstream", "%s:%d" % srv.getsockname(),
                      "--workers", "1", "--ready-file", ready], stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 20
while not os.path.exists(ready):
    if time.monotonic() > deadline:
        sys.exit("no ready file")
    time.sleep(0.02)
addr = json.load(open(ready))["listeners"]["main"].rsplit(":", 1)
addr = (addr[0], int(addr[1]))


def one():
    s = socket.create_connection(addr)
    s.sendall(b"x" * 64)
    got = 0
    while got < 64:
        b = s.recv(64)
        if not b:
            break
        got += len(b)
    s.close()


for _ in range(50):  # warm up
    one()
out = os.path.join(d, "perf.txt")
perf = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out, "-e", "syscalls:sys_enter_*", "-p", str(p.pid)],
                        stderr=subprocess.DEVNULL)
time.sleep(1.0)  # perf attaches
for _ in range(n):
    one()
time.sleep(0.5)  # the proxy finishes its last closes
perf.send_signal(signal.SIGINT)
perf.wait()
p.send_signal(signal.SIGTERM)
p.wait()
rows = []
for line in open(out):
    parts = line.strip().split(",")
    if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_") and parts[0].isdigit():
        rows.append((int(parts[0]) / n, parts[2][len("syscalls:sys_enter_"):]))
rows.sort(reverse=True)
total = sum(r for r, _ in rows)
print(f"{binary}: {total:.2f} syscalls per proxied connection (N={n})")
for r, name in rows:
    if r >= 0.05:
        print(f"  {name:16s} {r:6.2f}")
