"""One small interface over two runtimes: `torch` (training, reference) and `llama` (llama.cpp).

An engine tokenizes (never parsing control tokens out of text), streams generations, and scores
token sequences (logits at chosen positions, for perplexity, KL divergence and likelihoods).
Streams yield `GenerationChunk`s carrying prompt and generation speed and peak memory, so
benchmarks read their numbers from the normal API.

Sampling is the same in both engines, as `sampling.SamplingParams` describes it (the one sampling
type, re-exported here).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from tinytitan.errors import TinyTitanError
from tinytitan.model.engines.sampling import MIN_TEMPERATURE, SamplingParams  # noqa: F401 (the one sampling type)

ENGINES = ("llama", "torch")
END_PIECES = ("<eos>", "<end_of_turn>")  # the pieces that end a generation


@dataclass
class GenerationChunk:
    """One step of a stream: the new text, and running statistics."""

    text: str
    token: int | None
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float  # prompt tokens / prefill seconds
    generation_tps: float  # decode steps / seconds, after the first token
    peak_memory_mb: float  # peak resident set size of this process
    finish_reason: str | None = None  # "stop" (end token or stop string) | "length" | None


@dataclass
class Completion:
    text: str
    tokens: list[int] = field(default_factory=list)
    last: GenerationChunk | None = None

    @property
    def finish_reason(self) -> str | None:
        return self.last.finish_reason if self.last else None


def peak_memory_mb() -> float:
    """Peak resident memory of this process. On Linux from /proc (VmHWM): `ru_maxrss` carries over
    the parent's peak into a forked-and-exec'd child, so a measurement process started by a large
    one would report the parent's memory."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Engine:
    """Base class: engines implement the token-level methods; text, stops and timing live here."""

    name = "engine"
    bos_id: int
    end_ids: frozenset[int]  # tokens that end a generation: <eos>, <end_of_turn>
    vocab_size: int
    n_ctx: int  # tokens a sequence may hold

    # --- implemented by each engine -------------------------------------------------------
    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        """Plain text to ids. Text that looks like a control token stays text."""
        raise NotImplementedError

    def detokenize(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_id(self, piece: str) -> int | None:
        """The id of a vocabulary piece such as `<start_of_turn>`, or None."""
        raise NotImplementedError

    def _sample(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Yield sampled token ids; the first `next()` includes the prefill."""
        raise NotImplementedError

    def score(self, ids: Sequence[int], first: int) -> np.ndarray:
        """Logits (float32, [len(ids) - first, vocab]) at positions first .. len(ids)-1 of one pass."""
        raise NotImplementedError

    def target_logprobs(self, ids: Sequence[int], first: int) -> np.ndarray:
        """log P(ids[i+1] | ids[:i+1]) for i = first .. len(ids)-2 (float64): likelihood scoring."""
        ids = list(ids)
        return target_logprobs_of(self.score(ids[:-1], first), ids[first + 1:])

    def logprob_sums(self, requests: Sequence[tuple[Sequence[int], int]]) -> list[float]:
        """For each `(ids, first)`: sum of log P(ids[i] | ids[:i]) over i >= first (first >= 1)."""
        return [float(self.target_logprobs(ids, first - 1).sum()) for ids, first in requests]

    def close(self) -> None:
        pass

    # --- shared -----------------------------------------------------------------------------
    def stream(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[GenerationChunk]:
        prompt_ids = list(prompt_ids)
        if not prompt_ids:
            raise TinyTitanError("the prompt is empty (it must have at least one token)")
        text_out = StopAwareText(params.stop)
        ids: list[int] = []
        start = time.perf_counter()
        prefill_end = first_token_at = start
        prompt_tps = generation_tps = 0.0
        finish = None
        for n, token in enumerate(self._sample(prompt_ids, params), start=1):
            now = time.perf_counter()
            if n == 1:
                prefill_end = first_token_at = now
                prompt_tps = len(prompt_ids) / max(prefill_end - start, 1e-9)
            else:
                generation_tps = (n - 1) / max(now - first_token_at, 1e-9)
            if token in self.end_ids:
                finish = "stop"
            else:
                ids.append(token)
                finish = "length" if n >= params.max_tokens else None
            new_text, hit_stop = text_out.feed(self.detokenize(ids), final=finish is not None)
            if hit_stop:
                finish = "stop"
            yield GenerationChunk(new_text, token, len(prompt_ids), len(ids), prompt_tps, generation_tps,
                                  peak_memory_mb(), finish)
            if finish:
                return

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        completion = Completion("")
        for chunk in self.stream(prompt_ids, params):
            completion.text += chunk.text
            if chunk.token is not None and chunk.token not in self.end_ids:
                completion.tokens.append(chunk.token)
            completion.last = chunk
        return completion

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def target_logprobs_of(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """log-softmax(logits)[row, target] per row, without materializing the log-softmax.
    (torch: its logsumexp runs on all cores; numpy's exp on one.)"""
    import torch

    rows = torch.from_numpy(logits)  # (positions, vocab), shares memory
    index = torch.as_tensor(list(targets), dtype=torch.int64)[:, None]
    picked = rows.gather(1, index)[:, 0]
    return (picked - torch.logsumexp(rows, dim=-1)).double().numpy()


class StopAwareText:
    """Turns the growing decoded text into new pieces, holding back what might begin a stop string
    or an incomplete UTF-8 character, and cutting the text at the first stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.emitted = 0

    def feed(self, text: str, final: bool) -> tuple[str, bool]:
        hits = [at for at in (text.find(stop) for stop in self.stops) if at != -1]
        if hits:
            at = min(hits)  # the earliest stop in the text, whichever it is in the list
            piece = text[self.emitted:at] if at >= self.emitted else ""
            self.emitted = max(self.emitted, at)
            return piece, True
        if final:
            end = len(text)
        else:
            end = len(text.rstrip("\ufffd"))  # an incomplete multi-byte character decodes as U+FFFD
            for stop in self.stops:
                for k in range(min(len(stop) - 1, end), 0, -1):
                    if text[:end].endswith(stop[:k]):
                        end -= k
                        break
        end = max(end, self.emitted)
        piece, self.emitted = text[self.emitted:end], end
        return piece, False


def load_engine(name: str, model: str | None = None, *, threads: int | None = None, n_ctx: int = 4096,
                dtype: str = "float32", lora: str | None = None, lora_scale: float = 1.0, swa_full: bool = False):
    """An engine by name (`llama` or `torch`) on a model (`gemma-3-270m` or a GGUF path), with a GGUF LoRA
    adapter at `lora_scale` (llama only)."""
    from tinytitan.model.registry import resolve

    if name not in ENGINES:
        raise TinyTitanError(f"unknown engine {name!r} (expected one of: {', '.join(ENGINES)})")
    ref = resolve(model)
    if name == "llama":
        from tinytitan.model.engines.llama import LlamaEngine

        return LlamaEngine(ref, threads=threads, n_ctx=n_ctx, lora=lora, lora_scale=lora_scale, swa_full=swa_full)
    if lora:
        raise TinyTitanError("a GGUF LoRA adapter runs in the llama engine (--engine llama)")
    from tinytitan.model.engines.torch import TorchEngine

    return TorchEngine(ref, threads=threads, dtype=dtype)
