"""The PyTorch engine: `transformers`' Gemma3ForCausalLM with our own sampling loop.

Tokenization is `torch_model.Tokenizer` (the `tokenizers` object, with control tokens spelled in
text kept as text), the same one training uses. Scoring runs the LM head only at the positions asked
for, in chunks, so a [tokens x 262,144] logits tensor is built only for those rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from tinytitan.model.engines import END_PIECES, MIN_TEMPERATURE, Engine, SamplingParams
from tinytitan.errors import TinyTitanError
from tinytitan.model.registry import ModelRef
from tinytitan.model.torch_model import load_tokenizer, load_torch_model


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, ref: ModelRef, *, threads: int | None = None, dtype: str = "float32",
                 model=None, tokenizer=None):
        if threads:
            torch.set_num_threads(threads)
        if model is None:
            model = load_torch_model(ref, dtype=dtype)
        self.ref, self.model = ref, model
        self.lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # inside a PEFT wrapper
        self.tokenizer = tokenizer or load_tokenizer(ref)
        config = model.config
        self.vocab_size = config.vocab_size
        self.n_ctx = config.max_position_embeddings
        self.bos_id = self.tokenizer.bos_id
        self.end_ids = frozenset(i for i in (self.token_id(p) for p in END_PIECES) if i is not None)

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, bos=bos)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(ids)

    def token_id(self, piece: str) -> int | None:
        return self.tokenizer.token_id(piece)

    @torch.inference_mode()
    def _sample(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        if params.logit_bias or params.presence_penalty or params.frequency_penalty:
            raise TinyTitanError("logit_bias and the presence/frequency penalties need the llama engine "
                                 "(the torch engine samples by temperature, top-k and top-p only)")
        generator = torch.Generator().manual_seed(params.seed if params.seed is not None else
                                                  int.from_bytes(os.urandom(4), "little"))
        inputs = torch.tensor([prompt_ids])
        past = None
        for _ in range(params.max_tokens):
            out = self.model(input_ids=inputs, past_key_values=past, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            token = sample_token(out.logits[0, -1].float(), params, generator)
            yield token
            inputs = torch.tensor([[token]])

    @torch.inference_mode()
    def generate_greedy_batch(self, prompts: list[list[int]], max_tokens: int, batch_size: int = 32,
                              bf16: bool = False, budgets=None, on_done=None) -> list[str]:
        """Greedy continuations of many prompts at once (left-padded batches through `generate`):
        for evaluating a model on a test set. Stops at <eos> / <end_of_turn>; `budgets` (per-prompt caps,
        for the llama engine's signature) are not applied: every prompt gets up to `max_tokens`.
        `on_done(n)`: after each batch, the prompts finished."""
        pad = self.token_id("<pad>") or 0
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together
        outputs: list[str] = [""] * len(prompts)
        for start in range(0, len(order), batch_size):
            group = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in group)
            ids = torch.full((len(group), width), pad, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, i in enumerate(group):
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                                          do_sample=False, eos_token_id=sorted(self.end_ids), pad_token_id=pad)
            for row, i in enumerate(group):
                new = [t for t in out[row, width:].tolist() if t not in self.end_ids and t != pad]
                outputs[i] = self.detokenize(new)
            if on_done is not None:
                on_done(start + len(group))
        return outputs

    @torch.inference_mode()
    def score(self, ids: Sequence[int], first: int, chunk: int = 128) -> np.ndarray:
        hidden = self.lm.model(input_ids=torch.tensor([list(ids)])).last_hidden_state[0, first:]
        rows = [self._head(hidden[i:i + chunk]) for i in range(0, hidden.shape[0], chunk)]
        return torch.cat(rows).float().numpy()

    @torch.inference_mode()
    def logprob_sums(self, requests: Sequence[tuple[Sequence[int], int]], batch_size: int = 16) -> list[float]:
        """For each `(ids, first)`: sum of log P(ids[i] | ids[:i]) over i >= first. Requests that share
        their prefix `ids[:first]` (a prompt and its candidate labels) run the prefix once and only their
        own tokens after it; the rest go in right-padded batches. The LM head runs only at the positions
        that predict scored tokens."""
        requests = [(list(ids), first) for ids, first in requests]
        for ids, first in requests:
            if not 1 <= first < len(ids):
                raise TinyTitanError(f"nothing to score: first={first} for {len(ids)} tokens")
        by_prefix: dict[tuple, list[int]] = {}
        for index, (ids, first) in enumerate(requests):
            by_prefix.setdefault(tuple(ids[:first]), []).append(index)
        sums: list[float] = [0.0] * len(requests)
        alone = []
        for prefix, members in by_prefix.items():
            if len(members) == 1:
                alone.extend(members)
                continue
            for index, value in zip(members, self._sums_after_prefix(list(prefix), [requests[i][0][len(prefix):]
                                                                                   for i in members], batch_size)):
                sums[index] = value
        for index, value in zip(alone, self._sums_padded([requests[i] for i in alone], batch_size)):
            sums[index] = value
        return sums

    def _sums_after_prefix(self, prefix: list[int], tails: list[list[int]], batch_size: int) -> list[float]:
        """Log-likelihood of each tail after one shared prefix: the prefix's cache is computed once and
        copied for each batch of tails. Right padding needs no mask: causal attention never lets a real
        token see the padding after it."""
        import copy

        out = self.lm.model(input_ids=torch.tensor([prefix]), use_cache=True)
        first = torch.log_softmax(self._head(out.last_hidden_state[0, -1:]).float(), dim=-1)[0]
        sums = []
        for start in range(0, len(tails), batch_size):
            group = tails[start:start + batch_size]
            width = max(len(tail) - 1 for tail in group)
            if width == 0:  # one-token tails: the prefix's last position scores them all
                sums.extend(float(first[tail[0]]) for tail in group)
                continue
            inputs = torch.zeros((len(group), width), dtype=torch.long)
            for row, tail in enumerate(group):
                inputs[row, :len(tail) - 1] = torch.tensor(tail[:-1])
            cache = copy.deepcopy(out.past_key_values)
            cache.batch_repeat_interleave(len(group))
            hidden = self.lm.model(input_ids=inputs, past_key_values=cache, use_cache=True).last_hidden_state
            for row, tail in enumerate(group):
                total = float(first[tail[0]])
                if len(tail) > 1:
                    logp = torch.log_softmax(self._head(hidden[row, :len(tail) - 1]).float(), dim=-1)
                    total += float(logp.gather(1, torch.tensor(tail[1:])[:, None]).sum())
                sums.append(total)
        return sums

    def _sums_padded(self, requests: list[tuple[list[int], int]], batch_size: int) -> list[float]:
        sums = []
        for start in range(0, len(requests), batch_size):
            group = requests[start:start + batch_size]
            width = max(len(ids) - 1 for ids, _ in group)
            inputs = torch.zeros((len(group), width), dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, (ids, first) in enumerate(group):
                inputs[row, :len(ids) - 1] = torch.tensor(ids[:-1])
                mask[row, :len(ids) - 1] = 1
            hidden = self.lm.model(input_ids=inputs, attention_mask=mask).last_hidden_state  # (B, T, H)
            for row, (ids, first) in enumerate(group):
                logp = torch.log_softmax(self._head(hidden[row, first - 1:len(ids) - 1]).float(), dim=-1)
                sums.append(float(logp.gather(1, torch.tensor(ids[first:])[:, None]).sum()))
        return sums

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm.lm_head(hidden)  # (rows, vocab)
        cap = self.lm.config.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from a [vocab] logits vector: greedy, or top-k -> top-p -> temperature."""
    if params.temperature < MIN_TEMPERATURE:
        return int(torch.argmax(logits))
    values, indices = torch.sort(logits, descending=True)
    if params.top_k:
        values, indices = values[:params.top_k], indices[:params.top_k]
    if params.top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = int(torch.searchsorted(torch.cumsum(probs, dim=-1), torch.tensor(params.top_p))) + 1
        values, indices = values[:keep], indices[:keep]
    probs = torch.softmax(values / params.temperature, dim=-1)
    return int(indices[torch.multinomial(probs, 1, generator=generator)])

