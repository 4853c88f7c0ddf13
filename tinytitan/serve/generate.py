"""`tinytitan generate PROMPT`: stream a continuation (or, with --chat, a reply) from either engine.

Text streams to stdout as it is generated; speed and memory go to stderr at the end. A base model
continues text; `--chat` wraps the prompt in the Gemma turn format for instruction-tuned or
fine-tuned models.
"""

from __future__ import annotations

import json
import sys

from tinytitan import options


def add_arguments(parser) -> None:
    parser.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    options.add_model(parser)
    options.add_engine(parser)
    options.add_sampling(parser, max_tokens=128)
    parser.add_argument("--chat", action="store_true", help="send the prompt as a user turn (Gemma format)")
    parser.add_argument("--system", default=None, help="system prompt (with --chat)")
    options.add_json(parser)


def read_prompt(args) -> str:
    from tinytitan.errors import TinyTitanError

    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not text.strip():
        raise TinyTitanError("the prompt is empty")
    if args.system and not args.chat:
        raise TinyTitanError("--system needs --chat (a base continuation has no turns)")
    return text


def prompt_ids(engine, args, text: str) -> list[int]:
    from tinytitan.model.chat_format import Message, encode_chat

    if args.chat:
        messages = ([Message("system", args.system)] if args.system else []) + [Message("user", text)]
        return encode_chat(engine, messages)
    return engine.tokenize(text, bos=True)


def stream_to_stdout(engine, ids: list[int], params, *, show: bool):
    """Generate, writing the text to stdout as it comes when `show`; returns (the text, the last chunk)."""
    text, last = "", None
    for chunk in engine.stream(ids, params):
        text += chunk.text
        last = chunk
        if show:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    return text, last


def run(args) -> None:
    from tinytitan.model.engines import load_engine

    params = options.sampling_from(args)
    text = read_prompt(args)
    with load_engine(args.engine, args.model, threads=args.threads, n_ctx=args.ctx, lora=args.lora) as engine:
        output, last = stream_to_stdout(engine, prompt_ids(engine, args, text), params, show=not args.json)
    stats = {
        "engine": args.engine,
        "prompt_tokens": last.prompt_tokens,
        "generation_tokens": last.generation_tokens,
        "prompt_tps": round(last.prompt_tps, 2),
        "generation_tps": round(last.generation_tps, 2),
        "peak_memory_mb": round(last.peak_memory_mb, 1),
        "finish_reason": last.finish_reason,
    }
    if args.json:
        print(json.dumps({"text": output, **stats}))
    else:
        print()
        print(f"[{args.engine}] prompt {stats['prompt_tokens']} tokens at {stats['prompt_tps']:.1f} tok/s, "
              f"generated {stats['generation_tokens']} at {stats['generation_tps']:.1f} tok/s, "
              f"peak memory {stats['peak_memory_mb']:.0f} MB, finish: {stats['finish_reason']}", file=sys.stderr)
