#!/usr/bin/env python3
"""An upstream that answers every request with what it received, so tests can assert what
reached the backend.

Response: 200, JSON {"method", "path", "headers": {lowercased name: value}, "body_length"}.
Stdlib only. `--port 0` binds a free port; the bound address is printed on stdout as
`listening 127.0.0.1:PORT` once the socket accepts connections.
"""

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's upstream connections expect
    server_version = "echo-upstream"
    # Headers and body leave in two writes; with Nagle's algorithm the body waits for the
    # peer's delayed ACK (~40 ms on Linux), which would dominate every latency a test measures.
    disable_nagle_algorithm = True

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            # Repeated headers are joined, as an HTTP intermediary may do.
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        body = json.dumps(
            {"method": self.command, "path": self.path, "headers": headers, "body_length": length}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _echo

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: tests read responses, not access logs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    ThreadingHTTPServer.request_queue_size = 1024  # Envoy may open many connections at once
    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    print(f"listening {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
