"""What reading a dataset gives: each good row as an `Example` (the prompt's messages and the
completion), each bad one as a `Rejected` (`file:line` and the reason), and a file's `LoadReport`.
A reader raises `RowError` inside one row; the row becomes a `Rejected` and reading goes on."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tinytitan.model.chat_format import Message


@dataclass(frozen=True)
class Example:
    messages: tuple[Message, ...]  # the prompt: optional system, then user/assistant turns ending in user
    completion: str
    source: str  # "file:line"

    @property
    def key(self) -> str:
        """The prompt as one string: for the split hash, duplicates and leakage."""
        return json.dumps([[m.role, m.content] for m in self.messages], ensure_ascii=False)

    @property
    def input_text(self) -> str:
        """What the model answers: the last user message (an extractor copies its words)."""
        return self.messages[-1].content

    def as_row(self) -> dict:
        """The example as a JSONL row: prompt/completion (a JSON completion as the object it is, an optional
        system), or messages when the prompt has earlier turns."""
        messages = [{"role": m.role, "content": m.content} for m in self.messages]
        roles = [m["role"] for m in messages]
        if roles in (["user"], ["system", "user"]):
            try:
                completion = json.loads(self.completion)
            except ValueError:
                completion = None
            row = {"prompt": messages[-1]["content"],
                   "completion": completion if isinstance(completion, (dict, list)) else self.completion}
            return {**row, "system": messages[0]["content"]} if roles[0] == "system" else row
        return {"messages": [*messages, {"role": "assistant", "content": self.completion}]}


@dataclass
class Rejected:
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class LoadReport:
    path: Path
    shape: str
    rows: int
    examples: list[Example]
    rejected: list[Rejected]
    conflicts: int = 0  # prompts that appear with different completions (kept; reported)
    repeats: int = 0  # rows repeating an earlier (prompt, completion) pair, kept (`duplicates="keep"`)
    json_keys: list[str] = field(default_factory=list)


class RowError(Exception):
    """One row is refused; the message is the reason its `Rejected` gives."""
