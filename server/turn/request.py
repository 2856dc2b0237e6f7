"""What one request asked of its turn, in no API's words.

Each API's translation (server/api/<dialect>/prompt.py) fills a `TurnRequest` with what its request
said and nothing more: a field the request left out stays None (or empty), and resolve.py applies
every default, once, for all APIs.

    request = TurnRequest(instructions, messages, tools=(ToolDef(...),), tool_choice=ToolChoice("auto"),
                          effort="high", sampling={"temperature": 0.2}, max_tokens=None, ...)
    resolved = resolve(request, settings)          # server/turn/resolve.py
"""

from dataclasses import dataclass, field, fields

from openai_harmony import Message

from server.engine.sampling import SamplingParams
from server.harmony.tools import ToolNames
from server.tools.toolbox import NO_BUILTINS, BuiltinAsk, ServerAsk


@dataclass(frozen=True)
class ToolDef:
    """A function tool the client declared (and will run)."""

    name: str
    description: str | None = None
    parameters: dict | None = None
    strict: bool = False
    namespace: str | None = None  # a group of functions (the Responses API's `namespace` tools)
    param: str = "tools"  # where its schema is in the request, for errors ("tools[2].function.parameters")

    @property
    def key(self) -> str:
        """The client's name for it, unique within a request."""
        return f"{self.namespace}.{self.name}" if self.namespace else self.name


def sampling_given(body) -> dict:
    """The sampling values a request gave: its fields named like SamplingParams' that are set
    (a new sampling parameter is a field in the schemas and in SamplingParams, nothing here)."""
    given = {f.name: getattr(body, f.name, None) for f in fields(SamplingParams)}
    return {name: value for name, value in given.items() if value is not None}


def tool_names(tools) -> ToolNames:
    """The names the model writes for these tools, and back (what every translation and the
    resolver use, so that they agree)."""
    return ToolNames([tool.key for tool in tools])


@dataclass(frozen=True)
class ToolChoice:
    kind: str = "auto"  # "auto", "none", "required" (any tool) or "named"
    name: str | None = None  # the client's key of the named tool
    param: str = "tool_choice"  # where the request gave it, for errors


@dataclass(frozen=True)
class ReasoningAsk:
    """The request's reasoning controls besides effort (OpenRouter's `reasoning` object, Anthropic's
    `thinking`), as given."""

    budget: int | None = None  # analysis tokens before the answer is opened
    enabled: bool | None = None  # False: no analysis at all
    exclude: bool = False  # reason, but don't send the reasoning
    loop_guard: bool | None = None


@dataclass(frozen=True)
class FormatAsk:
    """A structured answer: "json_object", or "json_schema" with the schema."""

    type: str
    name: str = "response"
    schema: dict | None = None
    description: str | None = None
    param: str = "response_format"  # where the request gave it, for errors


@dataclass(frozen=True)
class TurnRequest:
    instructions: str = ""  # the developer message's instructions (system and developer texts)
    messages: list[Message] = field(default_factory=list)  # the conversation, as harmony messages
    tools: tuple[ToolDef, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    # MCP servers whose tools the server runs for this request (server/tools/toolbox.py); None: the
    # request did not say (chat completions), and the servers configured with `default = true` are on
    servers: tuple[ServerAsk, ...] | None = ()
    builtins: BuiltinAsk = NO_BUILTINS  # the built-in browser and python (server/tools/builtin.py)
    max_tool_calls: int | None = None  # calls the server may run in this reply (at most tool_max_rounds)
    effort: str | None = None  # "low", "medium" or "high"
    sampling: dict = field(default_factory=dict)  # SamplingParams fields the request gave
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"  # the field a token limit is named by in errors
    stop: tuple[str, ...] = ()
    n: int | None = None
    logprobs: int | None = None  # top-N per generated token (0: the token's own); None: none
    reasoning: ReasoningAsk = ReasoningAsk()
    response_format: FormatAsk | None = None
    input_param: str = "messages"  # the field holding the conversation, for a context-overflow error
