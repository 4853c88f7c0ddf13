"""Examples as token ids: the prompt in the Gemma turn format, then the completion and <end_of_turn>,
cut at `max_length`, with where the completion starts (the loss is taken on its tokens only)."""

from __future__ import annotations

from dataclasses import dataclass

from tinytitan.data.examples import Example, Rejected, RowError
from tinytitan.model.chat_format import END_OF_TURN, encode_chat


@dataclass(frozen=True)
class TokenizedExample:
    ids: tuple[int, ...]
    completion_start: int  # ids[completion_start:] are completion tokens (loss is taken on them)
    truncated: bool
    source: str

    @property
    def n_completion(self) -> int:
        return len(self.ids) - self.completion_start


def tokenize_example(tokenizer, example: Example, max_length: int) -> TokenizedExample:
    """Prompt in the Gemma turn format + completion + <end_of_turn>, cut at `max_length`.
    Raises `RowError` when the cut would leave no completion token at all."""
    prompt = encode_chat(tokenizer, example.messages)
    completion = tokenizer.tokenize(example.completion) + [tokenizer.token_id(END_OF_TURN)]
    if len(prompt) >= max_length:
        raise RowError(f"the prompt is {len(prompt)} tokens, so max_length {max_length} leaves no "
                       f"completion token to learn from")
    ids = (prompt + completion)[:max_length]
    return TokenizedExample(tuple(ids), len(prompt), len(prompt) + len(completion) > max_length, example.source)


def tokenize_examples(tokenizer, examples: list[Example], max_length: int):
    """`(tokenized, rejected)`: rows whose completion truncation would remove entirely are rejected."""
    tokenized, rejected = [], []
    for example in examples:
        try:
            tokenized.append(tokenize_example(tokenizer, example, max_length))
        except RowError as error:
            rejected.append(Rejected(example.source, str(error)))
    return tokenized, rejected
