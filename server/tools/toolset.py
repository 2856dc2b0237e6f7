"""One request's server-run tools: the sources it picked, their tools as the model sees them, and
the way back from what the model writes to the tool it means.

Each source is a harmony namespace of its own in the developer message (`namespace fs { ... }`);
the built-in browser and python are declared in the system message instead, as GPT-OSS was trained.
Tool names that can't stand in a harmony header ("get-sum") get safe ones ("get_sum"), mapped back
when the model calls them: `find("fs.get_sum")` -> the source `fs` and its tool `get-sum`.
"""

from dataclasses import dataclass, field

from openai_harmony import ToolNamespaceConfig

from server.harmony.tools import ToolNames, check_parameters, describe
from server.tools.base import ToolSource, ToolSpec


@dataclass
class Listing:
    """A source as this request sees it: its tools (the allowed ones), or why it has none."""

    source: ToolSource
    tools: list[ToolSpec] = field(default_factory=list)
    error: str | None = None  # it could not list its tools (a server that does not start)
    names: ToolNames = field(init=False)

    def __post_init__(self):
        self.names = ToolNames([t.name for t in self.tools])

    @property
    def label(self) -> str:
        return self.source.label

    @property
    def in_system(self) -> bool:
        return getattr(self.source, "in_system", False)

    def namespace(self) -> ToolNamespaceConfig:
        if self.in_system:
            return self.source.declaration()
        tools = []
        for tool in self.tools:
            # a schema harmony can't show as an object type is left out: the description stays
            parameters = tool.parameters if check_parameters(tool.name, tool.parameters) is None else None
            tools.append(describe(self.names.model_name(tool.name), tool.description, parameters))
        return ToolNamespaceConfig(name=self.source.namespace, description=self.source.description, tools=tools)


@dataclass(frozen=True)
class Found:
    listing: Listing
    tool: ToolSpec

    @property
    def source(self) -> ToolSource:
        return self.listing.source


class Toolset:
    def __init__(self, listings: list[Listing] = (), owned: list = ()):
        self.listings = list(listings)
        self._owned = list(owned)  # sources started for this request alone (stopped by close)

    def __bool__(self) -> bool:
        return any(listing.tools for listing in self.listings)

    @property
    def owns_sources(self) -> bool:
        """It started sources of its own (servers the request named by URL): close() stops them."""
        return bool(self._owned)

    def namespaces(self) -> list[ToolNamespaceConfig]:
        """What the developer message shows: one namespace per source that has tools."""
        return [listing.namespace() for listing in self.listings if listing.tools and not listing.in_system]

    def system_namespaces(self) -> list[ToolNamespaceConfig]:
        """What the system message declares: the built-ins (browser, python)."""
        return [listing.namespace() for listing in self.listings if listing.tools and listing.in_system]

    def source(self, kind: str) -> ToolSource | None:
        """The request's source of a kind ("browser"), if it has one."""
        return next((listing.source for listing in self.listings if listing.source.kind == kind), None)

    def find(self, recipient: str) -> Found | None:
        """The tool a recipient the model wrote (`fs.read_text_file`) means, or None."""
        namespace, _, model_name = recipient.partition(".")
        for listing in self.listings:
            if listing.source.namespace == namespace and getattr(listing.source, "whole_namespace", False):
                return Found(listing, listing.tools[0]) if listing.tools else None
            if listing.source.namespace == namespace and model_name:
                name = listing.names.client_name(model_name)
                tool = next((t for t in listing.tools if t.name == name), None)
                if tool is not None:
                    return Found(listing, tool)
        return None

    async def close(self) -> None:
        for source in self._owned:
            await source.stop()
        self._owned = []


EMPTY = Toolset()
