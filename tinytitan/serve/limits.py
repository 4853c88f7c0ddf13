"""What every request meets before routing: the API key, the body-size limit, and OpenAI's error envelope.

`Limits` is pure ASGI middleware, so a request over the limit is refused (413) before FastAPI
reads or parses it, a chunked body included; it also counts every response for `/metrics`.
"""

from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse

KNOWN_ROUTES = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/openapi.json",
                "/docs", "/", "/playground/tasks", "/playground/check"}
PUBLIC = {"/health", "/"}  # no key needed: the health probe, and the playground page (it holds no data)

class ApiError(Exception):
    """An error answered with OpenAI's envelope."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.kind, self.headers)


def error_response(status, message, param=None, code=None, kind="invalid_request_error", headers=None):
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers or {})


class Limits:
    """Pure ASGI middleware: the Host header (a loopback server's own names), the API key on every route
    but /health, and the body size limit."""

    def __init__(self, app, api_key: str | None, max_body: int, metrics=None, allowed_hosts=None):
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body, metrics
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.metrics is not None:
            inner_send = send

            async def send(message):
                if message["type"] == "http.response.start":
                    route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"
                    self.metrics.response(route, message["status"])
                await inner_send(message)
        headers = dict(scope.get("headers") or [])
        if self.allowed_hosts is not None and b"host" in headers:
            host = _host_name(headers[b"host"].decode("latin-1"))
            if host not in self.allowed_hosts:
                return await error_response(
                    400, f"Host header {host[:100]!r} is not one of this server's names "
                         f"({', '.join(sorted(self.allowed_hosts))}): a loopback server answers only to them",
                    None, "host_not_allowed")(scope, receive, send)
        if self.api_key and scope["path"] not in PUBLIC:
            given = headers.get(b"authorization", b"").decode("latin-1")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                message = ("Incorrect API key provided" if token else
                           "Missing API key: send the header `Authorization: Bearer KEY`")
                return await error_response(401, message, None, "invalid_api_key")(scope, receive, send)
        length = headers.get(b"content-length")
        too_big = error_response(413, f"request body is larger than {self.max_body} bytes", None,
                                 "request_too_large")
        if length is not None:
            try:
                if int(length) > self.max_body:
                    return await too_big(scope, receive, send)
            except ValueError:
                return await error_response(400, "Content-Length is not a number")(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # read the body (a chunked one too) up to the limit, then hand it on
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await too_big(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _host_name(host: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
