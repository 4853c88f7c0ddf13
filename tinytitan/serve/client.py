"""A small client for a running tinytitan (or any OpenAI-compatible) server, on the standard library:
`tinytitan chat --server URL` streams its replies through it."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

from tinytitan.errors import TinyTitanError


class ServerError(TinyTitanError):
    def __init__(self, status: int, message: str, code: str | None):
        self.status, self.code = status, code
        super().__init__(message)


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600):
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise TinyTitanError(f"--server {url!r}: expected a URL such as http://127.0.0.1:8000")
        self.base = url if url.endswith("/v1") else url + "/v1"
        self.api_key, self.timeout = api_key, timeout

    def _open(self, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers,
                                         method="POST" if body is not None else "GET")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read())["error"]
                message, code = str(detail.get("message", "")), detail.get("code")
            except (ValueError, KeyError, TypeError, AttributeError, OSError):
                message, code = error.reason, None
            raise ServerError(error.code, f"{self.base}{path}: {error.code} {message}", code) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise TinyTitanError(f"cannot reach the server at {self.base} ({reason})") from None

    def models(self) -> list[str]:
        try:
            with self._open("/models") as response:
                return [m["id"] for m in json.loads(response.read())["data"]]
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as error:
            raise TinyTitanError(f"{self.base}/models: not an OpenAI-style model list ({error})") from None

    def stream_chat(self, model: str, messages: list[dict], **sampling) -> Iterator[tuple[str, str | None]]:
        """Yield (text, finish_reason) as the reply streams in."""
        body = {"model": model, "messages": messages, "stream": True, **sampling}
        try:
            with self._open("/chat/completions", body) as response:
                for raw in response:
                    line = raw.decode("utf-8", errors="replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if isinstance(event.get("error"), dict):
                        raise TinyTitanError(f"server: {event['error'].get('message')}")
                    for choice in event.get("choices", []):
                        yield choice.get("delta", {}).get("content") or "", choice.get("finish_reason")
        except (OSError, http.client.HTTPException) as error:
            raise TinyTitanError(f"the connection to {self.base} broke mid-reply ({error})") from None
        except (ValueError, AttributeError, TypeError) as error:
            raise TinyTitanError(f"{self.base}: the stream is not OpenAI server-sent events ({error})") from None
