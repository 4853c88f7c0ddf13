"""The llama.cpp engine: fast CPU generation and scoring of GGUF files, on `runtime`.

Generation samples with `sampling.Sampler` (the server's sampler too) and keeps the KV cache's
prefix that a new prompt shares with the last one (a conversation decodes only its new turn).
Scoring decodes one batch whose logits flags are set only at the positions to score, so the
262,144-wide LM head runs only there (as `llama-perplexity` does).
The sliding-window layers keep a window-sized KV cache (`swa_full=False`): at 32K tokens the
270M model's cache stays near 100 MB instead of growing for every layer. Likelihood scoring of
many related sequences (`logprob_sums`, benchmarks) asks for the full-size cache instead, so the
prefix shared with the previous sequence is decoded once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from tinytitan.errors import TinyTitanError
from tinytitan.model.engines import Engine, SamplingParams, target_logprobs_of
from tinytitan.model.engines.runtime import LoadedModel
from tinytitan.model.engines.sampling import Sampler
from tinytitan.model.registry import ModelRef


class LlamaEngine(Engine):
    """`context` is the engine's llama.cpp context (runtime.Context): scoring and generation run on it."""

    name = "llama"

    def __init__(self, ref: ModelRef, *, threads: int | None = None, n_ctx: int = 4096, n_batch: int = 512,
                 lora: str | None = None, lora_scale: float = 1.0, swa_full: bool = False):
        self.ref = ref
        self.threads = threads or os.cpu_count() or 1
        self.model = LoadedModel(ref, n_ctx)
        self.lora, self.lora_scale = (Path(lora) if lora else None), lora_scale
        self.context = None
        try:
            self.context = self.model.new_context(self.threads, n_batch=n_batch, swa_full=swa_full)
            if self.lora:
                self.context.set_adapter(self.lora, lora_scale)  # validated and loaded once, here
        except BaseException:
            if self.context is not None:
                self.context.free()
            self.model.close()
            raise
        self.n_ctx = self.model.n_ctx
        self.n_batch = n_batch
        self.vocab_size = self.model.n_vocab
        self.bos_id = self.model.bos_id
        self.end_ids = self.model.end_ids
        self.swa_full = swa_full  # a full-size sliding-window cache allows prefix reuse while scoring
        self._cache_use: str | None = None  # "generate" or "score": what filled the cache
        self._batch_ctx = None  # (sequences, tokens per sequence, Context) for generate_greedy_batch

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        return self.model.tokenize(text, bos=bos)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.model.detokenize(list(ids))

    def piece(self, token: int) -> bytes:
        """The bytes one generated token adds to the text."""
        return self.model.piece(token)

    def token_id(self, piece: str) -> int | None:
        return self.model.token_id(piece)

    def _check_length(self, n_tokens: int) -> None:
        if n_tokens > self.n_ctx:
            raise TinyTitanError(f"{n_tokens} tokens do not fit the context of {self.n_ctx} tokens "
                                 f"(shorten the input or raise --ctx)")

    def _cache_for(self, use: str) -> None:
        """A cache that another kind of call filled starts empty: its prefix was decoded in other
        pieces, and reusing it would change the last bits of the results."""
        if self._cache_use != use:
            self.context.clear()
            self._cache_use = use

    def _sample(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        self._check_length(len(prompt_ids) + params.max_tokens)
        self._cache_for("generate")
        keep = self.context.keep_prefix(prompt_ids, len(prompt_ids) - 1)  # the last token gives the logits
        self.context.prefill(prompt_ids[keep:], keep)
        sampler = Sampler(self.model, params, None)
        position = len(prompt_ids)
        try:
            while True:  # the caller stops at max_tokens or an end token
                token = sampler.sample(self.context)
                yield token
                self.context.decode([token], position)
                position += 1
        finally:
            sampler.close()

    def score(self, ids: Sequence[int], first: int) -> np.ndarray:
        """Logits at positions first..len(ids)-1, from one fresh pass over `ids`."""
        return self._with_logits(ids, first, lambda view, row: view.copy())

    def target_logprobs(self, ids: Sequence[int], first: int) -> np.ndarray:
        # computed on llama.cpp's own logits buffer: no copy of [positions x vocab] floats
        ids = list(ids)
        targets = ids[first + 1:]
        return self._with_logits(ids[:-1], first,
                                 lambda view, row: target_logprobs_of(view, targets[row:row + len(view)]))

    def _with_logits(self, ids: Sequence[int], first: int, use):
        """Decode `ids` from an empty cache with logits at positions >= first; `use(view, row)` reads
        them batch by batch (view: [outputs, vocab] float32 over llama.cpp's buffer, valid only inside
        `use`; row: the index of its first output among all outputs)."""
        ids = list(ids)
        self._check_length(len(ids))
        self._cache_for("score")
        self.context.clear()
        try:
            results = self._decode(ids, 0, first, use)
        finally:
            self.context.clear()
        if not results:
            return np.zeros((0, self.vocab_size), np.float32)
        return np.concatenate(results)

    def _decode(self, ids: Sequence[int], start: int, first: int, use) -> list:
        """Decode `ids` at positions start.. onto the cache, logits at positions >= first."""
        results, row = [], 0
        for offset in range(0, len(ids), self.n_batch):
            n_out = self.context.decode(ids[offset:offset + self.n_batch], start + offset, logits_from=first)
            if n_out:
                results.append(use(self.context.outputs(n_out), row))
                row += n_out
        return results

    def logprob_sums(self, requests: Sequence[tuple[Sequence[int], int]]) -> list[float]:
        """For each `(ids, first)`: sum of log P(ids[i] | ids[:i]) over i >= first (first >= 1).

        With the full-size sliding-window cache, the cache is kept between requests: a request decodes
        only what follows the prefix it shares with the previous one (the few-shot examples, the
        question before each choice), from position first - 1 at the latest."""
        self._cache_for("score")
        sums = []
        for ids, first in requests:
            ids = list(ids)
            if not 1 <= first < len(ids):
                raise TinyTitanError(f"nothing to score: first={first} for {len(ids)} tokens")
            self._check_length(len(ids))
            keep = self.context.keep_prefix(ids, first - 1 if self.swa_full else 0)
            targets = ids[first:]
            parts = self._decode(ids[keep:-1], keep, first - 1,
                                 lambda view, row: target_logprobs_of(view, targets[row:row + len(view)]))
            if not self.swa_full:
                self.context.clear()
            sums.append(float(np.concatenate(parts).sum()))
        return sums

    def generate_greedy_batch(self, prompts: Sequence[Sequence[int]], max_tokens: int, *,
                              budgets: Sequence[int] | None = None, grammars: Sequence[str] | None = None,
                              sequences: int = 16, logprobs: list | None = None,
                              on_done: Callable[[int], None] | None = None) -> list[str]:
        """Greedy completions of many prompts, `sequences` at a time in one llama.cpp context: each step
        decodes one token of every unfinished sequence in a single batch, which on a CPU costs little
        more than one token alone. With `grammars` (GBNF, one per prompt), each sequence is constrained
        by its own (`engines.sampling`). A completion ends at <end_of_turn>/<eos> or after its budget.
        `logprobs`: a list this fills with one (log-probs, ended) pair per prompt: the model's own
        (unconstrained) log-prob of each token it picked, the end of turn included when it ended there,
        and whether it did (False: cut by its budget). `on_done(n)`: after each group, the prompts finished."""
        prompts = [list(p) for p in prompts]
        budgets = [min(b, max_tokens) for b in (budgets or [max_tokens] * len(prompts))]
        if not prompts:
            return []
        if grammars is not None and len(grammars) != len(prompts):
            raise ValueError(f"{len(grammars)} grammars for {len(prompts)} prompts")
        room = max(len(p) + b for p, b in zip(prompts, budgets))
        self._check_length(room)
        context = self._batch_context(min(sequences, len(prompts)), room)
        results: list[str] = [""] * len(prompts)
        picked: list | None = [None] * len(prompts) if logprobs is not None else None
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths decode together
        for start in range(0, len(order), sequences):
            group = order[start:start + sequences]
            context.clear()
            samplers = [Sampler(self.model, SamplingParams(max_tokens=budgets[row]), grammars[row]) if grammars
                        else None for row in group]
            try:
                self._run_group(context, group, prompts, budgets, samplers, results, picked)
            finally:
                for sampler in samplers:
                    if sampler is not None:
                        sampler.close()
            if on_done is not None:
                on_done(start + len(group))
        if logprobs is not None:
            logprobs.extend((np.asarray(scores, dtype=np.float32), ended) for scores, ended in picked)
        return results

    def _run_group(self, context, group, prompts, budgets, samplers, results, picked=None) -> None:
        """Decode one group of prompts to the end, sequence `seq` for `group[seq]` (`picked`: each row's
        log-probs of its tokens, when wanted)."""
        states = []  # [row, seq, position, tokens, sampler, next token]
        scores = {row: [] for row in group}

        def pick(sampler, index: int, row: int) -> int:
            token = self._pick(context, sampler, index)
            if picked is not None:
                logits = context.logits(index).astype(np.float64)
                top = logits.max()
                scores[row].append(float(logits[token] - top - np.log(np.exp(logits - top).sum())))
            return token

        for seq, row in enumerate(group):
            context.prefill(prompts[row], 0, seq=seq)
            states.append([row, seq, len(prompts[row]), [], samplers[seq], pick(samplers[seq], -1, row)])
        while True:
            active = []
            for state in states:
                row, _, _, tokens, _, token = state
                if token is None:
                    continue
                if token in self.end_ids:
                    state[5] = None
                    continue
                tokens.append(token)
                if len(tokens) >= budgets[row]:
                    state[5] = None
                    continue
                active.append(state)
            if not active:
                break
            context.decode_entries([(s[3][-1], s[2], s[1], True) for s in active])
            for index, state in enumerate(active):
                state[2] += 1
                state[5] = pick(state[4], index, state[0])
        for row, _, _, tokens, _, _ in states:
            results[row] = self.detokenize(tokens)
            if picked is not None:
                picked[row] = (scores[row], len(scores[row]) > len(tokens))  # the end's pick follows the tokens

    @staticmethod
    def _pick(context, sampler, index: int) -> int:
        if sampler is not None:
            return sampler.sample(context, index)
        return int(np.argmax(context.logits(index)))

    def _batch_context(self, sequences: int, per_sequence: int):
        """A context for `sequences` parallel sequences (the engine's adapter set on it), made once."""
        per_sequence = -(-per_sequence // 256) * 256
        if self._batch_ctx and self._batch_ctx[0] >= sequences and self._batch_ctx[1] >= per_sequence:
            return self._batch_ctx[2]
        self._free_batch_context()
        context = self.model.new_context(self.threads, n_ctx=sequences * per_sequence,
                                     n_batch=max(self.n_batch, sequences), sequences=sequences)
        if self.lora:
            try:
                context.set_adapter(self.lora, self.lora_scale)
            except BaseException:
                context.free()
                raise
        self._batch_ctx = (sequences, per_sequence, context)
        return context

    def _free_batch_context(self) -> None:
        if self._batch_ctx:
            self._batch_ctx[2].free()
            self._batch_ctx = None

    def close(self) -> None:
        self._free_batch_context()
        if getattr(self, "model", None) is not None:
            self.context.free()
            self.model.close()
            self.model = None
