"""The server's front door: what a request must be before a handler sees it.

A pure ASGI middleware, in this order: the Host header must name this server (400: a DNS-rebinding page in a
browser reaches a loopback server under its own name), POST bodies to /predict and /labels must be declared
`application/json` (415: a browser page's form or text/plain post needs no CORS preflight, JSON does; the Open
Inference Protocol's infer also takes `application/octet-stream`, binary tensors, and no Content-Type at all, as
`tritonclient` sends none, unless an Origin header says a browser sent it), a body may
not exceed serving.max_body_bytes (413: by Content-Length before anything is read, and counted while a chunked
body streams in, so a large body is never buffered or parsed), a body that stalls for serving.body_timeout_s is
408 (a slot is not held for ever), and at most serving.max_concurrent_requests scoring requests (/predict, OIP infer,
/invocations) are in progress at once (503 with Retry-After). Each refusal is counted in
driftloop_requests_refused_total by path and reason, and answered in the error body of the path's protocol.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftloop.config import ServingConfig
from driftloop.metrics import ServingMetrics
from driftloop.serving.protocol import INVOCATIONS, OIP_INFER_ROUTE, error_body, route

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
JSON_PATHS = frozenset({"/predict", "/labels", INVOCATIONS})
# Binary tensors (the OIP binary data extension) are not a type a browser may post without a CORS preflight.
OIP_CONTENT_TYPES = frozenset({"application/json", "application/octet-stream"})
SCORING_PATHS = frozenset({"/predict", INVOCATIONS, OIP_INFER_ROUTE})
# The path label of the refusal counter: any other path counts as "other", so a client cannot mint series.
KNOWN_PATHS = frozenset({"/predict", "/labels", "/healthz", "/metrics", "/admin/reload", "/admin/rollback",
                         INVOCATIONS, OIP_INFER_ROUTE})
# A client refused for concurrency should come back soon: scoring takes milliseconds.
RETRY_AFTER_S = "1"


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(serving: ServingConfig, bind_host: str) -> frozenset[str] | None:
    """The Host names the server answers (lower case, no port); None: any. See serving.allowed_hosts."""
    if serving.allowed_hosts is not None:
        names = {h.strip("[]").lower() for h in serving.allowed_hosts}
        return None if "*" in names else frozenset(names)
    return frozenset(LOOPBACK_NAMES) if is_loopback(bind_host) else None


def host_name(header: str) -> str:
    """The name part of a Host header: 'localhost:8080' → 'localhost', '[::1]:8080' → '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _oip_content_refusal(scope: Scope) -> str | None:
    """Why an OIP infer request's Content-Type is refused, or None: JSON, binary tensors, or none from a non-browser
    client (tritonclient sends none; a browser page's post without one carries an Origin header)."""
    kind = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    if kind in OIP_CONTENT_TYPES:
        return None
    if not kind and _header(scope, b"origin") is None:
        return None
    return (f"{scope['path']} takes 'Content-Type: application/json' (or application/octet-stream with binary "
            f"tensors), not {kind or 'none from a browser page'!r}")


def _header(scope: Scope, name: bytes) -> str | None:
    """One request header, decoded; None when absent."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class RequestGuard:
    """Refuses requests that break the server's limits before a handler runs (see the module docstring)."""

    def __init__(self, app: ASGIApp, serving: ServingConfig, bind_host: str, metrics: ServingMetrics) -> None:
        self.app = app
        self.max_body = serving.max_body_bytes
        self.body_timeout_s = serving.body_timeout_s
        self.max_scoring = serving.max_concurrent_requests
        self.hosts = allowed_hosts(serving, bind_host)
        self.metrics = metrics
        self.scoring = 0  # /predict requests in progress; only the event loop's thread touches it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        named = route(scope["path"])
        path = named if named in KNOWN_PATHS else "other"
        refusal = self._refusal(scope)
        if refusal is not None:
            status, reason, detail = refusal
            await self._refuse(send, path, status, reason, detail, scope["path"])
            return
        scoring = path in SCORING_PATHS
        if scoring:
            if self.scoring >= self.max_scoring:
                await self._refuse(send, path, 503, "concurrency", f"more than serving.max_concurrent_requests "
                                   f"({self.max_scoring}) requests in progress; retry shortly", scope["path"])
                return
            self.scoring += 1
        try:
            await self.app(scope, self._counting(receive, path), send)
        finally:
            if scoring:
                self.scoring -= 1

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, reason, detail) when the request is refused on its headers alone, else None."""
        if self.hosts is not None:
            host = _header(scope, b"host")
            if host is None or host_name(host) not in self.hosts:
                return 400, "host", (f"Host {host!r} is not one this server answers; add it to serving.allowed_hosts "
                                     "or use one of " + ", ".join(sorted(self.hosts)))
        if scope["method"] == "POST" and scope["path"] in JSON_PATHS:
            kind = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
            if kind != "application/json":
                return 415, "content_type", f"{scope['path']} takes 'Content-Type: application/json', not {kind!r}"
        if scope["method"] == "POST" and route(scope["path"]) == OIP_INFER_ROUTE:
            refused = _oip_content_refusal(scope)
            if refused is not None:
                return 415, "content_type", refused
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return 400, "content_length", f"Content-Length {length!r} is not a number"
            if size > self.max_body:
                return 413, "body_size", self._too_large(f"{size} bytes")
        return None

    def _too_large(self, size: str) -> str:
        return (f"request body of {size} exceeds serving.max_body_bytes ({self.max_body}); send fewer rows per "
                "request")

    def _counting(self, receive: Receive, path: str) -> Receive:
        """`receive` that stops a body growing past max_body_bytes (a chunked body has no Content-Length)."""
        received = 0
        complete = False  # after the body, receive() waits for a disconnect: no timeout on that

        async def counted() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout_s):  # no extra task, unlike wait_for
                    message = await receive()
            except TimeoutError:
                self.metrics.refused.labels(path, "body_timeout").inc()
                raise HTTPException(408, f"no request body for serving.body_timeout_s ({self.body_timeout_s:g} s); "
                                    "send the body with the headers") from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_body:
                    self.metrics.refused.labels(path, "body_size").inc()
                    # Raised inside the handler's body read: FastAPI answers it as a 413 before anything is parsed.
                    raise HTTPException(413, self._too_large(f"more than {received} bytes"))
            return message

        return counted

    async def _refuse(self, send: Send, path: str, status: int, reason: str, detail: str, request_path: str) -> None:
        """Answer `status` with the error body of the request path's protocol (FastAPI's {"detail"} for driftloop's
        own paths), and count it."""
        self.metrics.refused.labels(path, reason).inc()
        body = json.dumps(error_body(request_path, status, detail)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 503:
            headers.append((b"retry-after", RETRY_AFTER_S.encode()))
        if status in (400, 413):
            headers.append((b"connection", b"close"))  # the unread body is not worth reading
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
