"""From a validated request to the backend's `Job`: the prompt tokens, the sampling, the choices.

`sampling_params` is the one place a request's fields become `SamplingParams`: a field the request
leaves out takes the task's default, then OpenAI's (temperature 1, top_p 1, no penalties).
"""

from __future__ import annotations

from tinytitan.errors import TinyTitanError
from tinytitan.model.engines.sampling import SamplingParams
from tinytitan.serve import api
from tinytitan.serve.backend import Job
from tinytitan.serve.fleet import Task
from tinytitan.serve.limits import ApiError


def chat_prompt(model, task: Task, body: api.ChatCompletionRequest) -> list[int]:
    """The conversation as prompt tokens, in the Gemma turn format (`chat_format`)."""
    from tinytitan.model.chat_format import Message, encode_chat

    # Gemma has no system role: a system (or developer) message that opens the conversation is folded
    # into the first user turn (chat_format); one anywhere else is sent as a user turn
    messages = []
    for index, m in enumerate(body.messages):
        system = m.role in ("system", "developer")
        opening = index == 0 and len(body.messages) > 1 and body.messages[1].role == "user"
        messages.append(Message("system" if system and opening else "user" if system else m.role, m.text()))
    if task.system and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", task.system))
    try:
        return encode_chat(model, messages)
    except TinyTitanError as error:
        # a turn order the model cannot take (the OpenAPI schema cannot say so): a code clients can act on
        raise ApiError(400, f"messages: {error}", "messages", "invalid_message_order") from None


def check_text(body) -> None:
    """A lone surrogate ("\\ud83d" is valid JSON) is not text a model can read: 400, naming where."""
    from tinytitan.data.json_values import check_text

    try:
        check_text(body.model_dump(by_alias=True, exclude_none=True))
    except TinyTitanError as error:
        param = str(error).split(":", 1)[0]
        raise ApiError(400, str(error), param, "invalid_value") from None


def make_job(model, task: Task, body, prompts: list[list[int]], grammar, max_completion) -> tuple[Job, int]:
    """The job for a request (choice i answers prompt i // n, sample i % n), and its n."""
    n = body.n or 1
    longest = max(len(p) for p in prompts)
    room = model.n_ctx - longest
    if room < 1:
        raise ApiError(400, f"This model's maximum context length is {model.n_ctx} tokens; the prompt has {longest}, "
                            f"which leaves no room for a reply. Shorten it.",
                       "messages" if hasattr(body, "messages") else "prompt", "context_length_exceeded")
    sampling = sampling_params(body, task.defaults, room, model.n_vocab, max_completion)
    expanded = [prompt for prompt in prompts for _ in range(n)]
    job = Job(model, task.adapter, task.adapter_scale, expanded, sampling, grammar, emit=lambda event: None)
    return job, n


def sampling_params(body: api.SamplingFields, defaults: dict, room: int, n_vocab: int,
                    max_completion: int | None = None) -> SamplingParams:
    """A request's sampling: each field as the request gives it, else the task's default, else OpenAI's.
    A reply stops where the context ends (`room` tokens; finish_reason "length"), whatever max_tokens asked."""
    def pick(name, fallback):
        value = getattr(body, name)
        return value if value is not None else defaults.get(name, fallback)

    max_tokens = min(max_completion or body.max_tokens or defaults.get("max_tokens") or room, room)
    stop = pick("stop", ())
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    biases = []
    for key, bias in (body.logit_bias or {}).items():
        token = int(key)
        if token >= n_vocab:
            raise ApiError(400, f"logit_bias: token id {token} is outside the vocabulary (0..{n_vocab - 1})",
                           "logit_bias")
        biases.append((token, float(bias)))
    return SamplingParams(max_tokens=max_tokens, temperature=float(pick("temperature", 1.0)),
                          top_p=float(pick("top_p", 1.0)), top_k=int(pick("top_k", 0)), seed=body.seed, stop=stop,
                          logit_bias=tuple(biases), presence_penalty=float(pick("presence_penalty", 0.0)),
                          frequency_penalty=float(pick("frequency_penalty", 0.0)))
