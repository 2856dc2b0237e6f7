"""The model's citations (`【6†L9-L11】`: cursor 6, lines 9 to 11) -> links with their place in the text.

Each marker whose cursor is a page the conversation opened becomes ` ([domain](url))`, the form
OpenAI's own web search writes in its answers, and a `Citation` records that span (start and end
character indexes into the new text), the page's URL and title: what the APIs' `url_citation`
annotations carry. A marker naming no page the browser showed stays as the model wrote it.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from server.tools.browser.page import Page, domain

CITATION = re.compile(r"【(\d+)†L(\d+)(?:-L(\d+))?】")
# The end of a text that may still grow into a citation: 【, 【6, 【6†, 【6†L9, 【6†L9-, 【6†L9-L1
UNFINISHED = re.compile(r"【(?:\d+(?:†(?:L(?:\d+(?:-(?:L\d*)?)?)?)?)?)?$")


@dataclass(frozen=True)
class Citation:
    url: str
    title: str
    start_index: int  # into the cited text, in characters
    end_index: int
    cursor: int
    first_line: int
    last_line: int


@dataclass(frozen=True)
class Cited:
    text: str
    citations: list[Citation]


def link_for(page: Page) -> str:
    return f"([{domain(page.cited_url)}]({page.cited_url}))"


def cite(text: str, pages: Sequence[Page], offset: int = 0, previous: str = "") -> Cited:
    """`text` with its citations made links. For text that follows text already sent, `offset` is
    the length sent (indexes start there) and `previous` its last character."""
    out: list[str] = []
    citations: list[Citation] = []
    length, last = offset, 0
    for match in CITATION.finditer(text):
        cursor, first = int(match.group(1)), int(match.group(2))
        page = pages[cursor] if cursor < len(pages) else None
        if page is None or not page.cited_url:
            continue  # kept as written (a search results page has no URL of its own)
        before = text[last:match.start()]
        previous = before[-1:] or previous
        # a space after a word in English; none after Japanese (「晴れです([jma.go.jp](…))。」)
        link = (" " if previous.isascii() and previous.strip() else "") + link_for(page)
        out += [before, link]
        citations.append(Citation(url=page.cited_url, title=page.cited_title, start_index=length + len(before),
                                  end_index=length + len(before) + len(link), cursor=cursor, first_line=first,
                                  last_line=int(match.group(3) or first)))
        length += len(before) + len(link)
        previous, last = link[-1], match.end()
    out.append(text[last:])
    return Cited("".join(out), citations)


class CitationStream:
    """cite() for text that arrives in pieces: a piece that ends inside what may become a
    citation is held back until the citation is whole (or can no longer be one)."""

    def __init__(self, pages: Sequence[Page]):
        self.pages = pages
        self.pending = ""
        self.sent = 0  # characters of cited text given out so far
        self.last = ""  # and the last of them

    def feed(self, delta: str) -> Cited:
        text = self.pending + delta
        unfinished = UNFINISHED.search(text)
        cut = unfinished.start() if unfinished else len(text)
        self.pending = text[cut:]
        return self._out(text[:cut])

    def close(self) -> Cited:
        text, self.pending = self.pending, ""
        return self._out(text)

    def _out(self, text: str) -> Cited:
        cited = cite(text, self.pages, offset=self.sent, previous=self.last)
        self.sent += len(cited.text)
        self.last = cited.text[-1:] or self.last
        return cited
