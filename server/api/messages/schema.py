"""The request contract of POST /v1/messages (Anthropic's Messages API, what a local server can honour).

Content is a string or blocks: `text`, `tool_use`, `tool_result`, `thinking` (with its signature)
and `redacted_thinking`; `image` and `document` (and any other type) are 400s that name the type.
`cache_control` is accepted anywhere (the prompt cache is automatic). Unknown top-level fields
(`metadata`, `context_management`, `service_tier`, ...) are ignored, as Claude Code sends several.
"""

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from server.api.unsupported import Unsupported
from server.plumbing.limits import AT_MOST_MAX_MESSAGES, MAX_STOP_LENGTH

# Efforts the API accepts (server/turn/resolve.py maps them onto harmony's three levels).
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class _Block(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cache_control: Any = None


class TextBlock(_Block):
    type: Literal["text"]
    text: str


class ThinkingBlock(_Block):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Block):
    type: Literal["redacted_thinking"]
    data: str = ""


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    input: dict[str, Any] = Field(default_factory=dict)


class MCPToolUseBlock(_Block):
    """A call the server ran on an MCP server (an earlier reply's), sent back by the client."""

    type: Literal["mcp_tool_use"]
    id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    server_name: Annotated[str, Field(min_length=1)]
    input: dict[str, Any] = Field(default_factory=dict)


SERVER_BLOCK_TYPES = ("server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
                      "code_execution_tool_result")


class ServerToolBlock(_Block):
    """A built-in tool's call and result the server ran (an earlier reply's), sent back: kept by the
    client, not shown to the model again (it was that turn's reasoning)."""

    model_config = ConfigDict(extra="allow")
    type: Literal[SERVER_BLOCK_TYPES]


class OtherBlock(Unsupported):
    """Images, documents, search results: refused with a clear message."""

    what: ClassVar[str] = "content blocks"


def _kind(known: tuple):
    def kind(value: Any) -> str:
        found = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return found if found in known else "other"

    return kind


ResultPart = Annotated[Annotated[TextBlock, Tag("text")] | Annotated[OtherBlock, Tag("other")],
                       Discriminator(_kind(("text",)))]


class ToolResultBlock(_Block):
    type: Literal["tool_result", "mcp_tool_result"]
    tool_use_id: Annotated[str, Field(min_length=1)]
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            body = self.content
        else:
            body = "\n".join(part.text for part in self.content or [])
        return f"Error: {body}" if self.is_error else body


BLOCK_TYPES = ("text", "thinking", "redacted_thinking", "tool_use", "tool_result", "mcp_tool_use", "mcp_tool_result",
               *SERVER_BLOCK_TYPES)
Block = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[MCPToolUseBlock, Tag("mcp_tool_use")]
    | Annotated[ToolResultBlock, Tag("mcp_tool_result")]
    | Annotated[ServerToolBlock, Tag("server_tool_use")]
    | Annotated[ServerToolBlock, Tag("web_search_tool_result")]
    | Annotated[ServerToolBlock, Tag("web_fetch_tool_result")]
    | Annotated[ServerToolBlock, Tag("code_execution_tool_result")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_kind(BLOCK_TYPES)),
]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant", "system"]  # "system" mid-list: Claude Code sends it
    content: str | list[Block]

    def blocks(self) -> list:
        return [TextBlock(type="text", text=self.content)] if isinstance(self.content, str) else self.content


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None  # None: an mcp_toolset
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    # "custom" or absent; "mcp_toolset"; the server tools it runs: web_search_*, web_fetch_* (the browser),
    # code_execution_* (python); others are refused below
    type: str | None = None
    # mcp_toolset (the MCP connector's): the tools of an MCP server named in mcp_servers, or configured here
    mcp_server_name: str | None = None
    default_config: dict[str, Any] | None = None  # {"enabled": bool}
    configs: dict[str, dict[str, Any]] | None = None  # tool name -> {"enabled": bool}

    @field_validator("type")
    @classmethod
    def _client_tool(cls, kind: str | None):
        if kind not in (None, "custom", "mcp_toolset") and builtin_of(kind) is None:
            raise ValueError(f"tools of type {kind!r} are not supported; give client tools "
                             "(name, description, input_schema), MCP servers (mcp_toolset, mcp_servers), or the "
                             "server tools web_search_20250305, web_fetch_20250910, code_execution_20250825")
        return kind

    @model_validator(mode="after")
    def _check(self):
        if self.type == "mcp_toolset":
            if not self.mcp_server_name:
                raise ValueError("a tool of type 'mcp_toolset' needs mcp_server_name")
        elif not self.name:
            raise ValueError("a tool needs a name")
        return self

    def tool_filter(self) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
        """(allowed, denied) tool names of an mcp_toolset: with `default_config.enabled: false` only
        those its `configs` enable; else all but those they disable."""
        configs = self.configs or {}
        if (self.default_config or {}).get("enabled", True) is False:
            return tuple(name for name, config in configs.items() if config.get("enabled")), ()
        return None, tuple(name for name, config in configs.items() if config.get("enabled") is False)


def builtin_of(kind: str | None) -> str | None:
    """The built-in a server tool's type turns on ("browser", "python"), or None."""
    if kind and kind.startswith(("web_search_", "web_fetch_")):
        return "browser"
    if kind and kind.startswith("code_execution_"):
        return "python"
    return None


class MCPServerDefinition(BaseModel):
    """An MCP server the request names (the MCP connector's `mcp_servers`): a server configured here by
    `name`; a `url` is refused unless the server lets requests name servers by URL."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["url"] = "url"
    name: Annotated[str, Field(min_length=1, max_length=64)]
    url: str | None = None
    authorization_token: str | None = None
    tool_configuration: dict[str, Any] | None = None  # {"enabled": bool, "allowed_tools": [...]}


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None  # harmony writes one call per turn anyway

    @model_validator(mode="after")
    def _check(self):
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs the tool's name")
        return self


class Thinking(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Field(ge=0)] | None = None


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    effort: Effort | None = None
    format: OutputFormat | None = None


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    # Ollama's: how long the model stays loaded once idle ("5m", 300, 0, -1: forever)
    keep_alive: str | float | None = None
    max_tokens: Annotated[int, Field(ge=1)]
    messages: Annotated[list[Message], Field(min_length=1), AT_MOST_MAX_MESSAGES]
    system: str | list[TextBlock] | None = None
    stream: bool = False
    stop_sequences: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]],
                              Field(max_length=4)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    tools: list[Tool] | None = None
    mcp_servers: list[MCPServerDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    metadata: dict[str, Any] | None = None


class CountTokensRequest(MessagesRequest):
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # count_tokens takes none
