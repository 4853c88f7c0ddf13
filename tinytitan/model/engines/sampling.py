"""What sampling is, and how llama.cpp does it.

`SamplingParams` is the one sampling type: the command line, the engines, the server and the gates
all build it, and it checks itself. Sampling runs in llama.cpp's order: logit bias, penalties, then
top-k, then top-p on the model's distribution, then temperature; a temperature below
MIN_TEMPERATURE (0 included) is greedy.

`Sampler` runs llama.cpp's samplers on candidate arrays we own and, for structured output, checks a
grammar lazily: on the token the chain picked first, applied to all candidates only when it rejects
that token, as llama.cpp's own server does. Over Gemma's 262,144 tokens that keeps constrained
decoding near full speed. Constrained output also stays strictly valid UTF-8: llama.cpp's grammar
decodes bytes leniently (an overlong or out-of-range sequence counts as one character), so a token
that would break UTF-8 is refused here, and a string's length is what the grammar counted.

A model for the sampler is a `runtime.LoadedModel` (its `vocab`, `n_vocab`, `end_ids`, `piece`).
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass

import numpy as np

from tinytitan.errors import TinyTitanError

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data
# below this, logits / temperature overflow float32 (or leave one token with all the probability):
# such a temperature samples as greedy (schemathesis sent 1.2e-38; llama.cpp's softmax then gave NaN)
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. The defaults are greedy; the server applies OpenAI's defaults itself."""

    max_tokens: int = 256
    temperature: float = 0.0  # below MIN_TEMPERATURE: greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise TinyTitanError(f"max_tokens must be a whole number >= 1, not {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 100.0:
            raise TinyTitanError(f"temperature must be between 0 and 100, not {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise TinyTitanError(f"top_k must be a whole number >= 0 (0 = off), not {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise TinyTitanError(f"top_p must be in (0, 1], not {self.top_p!r}")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            raise TinyTitanError(f"seed must be a whole number in [0, 2^32), not {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise TinyTitanError(f"stop strings must be non-empty text, not {list(self.stop)!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise TinyTitanError(f"{name} must be between -2 and 2, not {getattr(self, name)!r}")
        for token, bias in self.logit_bias:
            if not (isinstance(token, int) and token >= 0 and math.isfinite(bias)):
                raise TinyTitanError(f"logit_bias must map token ids >= 0 to finite numbers, not {token!r}: {bias!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


class Sampler:
    """llama.cpp's samplers over a candidate array we own, with the grammar checked lazily."""

    def __init__(self, model, sampling: SamplingParams, grammar: str | None):
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
        if sampling.greedy:
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

    def sample(self, context, index: int = -1) -> int:
        """The next token from the logits of output `index` of the context's last decode."""
        logits = context.logits(index)
        token = self._apply_chain(self._fill(logits))
        if self.grammar is not None:
            banned: list[int] = []
            while not (self.grammar_allows(token) and self._writes_text(token) and self._keeps_utf8(token)):
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

    def grammar_allows(self, token: int) -> bool:
        """Would the grammar take this token now?"""
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


def grammar_accepts(model, grammar: str, text: str) -> bool:
    """Does the grammar accept exactly `text` (then the end of the turn)? Token by token, as decoding goes."""
    import llama_cpp

    sampler = Sampler(model, SamplingParams(max_tokens=1), grammar)
    try:
        for token in model.tokenize(text):
            if not sampler.grammar_allows(token):
                return False
            llama_cpp.llama_sampler_accept(sampler.grammar, token)
        return all(sampler.grammar_allows(end) for end in model.end_ids)
    finally:
        sampler.close()
