"""`tinytitan chat`: a conversation in the Gemma turn format, at a terminal or over piped stdin.

At a terminal: type a message, get a streamed reply; `/reset` forgets the conversation,
`/exit` (or Ctrl-D) leaves. Piped: every input line is one user message and the replies are
printed in order (one JSON object per line with --json), so scripts can drive it.

With `--server URL` the conversation runs on a tinytitan server (`tinytitan serve`, or any
OpenAI-compatible server): `--model` names one of its models (default: its first).

Gemma 3 270M as shipped is a base (pretrained) model: it continues text and was not trained to
follow turns, so its replies in chat are rough. Fine-tuned or instruction-tuned models chat well.
"""

from __future__ import annotations

import json
import sys

from tinytitan import options

BASE_MODEL_NOTE = ("note: {name} is a base (pretrained) model: it continues text rather than following "
                   "instructions, so chat replies will be rough. Fine-tune it (or use an instruction-tuned "
                   "GGUF) for a real assistant; `tinytitan generate` shows what it does best.")


def add_arguments(parser) -> None:
    options.add_model(parser)
    options.add_engine(parser)
    options.add_sampling(parser, max_tokens=256)
    parser.add_argument("--system", default=None, help="system prompt for the conversation")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="talk to a running server (e.g. http://127.0.0.1:8000) instead of loading a model")
    parser.add_argument("--api-key", default=None, help="the server's API key (default: $TINYTITAN_API_KEY)")
    options.add_json(parser)


def is_base_model(gguf) -> bool:
    """A pretrained checkpoint: no fine-tune recorded in its metadata (by its maker or by us)."""
    return "general.finetune" not in gguf.metadata and "tinytitan.run" not in gguf.metadata


def run(args) -> None:
    from tinytitan.model.chat_format import Message
    from tinytitan.model.engines import load_engine
    from tinytitan.serve.generate import stream_to_stdout

    params = options.sampling_from(args)
    interactive = sys.stdin.isatty()
    if args.server:
        return run_remote(args, params, interactive)
    with load_engine(args.engine, args.model, threads=args.threads, n_ctx=args.ctx, lora=args.lora) as engine:
        if is_base_model(engine.ref.gguf):
            print(BASE_MODEL_NOTE.format(name=engine.ref.name), file=sys.stderr)
        if interactive:
            print("type a message; /reset forgets the conversation, /exit leaves", file=sys.stderr)
        history: list[Message] = [Message("system", args.system)] if args.system else []
        for line in _lines(interactive):
            command = line.strip()
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                history = history[:1] if args.system else []
                print("(conversation forgotten)", file=sys.stderr)
                continue
            if not command:
                continue
            history.append(Message("user", line))
            history, ids = fit_context(engine, history, params.max_tokens)
            reply, last = stream_to_stdout(engine, ids, params, show=not args.json)
            history.append(Message("assistant", reply))
            if args.json:
                print(json.dumps({"user": line, "reply": reply, "finish_reason": last.finish_reason,
                                  "generation_tps": round(last.generation_tps, 2)}), flush=True)
            else:
                print(flush=True)


def run_remote(args, params, interactive: bool) -> None:
    """The same conversation loop, each reply streamed from a server."""
    import os

    from tinytitan.model.registry import DEFAULT_MODEL
    from tinytitan.serve.client import Client, ServerError

    client = Client(args.server, args.api_key or os.environ.get("TINYTITAN_API_KEY"))
    available = client.models()
    model = args.model
    if model == DEFAULT_MODEL and model not in available and available:
        model = available[0]
    if model not in available:
        from tinytitan.errors import TinyTitanError

        raise TinyTitanError(f"the server has no model {model!r} (it serves: {', '.join(available)})")
    if interactive:
        print(f"chatting with {model} at {client.base}; /reset forgets the conversation, /exit leaves",
              file=sys.stderr)
    sampling = {"max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p}
    sampling.update({k: v for k, v in (("top_k", params.top_k or None), ("seed", params.seed),
                                       ("stop", list(params.stop) or None)) if v is not None})
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    for line in _lines(interactive):
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history = []
            print("(conversation forgotten)", file=sys.stderr)
            continue
        if not command:
            continue
        history.append({"role": "user", "content": line})
        while True:
            try:
                reply, finish = "", None
                for text, reason in client.stream_chat(model, system + history, **sampling):
                    reply += text
                    finish = reason or finish
                    if not args.json:
                        sys.stdout.write(text)
                        sys.stdout.flush()
                break
            except ServerError as error:  # too long: forget the oldest exchange and ask again
                if error.code != "context_length_exceeded" or len(history) <= 1:
                    raise
                history = history[2:]
        history.append({"role": "assistant", "content": reply})
        if args.json:
            print(json.dumps({"user": line, "reply": reply, "finish_reason": finish}), flush=True)
        else:
            print(flush=True)


def fit_context(engine, history, max_tokens: int):
    """Drop the oldest exchanges until the conversation and the reply fit the context."""
    from tinytitan.model.chat_format import encode_chat
    from tinytitan.errors import TinyTitanError

    keep = 1 if history and history[0].role == "system" else 0
    while True:
        ids = encode_chat(engine, history)
        if len(ids) + max_tokens <= engine.n_ctx:
            return history, ids
        if len(history) - keep <= 1:
            raise TinyTitanError(f"the message is {len(ids)} tokens; with --max-tokens {max_tokens} it does "
                                 f"not fit the context of {engine.n_ctx} tokens (raise --ctx)")
        history = history[:keep] + history[keep + 2:]


def _lines(interactive: bool):
    while True:
        if interactive:
            try:
                line = input(">>> ")
            except EOFError:
                print(file=sys.stderr)
                return
        else:
            line = sys.stdin.readline()
            if not line:
                return
            line = line.rstrip("\n")
        yield line
