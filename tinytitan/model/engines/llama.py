"""The llama.cpp engine, through llama-cpp-python: fast CPU generation and scoring of GGUF files.

Generation uses `Llama.generate` (llama.cpp's own sampler chain, KV-cache prefix reuse).
Scoring uses the C API directly: one batch whose logits flags are set only at the positions to
score, so the 262,144-wide LM head runs only there (as `llama-perplexity` does).
The sliding-window layers keep a window-sized KV cache (`swa_full=False`): at 32K tokens the
270M model's cache stays near 100 MB instead of growing for every layer. Likelihood scoring of
many related sequences (`logprob_sums`, benchmarks) asks for the full-size cache instead, so the
prefix shared with the previous sequence is decoded once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator, Sequence

import numpy as np

from tinytitan.model.engines import MIN_TEMPERATURE, Engine, SamplingParams, target_logprobs_of
from tinytitan.errors import ModelFileError, TinyTitanError
from tinytitan.model.registry import ModelRef

END_PIECES = ("<eos>", "<end_of_turn>")


@contextlib.contextmanager
def quiet_native_stderr():
    """llama.cpp prints load-time notes (e.g. per-tensor adapter placement) straight to fd 2; a CLI
    user gets one line per problem instead. TINYTITAN_DEBUG=1 keeps them."""
    if os.environ.get("TINYTITAN_DEBUG"):
        yield
        return
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def check_adapter(path: str, base: ModelRef):
    """A LoRA adapter GGUF for this base: validated here, before llama.cpp sees it."""
    from pathlib import Path

    from tinytitan.model.gguf import read_gguf

    adapter = read_gguf(Path(path))
    if adapter.get("general.type") != "adapter" or adapter.get("adapter.type") != "lora":
        raise ModelFileError(f"{path}: not a LoRA adapter GGUF (general.type is {adapter.get('general.type')!r})")
    if adapter.architecture != base.gguf.architecture:
        raise ModelFileError(f"{path}: an adapter for {adapter.architecture!r}, but the base model is "
                             f"{base.gguf.architecture!r}")
    # llama.cpp crashes on an adapter whose matrices do not fit the base's (e.g. made for another size)
    shapes = {t.name: t.shape for t in base.gguf.tensors}
    for tensor in adapter.tensors:
        if not tensor.name.endswith((".lora_a", ".lora_b")):
            continue
        target = tensor.name.rsplit(".", 1)[0]
        if target not in shapes:
            raise ModelFileError(f"{path}: adapts {target}, which the base model {base.path} does not have")
        expected = shapes[target][0] if tensor.name.endswith(".lora_a") else shapes[target][1]
        got = tensor.shape[0] if tensor.name.endswith(".lora_a") else tensor.shape[1]
        if got != expected:
            raise ModelFileError(f"{path}: {tensor.name} has shape {list(tensor.shape)}, which does not fit "
                                 f"{target} {list(shapes[target])} of {base.path} (an adapter for another model?)")
    return adapter.path


class LlamaEngine(Engine):
    name = "llama"

    def __init__(self, ref: ModelRef, *, threads: int | None = None, n_ctx: int = 4096, n_batch: int = 512,
                 lora: str | None = None, lora_scale: float = 1.0, swa_full: bool = False):
        import llama_cpp

        self.ref = ref
        self.lora = check_adapter(lora, ref) if lora else None
        self.threads = threads or os.cpu_count() or 1
        trained = ref.gguf.arch_key("context_length")
        if trained:  # a longer context than the model was trained for only produces garbage
            n_ctx = min(n_ctx, int(trained))
        try:
            with quiet_native_stderr():
                self.llm = llama_cpp.Llama(
                    model_path=str(ref.path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                    n_threads=self.threads, n_threads_batch=self.threads, swa_full=swa_full, flash_attn=True,
                    verbose=False, lora_path=str(self.lora) if self.lora else None, lora_scale=lora_scale,
                )
        except ValueError as error:  # llama-cpp-python reports load failures as ValueError
            what = f"this model with the adapter {self.lora}" if self.lora else "this model"
            raise ModelFileError(f"{ref.path}: llama.cpp cannot load {what} ({error})") from None
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.vocab_size = self.llm.n_vocab()
        self.bos_id = self.llm.token_bos()
        self.end_ids = frozenset(i for i in (self.token_id(p) for p in END_PIECES) if i is not None)
        self._pieces: dict[str, int] | None = None
        self.swa_full = swa_full  # a full-size sliding-window cache allows prefix reuse while scoring
        self._scored: list[int] = []  # tokens the cache holds from the last `logprob_sums`
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)  # for `engines.sampling.Sampler`
        self.n_vocab = self.vocab_size
        self._batch_ctx = None  # (sequences, tokens per sequence, context) for generate_greedy_batch

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        import llama_cpp

        # one call with a buffer that surely fits (a token covers at least one byte); the wrapper's
        # Llama.tokenize guesses 32K first and tokenizes long texts twice
        data = text.encode("utf-8")
        buffer = (llama_cpp.llama_token * (len(data) + 1))()
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buffer, len(buffer), False, False)
        if n < 0:
            raise TinyTitanError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
        ids = buffer[:n]
        return [self.bos_id, *ids] if bos else ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def piece(self, token: int) -> bytes:
        """The bytes one generated token adds to the text."""
        return self.llm.detokenize([token])

    def token_id(self, piece: str) -> int | None:
        import llama_cpp

        ids = self.llm.tokenize(piece.encode("utf-8"), add_bos=False, special=True)
        if len(ids) == 1:
            vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
            text = llama_cpp.llama_vocab_get_text(vocab, ids[0])
            if text is not None and text.decode("utf-8", errors="replace") == piece:
                return ids[0]
        return None

    def _check_length(self, n_tokens: int) -> None:
        if n_tokens > self.n_ctx:
            raise TinyTitanError(f"{n_tokens} tokens do not fit the context of {self.n_ctx} tokens "
                                 f"(shorten the input or raise --ctx)")

    def _sample(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        self._check_length(len(prompt_ids) + params.max_tokens)
        self.llm.set_seed(params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little"))
        yield from self.llm.generate(
            prompt_ids, top_k=params.top_k, top_p=params.top_p, min_p=0.0, typical_p=1.0,
            temp=params.temperature if params.temperature >= MIN_TEMPERATURE else 0.0, repeat_penalty=1.0,
        )

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
        import llama_cpp

        ids = list(ids)
        self._check_length(len(ids))
        memory = llama_cpp.llama_get_memory(self.llm.ctx)
        llama_cpp.llama_memory_clear(memory, True)
        self.llm.n_tokens = 0  # the high-level object's view of the cache, now empty
        self._scored = []
        try:
            results = self._decode(ids, 0, first, use)
        finally:
            llama_cpp.llama_memory_clear(memory, True)
        if not results:
            return np.zeros((0, self.vocab_size), np.float32)
        return np.concatenate(results)

    def _decode(self, ids: Sequence[int], start_pos: int, first: int, use) -> list:
        """Decode `ids` at positions start_pos.. onto the cache, logits at positions >= first."""
        import llama_cpp

        results, row = [], 0
        batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        try:
            for offset in range(0, len(ids), self.n_batch):
                part = ids[offset:offset + self.n_batch]
                start = start_pos + offset
                for i, token in enumerate(part):
                    batch.token[i] = token
                    batch.pos[i] = start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = start + i >= first
                batch.n_tokens = len(part)
                if llama_cpp.llama_decode(self.llm.ctx, batch) != 0:
                    raise TinyTitanError(f"llama.cpp failed to decode a batch of {len(part)} tokens")
                n_out = len(part) - max(0, min(len(part), first - start))
                if n_out:
                    pointer = ctypes.cast(llama_cpp.llama_get_logits(self.llm.ctx), ctypes.POINTER(ctypes.c_float))
                    results.append(use(np.ctypeslib.as_array(pointer, shape=(n_out, self.vocab_size)), row))
                    row += n_out
        finally:
            llama_cpp.llama_batch_free(batch)
        return results

    def logprob_sums(self, requests: Sequence[tuple[Sequence[int], int]]) -> list[float]:
        """For each `(ids, first)`: sum of log P(ids[i] | ids[:i]) over i >= first (first >= 1).

        The cache is kept between requests: a request decodes only what follows the prefix it
        shares with the previous one (the few-shot examples, the question before each choice),
        from position first - 1 at the latest. Needs the full-size sliding-window cache."""
        import llama_cpp

        memory = llama_cpp.llama_get_memory(self.llm.ctx)
        if self.llm.n_tokens or not self.swa_full:  # `generate` has used the cache since, or no reuse
            llama_cpp.llama_memory_clear(memory, True)
            self.llm.n_tokens = 0
            self._scored = []
        sums = []
        for ids, first in requests:
            ids = list(ids)
            if not 1 <= first < len(ids):
                raise TinyTitanError(f"nothing to score: first={first} for {len(ids)} tokens")
            self._check_length(len(ids))
            keep = 0
            if self.swa_full:
                limit = min(len(self._scored), first - 1)
                while keep < limit and self._scored[keep] == ids[keep]:
                    keep += 1
            llama_cpp.llama_memory_seq_rm(memory, 0, keep, -1)
            self._scored = ids[:keep]
            targets = ids[first:]
            parts = self._decode(ids[keep:-1], keep, first - 1,
                                 lambda view, row: target_logprobs_of(view, targets[row:row + len(view)]))
            self._scored = ids[:-1] if self.swa_full else []
            if not self.swa_full:
                llama_cpp.llama_memory_clear(memory, True)
            sums.append(float(np.concatenate(parts).sum()))
        return sums

    def generate_greedy_batch(self, prompts: Sequence[Sequence[int]], max_tokens: int, *,
                              budgets: Sequence[int] | None = None, grammars: Sequence[str] | None = None,
                              sequences: int = 16) -> list[str]:
        """Greedy completions of many prompts, `sequences` at a time in one llama.cpp context: each step
        decodes one token of every unfinished sequence in a single batch, which on a CPU costs little
        more than one token alone. With `grammars` (GBNF, one per prompt), each sequence is constrained
        by its own (`engines.sampling`). A completion ends at <end_of_turn>/<eos> or after its budget."""
        import llama_cpp

        prompts = [list(p) for p in prompts]
        budgets = [min(b, max_tokens) for b in (budgets or [max_tokens] * len(prompts))]
        if not prompts:
            return []
        if grammars is not None and len(grammars) != len(prompts):
            raise ValueError(f"{len(grammars)} grammars for {len(prompts)} prompts")
        room = max(len(p) + b for p, b in zip(prompts, budgets))
        self._check_length(room)
        ctx = self._batch_context(min(sequences, len(prompts)), room)
        results: list[str] = [""] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths decode together
        batch = llama_cpp.llama_batch_init(max(self.n_batch, sequences), 0, 1)
        try:
            for start in range(0, len(order), sequences):
                group = order[start:start + sequences]
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                states = []  # [row, seq, position, tokens, sampler, next token]
                try:
                    self._run_group(ctx, batch, group, prompts, budgets, grammars, states, results)
                finally:
                    for state in states:
                        if state[4] is not None:
                            state[4].close()
        finally:
            llama_cpp.llama_batch_free(batch)
        return results

    def _run_group(self, ctx, batch, group, prompts, budgets, grammars, states, results) -> None:
        """Decode one group of prompts to the end (`states` collects each sequence's state)."""
        import llama_cpp

        from tinytitan.model.engines.sampling import Sampler, Sampling

        for seq, row in enumerate(group):
            prompt = prompts[row]
            for offset in range(0, len(prompt), self.n_batch):
                part = prompt[offset:offset + self.n_batch]
                self._fill(batch, [(t, offset + k, seq, offset + k == len(prompt) - 1)
                                   for k, t in enumerate(part)])
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise TinyTitanError(f"llama.cpp failed to decode a prompt of {len(prompt)} tokens")
            sampler = Sampler(self, Sampling(max_tokens=budgets[row], temperature=0), grammars[row]) \
                if grammars else None
            first = self._pick(ctx, sampler, batch.n_tokens - 1)
            states.append([row, seq, len(prompt), [], sampler, first])
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
            self._fill(batch, [(s[3][-1], s[2], s[1], True) for s in active])
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise TinyTitanError("llama.cpp failed to decode a batch of tokens")
            for index, state in enumerate(active):
                state[2] += 1
                state[5] = self._pick(ctx, state[4], index)
        for row, _, _, tokens, _, _ in states:
            results[row] = self.detokenize(tokens)

    def _pick(self, ctx, sampler, index: int) -> int:
        import llama_cpp

        if sampler is not None:
            return sampler.sample(ctx, index)
        pointer = ctypes.cast(llama_cpp.llama_get_logits_ith(ctx, index), ctypes.POINTER(ctypes.c_float))
        return int(np.argmax(np.ctypeslib.as_array(pointer, shape=(self.vocab_size,))))

    @staticmethod
    def _fill(batch, entries) -> None:
        """entries: (token, position, sequence, wants logits)."""
        for i, (token, position, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)

    def _batch_context(self, sequences: int, per_sequence: int):
        """A context for `sequences` parallel sequences (the engine's adapter set on it), made once."""
        import llama_cpp

        per_sequence = -(-per_sequence // 256) * 256
        if self._batch_ctx and self._batch_ctx[0] >= sequences and self._batch_ctx[1] >= per_sequence:
            return self._batch_ctx[2]
        self._free_batch_context()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = sequences * per_sequence
        params.n_batch = params.n_ubatch = max(self.n_batch, sequences)
        params.n_seq_max = sequences
        params.kv_unified = True  # one cache for all sequences: any subset of them decodes as one batch
        params.n_threads = params.n_threads_batch = self.threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.swa_full = False
        params.no_perf = True
        with quiet_native_stderr():
            ctx = llama_cpp.llama_init_from_model(self.llm.model, params)
        if not ctx:
            raise TinyTitanError(f"llama.cpp could not make a context for {sequences} sequences")
        adapter = getattr(self.llm, "_lora_adapter", None)
        if adapter:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(self.llm.lora_scale)
            if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales) != 0:
                llama_cpp.llama_free(ctx)
                raise TinyTitanError(f"llama.cpp could not set the adapter {self.lora} on a batch context")
        self._batch_ctx = (sequences, per_sequence, ctx)
        return ctx

    def _free_batch_context(self) -> None:
        if self._batch_ctx:
            import llama_cpp

            llama_cpp.llama_free(self._batch_ctx[2])
            self._batch_ctx = None

    def close(self) -> None:
        self._free_batch_context()
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None
