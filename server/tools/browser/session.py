"""The browser tool: `Browser` is shared (search backend, fetch limits, the SSRF policy), each
conversation gets a `BrowserSession` (the pages it has seen, by cursor) whose `call` runs one of
the model's `browser.search` / `browser.open` / `browser.find` calls.

Every view the model gets is a new cursor on the session's stack (a search, an opened page, a
scroll of it, a find), as in the browser GPT-OSS was trained with; the citations in its answer name
those cursors. Whatever goes wrong the model sees as the tool's answer (`BrowserReply.error`):
a bad link id, a refused address, a page that timed out. Nothing here raises for the model's input.
"""

import asyncio
import json
import logging
from dataclasses import dataclass, field

from openai_harmony import ToolNamespaceConfig

from server.tools.browser import page as pages
from server.tools.browser.citations import CitationStream, Cited, cite
from server.tools.browser.page import Page, SearchResult
from server.tools.browser.search import SearchBackend, SearchError
from server.tools.net import (
    AddressPolicy,
    FetchError,
    FetchLimits,
    Refused,
    Resolver,
    fetch,
    system_resolver,
)

log = logging.getLogger("swallow.tools.browser")

FUNCTIONS = ("search", "open", "find")
MAX_VIEWS = 100  # cursors one conversation may open; each holds a page
HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("application/json", "application/xml", "application/javascript")


class ToolError(Exception):
    """A call the browser can't do; the message is what the model reads."""


@dataclass
class BrowserReply:
    text: str  # the tool message the model reads
    action: dict  # what was done, in the shape of a Responses API web_search_call's `action`
    results: list[SearchResult] = field(default_factory=list)  # a search's results
    error: str | None = None  # set when the call failed (then `text` says why)


def namespace() -> ToolNamespaceConfig:
    """The browser as the system message declares it: openai-harmony's own (search, open, find,
    and the citation format), which is what GPT-OSS was trained with."""
    return ToolNamespaceConfig.browser()


class Browser:
    def __init__(self, search: SearchBackend, policy: AddressPolicy | None = None, limits: FetchLimits | None = None,
                 max_results: int = 10, view_tokens: int = 1024, resolver: Resolver = system_resolver):
        self.search_backend = search
        self.policy = policy or AddressPolicy()
        self.limits = limits or FetchLimits()
        self.max_results = max_results
        self.view_tokens = view_tokens
        self.resolver = resolver

    def session(self) -> "BrowserSession":
        return BrowserSession(self)

    async def fetch_page(self, url: str) -> Page:
        try:
            fetched = await fetch(url, self.policy, self.limits, self.resolver)
        except (Refused, FetchError) as e:
            raise ToolError(f"Error fetching URL `{url}`: {e}") from None
        if fetched.status >= 400:
            raise ToolError(f"Error fetching URL `{url}`: the server answered HTTP {fetched.status}")
        kind = fetched.content_type
        is_html = kind in HTML_TYPES or (not kind and fetched.body.lstrip()[:1] == b"<")
        is_text = kind.startswith("text/") or kind in TEXT_TYPES or kind.endswith(("+json", "+xml"))
        if not (is_html or is_text):
            raise ToolError(f"Error fetching URL `{url}`: it is {kind or 'of no stated type'}, and the browser "
                            "reads only HTML and text")
        try:
            if is_html:
                page = await asyncio.to_thread(pages.from_html, fetched.body, fetched.url)
            else:
                text = fetched.body.decode(fetched.charset or "utf-8", errors="replace")
                page = pages.from_text(text, fetched.url)
        except Exception:  # a page the extractor chokes on (or an unknown charset) is the page's problem
            log.exception("browser: could not read %s", fetched.url)
            raise ToolError(f"Error reading URL `{url}`: the page could not be turned into text") from None
        if fetched.truncated:
            page.text += f"\n\n[The page is longer than {self.limits.max_bytes // 1024} KB; the rest was not read.]"
        return page


def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ToolError(f"`{name}` should be an integer, not `{type(value).__name__}`")
    try:
        return int(float(value))
    except ValueError:
        raise ToolError(f"`{name}` should be an integer, not `{value}`") from None


class BrowserSession:
    """One conversation's browser: the pages it has seen, each view a cursor."""

    def __init__(self, browser: Browser):
        self.browser = browser
        self.pages: list[Page] = []  # by cursor
        self.fetched: dict[str, Page] = {}  # by URL, reused when a link is opened again

    # ---- the model's call ---------------------------------------------------------------------
    async def call(self, function: str, arguments: str | dict) -> BrowserReply:
        """Run `browser.<function>` with the arguments the model wrote (JSON text or a dict)."""
        kind = {"search": "search", "open": "open_page", "find": "find_in_page"}.get(function, function)
        action: dict = {"type": kind}
        try:
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except json.JSONDecodeError:
                    raise ToolError("Invalid function arguments: not a JSON object") from None
            if not isinstance(arguments, dict):
                raise ToolError("Invalid function arguments: not a JSON object")
            if function == "search":
                query = arguments.get("query")
                if not isinstance(query, str) or not query.strip():
                    raise ToolError("`query` is required")
                action["query"] = query
                topn = _int(arguments.get("topn", arguments.get("top_n", self.browser.max_results)), "topn")
                return await self.search(query, topn, action)
            if function == "open":
                target = arguments.get("id", -1)
                if isinstance(target, str) and target.strip().lstrip("-").isdigit():
                    target = int(target)
                elif not isinstance(target, str):
                    target = _int(target, "id")
                return await self.open(target, _int(arguments.get("cursor", -1), "cursor"),
                                       _int(arguments.get("loc", -1), "loc"),
                                       _int(arguments.get("num_lines", -1), "num_lines"), action)
            if function == "find":
                pattern = arguments.get("pattern")
                if not isinstance(pattern, str) or not pattern:
                    raise ToolError("`pattern` is required")
                action["pattern"] = pattern
                return await self.find(pattern, _int(arguments.get("cursor", -1), "cursor"), action)
            raise ToolError(f"Unknown function: `{function}` (the browser has search, open and find)")
        except ToolError as e:
            log.info("browser.%s: %s", function, e)
            return BrowserReply(text=str(e), action=action, error=str(e))

    async def search(self, query: str, topn: int = 10, action: dict | None = None) -> BrowserReply:
        count = max(1, min(topn, self.browser.max_results))
        try:
            results = await self.browser.search_backend.search(query, count)
        except SearchError as e:
            raise ToolError(f"Error during search for `{query}`: {e}") from None
        page = pages.search_page(query, results)
        return BrowserReply(self._show(page, 0, -1), action or {"type": "search", "query": query}, results)

    async def open(self, id: int | str = -1, cursor: int = -1, loc: int = -1, num_lines: int = -1,
                   action: dict | None = None) -> BrowserReply:
        action = action if action is not None else {"type": "open_page"}
        if isinstance(id, str):  # a URL: fetched again, as a browser's reload
            url = id.strip()
            if "://" not in url:
                url = "https://" + url
            action["url"] = url
            page = await self._fetch(url)
        else:
            current = self._page(cursor)
            if id < 0:  # scroll the page at `cursor`
                page = current
            else:
                if id not in current.links:
                    raise ToolError(f"Invalid link id `{id}`.")
                action["url"] = current.links[id]
                if current.kind == "find":  # a match: the searched page, at the match
                    page = current.source
                    if loc < 0:
                        loc = max(0, current.link_lines[id] - 4)
                else:
                    page = self.fetched.get(current.links[id]) or await self._fetch(current.links[id])
        if page.url:
            action["url"] = page.url  # where it landed, after redirects
        return BrowserReply(self._show(page, max(loc, 0), num_lines), action)

    async def find(self, pattern: str, cursor: int = -1, action: dict | None = None) -> BrowserReply:
        page = self._page(cursor)
        if page.kind != "page":
            raise ToolError("Cannot run `find` on search results page or find results page")
        action = action if action is not None else {"type": "find_in_page", "pattern": pattern}
        action["url"] = page.url
        return BrowserReply(self._show(pages.find_page(page, pattern), 0, -1), action)

    # ---- citations in the answer --------------------------------------------------------------
    def cite(self, text: str) -> Cited:
        return cite(text, self.pages)

    def citation_stream(self) -> CitationStream:
        return CitationStream(self.pages)

    # ---- inside -------------------------------------------------------------------------------
    async def _fetch(self, url: str) -> Page:
        page = await self.browser.fetch_page(url)
        self.fetched[url] = self.fetched[page.url] = page
        return page

    def _page(self, cursor: int) -> Page:
        if not self.pages:
            raise ToolError("No pages to access!")
        if cursor < 0:
            return self.pages[-1]
        if cursor >= len(self.pages):
            raise ToolError(f"Cursor `{cursor}` is out of range. Available cursor indices: [0 - {len(self.pages) - 1}].")
        return self.pages[cursor]

    def _show(self, page: Page, loc: int, num_lines: int) -> str:
        """Put `page` on the stack as a new cursor and render its view from line `loc`."""
        total = len(page.lines)
        if loc >= total:
            raise ToolError(f"Invalid location parameter: `{loc}`. Cannot exceed page maximum of {total - 1}.")
        if len(self.pages) >= MAX_VIEWS:
            raise ToolError(f"This conversation has used the browser's {MAX_VIEWS} views; answer with what you have.")
        if num_lines > 0:  # as asked, up to four views' worth
            end = min(loc + num_lines, pages.view_end(page.lines, loc, 4 * self.browser.view_tokens))
        else:
            end = pages.view_end(page.lines, loc, self.browser.view_tokens)
        self.pages.append(page)
        return pages.render(page, len(self.pages) - 1, loc, end)
