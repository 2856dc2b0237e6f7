"""Search backends: a query -> results (title, URL, snippet). The backend is the operator's choice
(settings), not the model's, so its address is trusted; the results' URLs are not (the browser
fetches them through the SSRF guard).

- SearXNG: a (self-hosted) instance's JSON API, `GET {url}/search?q=…&format=json`. SearXNG answers
  403 until `json` is in its settings.yml `search.formats`.
- ddgs (PyPI `ddgs`, the extra `swallow-server[ddgs]`): a metasearch library that needs no key.
"""

import asyncio
from typing import Protocol

import httpx

from server.tools.browser.page import SearchResult


class SearchError(Exception):
    """The search failed; the message is for the model (and the log)."""


class SearchBackend(Protocol):
    name: str

    async def search(self, query: str, count: int) -> list[SearchResult]: ...


class Searxng:
    name = "searxng"

    def __init__(self, url: str, timeout: float = 15.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    async def search(self, query: str, count: int) -> list[SearchResult]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(f"{self.url}/search", params={"q": query, "format": "json"})
        except httpx.HTTPError as e:
            raise SearchError(f"the search service could not be reached ({e.__class__.__name__})") from e
        if response.status_code != 200:
            hint = " (is `json` in its settings.yml search.formats?)" if response.status_code == 403 else ""
            raise SearchError(f"the search service answered {response.status_code}{hint}")
        try:
            rows = response.json().get("results", [])
        except (ValueError, AttributeError) as e:
            raise SearchError("the search service's answer is not SearXNG's JSON") from e
        return searxng_results(rows)[:count]


def searxng_results(rows: list) -> list[SearchResult]:
    return [SearchResult(title=str(row.get("title") or ""), url=row["url"], snippet=str(row.get("content") or ""))
            for row in rows if isinstance(row, dict) and isinstance(row.get("url"), str)
            and row["url"].startswith(("http://", "https://"))]


class Ddgs:
    name = "ddgs"

    def __init__(self, timeout: float = 15.0):
        import ddgs  # noqa: F401  (ImportError here: not installed, said at startup)

        self.timeout = timeout

    async def search(self, query: str, count: int) -> list[SearchResult]:
        from ddgs import DDGS
        from ddgs.exceptions import DDGSException

        def run() -> list[dict]:
            return DDGS(timeout=max(1, int(self.timeout))).text(query, max_results=count)

        try:
            rows = await asyncio.to_thread(run)  # ddgs is synchronous
        except DDGSException as e:
            raise SearchError(f"the search failed: {e}") from e
        except Exception as e:  # its HTTP client's own errors, whatever they are
            raise SearchError(f"the search failed ({type(e).__name__})") from e
        return ddgs_results(rows)[:count]


def ddgs_results(rows: list) -> list[SearchResult]:
    """ddgs's text results ({"title", "href", "body"}) as search results."""
    return [SearchResult(title=str(row.get("title") or ""), url=row["href"], snippet=str(row.get("body") or ""))
            for row in rows if isinstance(row, dict) and isinstance(row.get("href"), str)
            and row["href"].startswith(("http://", "https://"))]
