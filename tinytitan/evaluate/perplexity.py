"""`tinytitan perplexity FILE`: perplexity of a text file, by llama.cpp's convention.

The convention of `llama-perplexity`, so the numbers compare: the whole file is tokenized with a
BOS in front, cut into non-overlapping chunks of `--ctx` tokens (512), the first token of every
chunk is replaced by BOS, and only the second half of each chunk is scored (every scored token
sees at least ctx/2 tokens of context). The estimate's error is its standard error, as
llama.cpp prints it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytitan import options
from tinytitan.errors import TinyTitanError


@dataclass
class Chunk:
    """One scored chunk: the window's token ids, and the targets of the scored positions."""

    window: list[int]
    first: int  # first position whose logits are scored

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.window[self.first + 1:], dtype=np.int64)  # (ctx - first - 1,)


def read_text(path: str | Path) -> str:
    """The file's text byte for byte (CRLF stays CRLF, as llama.cpp reads it), minus one final newline."""
    path = Path(path)
    if not path.is_file():
        raise TinyTitanError(f"{path}: no such file (expected a UTF-8 text file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise TinyTitanError(f"{path}: not UTF-8 text (bad byte at offset {error.start})") from None
    if not text.strip():
        raise TinyTitanError(f"{path}: the file has no text")
    return text[:-1] if text.endswith("\n") else text


def chunks(tokens: list[int], bos_id: int, ctx: int, n_chunks: int | None) -> list[Chunk]:
    available = len(tokens) // ctx
    if available == 0:
        raise TinyTitanError(f"the text is {len(tokens)} tokens, shorter than one chunk of {ctx} "
                             f"(use a longer text or a smaller --chunk-size)")
    count = available if n_chunks is None else min(n_chunks, available)
    result = []
    for i in range(count):
        window = tokens[i * ctx:(i + 1) * ctx]
        window[0] = bos_id
        result.append(Chunk(window, ctx // 2))
    return result


def log_softmax(logits: np.ndarray):
    """Rows of log-probabilities, as a float32 torch tensor (torch is threaded; numpy's exp is not)."""
    import torch

    return torch.log_softmax(torch.from_numpy(logits), dim=-1)


def chunk_nll(engine, chunk: Chunk) -> np.ndarray:
    """Negative log-likelihood of each scored target token of one chunk."""
    return -engine.target_logprobs(chunk.window, chunk.first)


@dataclass
class PerplexityResult:
    perplexity: float
    stderr: float
    tokens_scored: int
    chunks: int
    ctx: int
    seconds: float

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def perplexity_of(nll: np.ndarray) -> tuple[float, float]:
    """Perplexity and its standard error (llama.cpp's delta-method estimate)."""
    mean = float(nll.mean())
    ppl = math.exp(mean)
    if len(nll) < 2:
        return ppl, float("nan")
    var = float((nll ** 2).mean() - mean ** 2)
    return ppl, ppl * math.sqrt(max(var, 0.0) / (len(nll) - 1))


def run_perplexity(engine, text: str, ctx: int = 512, n_chunks: int | None = None,
                   on_chunk=None) -> PerplexityResult:
    start = time.perf_counter()
    tokens = engine.tokenize(text, bos=True)
    parts = chunks(tokens, engine.bos_id, ctx, n_chunks)
    all_nll = []
    for index, chunk in enumerate(parts, start=1):
        all_nll.append(chunk_nll(engine, chunk))
        if on_chunk:
            on_chunk(index, len(parts), perplexity_of(np.concatenate(all_nll))[0])
    nll = np.concatenate(all_nll)
    ppl, err = perplexity_of(nll)
    return PerplexityResult(ppl, err, len(nll), len(parts), ctx, time.perf_counter() - start)


def add_arguments(parser) -> None:
    parser.add_argument("file", help="a UTF-8 text file (e.g. WikiText-2's wiki.test.raw)")
    options.add_model(parser)
    options.add_engine(parser)
    parser.add_argument("--chunk-size", dest="chunk_size", type=options.positive_int, default=512,
                        help="tokens per chunk (llama-perplexity's -c; default 512)")
    parser.add_argument("--chunks", type=options.positive_int, default=None,
                        help="score at most this many chunks (default: all)")
    options.add_json(parser)


def run(args) -> None:
    from tinytitan.model.engines import load_engine
    from tinytitan.progress import progress_bar

    text = read_text(args.file)
    with load_engine(args.engine, args.model, threads=args.threads, n_ctx=max(args.ctx, args.chunk_size),
                     lora=args.lora) as engine:
        with progress_bar("perplexity") as progress:
            task = progress.add_task("chunks", total=None, note="")

            def on_chunk(done, total, ppl):
                progress.update(task, completed=done, total=total, note=f"ppl {ppl:.4f}")

            result = run_perplexity(engine, text, args.chunk_size, args.chunks, on_chunk)
    if args.json:
        print(json.dumps({"engine": args.engine, "file": str(args.file), **result.as_dict()}))
    else:
        print(f"[{args.engine}] perplexity {result.perplexity:.4f} +/- {result.stderr:.5f} over "
              f"{result.tokens_scored} tokens ({result.chunks} chunks of {result.ctx}) in {result.seconds:.1f} s")
