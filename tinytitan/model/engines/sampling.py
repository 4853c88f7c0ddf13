"""llama.cpp sampling on candidate arrays we own: the sampler chain (logit bias, penalties, top-k,
top-p, temperature, seed) and, for structured output, a grammar checked lazily.

The grammar is checked on the token the chain picked first, and applied to all candidates only when
it rejects that token, as llama.cpp's own server does: over Gemma's 262,144 tokens that keeps
constrained decoding near full speed. Constrained output also stays strictly valid UTF-8: llama.cpp's
grammar decodes bytes leniently (an overlong or out-of-range sequence counts as one character), so a
token that would break UTF-8 is refused here, and a string's length is what the grammar counted.

A model for the sampler is anything with `vocab` (a llama_vocab pointer), `n_vocab` and
`piece(token) -> bytes`: the server's `LoadedModel` and the `LlamaEngine` both are.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import numpy as np

from tinytitan.model.engines import MIN_TEMPERATURE
from tinytitan.errors import TinyTitanError

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


class Sampler:
    """llama.cpp's samplers over a candidate array we own, with the grammar checked lazily."""

    def __init__(self, model, sampling: Sampling, grammar: str | None):
        import llama_cpp

        self.lib = llama_cpp
        self.model = model
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda sampler: llama_cpp.llama_sampler_chain_add(self.chain, sampler)  # noqa: E731
        if sampling.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(sampling.logit_bias))(
                *[llama_cpp.llama_logit_bias(token, bias) for token, bias in sampling.logit_bias])
            add(llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(sampling.logit_bias), biases))
        if sampling.presence_penalty or sampling.frequency_penalty:
            add(llama_cpp.llama_sampler_init_penalties(model.n_vocab, 256, 1.0, sampling.frequency_penalty,
                                                       sampling.presence_penalty))
        if sampling.temperature < MIN_TEMPERATURE:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if sampling.top_k:
                add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
            if sampling.top_p < 1:
                add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
            # 0xFFFFFFFF is llama.cpp's "pick a random seed": seeds are taken modulo 2^32 - 1
            seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little")
            add(llama_cpp.llama_sampler_init_dist(seed % 0xFFFFFFFF))
        self.grammar = None
        if grammar is not None:  # checked at admission (`grammar_error`); llama.cpp logs nothing here
            self.grammar = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
            if not self.grammar:
                self.close()
                raise TinyTitanError("llama.cpp could not parse the grammar made from the schema")
        self.pending = b""  # an incomplete UTF-8 character at the end of the output so far
        self.candidates = np.zeros(model.n_vocab, TOKEN_DATA)
        self.ids = np.arange(model.n_vocab, dtype=np.int32)
        self.one = np.zeros(1, TOKEN_DATA)

    def _array(self, data: np.ndarray):
        return self.lib.llama_token_data_array(
            data=data.ctypes.data_as(self.lib.llama_token_data_p), size=len(data), selected=-1, sorted=False)

    def _fill(self, logits: np.ndarray):
        self.candidates["id"] = self.ids
        self.candidates["logit"] = logits
        self.candidates["p"] = 0.0
        return self._array(self.candidates)

    def _apply_chain(self, array) -> int:
        self.lib.llama_sampler_apply(self.chain, ctypes.byref(array))
        # the chain may sort and shrink the array in place: read the selected entry through it
        chosen = ctypes.cast(array.data, ctypes.POINTER(self.lib.llama_token_data))[array.selected]
        return int(chosen.id)

    def sample(self, ctx, index: int = -1) -> int:
        """The next token from the logits of output `index` of the last decode."""
        pointer = self.lib.llama_get_logits_ith(ctx, index)
        logits = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.model.n_vocab,))
        token = self._apply_chain(self._fill(logits))
        if self.grammar is not None:
            banned: list[int] = []
            while not (self._grammar_allows(token) and self._writes_text(token) and self._keeps_utf8(token)):
                banned.append(token)
                if len(banned) > 4096:  # cannot happen with a sound grammar; never spin forever
                    raise TinyTitanError("structured output reached a state no token can continue")
                array = self._fill(logits)
                self.candidates["logit"][banned] = -np.inf
                self.lib.llama_sampler_apply(self.grammar, ctypes.byref(array))
                token = self._apply_chain(array)
            self.lib.llama_sampler_accept(self.grammar, token)
        self.lib.llama_sampler_accept(self.chain, token)
        return token

    def _writes_text(self, token: int) -> bool:
        """The grammar reads control tokens as their text (`<mask>`...) but they print as nothing:
        under a grammar only end tokens may be silent."""
        return token in self.model.end_ids or self.model.piece(token) != b""

    def _keeps_utf8(self, token: int) -> bool:
        """Does the output stay valid UTF-8 (or a prefix of it) with this token? If so, take it."""
        data = self.pending + self.model.piece(token)
        try:
            data.decode("utf-8")
            self.pending = b""
        except UnicodeDecodeError as error:
            if error.reason != "unexpected end of data" or error.end != len(data):
                return False
            self.pending = data[error.start:]
        return True

    def _grammar_allows(self, token: int) -> bool:
        self.one[0] = (token, 0.0, 0.0)
        array = self._array(self.one)
        self.lib.llama_sampler_apply(self.grammar, ctypes.byref(array))
        return bool(np.isfinite(self.one[0]["logit"]))

    def close(self) -> None:
        if self.chain:
            self.lib.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar:
            self.lib.llama_sampler_free(self.grammar)
            self.grammar = None



def grammar_error(model, grammar: str) -> str | None:
    """None if llama.cpp accepts the grammar for this model's vocabulary, else why not (llama.cpp's
    own message is logged, not returned: left recursion, a repetition over its limit...)."""
    import llama_cpp

    try:
        pointer = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
    except UnicodeEncodeError:
        return "the grammar is not UTF-8 text"
    if not pointer:
        return "llama.cpp refuses the grammar made from it (a rule that refers to itself before any text, or " \
               "a repetition over 2000)"
    llama_cpp.llama_sampler_free(pointer)
    return None
