#!/usr/bin/env python3
"""The app behind h2spec's runs (.ci/h2spec): answers every request with
a small page, but only once it has read the request's whole body
(Content-Length or chunked). An app that answers before the body ends
races h2spec's frames that follow the request's first HEADERS: whether
the proxy's response or its stream error reaches h2spec first would
then depend on timing."""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = b"<html><body><p>h2spec app</p></body></html>\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline().strip():
                        pass
                    return
                self.rfile.read(size + 2)
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self):
        self.read_body()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(PAGE)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = answer

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"Serving HTTP on port {server.server_address[1]}", flush=True)
server.serve_forever()
