#!/usr/bin/env python3
"""A tiny upstream for the demo: greets each connection with its name, then echoes."""
import socket
import sys
import threading

name, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(128)


def serve(c):
    with c:
        try:
            c.sendall(f"hello from {name}\n".encode())
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d)
        except OSError:  # health checks connect and reset
            return


while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
