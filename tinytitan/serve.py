"""`tinytitan serve`: the OpenAI-compatible local server (FastAPI + uvicorn, llama.cpp engine).

    tinytitan serve                                             # the base model as `gemma-3-270m`
    tinytitan serve --task ingredients=base+runs/ing/export/ing-adapter-f16.gguf --task chat=base
    tinytitan serve --fleet fleet.toml --slots 2 --queue 6 --api-key "$KEY"

Binds 127.0.0.1 unless told otherwise. The API key comes from --api-key or $TINYTITAN_API_KEY and
protects every route but /health. See docs/serve.md for the routes, the fleet file and the limits.
"""

from __future__ import annotations

import os
import sys

from tinytitan import options
from tinytitan.errors import TinyTitanError

API_KEY_ENV = "TINYTITAN_API_KEY"


def add_arguments(parser) -> None:
    parser.add_argument("--task", action="append", default=[], metavar="NAME=ARTIFACT",
                        help="serve ARTIFACT (base | FILE.gguf | base+ADAPTER.gguf | BASE.gguf+ADAPTER.gguf) as model NAME")
    parser.add_argument("--fleet", default=None, help="a fleet file (TOML/YAML/JSON) of tasks; see docs/serve.md")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=options.port, default=8000, help="port (default: 8000)")
    parser.add_argument("--api-key", default=None, help=f"require this bearer key (default: ${API_KEY_ENV} if set)")
    parser.add_argument("--slots", type=options.positive_int, default=2, help="requests generated at once (default: 2)")
    parser.add_argument("--queue", type=options.non_negative_int, default=6,
                        help="requests that may wait for a slot; more get 429 (default: 6)")
    parser.add_argument("--threads", "-t", type=options.positive_int, default=None,
                        help="CPU threads in all (default: every core), shared by the slots")
    parser.add_argument("--ctx", type=options.positive_int, default=4096, help="context tokens per slot (default: 4096)")
    parser.add_argument("--max-body", type=options.positive_int, default=1 << 20,
                        help="largest request body in bytes; larger gets 413 (default: 1 MiB)")


def build(args):
    """(backend, tasks, app) from the arguments: every file is loaded and checked here."""
    from tinytitan.server.backend import Backend
    from tinytitan.server.fleet import check_names, default_fleet, load_fleet, parse_task_flag

    tasks = (load_fleet(args.fleet) if args.fleet else []) + [parse_task_flag(t) for t in args.task]
    tasks = tasks or default_fleet()
    check_names(tasks)
    backend = Backend(slots=args.slots, queue_size=args.queue, threads=args.threads, n_ctx=args.ctx)
    try:
        from tinytitan.server.app import create_app

        app = create_app(backend, tasks, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                         max_body=args.max_body)
    except BaseException:
        backend.close()
        raise
    return backend, tasks, app


def run(args) -> None:
    import uvicorn

    backend, tasks, app = build(args)
    secured = bool(args.api_key or os.environ.get(API_KEY_ENV))
    print(f"tinytitan serve: {len(tasks)} model(s) [{', '.join(t.name for t in tasks)}] on "
          f"http://{args.host}:{args.port}/v1 ({args.slots} slots, queue {args.queue}, "
          f"{'API key required' if secured else 'no API key'})", file=sys.stderr, flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not secured:
        print(f"warning: listening on {args.host} without an API key: anyone on the network can use it",
              file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    except OSError as error:
        raise TinyTitanError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error})") from None
