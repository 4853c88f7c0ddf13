"""A job's events as the HTTP answer: one JSON document, or server-sent events as they come.

A client that leaves (or, streaming, falls over MAX_PENDING_EVENTS chunks behind) cancels its job,
so its slot is free within one decode step. Every answer is counted in the metrics with its status.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from tinytitan.serve import api
from tinytitan.serve.backend import Backend, Job, QueueFull
from tinytitan.serve.limits import ApiError

MAX_PENDING_EVENTS = 256  # chunks a stream may be ahead of its client before its generation is cancelled


def refuse_when_full(backend: Backend, metrics, route: str, model: str) -> None:
    """Refuse at once, before any work on the request, when every slot and the queue are taken."""
    if backend.admitted >= backend.capacity:
        raise busy(backend, metrics, route, model)


def busy(backend: Backend, metrics, route: str, model: str) -> ApiError:
    """429, with how long a request usually takes as Retry-After (counted as rejected)."""
    metrics.rejected(route, model)
    wait = max(1, round(metrics.typical_seconds()))
    return ApiError(429, f"the server is at capacity ({len(backend.slots)} slots busy, {backend.waiting} queued); "
                         f"retry after {wait} s", None, "rate_limit_exceeded", "server_busy",
                    headers={"Retry-After": str(wait)})


async def respond(request: Request, backend: Backend, metrics, job: Job, body, n: int, *, chat: bool, route: str,
                   echo: list[str] | None = None):
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def receive(event) -> None:  # on the event loop; a client that stops reading stops its generation
        events.put_nowait(event)
        if body.stream and event[0] == "delta" and events.qsize() > MAX_PENDING_EVENTS and not job.cancelled.is_set():
            job.cancel()
            events.put_nowait(("slow_client", f"the client read too slowly (over {MAX_PENDING_EVENTS} chunks "
                                              f"behind): generation stopped"))

    job.emit = lambda event: loop.call_soon_threadsafe(receive, event)
    try:
        backend.submit(job)
    except QueueFull:
        raise busy(backend, metrics, route, body.model) from None
    metrics.admitted(route, body.model)
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _sse(events, job, ident, created, body.model, chat, include_usage, metrics, route, echo, n)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    watcher = asyncio.create_task(_watch_disconnect(request, job))
    gone = False
    try:
        texts = {}
        finishes, usage = {}, [0, 0]
        first_token = None
        while True:
            event = await events.get()
            if event[0] == "delta":
                first_token = first_token or time.perf_counter()
                texts[event[1]] = texts.get(event[1], "") + event[2]
            elif event[0] == "done":
                finishes[event[1]] = event[2]
                usage[0] += event[3] if event[1] % n == 0 else 0
                usage[1] += event[4]
            elif event[0] == "error":
                metrics.finished(route, body.model, job, first_token, usage, status=500)
                raise ApiError(500, event[1], None, None, "server_error")
            elif event[0] == "end":
                break
        gone = watcher.done() and not watcher.cancelled()
    finally:
        watcher.cancel()
        job.cancel()  # no-op when finished; stops the slot if this handler was cancelled
    if gone:  # the client left: nobody reads this answer
        metrics.finished(route, body.model, job, first_token, usage, status=499)
        return PlainTextResponse("", status_code=499)
    metrics.finished(route, body.model, job, first_token, usage, status=200)
    usage_model = api.Usage(prompt_tokens=usage[0], completion_tokens=usage[1], total_tokens=sum(usage))
    if chat:
        choices = [api.ChatChoice(index=i, message=api.AssistantMessage(content=texts.get(i, "")),
                                  finish_reason=_finish(finishes.get(i))) for i in range(len(job.prompts))]
        return api.ChatCompletion(id=ident, created=created, model=body.model, choices=choices, usage=usage_model)
    choices = [api.CompletionChoice(index=i, text=(echo[i // n] if echo else "") + texts.get(i, ""),
                                    finish_reason=_finish(finishes.get(i))) for i in range(len(job.prompts))]
    return api.Completion(id=ident, created=created, model=body.model, choices=choices, usage=usage_model)


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


async def _watch_disconnect(request: Request, job: Job) -> None:
    """A non-streaming client that goes away cancels its job (its slot is freed)."""
    while not job.cancelled.is_set():
        if await request.is_disconnected():
            job.cancel()
            return
        await asyncio.sleep(0.1)


async def _sse(events: asyncio.Queue, job: Job, ident: str, created: int, model: str, chat: bool,
               include_usage: bool, metrics, route: str, echo, n: int):
    kind = "chat.completion.chunk" if chat else "text_completion"
    usage = [0, 0]
    first_token = None
    status = 499  # until the stream ends normally: a client that leaves mid-stream
    failure = None  # 500: the server failed; 499: the client fell too far behind

    def chunk(choices, usage_value=None) -> str:
        data = {"id": ident, "object": kind, "created": created, "model": model, "choices": choices}
        if include_usage:
            data["usage"] = usage_value
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        if chat:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                          "logprobs": None} for i in range(len(job.prompts))])
        elif echo:
            yield chunk([{"index": i, "text": echo[i // n], "finish_reason": None, "logprobs": None}
                         for i in range(len(job.prompts))])
        while True:
            event = await events.get()
            if event[0] == "delta":
                first_token = first_token or time.perf_counter()
                index, text = event[1], event[2]
                choice = ({"index": index, "delta": {"content": text}, "finish_reason": None, "logprobs": None}
                          if chat else {"index": index, "text": text, "finish_reason": None, "logprobs": None})
                yield chunk([choice])
            elif event[0] == "done":
                index, reason = event[1], _finish(event[2])
                usage[0] += event[3] if index % n == 0 else 0
                usage[1] += event[4]
                if event[2] == "cancelled":
                    continue
                choice = ({"index": index, "delta": {}, "finish_reason": reason, "logprobs": None} if chat else
                          {"index": index, "text": "", "finish_reason": reason, "logprobs": None})
                yield chunk([choice])
            elif event[0] in ("error", "slow_client"):  # a fault of the server, or a client that fell behind
                failure = 500 if event[0] == "error" else 499
                error_type, code = (("server_error", None) if event[0] == "error"
                                    else ("invalid_request_error", "slow_client"))
                error = {"message": event[1], "type": error_type, "param": None, "code": code}
                yield f"data: {json.dumps({'error': error})}\n\n"
            elif event[0] == "end":
                break
        if include_usage and failure is None:
            yield chunk([], {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)})
        yield "data: [DONE]\n\n"
        status = failure or 200
    finally:
        job.cancel()  # the client left (or we are done): the slot stops at its next token
        metrics.finished(route, model, job, first_token, usage, status=status)
