"""The OpenAI API shapes the server accepts and returns (pydantic models, so /openapi.json is exact).

Requests forbid unknown fields: a parameter this server does not implement (tools, logprobs...)
is a 400 naming it, never silently ignored. Ranges are OpenAI's: temperature [0, 2], top_p (0, 1],
penalties [-2, 2], logit_bias values [-100, 100], at most 4 stop strings. `top_k` is an extension.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_N = 8
MAX_STOP = 4
MAX_TOP_K = 262_144  # Gemma 3's whole vocabulary: a larger k means the same, and must not wrap a C int


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types as declared: "1" is not 1


# --- errors -----------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- requests ---------------------------------------------------------------------------------
NonEmptyText = Annotated[str, Field(min_length=1)]
Stop = Union[NonEmptyText, Annotated[list[NonEmptyText], Field(max_length=MAX_STOP)], None]
TOKEN_ID = r"^[0-9]{1,7}$"


def _whole(value):
    """JSON Schema's integer: 2.0 is one; "2" and true are not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def Whole(**limits):  # noqa: N802 (a type)
    return Annotated[Annotated[int, Field(**limits)], BeforeValidator(_whole)]
TokenBias = Annotated[float, Field(ge=-100, le=100)]


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(Strict):
    """The fields a chat or completion request shares: the model, how to sample, how to answer. Fields left
    out take the task's defaults, then OpenAI's (`serve.jobs.sampling_params`, the one conversion)."""

    model: str = Field(min_length=1)
    max_tokens: Whole(ge=1) | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: Whole(ge=0, le=MAX_TOP_K) | None = Field(
        None, description="tinytitan extension: sample among the k most likely tokens (0: all)")
    n: Whole(ge=1, le=MAX_N) | None = None
    stop: Stop = None
    seed: Whole(ge=0, le=2**32 - 1) | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[Annotated[str, Field(pattern=TOKEN_ID)], TokenBias] | None = Field(
        None, description="token id (as text) -> bias added to its logit",
        json_schema_extra={"propertyNames": {"pattern": TOKEN_ID}})
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, Annotated[list[TextPart], Field(min_length=1)]]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class JSONSchemaFormat(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(Strict):
    type: Literal["text"]


class ResponseFormatJSONObject(Strict):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[Union[ResponseFormatText, ResponseFormatJSONObject, ResponseFormatJSONSchema],
                           Field(discriminator="type")]


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Whole(ge=1) | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingFields):
    prompt: Union[str, Annotated[list[str], Field(min_length=1, max_length=MAX_N)]]
    echo: bool | None = False
    response_format: ResponseFormat | None = Field(None, description="tinytitan extension, as for chat")


# --- responses --------------------------------------------------------------------------------
FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class Answer(BaseModel):
    """What every completion answer carries; each kind names its `object` and its choices."""

    id: str
    object: str
    created: int
    model: str
    choices: list
    usage: Usage


class ChatCompletion(Answer):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: None = None


class Completion(Answer):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tinytitan"
    base: str
    adapter: str | None = None
    adapter_scale: float = 1.0
    schema_: bool = Field(False, alias="schema", serialization_alias="schema")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SlotState(BaseModel):
    alive: bool  # its thread runs
    busy: bool
    stalled: bool  # busy with no progress (a prefill chunk or a token) for longer than the server allows
    seconds_since_progress: float | None = None


class Health(BaseModel):
    status: Literal["ok", "failing"] = "ok"  # failing (HTTP 503): a slot has died or stalled
    slots: int
    busy: int
    queued: int
    capacity: int
    slot_states: list[SlotState] = []
