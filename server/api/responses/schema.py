"""The request contract of POST /v1/responses (OpenAI's Responses API, the parts a local server can honour).

`input` is a string or a list of items: messages (text parts or a plain string), the items a
client sends back from earlier responses (`reasoning`, `function_call`, `function_call_output`),
and references to stored items by id (`item_reference`, resolved by the route from the store).
Tools are function tools in the flat form, and namespaces of them (Codex CLI groups its agent
tools so), MCP servers (`mcp`), and the built-ins the server runs: `web_search` (and
`web_search_preview`) turn on the browser, `code_interpreter` python (docs/builtin-tools.md). Where
the browser is off, `web_search` is left out of the prompt, as before (Codex CLI always sends it).
Unknown top-level fields are ignored; unsupported item, part and tool types are 400s that name the type.
"""

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from server.api.reasoning import ReasoningControls
from server.api.unsupported import Unsupported
from server.plumbing.limits import AT_MOST_MAX_MESSAGES

# Efforts the API accepts (server/turn/resolve.py maps them onto harmony's three levels).
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
WEB_SEARCH_TYPES = ("web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_text", "output_text", "text"]
    text: str


class OtherPart(Unsupported):
    """Images, files, audio: refused with a clear message."""


def _part_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "text" if kind in ("input_text", "output_text", "text") else "other"


Part = Annotated[Annotated[TextPart, Tag("text")] | Annotated[OtherPart, Tag("other")], Discriminator(_part_kind)]


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Part]
    id: str | None = None
    phase: Literal["commentary", "final_answer"] | None = None  # of an assistant message

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    arguments: str = ""
    namespace: str | None = None
    id: str | None = None


class ToolOutputPart(BaseModel):
    """A part of a tool's output. Text is kept; anything else (Codex CLI's view_image returns an
    input_image) is replaced by a note, so that one image doesn't break an agent's whole session."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None

    def shown(self) -> str:
        if self.type in ("input_text", "output_text", "text"):
            return self.text or ""
        return f"[{self.type} omitted: this model reads text only]"


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1)]
    output: str | list[ToolOutputPart]
    id: str | None = None

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.shown() for part in self.output)


class ReasoningText(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "reasoning_text"
    text: str


class ReasoningItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None


class ItemReference(BaseModel):
    """An earlier item by its id (the Vercel AI SDK sends reasoning back so, with store on); an
    item with only an `id` is one too, as in OpenAI's API."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["item_reference"] = "item_reference"
    id: Annotated[str, Field(min_length=1)]


class MCPListToolsItem(BaseModel):
    """An earlier response's listing of an MCP server's tools: kept in the conversation; a request
    whose conversation has one for a server doesn't list that server again."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["mcp_list_tools"]
    server_label: str
    id: str | None = None
    tools: list[dict[str, Any]] = []
    error: str | None = None


class MCPCallItem(BaseModel):
    """A call the server ran on an MCP server (an earlier response's output), back into harmony."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["mcp_call"]
    server_label: str
    name: str
    arguments: str = ""
    output: str | None = None
    error: Any = None  # a string, or the SDK's error object ({"type": "mcp_protocol_error", "message"...})
    id: str | None = None
    status: str | None = None

    def error_text(self) -> str | None:
        error = self.error
        if error is None or isinstance(error, str):
            return error
        if isinstance(error, dict):
            if "message" in error:
                return str(error["message"])
            content = error.get("content")
            if isinstance(content, list):
                return "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
        return str(error)


class WebSearchCallItem(BaseModel):
    """An earlier response's browser call, sent back: kept in the conversation, not shown to the model
    again (it was part of that turn's reasoning)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["web_search_call"]
    id: str | None = None
    status: str | None = None
    action: dict[str, Any] | None = None


class CodeInterpreterCallItem(BaseModel):
    """An earlier response's python call, sent back: its container names the conversation's
    interpreter; like a browser call, not shown to the model again."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["code_interpreter_call"]
    id: str | None = None
    status: str | None = None
    code: str | None = None
    container_id: str | None = None
    outputs: list[dict[str, Any]] | None = None


class OtherItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str

    @field_validator("type")
    @classmethod
    def _refuse(cls, kind: str):
        raise ValueError(
            f"input items of type {kind!r} are not supported; this server takes messages, "
            "function_call, function_call_output, reasoning, item_reference, mcp_list_tools, mcp_call, "
            "web_search_call and code_interpreter_call items"
        )


ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning", "item_reference", "mcp_list_tools",
              "mcp_call", "web_search_call", "code_interpreter_call")


def _item_kind(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("type") or ("message" if "role" in value else "item_reference" if "id" in value else None)
    else:
        kind = getattr(value, "type", None)
    return kind if kind in ITEM_TYPES else "other"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[ItemReference, Tag("item_reference")]
    | Annotated[MCPListToolsItem, Tag("mcp_list_tools")]
    | Annotated[MCPCallItem, Tag("mcp_call")]
    | Annotated[WebSearchCallItem, Tag("web_search_call")]
    | Annotated[CodeInterpreterCallItem, Tag("code_interpreter_call")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_kind),
]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamespaceTool(BaseModel):
    """A named group of function tools (Codex CLI's `multi_agent_v1`)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["namespace"]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    tools: list[FunctionTool]


class MCPTool(BaseModel):
    """An MCP server whose tools the server runs: one configured here, by `server_label`. A
    `server_url` is refused unless the server lets requests name servers by URL
    (`mcp_request_servers`); approvals are not asked for (the servers are the operator's)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["mcp"]
    server_label: Annotated[str, Field(min_length=1, max_length=64)]
    allowed_tools: list[str] | dict[str, Any] | None = None  # names, or {"tool_names": [...]}
    server_url: str | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = None
    require_approval: Any = None
    server_description: str | None = None
    connector_id: str | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.connector_id is not None:
            raise ValueError("mcp tools with a connector_id are not supported; name a configured MCP server "
                             "by server_label")
        if self.require_approval not in (None, "never"):
            raise ValueError("require_approval: this server runs MCP tools without asking for approvals; "
                             "give 'never' or leave it out")
        if isinstance(self.allowed_tools, dict) and self.allowed_tools.get("read_only"):
            raise ValueError("allowed_tools.read_only is not supported; list tool_names")
        return self

    def tool_names(self) -> tuple[str, ...] | None:
        given = self.allowed_tools
        if isinstance(given, dict):
            given = given.get("tool_names")
        return None if given is None else tuple(given)

    def request_headers(self) -> dict[str, str]:
        headers = dict(self.headers or {})
        if self.authorization:
            headers["Authorization"] = f"Bearer {self.authorization}"
        return headers


class WebSearchTool(BaseModel):
    """The browser, run by the server (search_context_size, user_location, filters: accepted, unused)."""

    model_config = ConfigDict(extra="allow")
    type: Literal[WEB_SEARCH_TYPES]


class CodeInterpreterTool(BaseModel):
    """python, run by the server. `container`: a container id names the interpreter to use (one this
    server gave in an earlier code_interpreter_call's container_id); {"type": "auto"} (or none) the
    conversation's own, or a new one."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["code_interpreter"]
    container: str | dict[str, Any] | None = None

    @field_validator("container")
    @classmethod
    def _container(cls, value):
        if isinstance(value, str) and not value.strip():
            raise ValueError("container: give a container id, or {\"type\": \"auto\"}")
        if isinstance(value, dict) and value.get("file_ids"):
            raise ValueError("container.file_ids: files can't be uploaded to this server's python")
        return value


class OtherTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str

    @field_validator("type")
    @classmethod
    def _refuse(cls, kind: str):
        raise ValueError(
            f"tools of type {kind!r} are not supported by this server; use function tools (type 'function', or "
            "groups of them of type 'namespace'), configured MCP servers (type 'mcp'), 'web_search' or "
            "'code_interpreter'"
        )


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in WEB_SEARCH_TYPES:
        return "web_search"
    return kind if kind in ("function", "namespace", "mcp", "code_interpreter") else "other"


ToolSpec = Annotated[
    Annotated[FunctionTool, Tag("function")]
    | Annotated[NamespaceTool, Tag("namespace")]
    | Annotated[MCPTool, Tag("mcp")]
    | Annotated[WebSearchTool, Tag("web_search")]
    | Annotated[CodeInterpreterTool, Tag("code_interpreter")]
    | Annotated[OtherTool, Tag("other")],
    Discriminator(_tool_kind),
]


class FunctionChoice(BaseModel):
    type: Literal["function"]
    name: str


Summary = Literal["auto", "concise", "detailed"]


class ReasoningOptions(ReasoningControls):
    effort: Effort | None = None
    # asked for: reasoning items carry the whole reasoning as their summary too (output.py)
    summary: Summary | None = None
    generate_summary: Summary | None = None  # the deprecated name of `summary`

    def summary_asked(self) -> Summary | None:
        return self.summary or self.generate_summary


class TextFormat(BaseModel):
    """`text`, `json_object`, or `json_schema` with the schema's name, schema, description and
    strict flag (flat, as the Responses API has them)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    type: str
    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @field_validator("type")
    @classmethod
    def _known(cls, kind: str):
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError(f"text.format of type {kind!r} is not supported; "
                             "use 'text', 'json_object' or 'json_schema'")
        return kind

    @model_validator(mode="after")
    def _check(self):
        if self.type == "json_schema" and (self.schema_ is None or not self.name):
            raise ValueError("a text.format of type 'json_schema' needs a name and a schema")
        return self


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    # Ollama's: how long the model stays loaded once idle ("5m", 300, 0, -1: forever)
    keep_alive: str | float | None = None
    input: Annotated[list[InputItem], AT_MOST_MAX_MESSAGES] | None = None
    instructions: str | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    include: list[str] | None = None
    reasoning: ReasoningOptions | None = None
    reasoning_effort: Effort | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None  # of the calls the server runs (mcp, built-ins)
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    # not OpenAI's, but local servers take them (as in chat completions)
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    metadata: dict[str, str] | None = None
    text: TextOptions | None = None
    background: bool | None = None
    conversation: Any = None

    @field_validator("input", mode="before")
    @classmethod
    def _string_input(cls, value):
        return [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self):
        if self.background:
            raise ValueError("background: background responses are not supported")
        if self.conversation is not None:
            raise ValueError("conversation: the Conversations API is not supported; use previous_response_id")
        if not self.input and not self.previous_response_id:
            raise ValueError("input: give input (a string or a list of items)")
        return self

    def logprobs(self) -> int | None:
        """Top-N logprobs per answer token, with include ["message.output_text.logprobs"]."""
        return (self.top_logprobs or 0) if "message.output_text.logprobs" in (self.include or []) else None

    def wants_encrypted_reasoning(self) -> bool:
        return "reasoning.encrypted_content" in (self.include or [])

    def wants_sources(self) -> bool:
        """A web_search_call's search action lists the results' URLs (`sources`) when asked for."""
        return "web_search_call.action.sources" in (self.include or [])

    def wants_summary(self) -> bool:
        return self.reasoning is not None and self.reasoning.summary_asked() is not None
