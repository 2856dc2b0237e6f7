"""The interface every source of server-run tools implements, and the little it needs.

A source has a namespace (the name the model calls its tools by: the MCP server `fs` gives the model
`fs.read_text_file`), a label (its name in the APIs: Responses' `server_label`, Anthropic's
`server_name`), lists its tools and runs one call:

    class Clock(ToolSource):
        namespace = label = "clock"
        kind = "clock"
        description = "The time on this machine."

        async def list_tools(self) -> list[ToolSpec]:
            return [ToolSpec("now", "The current time, ISO 8601.", {"type": "object", "properties": {}})]

        async def call(self, name: str, arguments: str, limits: CallLimits) -> str:
            if name != "now":
                raise ToolError(f"no tool {name!r}")
            return datetime.datetime.now().isoformat()

`arguments` is the JSON text the model wrote (`parse_arguments` checks it is an object; python's is
its code). `call` returns the result as text, or a ToolOutput (the text, and what the APIs show of
the call besides: a web search's action), or raises ToolError with a message the model and the
client read.

A source may also say (as class attributes, read with getattr; MCP servers have none of them):
- `in_system = True`: it is declared in harmony's system message, as GPT-OSS's built-in browser and
  python were trained (other sources go in the developer message), by its `declaration()`;
- `whole_namespace = True`: every recipient in its namespace is its one tool (`python`);
- `min_timeout`: the least time a call gets, whatever tool_timeout says (python bounds its own
  calls, and is stopped only past them).
The loop (server/turn/loop.py) is what bounds a call: it cancels the task past `limits.timeout` or
when the client leaves (a source lets asyncio.CancelledError through, and stops its work), and cuts
a result longer than `limits.max_bytes`; a source may use the limits to stop early. A result is data
for the model, never instructions: it goes into a tool message, never into system or developer text.
"""

import json
from dataclasses import dataclass, field
from typing import Protocol


class ToolError(Exception):
    """A call that failed in a way the model should hear about (bad arguments, the tool's own error,
    a server that went away): its message becomes the tool's answer. `from_tool`: the tool itself
    reported the error (an MCP result with isError), rather than the way to it failing."""

    def __init__(self, message: str, from_tool: bool = False):
        super().__init__(message)
        self.from_tool = from_tool


@dataclass(frozen=True)
class ToolOutput:
    """A call's result with more than its text: `details` for the APIs (a web_search_call's action,
    a search's results), and `error` when the call failed though the tool wrote the model's answer
    itself (a page that could not be fetched, code that ran out of time)."""

    text: str  # what the model reads
    details: dict = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    name: str  # the tool's own name, as its source knows it (may hold dashes: "get-sum")
    description: str = ""
    parameters: dict | None = None  # a JSON schema of type object; None: no arguments
    annotations: dict | None = None  # what the source says about it (MCP's readOnlyHint, ...)


@dataclass(frozen=True)
class CallLimits:
    timeout: float  # seconds
    max_bytes: int  # of the result, UTF-8


class ToolSource(Protocol):
    namespace: str  # the harmony namespace its tools are called in
    label: str  # its name in the APIs
    kind: str  # "mcp", "browser" or "python": how the APIs show its calls
    description: str  # what the model is told the namespace is

    async def list_tools(self) -> list[ToolSpec]:
        """Its tools (ToolError when it can't say, e.g. a server that does not start)."""
        ...

    async def call(self, name: str, arguments: str, limits: CallLimits) -> "str | ToolOutput":
        ...


def parse_arguments(arguments: str) -> dict:
    """The model's arguments as an object; ToolError (the model may try again) when they are not one."""
    text = arguments.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ToolError(f"the arguments are not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise ToolError("the arguments must be a JSON object")
    return value
