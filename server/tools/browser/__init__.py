"""harmony's built-in browser tool (search, open, find), run by the server.

    browser = from_settings(settings)          # None when off or unusable (the log says why)
    session = browser.session()                # one per conversation: its pages, by cursor
    reply = await session.call("search", '{"query": "東京 天気"}')   # reply.text: the tool message
    cited = session.cite(answer_text)          # 【3†L2-L4】 -> links + url_citation spans
"""

import logging

from server.config import Settings
from server.tools.browser.citations import Citation, CitationStream, Cited, cite
from server.tools.browser.page import Page, SearchResult
from server.tools.browser.search import Ddgs, SearchBackend, SearchError, Searxng
from server.tools.browser.session import (
    Browser,
    BrowserReply,
    BrowserSession,
    namespace,
)
from server.tools.net import AddressPolicy, FetchLimits

log = logging.getLogger("swallow.tools.browser")

__all__ = ["Browser", "BrowserReply", "BrowserSession", "Citation", "CitationStream", "Cited", "Page",
           "SearchBackend", "SearchError", "SearchResult", "cite", "from_settings", "namespace"]


def from_settings(settings: Settings) -> Browser | None:
    """The browser the settings describe, or None (off, or its search backend can't be loaded)."""
    if not settings.browser_tool:
        return None
    if settings.browser_search_backend == "ddgs":
        try:
            search: SearchBackend = Ddgs(timeout=settings.browser_fetch_timeout)
        except ImportError:
            log.warning("browser: not offered: browser_search_backend = \"ddgs\" needs the ddgs package "
                        "(pip install 'swallow-server[ddgs]')")
            return None
    else:
        search = Searxng(settings.browser_searxng_url, timeout=settings.browser_fetch_timeout)
    policy = AddressPolicy(tuple(settings.browser_allowed_hosts))
    limits = FetchLimits(max_bytes=settings.browser_max_page_kb * 1024, timeout=settings.browser_fetch_timeout,
                         max_redirects=settings.browser_max_redirects)
    log.info("browser: on, searching with %s%s", search.name,
             f"; may also fetch {', '.join(policy.allowed_hosts)}" if policy.allowed_hosts else "")
    return Browser(search, policy, limits, max_results=settings.browser_max_results,
                   view_tokens=settings.browser_view_tokens)
