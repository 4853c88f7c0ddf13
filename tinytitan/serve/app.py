"""The OpenAI-compatible HTTP app (FastAPI): routes, validation, limits, streaming, metrics.

Every request is checked completely before it may queue: the body's size (413), the API key
(401), every parameter (400, OpenAI's error envelope naming the parameter), the model (404), the
schema (400 naming an unsupported feature) and the prompt's length against the context (400 with
the token counts). Only then is it admitted, or refused at once with 429 and Retry-After when the
slots and the queue are full. Prompts are built by `chat_format` from the messages, control tokens
by id and user text as plain text, never by rendering a template found in a model file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tinytitan import __version__
from tinytitan.errors import TinyTitanError
from tinytitan.serve import api
from tinytitan.serve.backend import Backend, Job, QueueFull, Sampling, log
from tinytitan.serve.fleet import Task
from tinytitan.serve.limits import ApiError, Limits, error_response
from tinytitan.serve.metrics import Metrics

DEFAULT_MAX_BODY = 1 << 20
MAX_INPUT_WORDS_BYTES = 64 * 1024  # the input an x-input-words grammar is made from (its words become rules)
MAX_GRAMMAR_BYTES = 1 << 20
MAX_SCHEMA_DEPTH = 128  # room for data nested 64 deep (data.MAX_DEPTH): two schema levels per data level
MAX_SCHEMA_VALUES = 20_000
MAX_PENDING_EVENTS = 256  # chunks a stream may be ahead of its client before its generation is cancelled
ERRORS = {400: "Bad request: the message names the parameter", 401: "Missing or wrong API key",
          404: "No such model", 413: "Request body too large", 429: "Server at capacity; retry after Retry-After seconds"}
ERROR_RESPONSES = {code: {"model": api.ErrorResponse, "description": text} for code, text in ERRORS.items()}


def create_app(backend: Backend, tasks: list[Task], *, api_key: str | None = None,
               max_body: int = DEFAULT_MAX_BODY, allowed_hosts: list[str] | None = None) -> FastAPI:
    """`allowed_hosts`: the Host header values accepted (a loopback server's own names, so that a web page
    cannot reach it through DNS rebinding); None accepts any."""
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(backend.close)

    app = FastAPI(title="tinytitan", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible local server for Gemma 3 270M task specialists.")
    fleet = {task.name: task for task in tasks}
    models = {task.name: backend.model(task.model) if task.model else _default_model(backend) for task in tasks}
    from tinytitan.model.engines.sampling import grammar_error

    for task in tasks:  # adapters and schemas are checked at start-up, not on a first request
        if task.adapter:
            models[task.name].adapter(task.adapter)
        if task.grammar and (problem := grammar_error(models[task.name], task.grammar)):
            raise TinyTitanError(f"task {task.name}: its schema cannot be enforced: {problem}")
    metrics = Metrics(backend)
    grammars = GrammarCache()
    started = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request, error: ApiError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, error: RequestValidationError):
        return validation_error(error).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, error: StarletteHTTPException):
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return error_response(error.status_code, str(error.detail), None, kinds.get(error.status_code),
                              headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request, error: Exception):  # never a bare 500 page: the envelope, and the cause
        log.error("%s %s: internal error", request.method, request.url.path, exc_info=error)
        return error_response(500, f"internal error: {type(error).__name__}: {error}", None, None, "server_error")

    @app.get("/health", response_model=api.Health, responses={503: {"model": api.Health,
                                                                     "description": "a slot has died or stalled"}})
    async def health():
        slots = backend.slot_health()
        ok = all(s["alive"] and not s["stalled"] for s in slots)
        report = api.Health(status="ok" if ok else "failing", slots=len(backend.slots), busy=backend.running,
                            queued=backend.waiting, capacity=backend.capacity,
                            slot_states=[api.SlotState(**s) for s in slots])
        return report if ok else JSONResponse(report.model_dump(), status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse, responses={401: ERROR_RESPONSES[401]})
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models", response_model=api.ModelList, responses={401: ERROR_RESPONSES[401]})
    async def list_models():
        return api.ModelList(data=[_card(task, started) for task in tasks])

    @app.get("/v1/models/{model}", response_model=api.ModelCard, responses={k: ERROR_RESPONSES[k] for k in (401, 404)})
    async def get_model(model: str):
        return _card(_task(fleet, model), started)

    post_errors = {k: v for k, v in ERROR_RESPONSES.items()}
    event = {"type": "object", "required": ["data"], "properties": {  # one server-sent event (OpenAPI 3.1)
        "data": {"type": "string", "description": "a JSON chunk, or [DONE]"}, "event": {"type": "string"},
        "id": {"type": "string"}, "retry": {"type": "integer"}}}
    stream_doc = {200: {"content": {"text/event-stream": {"schema": event}},
                        "description": "JSON, or server-sent events when stream is true"}}

    @app.post("/v1/chat/completions", response_model=api.ChatCompletion, responses={**post_errors, **stream_doc})
    async def chat_completions(body: api.ChatCompletionRequest, request: Request):
        _refuse_when_full(backend, metrics, "chat", body.model)  # before any work on the request
        _check_text(body)
        task = _task(fleet, body.model)
        model = models[task.name]
        user = [m.text() for m in body.messages if m.role == "user"]

        def prepare():  # tokenizing and grammars take time: off the event loop (the grammar's limits first)
            grammar = _grammar(model, task, body.response_format, grammars, user[-1] if user else "", "messages")
            return [_chat_prompt(model, task, body)], grammar

        prompts, grammar = await asyncio.to_thread(prepare)
        job, n = _job(backend, model, task, body, prompts, grammar, body.max_completion_tokens)
        return await _respond(request, backend, metrics, job, body, n, chat=True, route="chat")

    @app.post("/v1/completions", response_model=api.Completion, responses={**post_errors, **stream_doc})
    async def completions(body: api.CompletionRequest, request: Request):
        _refuse_when_full(backend, metrics, "completions", body.model)
        _check_text(body)
        task = _task(fleet, body.model)
        model = models[task.name]
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt

        def prepare():
            grammar = _grammar(model, task, body.response_format, grammars, "\n".join(texts), "prompt")
            return [model.tokenize(text, bos=True) for text in texts], grammar  # user text: never control tokens

        prompts, grammar = await asyncio.to_thread(prepare)
        job, n = _job(backend, model, task, body, prompts, grammar, None)
        echo = texts if body.echo else None
        return await _respond(request, backend, metrics, job, body, n, chat=False, route="completions", echo=echo)

    default_openapi = app.openapi

    def openapi():  # the schema names what this server really serves, and its context
        if app.openapi_schema is None:
            schema = default_openapi()
            from tinytitan.data.structured import meta_schema

            components = schema["components"]["schemas"]
            components["StructuredSchema"] = meta_schema("#/components/schemas/StructuredSchema")
            components["JSONSchemaFormat"]["properties"]["schema"] = {
                "anyOf": [{"$ref": "#/components/schemas/StructuredSchema"}, {"type": "null"}]}
            vocabulary = min(m.n_vocab for m in models.values())
            for name in ("ChatCompletionRequest", "CompletionRequest"):
                properties = schema["components"]["schemas"][name]["properties"]
                properties["model"]["enum"] = list(fleet)
                properties["logit_bias"]["propertyNames"] = {"pattern": f"^{below(vocabulary)}$"}
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(Limits, api_key=api_key, max_body=max_body, metrics=metrics, allowed_hosts=allowed_hosts)
    return app


def below(n: int) -> str:
    """A regular expression for the decimal numbers 0 .. n-1 (n >= 1), without leading zeros."""
    top = str(n - 1)
    if len(top) == 1:
        return f"[0-{top}]"
    options = ["[0-9]"] + [f"[1-9][0-9]{{{k - 1}}}" for k in range(2, len(top))]  # fewer digits than n-1
    for i, digit in enumerate(top):  # as many digits as n-1: equal up to i, smaller at i, anything after
        lowest = 1 if i == 0 else 0
        if int(digit) > lowest:
            options.append(top[:i] + f"[{lowest}-{int(digit) - 1}]" + "[0-9]" * (len(top) - i - 1))
    return "(" + "|".join(options + [top]) + ")"


def _default_model(backend: Backend):
    from tinytitan.model.registry import default_model_path

    return backend.model(default_model_path())


def _card(task: Task, created: int) -> api.ModelCard:
    """The model as a client may see it: file names, never where they are on the host."""
    d = task.describe()
    return api.ModelCard(id=task.name, created=created, base=Path(d["model"]).name,
                         adapter=Path(d["adapter"]).name if d["adapter"] else None,
                         adapter_scale=d["adapter_scale"], schema=d["schema"])


def _refuse_when_full(backend: Backend, metrics, route: str, model: str) -> None:
    if backend.admitted >= backend.capacity:
        raise _busy(backend, metrics, route, model)


def _busy(backend: Backend, metrics, route: str, model: str) -> ApiError:
    metrics.rejected(route, model)
    wait = max(1, round(metrics.typical_seconds()))
    return ApiError(429, f"the server is at capacity ({len(backend.slots)} slots busy, {backend.waiting} queued); "
                         f"retry after {wait} s", None, "rate_limit_exceeded", "server_busy",
                    headers={"Retry-After": str(wait)})


def _task(fleet: dict, name: str) -> Task:
    if name not in fleet:
        raise ApiError(404, f"The model {name!r} does not exist (available: {', '.join(fleet)})", "model",
                       "model_not_found")
    return fleet[name]


def validation_error(error: RequestValidationError) -> ApiError:
    """The first problem as OpenAI's 400, its parameter named as the client wrote it."""
    problems = [(_param(p.get("loc", ()), error.body), p) for p in error.errors()]
    param, first = problems[0]
    # a union (stop: text or list) reports one error per member: prefer the member the input is
    same = [p for name, p in problems if name == param]
    first = next((p for p in same if not p.get("type", "").endswith("_type")), first)
    kind = first.get("type", "")
    if kind == "json_invalid":
        return ApiError(400, "the request body is not valid JSON", None, "invalid_json")
    if kind == "missing" and not param:
        return ApiError(400, "the request needs a JSON body", None, "missing_body")
    if kind == "extra_forbidden":
        message = f"{param}: unknown or unsupported parameter"
    elif kind == "missing":
        message = f"{param}: required"
    else:
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        if "input" in first and not isinstance(first["input"], (dict, list)):
            message += f" (got {json.dumps(first['input'], default=str)[:80]})"
    return ApiError(400, message, param, "missing_parameter" if kind == "missing" else "invalid_value")


def _param(location, body) -> str | None:
    """`messages.0.content` from pydantic's location, leaving out its union-member and tag labels:
    a part counts only where the request body has that key or index."""
    parts, node = [], body
    for part in location[1:] if location and location[0] == "body" else location:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and not _is_label(part):
            node = None  # a missing or unknown key: named, and the walk ends
        else:
            continue
        parts.append(str(part))
        if node is None:
            break
    return ".".join(parts) or None


def _is_label(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "list", "dict", "none", "text", "json_object", "json_schema"} or \
        any(c in part for c in "[-")


def _chat_prompt(model, task: Task, body: api.ChatCompletionRequest) -> list[int]:
    from tinytitan.model.chat_format import Message, encode_chat

    # Gemma has no system role: a system (or developer) message that opens the conversation is folded
    # into the first user turn (chat_format); one anywhere else is sent as a user turn
    messages = []
    for index, m in enumerate(body.messages):
        system = m.role in ("system", "developer")
        opening = index == 0 and len(body.messages) > 1 and body.messages[1].role == "user"
        messages.append(Message("system" if system and opening else "user" if system else m.role, m.text()))
    if task.system and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", task.system))
    try:
        return encode_chat(model, messages)
    except TinyTitanError as error:
        # a turn order the model cannot take (the OpenAPI schema cannot say so): a code clients can act on
        raise ApiError(400, f"messages: {error}", "messages", "invalid_message_order") from None


def _check_text(body) -> None:
    """A lone surrogate ("\\ud83d" is valid JSON) is not text a model can read: 400, naming where."""
    from tinytitan.data.json_values import check_text

    try:
        check_text(body.model_dump(by_alias=True, exclude_none=True))
    except TinyTitanError as error:
        param = str(error).split(":", 1)[0]
        raise ApiError(400, str(error), param, "invalid_value") from None


class GrammarCache:
    """Schema -> grammar (or the refusal), the most recent 64, shared by the threads that make them."""

    def __init__(self, size: int = 64):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key: str):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key: str, value) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)


def _grammar(model, task: Task, response_format, cache: GrammarCache, input_text: str, input_param: str) -> str | None:
    """The request's grammar, made and checked by llama.cpp once per schema (refusals cached too). A
    schema that takes words from the input (`x-input-words`) gets its grammar made with `input_text`:
    the last user message, or a completion request's prompts (at most MAX_INPUT_WORDS_BYTES of it)."""
    from tinytitan.model.engines.sampling import grammar_error
    from tinytitan.data.structured import SchemaError, schema_extent, uses_input
    from tinytitan.data.grammar import json_object_grammar, schema_to_grammar

    if response_format is None:
        if task.schema is not None and uses_input(task.schema):  # checked at start-up: only the words differ
            _check_input_words(input_text, input_param)
            return _checked_size(schema_to_grammar(task.schema, input_text), "the task's schema")
        return task.grammar
    if response_format.type == "text":
        return None
    param = "response_format.json_schema.schema"
    if response_format.type == "json_object":
        key = "json_object"
        make = json_object_grammar
    else:
        schema = response_format.json_schema.schema_
        if schema is None:  # a named format without a schema: any JSON object
            schema = {"type": "object", "additionalProperties": True}
        depth, values = schema_extent(schema)
        if depth > MAX_SCHEMA_DEPTH or values > MAX_SCHEMA_VALUES:
            raise ApiError(400, f"{param}: nested {depth} deep with {values:,} values (at most {MAX_SCHEMA_DEPTH} "
                                f"deep and {MAX_SCHEMA_VALUES:,} values)", param, "schema_too_large")
        text = input_text if uses_input(schema) else None
        if text is not None:
            _check_input_words(text, input_param)
        key = json.dumps(schema) + ("" if text is None else f"\0{text}")  # key order matters: the grammar keeps it
        make = lambda: schema_to_grammar(schema, text)  # noqa: E731
    key = f"{model.path}\0{key}"
    found = cache.get(key)
    if found is None:
        try:
            found = _checked_size(make(), param)
            problem = grammar_error(model, found)
            found = ApiError(400, f"{param}: {problem}", param, "invalid_schema") if problem else found
        except SchemaError as error:
            found = ApiError(400, f"{param}: {error.detail} (at {error.where})", param,
                             "unsupported_schema_feature" if error.feature else "invalid_schema")
        except RecursionError:
            found = ApiError(400, f"{param}: nested too deeply", param, "invalid_schema")
        except ApiError as error:
            found = error
        cache.put(key, found)
    if isinstance(found, ApiError):
        raise found
    return found


def _check_input_words(text: str, param: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_INPUT_WORDS_BYTES:
        raise ApiError(413, f"{param}: the schema takes words from this input (x-input-words), and it is {size:,} "
                            f"bytes: at most {MAX_INPUT_WORDS_BYTES:,}", param, "input_too_large")


def _checked_size(grammar: str, param: str) -> str:
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise ApiError(400, f"{param}: its grammar is {len(grammar):,} bytes (at most {MAX_GRAMMAR_BYTES:,})", param,
                       "schema_too_large")
    return grammar


def _job(backend: Backend, model, task: Task, body, prompts: list[list[int]], grammar, max_completion):
    defaults = task.defaults
    pick = lambda name, fallback: (getattr(body, name) if getattr(body, name) is not None  # noqa: E731
                                   else defaults.get(name, fallback))
    n = body.n or 1
    longest = max(len(p) for p in prompts)
    room = model.n_ctx - longest
    if room < 1:
        raise ApiError(400, f"This model's maximum context length is {model.n_ctx} tokens; the prompt has {longest}, "
                            f"which leaves no room for a reply. Shorten it.",
                       "messages" if hasattr(body, "messages") else "prompt", "context_length_exceeded")
    # a reply stops where the context ends (finish_reason "length"), whatever max_tokens asked
    max_tokens = min(max_completion or body.max_tokens or defaults.get("max_tokens") or room, room)
    stop = body.stop if body.stop is not None else defaults.get("stop", ())
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    biases = []
    for key, bias in (body.logit_bias or {}).items():
        token = int(key)
        if token >= model.n_vocab:
            raise ApiError(400, f"logit_bias: token id {token} is outside the vocabulary (0..{model.n_vocab - 1})",
                           "logit_bias")
        biases.append((token, float(bias)))
    sampling = Sampling(max_tokens=max_tokens, temperature=float(pick("temperature", 1.0)),
                        top_p=float(pick("top_p", 1.0)), top_k=int(pick("top_k", 0)), seed=body.seed, stop=stop,
                        logit_bias=tuple(biases), presence_penalty=float(pick("presence_penalty", 0.0)),
                        frequency_penalty=float(pick("frequency_penalty", 0.0)))
    expanded = [prompt for prompt in prompts for _ in range(n)]  # choice i = prompt i // n, sample i % n
    job = Job(model, task.adapter, task.adapter_scale, expanded, sampling, grammar, emit=lambda event: None)
    return job, n


async def _respond(request: Request, backend: Backend, metrics, job: Job, body, n: int, *, chat: bool, route: str,
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
        raise _busy(backend, metrics, route, body.model) from None
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
