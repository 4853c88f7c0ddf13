"""The OpenAI-compatible HTTP app (FastAPI): its routes, and what each checks before it may queue.

Every request is checked completely before it may queue: the body's size (413), the API key
(401), every parameter (400, OpenAI's error envelope naming the parameter), the model (404), the
schema (400 naming an unsupported feature) and the prompt's length against the context (400 with
the token counts). Only then is it admitted, or refused at once with 429 and Retry-After when the
slots and the queue are full. Prompts are built by `chat_format` from the messages, control tokens
by id and user text as plain text, never by rendering a template found in a model file.

The pieces: `validation` (pydantic's errors as OpenAI's 400), `grammars` (response formats and task
schemas), `jobs` (a request as a backend job, its sampling included), `responses` (JSON or events).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tinytitan import __version__
from tinytitan.errors import TinyTitanError
from tinytitan.serve import api
from tinytitan.serve.backend import Backend, log
from tinytitan.serve.fleet import Task
from tinytitan.serve.grammars import GrammarCache, request_grammar
from tinytitan.serve.jobs import chat_prompt, check_text, make_job
from tinytitan.serve.limits import ApiError, Limits, error_response
from tinytitan.serve.metrics import Metrics
from tinytitan.serve.responses import refuse_when_full, respond
from tinytitan.serve.validation import validation_error

DEFAULT_MAX_BODY = 1 << 20
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
        refuse_when_full(backend, metrics, "chat", body.model)  # before any work on the request
        check_text(body)
        task = _task(fleet, body.model)
        model = models[task.name]
        user = [m.text() for m in body.messages if m.role == "user"]

        def prepare():  # tokenizing and grammars take time: off the event loop (the grammar's limits first)
            grammar = request_grammar(model, task, body.response_format, grammars, user[-1] if user else "", "messages")
            return [chat_prompt(model, task, body)], grammar

        prompts, grammar = await asyncio.to_thread(prepare)
        job, n = make_job(model, task, body, prompts, grammar, body.max_completion_tokens)
        return await respond(request, backend, metrics, job, body, n, chat=True, route="chat")

    @app.post("/v1/completions", response_model=api.Completion, responses={**post_errors, **stream_doc})
    async def completions(body: api.CompletionRequest, request: Request):
        refuse_when_full(backend, metrics, "completions", body.model)
        check_text(body)
        task = _task(fleet, body.model)
        model = models[task.name]
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt

        def prepare():
            grammar = request_grammar(model, task, body.response_format, grammars, "\n".join(texts), "prompt")
            return [model.tokenize(text, bos=True) for text in texts], grammar  # user text: never control tokens

        prompts, grammar = await asyncio.to_thread(prepare)
        job, n = make_job(model, task, body, prompts, grammar, None)
        echo = texts if body.echo else None
        return await respond(request, backend, metrics, job, body, n, chat=False, route="completions", echo=echo)

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
    from tinytitan.serve.playground import router

    app.include_router(router(fleet, lambda name: _task(fleet, name), backend.slots[0].threads))
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


def _task(fleet: dict, name: str) -> Task:
    if name not in fleet:
        raise ApiError(404, f"The model {name!r} does not exist (available: {', '.join(fleet)})", "model",
                       "model_not_found")
    return fleet[name]
