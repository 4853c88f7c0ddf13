"""`tinytitan serve`: the OpenAI-compatible local server (FastAPI + uvicorn, llama.cpp engine).

    tinytitan serve                                             # the base model as `gemma-3-270m`
    tinytitan serve runs/ingredients runs/banking77             # each run's recommended artifact
    tinytitan serve --task ingredients=base+runs/ing/export/ing-adapter-f16.gguf --task chat=base
    TINYTITAN_API_KEY=... tinytitan serve --fleet fleet.toml --slots 2 --queue 6

Binds 127.0.0.1 unless told otherwise, and then answers only requests whose Host header is a
loopback name (a web page cannot reach it through DNS rebinding). The API key comes from
$TINYTITAN_API_KEY or --api-key-file (never the command line, which other users see in `ps`) and
protects every route but /health and the playground page at / (the page asks for the key). Connections are bounded and timed (`server.guard`). See
docs/serve.md for the routes, the fleet file and the limits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tinytitan import options
from tinytitan.errors import TinyTitanError

API_KEY_ENV = "TINYTITAN_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]  # the Host header values a loopback server answers


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUN",
                        help="`tinytitan run` folders: serve each run's recommended artifact (its RUN/fleet.toml)")
    parser.add_argument("--task", action="append", default=[], metavar="NAME=ARTIFACT",
                        help="serve ARTIFACT (base | FILE.gguf | base+ADAPTER.gguf | BASE.gguf+ADAPTER.gguf) as model NAME")
    parser.add_argument("--fleet", default=None, help="a fleet file (TOML/YAML/JSON) of tasks; see docs/serve.md")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=options.port, default=8000, help="port (default: 8000)")
    parser.add_argument("--api-key-file", default=None,
                        help=f"require the bearer key in this file (default: ${API_KEY_ENV} if set)")
    parser.add_argument("--slots", type=options.positive_int, default=2, help="requests generated at once (default: 2)")
    parser.add_argument("--queue", type=options.non_negative_int, default=6,
                        help="requests that may wait for a slot; more get 429 (default: 6)")
    parser.add_argument("--threads", "-t", type=options.positive_int, default=None,
                        help="CPU threads in all (default: every core), shared by the slots")
    parser.add_argument("--ctx", type=options.positive_int, default=4096, help="context tokens per slot (default: 4096)")
    parser.add_argument("--max-body", type=options.positive_int, default=1 << 20,
                        help="largest request body in bytes; larger gets 413 (default: 1 MiB)")
    parser.add_argument("--max-connections", type=options.positive_int, default=None,
                        help="open connections at most; requests beyond get 503 (default: 4096, or fewer when the "
                             "process may open fewer files)")


def build(args):
    """(backend, tasks, app) from the arguments: every file is loaded and checked here."""
    from tinytitan.serve.backend import Backend
    from tinytitan.serve.fleet import check_names, default_fleet, load_fleet, load_run, parse_task_flag

    tasks = [task for run in args.runs for task in load_run(run)]
    tasks += (load_fleet(args.fleet) if args.fleet else []) + [parse_task_flag(t) for t in args.task]
    tasks = tasks or default_fleet()
    check_names(tasks)
    backend = Backend(slots=args.slots, queue_size=args.queue, threads=args.threads, n_ctx=args.ctx)
    try:
        from tinytitan.serve.app import create_app

        app = create_app(backend, tasks, api_key=api_key(args), max_body=args.max_body,
                         allowed_hosts=LOOPBACK_NAMES if args.host in LOOPBACK else None)
    except BaseException:
        backend.close()
        raise
    return backend, tasks, app


def run(args) -> None:
    import uvicorn

    backend, tasks, app = build(args)
    secured = bool(api_key(args))
    print(f"tinytitan serve: {len(tasks)} model(s) [{', '.join(t.name for t in tasks)}] on "
          f"http://{args.host}:{args.port}/v1 ({args.slots} slots, queue {args.queue}, "
          f"{'API key required' if secured else 'no API key'}); playground: http://{args.host}:{args.port}/",
          file=sys.stderr, flush=True)
    if args.host not in LOOPBACK and not secured:
        print(f"warning: listening on {args.host} without an API key: anyone on the network can use it",
              file=sys.stderr)
    try:
        uvicorn.Server(uvicorn_config(app, args.host, args.port, args.max_connections)).run()
    except OSError as error:
        raise TinyTitanError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error})") from None


def api_key(args) -> str | None:
    """The key from --api-key-file (its first line) or $TINYTITAN_API_KEY; None: no key."""
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise TinyTitanError(f"--api-key-file {args.api_key_file}: cannot read it "
                                 f"({getattr(error, 'strerror', None) or error})") from None
        if not key or not key[0].strip():
            raise TinyTitanError(f"--api-key-file {args.api_key_file}: empty (expected the key on its first line)")
        return key[0].strip()
    return os.environ.get(API_KEY_ENV) or None


def max_connections(given: int | None) -> int:
    """4096 open connections, or what the process's file limit leaves room for (models, logs, sockets)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = soft - 64 if soft != resource.RLIM_INFINITY else 4096
    return max(1, min(given or 4096, room))


def uvicorn_config(app, host: str, port: int, connections: int | None = None,
                   timeouts: tuple[float, float] | None = None):
    """uvicorn as `tinytitan serve` runs it: the guarded h11 protocol (request and write-stall timeouts:
    `timeouts` replaces guard's defaults), idle keep-alive connections closed after 5 s, at most
    `max_connections` connections."""
    import uvicorn

    from tinytitan.serve.guard import GuardedH11Protocol

    protocol = GuardedH11Protocol
    if timeouts is not None:
        protocol = type("GuardedH11Protocol", (GuardedH11Protocol,),
                        {"request_seconds": timeouts[0], "write_stall_seconds": timeouts[1]})
    return uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30,
                          http=protocol, timeout_keep_alive=5,
                          limit_concurrency=max_connections(connections), backlog=4096)
