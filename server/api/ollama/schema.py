"""The request contract of Ollama's API (/api/chat, /api/generate, /api/show, /api/pull, /api/delete),
as the `ollama` Python and JavaScript libraries send it.

Unknown fields are ignored, as Ollama's own server does (clients send newer fields such as `shift`
or `truncate`). `options` takes Ollama's whole Modelfile parameter set: what this server can use is
typed and checked here; the rest (hardware and load-time settings, samplers it has no equivalent
for) is accepted and ignored, listed in docs/api/ollama.md. Images are refused: the model reads
text only.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.plumbing.limits import AT_MOST_MAX_MESSAGES, MAX_STOP_LENGTH

# `think`: on or off, or a level (Ollama's "max" is harmony's high, as Ollama itself maps it)
Think = bool | Literal["low", "medium", "high", "max"]
MAX_STOPS = 16
NO_IMAGES = "images are not supported: this model reads text only"


class Options(BaseModel):
    """Ollama's runtime options: the ones with a meaning here."""

    model_config = ConfigDict(extra="ignore")
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: int | None = None  # 0 or less: no top-k
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    stop: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]],
                    Field(max_length=MAX_STOPS)] | None = None
    num_predict: int | None = None  # tokens to generate; -1, -2 and 0: as many as the context holds
    num_ctx: Annotated[int, Field(ge=1)] | None = None  # accepted; the model's context is the server's

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value):
        return [value] if isinstance(value, str) else value


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = "function"
    function: ToolFunction


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, Field(min_length=1)]
    arguments: dict[str, Any] | str | None = None  # an object; a JSON string is taken too; none: {}
    index: int | None = None


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    function: CalledFunction


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | None = ""
    thinking: str | None = None
    images: list[Any] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        role = value.lower()  # Ollama reads roles case-insensitively
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise ValueError(f"role {value!r}: a message's role is system, user, assistant or tool")
        return role

    @field_validator("images")
    @classmethod
    def _no_images(cls, value):
        if value:
            raise ValueError(NO_IMAGES)
        return value


class GeneratingRequest(BaseModel):
    """What /api/chat and /api/generate share."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    stream: bool = True
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: str | float | None = None
    think: Think | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @field_validator("think", mode="before")
    @classmethod
    def _think(cls, value):
        if isinstance(value, str) and value not in ("low", "medium", "high", "max"):
            raise ValueError(f"invalid think value: {value!r} (must be \"high\", \"medium\", \"low\", \"max\", "
                             "true, or false)")
        return value


class ChatRequest(GeneratingRequest):
    messages: Annotated[list[Message], AT_MOST_MAX_MESSAGES] | None = None
    tools: list[Tool] | None = None


class GenerateRequest(GeneratingRequest):
    prompt: str | None = None
    system: str | None = None
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.images:
            raise ValueError(NO_IMAGES)
        if self.raw and (self.template or self.system or self.context):
            raise ValueError("raw mode does not support template, system, or context")
        return self


class Named(BaseModel):
    """A request naming one model: `model`, or `name` as older clients send it."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _check(self):
        if not (self.model or self.name):
            raise ValueError("model is required")
        return self

    @property
    def wanted(self) -> str:
        return self.model or self.name


class ShowRequest(Named):
    verbose: bool | None = None


class PullRequest(Named):
    stream: bool = True
    insecure: bool | None = None
