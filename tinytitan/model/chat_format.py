"""The one Gemma turn format, used by training, export and serving alike.

    <bos><start_of_turn>user
    {system}\\n\\n{user}<end_of_turn>
    <start_of_turn>model
    {reply}<end_of_turn>
    <start_of_turn>model

Prompts are built here as token ids, never by rendering a template found in a file: the control
tokens are inserted by id, and every piece of user text is tokenized as plain text, so a message
that spells `<end_of_turn>` cannot close its turn or open another. Gemma has no system role: a
system prompt is prefixed to the first user turn, as Google's template does. Content is stripped
of surrounding whitespace, as in Google's template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tinytitan.errors import TinyTitanError

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
ROLES = {"system": None, "user": "user", "assistant": "model", "model": "model"}

# The same format as a Jinja template, written into exported GGUFs (`tokenizer.chat_template`) for
# runtimes that render templates; tinytitan itself never renders it (tests check the two agree).
JINJA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.system = messages[0]['content'] | trim -%}{%- set messages = messages[1:] -%}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{%- if loop.first and ns.system -%}{{ ns.system + '\n\n' }}{%- endif -%}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Ollama's Go template for one turn (task specialists are single-turn), and its stop word.
OLLAMA_TEMPLATE = (
    "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
    "<start_of_turn>model\n{{ .Response }}<end_of_turn>\n"
)


class Tokenizes(Protocol):
    bos_id: int

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]: ...

    def token_id(self, piece: str) -> int | None: ...


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str


def as_messages(raw: Sequence[dict | Message]) -> list[Message]:
    """Validate `[{"role": ..., "content": ...}, ...]`; errors name the message and the problem."""
    messages = []
    for index, item in enumerate(raw):
        if isinstance(item, Message):
            messages.append(item)
            continue
        if not isinstance(item, dict):
            raise TinyTitanError(f"messages[{index}]: expected an object with role and content")
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise TinyTitanError(f"messages[{index}].role: {role!r} is not one of system, user, assistant")
        if not isinstance(content, str):
            raise TinyTitanError(f"messages[{index}].content: expected text, got {type(content).__name__}")
        messages.append(Message(role, content))
    return messages


def turns(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """`[(gemma_role, text), ...]` with the system prompt folded into the first user turn."""
    messages = list(messages)
    system = ""
    if messages and messages[0].role == "system":
        system = messages[0].content.strip()
        messages = messages[1:]
    if any(m.role == "system" for m in messages):
        raise TinyTitanError("a system message may only come first")
    result = []
    for index, message in enumerate(messages):
        text = message.content.strip()
        if index == 0 and system:
            if message.role != "user":
                raise TinyTitanError("a system message must be followed by a user message")
            text = f"{system}\n\n{text}"
        result.append((ROLES[message.role], text))
    return result


def control_ids(tokenizer: Tokenizes) -> tuple[int, int]:
    start, end = tokenizer.token_id(START_OF_TURN), tokenizer.token_id(END_OF_TURN)
    if start is None or end is None:
        raise TinyTitanError(f"this model's vocabulary has no {START_OF_TURN} / {END_OF_TURN} tokens, "
                             f"so it cannot use the Gemma chat format")
    return start, end


def encode_chat(tokenizer: Tokenizes, messages: Sequence[Message | dict],
                add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation; with `add_generation_prompt`, ready for the model's reply."""
    start, end = control_ids(tokenizer)
    newline = tokenizer.tokenize("\n")
    ids = [tokenizer.bos_id]
    for role, text in turns(as_messages(messages)):
        ids += [start, *tokenizer.tokenize(f"{role}\n{text}"), end, *newline]
    if add_generation_prompt:
        ids += [start, *tokenizer.tokenize("model\n")]
    return ids


def render_text(messages: Sequence[Message | dict], add_generation_prompt: bool = True) -> str:
    """The same conversation as text (for display and for runtimes that take text templates)."""
    out = ["<bos>"]
    for role, text in turns(as_messages(messages)):
        out.append(f"{START_OF_TURN}{role}\n{text}{END_OF_TURN}\n")
    if add_generation_prompt:
        out.append(f"{START_OF_TURN}model\n")
    return "".join(out)
