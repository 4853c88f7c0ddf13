"""The llama.cpp runtime, through llama-cpp-python's C API, in one place: the `llama` engine, the
server's slots and the benchmark worker all run on it.

- `LoadedModel`: one GGUF in memory (weights, vocabulary) and the LoRA adapters loaded against it,
  each validated (`check_adapter`) and loaded once; tokenize / token_id / piece / detokenize.
- `Context`: a llama.cpp context on a model (its own KV cache) with the adapter set on it, one batch
  it fills, decode, the logits of the last decode, and the tokens its cache holds for sequence 0
  (so a caller can keep the prefix a new sequence shares with it).

The weights stay on the CPU (`n_gpu_layers = 0`): tinytitan is a CPU toolkit, and its measurements
are CPU measurements. Every context uses flash attention; a sliding-window cache (`swa_full=False`)
keeps the 270M model's cache near 100 MB at 32K tokens.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinytitan.errors import ModelFileError, TinyTitanError
from tinytitan.model.engines import END_PIECES
from tinytitan.model.registry import ModelRef

_SILENT_LOG = None
_STARTED = False


def start_llama() -> None:
    """Once per process: llama.cpp's backend, and its log cut to errors (all of it with TINYTITAN_DEBUG=1),
    as llama-cpp-python's `Llama(verbose=False)` does."""
    global _STARTED
    if _STARTED:
        return
    import logging

    import llama_cpp

    with quiet_native_stderr():
        llama_cpp.llama_backend_init()
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if os.environ.get("TINYTITAN_DEBUG")
                                                   else logging.ERROR)
    _STARTED = True


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


def quiet_llama_log() -> None:
    """Drop llama.cpp's log for good (TINYTITAN_DEBUG=1 keeps it): for a server, whose threads log every
    adapter switch, context and grammar problem that it answers for itself. A log callback, not a
    redirected stderr: redirecting fd 2 from several threads at once would lose it for good."""
    global _SILENT_LOG
    if os.environ.get("TINYTITAN_DEBUG") or _SILENT_LOG is not None:
        return
    import llama_cpp

    _SILENT_LOG = llama_cpp.llama_log_callback(lambda level, text, data: None)  # kept alive: C holds it
    llama_cpp.llama_log_set(_SILENT_LOG, ctypes.c_void_p(0))


def check_adapter(path: str | Path, base: ModelRef) -> Path:
    """A LoRA adapter GGUF for this base: validated here, before llama.cpp sees it."""
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


class LoadedModel:
    """One GGUF in memory: weights, vocabulary, and the adapters loaded against it. `n_ctx` is the
    context its sequences may use: the one asked for, at most what the model was trained for."""

    def __init__(self, model: ModelRef | str | Path, n_ctx: int):
        import llama_cpp

        from tinytitan.model.registry import resolve

        start_llama()
        self.ref = model if isinstance(model, ModelRef) else resolve(str(model))  # validated before llama.cpp
        self.path = self.ref.path
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        with quiet_native_stderr():
            self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.model:
            raise ModelFileError(f"{self.path}: llama.cpp cannot load this model "
                                 f"(Failed to load model from file: {self.path})")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bos_id = llama_cpp.llama_vocab_bos(self.vocab)
        trained = llama_cpp.llama_model_n_ctx_train(self.model)
        # a longer context than the model was trained for only produces garbage
        self.n_ctx = min(n_ctx, trained) if trained > 0 else n_ctx
        self.n_swa = llama_cpp.llama_model_n_swa(self.model)  # sliding window, tokens (0: none)
        self.end_ids = frozenset(i for i in (self.token_id(p) for p in END_PIECES) if i is not None)
        self._pieces: dict[int, bytes] = {}
        self._adapters: dict[Path, int] = {}
        self._lock = threading.Lock()

    # tokenizer (the `Tokenizes` protocol of chat_format)
    def tokenize(self, text: str, *, bos: bool = False, special: bool = False) -> list[int]:
        """Text to ids; with `special`, text spelling a control token becomes that token."""
        import llama_cpp

        data = text.encode("utf-8")
        # one call with a buffer that surely fits: a token covers at least one byte
        buffer = (llama_cpp.llama_token * (len(data) + 2))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, len(buffer), False, special)
        if n < 0:
            raise TinyTitanError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
        ids = list(buffer[:n])
        return [self.bos_id, *ids] if bos else ids

    def token_id(self, piece: str) -> int | None:
        """The id of a vocabulary piece such as `<start_of_turn>`, or None."""
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

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of `ids` (control tokens print as nothing; the space after <bos> is dropped)."""
        data = b"".join(self.piece(token) for token in ids)
        if ids and ids[0] == self.bos_id and data[:1] == b" ":
            data = data[1:]
        return data.decode("utf-8", errors="replace")

    def adapter(self, path: Path):
        """A LoRA adapter for this model, validated and loaded once."""
        import llama_cpp

        path = Path(path)
        with self._lock:
            if path not in self._adapters:
                checked = check_adapter(path, self.ref)
                with quiet_native_stderr():
                    pointer = llama_cpp.llama_adapter_lora_init(self.model, str(checked).encode())
                if not pointer:
                    raise ModelFileError(f"{path}: llama.cpp cannot load this adapter for {self.path}")
                self._adapters[path] = pointer
            return self._adapters[path]

    def new_context(self, threads: int, *, n_ctx: int | None = None, n_batch: int = 512, sequences: int = 1,
                swa_full: bool = False) -> Context:
        """A new context of `n_ctx` tokens (default: the model's) for `sequences` parallel sequences,
        which share one cache (any subset of them decodes as one batch)."""
        import llama_cpp

        n_ctx = n_ctx or self.n_ctx
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = sequences
        params.kv_unified = sequences > 1
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.swa_full = swa_full
        params.no_perf = True
        with quiet_native_stderr():
            pointer = llama_cpp.llama_init_from_model(self.model, params)
        if not pointer:
            what = f"{sequences} sequences" if sequences > 1 else f"{n_ctx} tokens"
            raise TinyTitanError(f"{self.path}: llama.cpp could not create a context of {what}")
        return Context(self, pointer, n_ctx, n_batch, swa_full)

    def close(self) -> None:
        import llama_cpp

        for pointer in self._adapters.values():
            llama_cpp.llama_adapter_lora_free(pointer)
        self._adapters.clear()
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


class Context:
    """A llama.cpp context: its KV cache, the adapter set on it, one batch of `n_batch` tokens."""

    def __init__(self, model: LoadedModel, pointer, n_ctx: int, n_batch: int, swa_full: bool):
        import llama_cpp

        self.lib = llama_cpp
        self.model, self.pointer, self.n_ctx, self.n_batch, self.swa_full = model, pointer, n_ctx, n_batch, swa_full
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.memory = llama_cpp.llama_get_memory(pointer)
        self.tokens: list[int] = []  # what the cache holds for sequence 0, in order from position 0

    def set_adapter(self, path: Path | None, scale: float = 1.0) -> None:
        """Use the model's adapter at `path` (loaded once) on this context from now on; None: no adapter."""
        if path is None:
            status = self.lib.llama_set_adapters_lora(self.pointer, None, 0, None)
        else:
            adapters = (self.lib.llama_adapter_lora_p_ctypes * 1)(self.model.adapter(path))
            scales = (ctypes.c_float * 1)(scale)
            status = self.lib.llama_set_adapters_lora(self.pointer, adapters, 1, scales)
        if status != 0:
            raise TinyTitanError(f"llama.cpp could not set the adapter {path}")

    def clear(self) -> None:
        """Empty the cache."""
        self.lib.llama_memory_clear(self.memory, True)
        self.tokens = []

    def keep_prefix(self, ids: Sequence[int], limit: int) -> int:
        """Keep the cached prefix (at most `limit` tokens) that `ids` starts with and drop the rest of
        the cache; returns its length. A sliding-window cache that has already let go of positions the
        next token would attend to starts over instead (llama.cpp's server checks the same)."""
        keep = 0
        while keep < min(limit, len(self.tokens)) and self.tokens[keep] == ids[keep]:
            keep += 1
        oldest = self.lib.llama_memory_seq_pos_min(self.memory, 0)
        if keep and self.model.n_swa and oldest > max(0, keep - self.model.n_swa):
            keep = 0
        if keep == 0 or not self.lib.llama_memory_seq_rm(self.memory, 0, keep, -1):
            self.clear()
            return 0
        del self.tokens[keep:]
        return keep

    def decode(self, tokens: Sequence[int], start: int, *, seq: int = 0, logits_from: int | None = None) -> int:
        """One llama_decode of consecutive `tokens` (at most n_batch) at positions start.. of sequence
        `seq`, with logits at positions >= `logits_from` (None: at the last token). Returns how many
        outputs it has (read them with `outputs` or `logits`)."""
        end = start + len(tokens)
        logits_from = end - 1 if logits_from is None else logits_from
        self.decode_entries([(token, start + i, seq, start + i >= logits_from) for i, token in enumerate(tokens)])
        if seq == 0:
            del self.tokens[start:]
            self.tokens.extend(tokens)
        return end - max(start, min(end, logits_from))

    def decode_entries(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries (at most n_batch)."""
        batch = self.batch
        for i, (token, position, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        if self.lib.llama_decode(self.pointer, batch) != 0:
            raise TinyTitanError(f"llama.cpp failed to decode a batch of {len(entries)} tokens")

    def prefill(self, tokens: Sequence[int], start: int = 0, *, seq: int = 0) -> None:
        """Decode `tokens` at positions start.. in n_batch pieces, with logits at the last one only."""
        last = start + len(tokens) - 1
        for offset in range(0, len(tokens), self.n_batch):
            self.decode(tokens[offset:offset + self.n_batch], start + offset, seq=seq, logits_from=last)

    def outputs(self, n: int) -> np.ndarray:
        """The last decode's logits, [n outputs, vocab] float32, over llama.cpp's buffer (valid until
        the next decode)."""
        pointer = ctypes.cast(self.lib.llama_get_logits(self.pointer), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(pointer, shape=(n, self.model.n_vocab))

    def logits(self, index: int = -1) -> np.ndarray:
        """The logits [vocab] of output `index` of the last decode, over llama.cpp's buffer."""
        pointer = ctypes.cast(self.lib.llama_get_logits_ith(self.pointer, index), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,))

    def sequence_bytes(self, seq: int = 0) -> int:
        """The size of one sequence's state (its KV cache)."""
        return self.lib.llama_state_seq_get_size(self.pointer, seq)

    def free(self) -> None:
        if self.pointer:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.pointer)
            self.pointer = None
