"""harmony's built-in browser and python as sources of the tool loop (base.py's ToolSource).

`Builtins` is made once, with the toolbox, from the settings: the shared `Browser` and `PythonTool`
(None when off or unusable), and a secret of this process. Each request that asks for them gets
sources of its own:

    builtins = Builtins(settings)
    browser = builtins.browser_source()           # a BrowserSession of its own: the request's pages
    python = builtins.python_source(conversation) # the conversation's interpreter

- The browser's session lives as long as the request (its turns, all their rounds), so that the
  cursors the answer cites are still there when it is cited; the next request starts anew (the
  model does not see an earlier turn's pages: harmony drops a finished turn's analysis).
- python's interpreter lives as long as the conversation: `conversation` is text that names it
  (Responses: its container id; chat completions and Messages: the client's conversation id, or the
  conversation's opening), and the interpreter's key is that text's HMAC under this process's
  secret. Nothing a client sees is a key: it reaches an interpreter only by sending the same
  conversation name (a container id, which is random; an id it chose; or the same opening).
"""

import hashlib
import hmac
import secrets

from openai_harmony import ToolNamespaceConfig

from server.tools.base import CallLimits, ToolError, ToolOutput, ToolSpec


class BrowserSource:
    kind = "browser"
    namespace = label = "browser"
    in_system = True

    def __init__(self, session):
        self.session = session  # browser.BrowserSession
        self.description = self.declaration().description

    def declaration(self) -> ToolNamespaceConfig:
        from server.tools.browser import namespace

        return namespace()

    async def list_tools(self) -> list[ToolSpec]:
        return [ToolSpec(t.name, t.description, t.parameters) for t in self.declaration().tools]

    async def call(self, name: str, arguments: str, limits: CallLimits) -> ToolOutput:
        before = len(self.session.pages)
        reply = await self.session.call(name, arguments)
        details = {"action": reply.action,
                   "results": [{"url": r.url, "title": r.title, "snippet": r.snippet} for r in reply.results]}
        if len(self.session.pages) > before:  # the view it showed: its page, for citations and the APIs
            page = self.session.pages[-1]
            details["url"], details["title"] = page.cited_url, page.cited_title
        return ToolOutput(reply.text, details, error=reply.error)

    def citation_stream(self):
        """The answer's citations of this request's pages, as the answer streams (browser.CitationStream)."""
        return self.session.citation_stream()

    def quote(self, citation, limit: int = 150) -> str:
        """The lines a citation names, as plain text (link markers read as their text), cut to `limit`."""
        from server.tools.browser.page import MARKER

        lines = self.session.pages[citation.cursor].lines[citation.first_line:citation.last_line + 1]
        text = " ".join(MARKER.sub(r"\1", line).strip() for line in lines).strip()
        return text if len(text) <= limit else text[:limit - 1] + "…"


class PythonSource:
    kind = "python"
    namespace = label = "python"
    in_system = True
    whole_namespace = True  # `python` is the tool (a model that writes `python.run` means it too)

    def __init__(self, tool, key: str):
        self.tool = tool  # python.PythonTool
        self.key = key
        self.description = tool.description()
        # the tool bounds each call itself (interrupted at python_timeout, the sandbox killed a few
        # seconds later): the loop's own limit must not cut in first and lose the interpreter
        self.min_timeout = tool.limits.timeout + tool.grace + 5

    def declaration(self) -> ToolNamespaceConfig:
        return self.tool.namespace()

    async def list_tools(self) -> list[ToolSpec]:
        return [ToolSpec("python", self.description)]

    async def call(self, name: str, arguments: str, limits: CallLimits) -> ToolOutput:
        if not arguments.strip():
            raise ToolError("no code was sent: write the Python code as the message to python")
        result = await self.tool.run(self.key, arguments)
        return ToolOutput(result.output, {"restarted": result.restarted}, error=result.error)


class Builtins:
    def __init__(self, settings):
        self.browser = None
        self.python = None
        if settings.browser_tool:
            from server.tools import browser

            self.browser = browser.from_settings(settings)
        if settings.python_tool:
            from server.tools import python

            self.python = python.from_settings(settings)
        self._secret = secrets.token_bytes(32)  # per process: interpreters don't outlive it either

    def browser_source(self) -> BrowserSource:
        return BrowserSource(self.browser.session())

    def python_source(self, conversation: str) -> PythonSource:
        return PythonSource(self.python, self.key(conversation))

    def key(self, conversation: str) -> str:
        """The interpreter's key for a conversation's name; a request with no name gets one of its own."""
        if not conversation:
            return secrets.token_hex(16)
        return hmac.new(self._secret, conversation.encode(), hashlib.sha256).hexdigest()[:32]

    async def close(self) -> None:
        if self.python is not None:
            await self.python.close()
