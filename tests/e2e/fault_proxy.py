"""A fault injector between a gateway and the real control plane: an HTTP proxy on a loopback
port that forwards every request to the control plane and then, depending on its current
`fault`, relays the answer, delays it, replaces it, or cuts the connection.

It is not a mock: the control plane behind it still authenticates, long-polls and signs every
answer; the proxy only damages what travels back. Faults:

- `None`: relay unchanged.
- `"slow"`: hold the answer `hold_s` seconds before relaying it (beyond the gateway's poll
  timeout, the gateway gives up first).
- `"error"`: answer 502 with a problem body instead.
- `"reset"`: close the connection without answering.
- `"garbage"`: answer 200 with a body that is not a snapshot (and the control plane's
  signature header, if it sent one).
- `"tamper"`: relay a 200 snapshot with one byte of its body changed (the signature no longer
  matches); other answers unchanged.
- `"replay"`: answer every request at once with the recording set by `replay(...)` (an
  authentic, signed answer the control plane gave earlier), without asking the control plane:
  what a network that recorded old answers can do.

Every 200 answer relayed is kept as `last_snapshot` (a `Recorded`), for replaying later.

Runs in threads of the test process; `stop()` releases held answers and closes the port.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = (None, "slow", "error", "reset", "garbage", "tamper", "replay")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


@dataclass(frozen=True)
class Recorded:
    """One answer of the control plane as it travelled: status, headers (signature included)
    and body."""

    path: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def revision(self) -> int:
        return int(json.loads(self.body)["revision"])


class FaultProxy:
    def __init__(self, target_port: int, hold_s: float = 10.0) -> None:
        self.target_port = target_port
        self.hold_s = hold_s
        self.fault: str | None = None
        # What the proxy did, by fault (None = relayed): lets a test wait until a fault has
        # really been applied to a gateway's request.
        self.applied: Counter[str | None] = Counter()
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._replay: Recorded | None = None
        self._last_snapshot: Recorded | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                proxy._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_fault(self, fault: str | None) -> None:
        assert fault in FAULTS, fault
        self.fault = fault

    def replay(self, answer: Recorded) -> None:
        """From now on, answer every request with `answer`."""
        with self._lock:
            self._replay = answer
        self.fault = "replay"

    @property
    def last_snapshot(self) -> Recorded | None:
        with self._lock:
            return self._last_snapshot

    def count(self, fault: str | None) -> int:
        with self._lock:
            return self.applied[fault]

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            replay = self._replay if self.fault == "replay" else None
        if replay is not None:
            with self._lock:
                self.applied["replay"] += 1
            self._send(request, replay.status, "OK", list(replay.headers), replay.body)
            return
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        upstream = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=120)
        try:
            upstream.request("GET", request.path, headers=headers)
            answer = upstream.getresponse()
            status, reason = answer.status, answer.reason
            answer_headers = [(k, v) for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP]
            body = answer.read()
        except OSError:
            request.close_connection = True
            return
        finally:
            upstream.close()

        fault = self.fault  # the fault in force when the control plane answered
        with self._lock:
            self.applied[fault] += 1
            if fault is None and status == 200:
                self._last_snapshot = Recorded(request.path, status, tuple(answer_headers), body)
        if fault == "slow":
            self._released.wait(self.hold_s)
        elif fault == "error":
            status, reason, body = 502, "Bad Gateway", b'{"title":"injected fault"}'
            answer_headers = [("content-type", "application/problem+json")]
        elif fault == "reset":
            request.close_connection = True
            return
        elif fault == "garbage":
            status, reason, body = 200, "OK", b"\x00\xffthis is not a snapshot {\"schema\": 1, "
            answer_headers = [(k, v) for k, v in answer_headers if k.lower() == "x-tollgate-signature"]
            answer_headers.append(("content-type", "application/json"))
        elif fault == "tamper" and status == 200 and body:
            # Change one digit of the revision-independent tail: valid JSON, wrong signature.
            index = body.rfind(b"1")
            index = index if index >= 0 else len(body) // 2
            body = body[:index] + (b"2" if body[index:index + 1] == b"1" else b" ") + body[index + 1:]
        self._send(request, status, reason, answer_headers, body)

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler, status: int, reason: str, answer_headers: list[tuple[str, str]], body: bytes
    ) -> None:
        try:
            request.send_response(status, reason)
            for name, value in answer_headers:
                request.send_header(name, value)
            request.send_header("content-length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        except OSError:
            request.close_connection = True  # the gateway gave up first (a timeout): fine
