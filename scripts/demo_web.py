#!/usr/bin/env python3
"""A tiny web upstream for the demo: answers with its name and the path; /flaky fails every
other request with 503 (so the route with retries has something to retry)."""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

name, port = sys.argv[1], int(sys.argv[2])
flaky = 0


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        global flaky
        status = 200
        if self.path.startswith("/api/flaky"):
            flaky += 1
            status = 503 if flaky % 2 == 1 else 200
        body = f"{name} answered {status} for {self.path}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
