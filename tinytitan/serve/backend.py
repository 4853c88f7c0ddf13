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
- llama.cpp itself (models, contexts, adapters, decoding) is `engines.runtime`; sampling,
  structured output included, is `engines.sampling.Sampler`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.model.engines import StopAwareText
from tinytitan.model.engines.runtime import Context, LoadedModel, quiet_llama_log
from tinytitan.model.engines.sampling import Sampler, SamplingParams

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

    model: LoadedModel
    adapter: Path | None
    adapter_scale: float
    prompts: list[list[int]]
    sampling: SamplingParams
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


class Slot:
    """A worker thread with one llama.cpp context per model it has served."""

    def __init__(self, index: int, threads: int, backend: "Backend"):
        self.index, self.threads, self.backend = index, threads, backend
        self.contexts: dict[Path, Context] = {}
        self.job: Job | None = None
        self.thread = threading.Thread(target=self._loop, name=f"slot-{index}", daemon=True)

    def _loop(self) -> None:
        while True:
            job = self.backend.next_job()
            if job is None:
                break
            if self.backend.closing:
                job.cancel()
            self.job = job
            job.started_at = time.perf_counter()
            job.beat()
            self.backend.started(job)
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
                self.backend.finished(job)
                job.emit(("end",))
        self._free()

    def context(self, model: LoadedModel) -> Context:
        """This slot's context for `model`, made on first use."""
        if model.path not in self.contexts:
            self.contexts[model.path] = model.new_context(self.threads)
        return self.contexts[model.path]

    def _run(self, job: Job) -> None:
        context = self.context(job.model)
        context.set_adapter(job.adapter, job.adapter_scale)
        for choice, prompt in enumerate(job.prompts):
            if job.cancelled.is_set():
                return
            finish, produced = generate_choice(context, job.model, job, choice, prompt)
            job.emit(("done", choice, finish, len(prompt), produced))

    def _free(self) -> None:
        for context in self.contexts.values():
            context.free()
        self.contexts.clear()


def generate_choice(context: Context, model: LoadedModel, job: Job, choice: int,
                    prompt: list[int]) -> tuple[str, int]:
    """Decode `prompt` from an empty cache and sample one choice, emitting its text as it comes;
    returns (finish reason, tokens generated)."""
    context.clear()
    sampling = job.sampling
    if sampling.seed is not None and choice:
        sampling = replace(sampling, seed=(sampling.seed + choice) % 2**32)
    sampler = Sampler(model, sampling, job.grammar)
    try:
        for start in range(0, len(prompt), PREFILL_CHUNK):
            job.beat()
            if job.cancelled.is_set():
                return "cancelled", 0
            context.decode(prompt[start:start + PREFILL_CHUNK], start, logits_from=len(prompt) - 1)
        text = StopAwareText(job.sampling.stop)
        produced, raw = 0, b""
        position = len(prompt)
        while True:
            token = sampler.sample(context)
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
            context.decode([token], position)
            position += 1
    finally:
        sampler.close()


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
            quiet_llama_log()
            model = LoadedModel(key, self.n_ctx)
            try:
                for slot in self.slots:
                    slot.context(model)
            except BaseException:
                for slot in self.slots:  # those made before the failure go with the model
                    made = slot.contexts.pop(model.path, None)
                    if made is not None:
                        made.free()
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

    def next_job(self) -> Job | None:
        """The next admitted job, waiting for one (None: the slot should end)."""
        return self._queue.get()

    def started(self, job: Job) -> None:
        with self._lock:
            self.running += 1
        self.on_change()

    def finished(self, job: Job) -> None:
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

