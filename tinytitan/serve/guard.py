"""What a connection may cost the server: time limits uvicorn does not have, and a small send buffer.

uvicorn closes a connection left idle *between* requests (`timeout_keep_alive`), but not one that
opens and never sends a request, sends its headers a byte at a time, never finishes its body, or
stops reading a response. `GuardedH11Protocol` (uvicorn's h11 protocol plus timers) closes each:

- the request line, headers and body must all arrive within `REQUEST_SECONDS` of the connection
  opening (or of the previous response ending, on a kept-alive connection);
- a response its client has stopped reading is aborted once the bytes waiting for it have not
  moved for `WRITE_STALL_SECONDS` (checked while writing is paused, the transport's buffer full, and
  after the response is complete but not yet sent): a stream ends, its generation is cancelled and
  its slot freed, and no file descriptor is held by a client that never reads;
- the kernel's send buffer of each connection is `SEND_BUFFER` bytes, so a client that does not
  read is noticed after a few hundred tokens rather than megabytes.

The number of connections is bounded by uvicorn's `limit_concurrency` (503 beyond it); see
`serve.max_connections`.
"""

from __future__ import annotations

import socket

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_SECONDS = 10.0
WRITE_STALL_SECONDS = 10.0
SEND_BUFFER = 16 * 1024


class GuardedH11Protocol(H11Protocol):
    request_seconds = REQUEST_SECONDS
    write_stall_seconds = WRITE_STALL_SECONDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._request_timer = None
        self._write_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:
                pass
        self._expect_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._expect_request()
        self._watch_writes()

    def connection_lost(self, exc) -> None:
        for timer in (self._request_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._request_timer = self._write_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_writes()

    def _watch_writes(self) -> None:
        """While bytes wait to be sent, look again every `write_stall_seconds`: abort if none was sent."""
        waiting = self.transport.get_write_buffer_size()
        if self._write_timer is None and waiting:
            self._write_timer = self.loop.call_later(self.write_stall_seconds, self._check_writes, waiting)

    def _check_writes(self, before: int) -> None:
        self._write_timer = None
        now = self.transport.get_write_buffer_size()
        if not now:
            return
        if now >= before:  # nothing sent in all that time: the client is not reading
            self.transport.abort()  # close() would wait for a buffer this client will never read
            return
        self._write_timer = self.loop.call_later(self.write_stall_seconds, self._check_writes, now)

    def _expect_request(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
        self._request_timer = self.loop.call_later(self.request_seconds, self._request_overdue)

    def _request_overdue(self) -> None:
        self._request_timer = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()  # no request, or not all of it, in time: slow or idle
