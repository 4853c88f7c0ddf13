"""The serving backend: llama.cpp models loaded once, N generation slots, a bounded queue.

- Each base GGUF is loaded once (`llama_model`), each LoRA adapter once against its base; a
  request's adapter is set on the slot's context just before its prompt is decoded
  (`llama_set_adapters_lora`), so tasks that share a base share its memory and never see each
  other's adapter.
- A slot is a worker thread with a llama.cpp context of its own per model (its own KV cache);
  slots run requests first come, first served and never preempt one another.
- Admission is bounded: `capacity` = slots + queue; a request beyond it is refused at once
  (`QueueFull`, HTTP 429) and nothing already accepted is ever dropped.
- A job is cancelled (client gone) between prefill chunks and between tokens, so its slot is free
  again within one decode step.
- Sampling, structured output included, is `engines.sampling.Sampler`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tinytitan.model.engines import StopAwareText
from tinytitan.model.engines.llama import END_PIECES, check_adapter, quiet_native_stderr
from tinytitan.model.engines.sampling import Sampler, Sampling
from tinytitan.errors import ModelFileError, TinyTitanError

log = logging.getLogger("tinytitan.serve")
PREFILL_CHUNK = 128  # tokens per prefill decode: a cancelled job stops within one chunk (~0.2 s)
STALL_SECONDS = 60.0  # a busy slot without progress this long is reported stalled (/health: 503)


class QueueFull(Exception):
    """Every slot is busy and the queue is full."""


@dataclass
class Job:
    """One request: `prompts` (one per choice) with one model, adapter, sampling and grammar.
    `emit(event)` is called from the slot's thread: ("delta", choice, text), ("done", choice,
    finish_reason, prompt_tokens, completion_tokens), ("error", message) and finally ("end",)."""

    model: "LoadedModel"
    adapter: Path | None
    adapter_scale: float
    prompts: list[list[int]]
    sampling: Sampling
    grammar: str | None
    emit: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    progress_at: float = field(default_factory=time.monotonic)  # the last prefill chunk or token: /health
    produced: int = 0  # tokens generated, every choice

    def cancel(self) -> None:
        self.cancelled.set()

    def beat(self) -> None:
        self.progress_at = time.monotonic()


_SILENT_LOG = None


def _quiet_llama_log() -> None:
    """llama.cpp logs every adapter switch, context and grammar problem from the slots' threads; the
    server answers for them itself, so its log is dropped (TINYTITAN_DEBUG=1 keeps it). A log callback,
    not a redirected stderr: redirecting fd 2 from several threads at once would lose it for good."""
    global _SILENT_LOG
    if os.environ.get("TINYTITAN_DEBUG") or _SILENT_LOG is not None:
        return
    import llama_cpp

    _SILENT_LOG = llama_cpp.llama_log_callback(lambda level, text, data: None)  # kept alive: C holds it
    llama_cpp.llama_log_set(_SILENT_LOG, ctypes.c_void_p(0))


class LoadedModel:
    """One GGUF in memory: weights, vocabulary, and the adapters loaded against it."""

    def __init__(self, path: Path, n_ctx: int):
        import llama_cpp

        _quiet_llama_log()

        from tinytitan.model.registry import resolve

        self.ref = resolve(str(path))  # validated before llama.cpp sees it
        self.path = self.ref.path
        params = llama_cpp.llama_model_default_params()
        with quiet_native_stderr():
            self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.model:
            raise ModelFileError(f"{self.path}: llama.cpp cannot load this model")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bos_id = llama_cpp.llama_vocab_bos(self.vocab)
        trained = llama_cpp.llama_model_n_ctx_train(self.model)
        self.n_ctx = min(n_ctx, trained) if trained > 0 else n_ctx
        self.end_ids = frozenset(i for i in (self.token_id(p) for p in END_PIECES) if i is not None)
        self._pieces: dict[int, bytes] = {}
        self._adapters: dict[Path, int] = {}
        self._lock = threading.Lock()

    # tokenizer (the `Tokenizes` protocol of chat_format)
    def tokenize(self, text: str, *, bos: bool = False, special: bool = False) -> list[int]:
        import llama_cpp

        data = text.encode("utf-8")
        buffer = (llama_cpp.llama_token * (len(data) + 2))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, len(buffer), False, special)
        if n < 0:
            raise TinyTitanError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
        ids = list(buffer[:n])
        return [self.bos_id, *ids] if bos else ids

    def token_id(self, piece: str) -> int | None:
        import llama_cpp

        ids = self.tokenize(piece, special=True)
        if len(ids) == 1:
            text = llama_cpp.llama_vocab_get_text(self.vocab, ids[0])
            if text is not None and text.decode("utf-8", errors="replace") == piece:
                return ids[0]
        return None

    def piece(self, token: int) -> bytes:
        """The bytes a generated token adds to the text (control tokens add none)."""
        cached = self._pieces.get(token)
        if cached is None:
            import llama_cpp

            buffer = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            if n < 0:
                buffer = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            cached = self._pieces[token] = buffer.raw[:n]
        return cached

    def adapter(self, path: Path) -> int:
        """A LoRA adapter for this model, loaded (and validated) once."""
        import llama_cpp

        with self._lock:
            if path not in self._adapters:
                checked = check_adapter(str(path), self.ref)
                with quiet_native_stderr():
                    pointer = llama_cpp.llama_adapter_lora_init(self.model, str(checked).encode())
                if not pointer:
                    raise ModelFileError(f"{path}: llama.cpp cannot load this adapter for {self.path}")
                self._adapters[path] = pointer
            return self._adapters[path]

    def new_context(self, threads: int, n_batch: int = 512):
        import llama_cpp

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.swa_full = False  # window-sized cache for the sliding-window layers
        params.no_perf = True
        with quiet_native_stderr():
            ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not ctx:
            raise TinyTitanError(f"{self.path}: llama.cpp could not create a context of {self.n_ctx} tokens")
        return ctx

    def close(self) -> None:
        import llama_cpp

        for pointer in self._adapters.values():
            llama_cpp.llama_adapter_lora_free(pointer)
        self._adapters.clear()
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


class Slot:
    """A worker thread with one llama.cpp context per model it has served."""

    def __init__(self, index: int, threads: int, backend: "Backend"):
        self.index, self.threads, self.backend = index, threads, backend
        self.contexts: dict[Path, object] = {}
        self.job: Job | None = None
        self.thread = threading.Thread(target=self._loop, name=f"slot-{index}", daemon=True)

    def _loop(self) -> None:
        while True:
            job = self.backend._queue.get()
            if job is None:
                break
            if self.backend.closing:
                job.cancel()
            self.job = job
            job.started_at = time.perf_counter()
            job.beat()
            self.backend._started(job)
            try:
                if not job.cancelled.is_set():
                    self._run(job)
            except TinyTitanError as error:
                log.warning("slot %d: the request failed: %s", self.index, error)
                job.emit(("error", str(error)))
            except Exception as error:  # a bug must not kill the slot: report it on this request only
                log.exception("slot %d: internal error", self.index)
                job.emit(("error", f"internal error: {type(error).__name__}: {error}"))
            finally:
                self.job = None
                self.backend._finished(job)
                job.emit(("end",))
        self._free()

    def _context(self, model: LoadedModel):
        if model.path not in self.contexts:
            self.contexts[model.path] = model.new_context(self.threads)
        return self.contexts[model.path]

    def _run(self, job: Job) -> None:
        import llama_cpp

        model = job.model
        ctx = self._context(model)
        if job.adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(model.adapter(job.adapter))
            scales = (ctypes.c_float * 1)(job.adapter_scale)
            status = llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales)
        else:
            status = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        if status != 0:
            raise TinyTitanError(f"llama.cpp could not set the adapter {job.adapter}")
        for choice, prompt in enumerate(job.prompts):
            if job.cancelled.is_set():
                return
            finish, produced = generate_choice(ctx, model, job, choice, prompt)
            job.emit(("done", choice, finish, len(prompt), produced))

    def _free(self) -> None:
        import llama_cpp

        for ctx in self.contexts.values():
            llama_cpp.llama_free(ctx)
        self.contexts.clear()


def generate_choice(ctx, model: LoadedModel, job: Job, choice: int, prompt: list[int]) -> tuple[str, int]:
    """Decode `prompt` from an empty cache and sample one choice, emitting its text as it comes;
    returns (finish reason, tokens generated)."""
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    sampling = job.sampling
    if sampling.seed is not None and choice:
        sampling = replace(sampling, seed=(sampling.seed + choice) % 2**32)
    sampler = Sampler(model, sampling, job.grammar)
    batch = llama_cpp.llama_batch_init(PREFILL_CHUNK, 0, 1)
    try:
        for start in range(0, len(prompt), PREFILL_CHUNK):
            job.beat()
            if job.cancelled.is_set():
                return "cancelled", 0
            part = prompt[start:start + PREFILL_CHUNK]
            _fill_batch(batch, part, start, logits_last=start + len(part) == len(prompt))
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise TinyTitanError(f"llama.cpp failed to decode the prompt ({len(prompt)} tokens)")
        text = StopAwareText(job.sampling.stop)
        produced, raw = 0, b""
        position = len(prompt)
        while True:
            token = sampler.sample(ctx)
            if token in model.end_ids:
                piece, _ = text.feed(raw.decode("utf-8", errors="replace"), final=True)
                if piece:
                    job.emit(("delta", choice, piece))
                return "stop", produced
            produced += 1
            job.produced += 1
            raw += model.piece(token)
            out_of_room = produced >= job.sampling.max_tokens or position + 1 >= model.n_ctx
            piece, hit_stop = text.feed(raw.decode("utf-8", errors="replace"), final=out_of_room)
            if piece:
                job.emit(("delta", choice, piece))
            if hit_stop:
                return "stop", produced
            if out_of_room:
                return "length", produced
            job.beat()
            if job.cancelled.is_set():
                return "cancelled", produced
            _fill_batch(batch, [token], position, logits_last=True)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise TinyTitanError("llama.cpp failed to decode a token")
            position += 1
    finally:
        sampler.close()
        llama_cpp.llama_batch_free(batch)


def _fill_batch(batch, tokens: Sequence[int], start: int, logits_last: bool) -> None:
    for i, token in enumerate(tokens):
        batch.token[i] = token
        batch.pos[i] = start + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = logits_last and i == len(tokens) - 1
    batch.n_tokens = len(tokens)


class Backend:
    """Models, slots and the bounded queue. `submit` is called from the event loop's thread."""

    def __init__(self, *, slots: int = 1, queue_size: int = 4, threads: int | None = None, n_ctx: int = 4096):
        if slots < 1 or queue_size < 0:
            raise TinyTitanError("--slots must be >= 1 and --queue >= 0")
        self.n_ctx = n_ctx
        self.capacity = slots + queue_size
        threads = threads or os.cpu_count() or 1
        per_slot = max(1, threads // slots)
        self.models: dict[Path, LoadedModel] = {}
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.admitted = 0  # queued + running
        self.running = 0
        self.generated = 0  # tokens generated by finished requests
        self.closing = False
        self.on_change: Callable[[], None] = lambda: None  # metrics hook
        self.slots = [Slot(i, per_slot, self) for i in range(slots)]
        for slot in self.slots:
            slot.thread.start()

    def model(self, path: Path) -> LoadedModel:
        """The model at `path`, loaded once; every slot gets its context for it now, so a model
        that cannot run fails at start-up and no context is created while requests run."""
        key = Path(path).resolve()
        if key not in self.models:
            model = LoadedModel(key, self.n_ctx)
            try:
                for slot in self.slots:
                    slot._context(model)
            except BaseException:
                model.close()
                raise
            self.models[key] = model
        return self.models[key]

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    def slot_health(self) -> list[dict]:
        now, states = time.monotonic(), []
        for slot in self.slots:
            job = slot.job
            quiet = now - job.progress_at if job is not None else None
            states.append({"alive": slot.thread.is_alive(), "busy": job is not None,
                           "stalled": quiet is not None and quiet > STALL_SECONDS,
                           "seconds_since_progress": None if quiet is None else round(quiet, 3)})
        return states

    def submit(self, job: Job) -> None:
        with self._lock:
            if self.admitted >= self.capacity:
                raise QueueFull
            self.admitted += 1
        self._queue.put(job)
        self.on_change()

    def _started(self, job: Job) -> None:
        with self._lock:
            self.running += 1
        self.on_change()

    def _finished(self, job: Job) -> None:
        with self._lock:
            self.running -= 1
            self.admitted -= 1
            self.generated += job.produced
        self.on_change()

    def close(self) -> None:
        """Stop: running requests are cancelled (their clients are gone with the server), slots end."""
        self.closing = True  # a slot that takes a job from now on cancels it at once
        for slot in self.slots:
            if slot.job is not None:
                slot.job.cancel()
        with self._queue.mutex:  # queued requests will not start (a slot still ends each, at once)
            for job in self._queue.queue:
                if job is not None:
                    job.cancel()
        for _ in self.slots:
            self._queue.put(None)
        for slot in self.slots:
            slot.thread.join(timeout=30)
        if any(slot.thread.is_alive() for slot in self.slots):
            return  # a slot is still inside llama.cpp: its models stay until the process ends
        for model in self.models.values():
            model.close()
        self.models.clear()


def grammar_accepts(model: LoadedModel, grammar: str, text: str) -> bool:
    """Does the grammar accept exactly `text` (then the end of the turn)? Token by token, as decoding goes."""
    import llama_cpp

    sampler = Sampler(model, Sampling(max_tokens=1, temperature=0), grammar)
    try:
        for token in model.tokenize(text):
            if not sampler._grammar_allows(token):
                return False
            llama_cpp.llama_sampler_accept(sampler.grammar, token)
        return all(sampler._grammar_allows(end) for end in model.end_ids)
    finally:
        sampler.close()
