"""A stand-in for `tollgate serve`'s gateway endpoint, for catalogues the real control plane
cannot render in bounded time here (the scale section measures where that starts).

It serves `GET /v1/snapshot` exactly as the control plane does for a bulk catalogue (the
catalogue `bulk.insert_clients` writes): the same JSON schema (core/src/snapshot.rs), the same
pagination (control-plane/src/store/snapshot.rs `paginate`: contiguous key-directory bucket
ranges of at most `page_keys` keys, all plans and API versions on every page, `next` cursors
`<revision>.<page>`), the same HMAC-SHA256 signature header, ETag / If-None-Match / ?wait=
long polling (`?since=` as the held revision, always answered in full) and ?cursor= pages. The gateway side — the poller verifying and compiling every
page with core, publishing the key directory into shared data, the workers — is the product's
own code, which is what the gateway figures measure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import bulk

PAGE_KEYS = 20_000  # control-plane/src/store/mod.rs DEFAULT_PAGE_KEYS
MAX_WAIT_S = 60


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a gateway stopping mid long poll resets its connection: not an error here


@dataclass
class Page:
    buckets: list[int]
    clients: list[str]  # encoded JSON objects, sorted by client id
    contracts: list[str]


class StandInControlPlane:
    def __init__(self, org: str, api: str, plan: str, count: int, plans: Any, apis: Any, gateway_token: str, secret: str) -> None:
        self.org, self.api, self.plan = org, api, plan
        self.gateway_token = gateway_token
        self.secret = secret.encode()
        self._plans = json.dumps(plans, separators=(",", ":"))
        self._apis = json.dumps(apis, separators=(",", ":"))
        self.revision = 1
        self._condition = threading.Condition()
        self._signed: dict[int, list[tuple[bytes, str]]] = {}
        self.pages = self._paginate(count)
        # A probe client version with a key and no contract: `add_probe_contract` is the change.
        self.probe_key = "tg_benchprobe0000000000000000000000"
        self._publish()
        self._server = QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        with self._condition:
            self.revision = -1  # wakes long polls, which then answer 304
            self._condition.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # --- the catalogue ----------------------------------------------------------------------

    def _client(self, name: str, key: str) -> tuple[int, str, str]:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return int(digest[:4], 16), f"{self.org}/{name}/1", digest

    def _contract(self, contract_id: int, client: str) -> str:
        return json.dumps(
            {"id": contract_id, "client": client, "api": f"{self.org}/{self.api}/1", "plan": f"{self.org}/{self.plan}/1"},
            separators=(",", ":"),
        )

    def _paginate(self, count: int) -> list[Page]:
        per_bucket: dict[int, list[tuple[str, str]]] = {}
        for n in range(count):
            bucket, client, digest = self._client(bulk.client_id(n), bulk.api_key(n))
            per_bucket.setdefault(bucket, []).append((client, digest))
        self._probe = self._client("probe", "tg_benchprobe0000000000000000000000")
        per_bucket.setdefault(self._probe[0], []).append((self._probe[1], self._probe[2]))
        ranges: list[tuple[int, int]] = []
        start, in_range = 0, 0
        for bucket in sorted(per_bucket):
            n = len(per_bucket[bucket])
            if in_range and in_range + n > PAGE_KEYS:
                ranges.append((start, bucket - 1))
                start, in_range = bucket, 0
            in_range += n
        ranges.append((start, 0xFFFF))
        contract_ids = {bulk.client_id(n): 10 + n for n in range(count)}
        pages = []
        for lo, hi in ranges:
            members = sorted(m for b in range(lo, hi + 1) for m in per_bucket.get(b, []))
            clients = [f'{{"id":"{c}","keys":[{{"sha256":"{d}"}}]}}' for c, d in members]
            contracts = []
            for c, _ in members:
                name = c.split("/")[1]
                if name in contract_ids:
                    contracts.append(self._contract(contract_ids[name], c))
            pages.append(Page(list(range(lo, hi + 1)), clients, contracts))
        return pages

    def add_probe_contract(self) -> None:
        """The change: the probe client version gets a contract; a new revision, every page."""
        bucket, client, _ = self._probe
        page = next(p for p in self.pages if p.buckets[0] <= bucket <= p.buckets[-1])
        page.contracts.append(self._contract(1, client))
        self._publish()

    def _publish(self) -> None:
        with self._condition:
            revision = self.revision + 1 if self._signed else self.revision
            signed = []
            for i, page in enumerate(self.pages):
                parts = [
                    f'{{"schema":1,"revision":{revision},"plans":{self._plans},"apis":{self._apis},',
                    '"clients":[', ",".join(page.clients), '],"contracts":[', ",".join(page.contracts), "]",
                ]
                if len(self.pages) > 1:
                    parts.append(f',"buckets":[{",".join(map(str, page.buckets))}]')
                    if i + 1 < len(self.pages):
                        parts.append(f',"next":"{revision}.{i + 1}"')
                body = ("".join(parts) + "}").encode()
                signature = base64.b64encode(hmac.new(self.secret, body, hashlib.sha256).digest()).decode()
                signed.append((body, signature))
            self._signed = {k: v for k, v in self._signed.items() if k == revision - 1}
            self._signed[revision] = signed
            self.revision = revision
            self._condition.notify_all()

    def size(self) -> tuple[int, int]:
        pages = self._signed[self.revision]
        return len(pages), sum(len(b) for b, _ in pages)

    # --- HTTP -------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path != "/v1/snapshot":
                    return self._answer(404)
                if self.headers.get("authorization") != f"Bearer {stand_in.gateway_token}":
                    return self._answer(401)
                if "cursor" in query:
                    revision, _, page = query["cursor"].partition(".")
                    with stand_in._condition:
                        # A revision no longer retained: the current one from its first page.
                        if int(revision) in stand_in._signed:
                            served, index = int(revision), int(page)
                        else:
                            served, index = stand_in.revision, 0
                        chosen = stand_in._signed[served][index]
                    return self._page(served, chosen)
                # `?since=` names the held revision as If-None-Match does; the stand-in never
                # cuts deltas and answers a newer revision in full, as the control plane does
                # when it cannot cut one (the worst case for a swap).
                held = query.get("since") or (self.headers.get("if-none-match") or "").strip('W/"')
                wait = min(int(query.get("wait", "0")), MAX_WAIT_S)
                with stand_in._condition:
                    if held == str(stand_in.revision) and wait:
                        stand_in._condition.wait_for(lambda: str(stand_in.revision) != held, timeout=wait)
                    revision = stand_in.revision
                    if held == str(revision) or revision < 0:
                        return self._answer(304)
                    first = stand_in._signed[revision][0]
                self._page(revision, first)

            def _page(self, revision: int, page: tuple[bytes, str]) -> None:
                body, signature = page
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("etag", f'"{revision}"')
                self.send_header("x-tollgate-signature", signature)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        return Handler
