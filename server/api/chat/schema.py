"""The request contract of POST /v1/chat/completions (OpenAI's, plus what local servers add).

Unknown top-level fields are ignored, as OpenAI-compatible servers do (SDKs send fields like
`user` or `metadata`); wrong types and out-of-range values are 400s.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from server.api.reasoning import ReasoningControls
from server.api.unsupported import Unsupported
from server.plumbing.limits import AT_MOST_MAX_MESSAGES, MAX_STOP_LENGTH

Effort = Literal["low", "medium", "high"]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class OtherPart(Unsupported):
    """Any other content part (images, audio, files): refused with a clear message."""


def _part_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "text" if kind == "text" else "other"


Part = Annotated[Annotated[TextPart, Tag("text")] | Annotated[OtherPart, Tag("other")], Discriminator(_part_kind)]
Content = str | list[Part] | None


class FunctionCall(BaseModel):
    name: str
    arguments: str = ""


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content = None
    name: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


class FunctionDefinition(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class MCPTool(BaseModel):
    """An MCP server whose tools the server runs for this request (this server's extension, in the
    Responses API's shape): a configured one by `server_label`, its tools limited by `allowed_tools`."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["mcp"]
    server_label: Annotated[str, Field(min_length=1, max_length=64)]
    allowed_tools: list[str] | dict[str, Any] | None = None  # names, or {"tool_names": [...]}
    server_url: str | None = None  # refused unless the server allows request-named servers
    headers: dict[str, str] | None = None

    def tool_names(self) -> tuple[str, ...] | None:
        given = self.allowed_tools
        if isinstance(given, dict):
            given = given.get("tool_names")
        return None if given is None else tuple(given)


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: dict[str, str]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ReasoningOptions(ReasoningControls):
    effort: Effort | None = None


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: Annotated[str, Field(min_length=1, max_length=64)] = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("a response_format of type 'json_schema' needs json_schema.schema")
        return self


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    # Ollama's: how long the model stays loaded once idle ("5m", 300, 0, -1: forever)
    keep_alive: str | float | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1), AT_MOST_MAX_MESSAGES]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None  # -1 or 0: off
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None  # up to the configured max_n (checked by the route)
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    reasoning_effort: Effort | None = None
    reasoning: ReasoningOptions | None = None
    tools: list[Annotated[Tool | MCPTool, Field(discriminator="type")]] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # the built-ins the server runs (this server's extension): None: those on by default
    # (browser_default, python_default); [] none
    builtin_tools: list[Literal["browser", "python"]] | None = None
    web_search_options: dict[str, Any] | None = None  # OpenAI's: given (even {}), the browser is on
    metadata: dict[str, Any] | None = None  # `conversation_id`: names the conversation (python's interpreter)

    @model_validator(mode="after")
    def _check(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s or len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"stop: up to 4 non-empty strings of at most {MAX_STOP_LENGTH} characters")
        return self

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
