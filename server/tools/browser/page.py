"""Pages as the model reads them: text with numbered link markers, cut into numbered lines.

GPT-OSS was trained on a browser whose pages look like this (openai/gpt-oss's simple_browser):

    [3] 東京の天気 (https://weather.example/tokyo)
    **viewing lines [0 - 7] of 7**

    L0: # 東京の天気
    L1:
    L2: 今日の東京は晴れです。詳しくは【0†週間予報】をご覧ください。
    L3: See 【1†JMA†www.jma.go.jp】 for details.

`[3]` is the cursor (the model cites `【3†L2】`), `【0†週間予報】` a link the model opens with
`open(id=0)` (the domain is added when the link leaves the site), lines are wrapped at 80
characters, and one view holds about `view_tokens` tokens. A page's own text can't forge a
marker: its 【 】 become 〖 〗 and its † becomes ‡.
"""

import re
import textwrap
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import unquote, urljoin, urlsplit

import toktok

WIDTH = 80
ENCODING = "o200k_harmony"  # GPT-OSS's vocabulary (bundled in toktok, no download)
MARKDOWN_LINK = re.compile(r"\[([^\[\]\n]*)\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
MARKER = re.compile(r"【\d+†([^†】]*)(?:†[^†】]*)?】")
FORGED = str.maketrans({"【": "〖", "】": "〗", "†": "‡", "\u200b": None})


@dataclass
class Page:
    url: str  # "" for a search results page
    title: str
    text: str  # with link markers
    links: dict[int, str] = field(default_factory=dict)  # link id -> absolute URL
    kind: str = "page"  # "page", "search" or "find"
    source: "Page | None" = None  # a find page: the page it searched
    link_lines: dict[int, int] = field(default_factory=dict)  # a find page: link id -> line of the source

    @cached_property
    def lines(self) -> list[str]:
        return wrap(self.text)

    @property
    def cited_url(self) -> str:
        """The URL a citation of this page points at (a find page's is the page it searched)."""
        return self.source.cited_url if self.source else self.url

    @property
    def cited_title(self) -> str:
        return self.source.cited_title if self.source else self.title


def domain(url: str) -> str:
    return urlsplit(url).netloc


def clean(text: str) -> str:
    return text.translate(FORGED)


def wrap(text: str) -> list[str]:
    """Lines of at most WIDTH characters; empty lines kept."""
    lines = []
    for line in text.split("\n"):
        lines.extend(textwrap.wrap(line, width=WIDTH, replace_whitespace=False, drop_whitespace=False) or [""])
    return lines


def mark_links(markdown: str, url: str) -> tuple[str, dict[int, str]]:
    """Markdown links -> 【id†text】 (same site) or 【id†text†domain】, ids in order of appearance,
    one id per distinct URL. Links that go nowhere a browser can open keep only their text."""
    here = domain(url)
    links: dict[int, str] = {}
    ids: dict[str, int] = {}

    def replace(match: re.Match) -> str:
        text, href = match.group(1).strip(), match.group(2)
        target = urljoin(url, href)
        parts = urlsplit(target)
        if not text or href.startswith("#") or parts.scheme not in ("http", "https") or not parts.netloc:
            return text
        link_id = ids.setdefault(target, len(ids))
        links[link_id] = target
        return f"【{link_id}†{text}】" if parts.netloc == here else f"【{link_id}†{text}†{parts.netloc}】"

    return MARKDOWN_LINK.sub(replace, markdown), links


def from_html(body: bytes, url: str) -> Page:
    """A web page through trafilatura: its main text as Markdown (headings, lists, tables, links),
    or all of its text when trafilatura finds no main part."""
    import trafilatura  # loaded when the browser first opens a page: it takes a while to import

    tree = trafilatura.load_html(body)
    if tree is None:
        return Page(url=url, title=domain(url), text="")
    metadata = trafilatura.extract_metadata(tree, default_url=url, extensive=False)
    title = (metadata.title if metadata and metadata.title else None) or (tree.findtext(".//title") or "").strip()
    markdown = trafilatura.extract(tree, url=url, output_format="markdown", include_links=True,
                                   include_tables=True, include_formatting=True, include_comments=False,
                                   favor_recall=True, deduplicate=False)
    if markdown is None:
        markdown = trafilatura.html2txt(body) or ""
    text, links = mark_links(clean(markdown), url)
    return Page(url=url, title=clean(title) or domain(url), text=text, links=links)


def from_text(text: str, url: str) -> Page:
    """A plain-text document (text/plain, JSON, XML, ...) as it is."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or domain(url)
    return Page(url=url, title=clean(name), text=clean(text))


@dataclass
class SearchResult:
    title: str
    url: str
    snippet: str


def search_page(query: str, results: list[SearchResult]) -> Page:
    """The results as a page whose link ids are the results' ids (`open(id=2)` opens the third)."""
    lines, links = ["# Search Results", ""], {}
    for result in results:
        link_id = len(links)
        links[link_id] = result.url
        title = " ".join(clean(result.title or result.url).split())
        snippet = " ".join(clean(result.snippet).split())
        lines.append(f"* 【{link_id}†{title}†{domain(result.url)}】" + (f" {snippet}" if snippet else ""))
    return Page(url="", title=clean(query), text="\n".join(lines), links=links, kind="search")


def find_page(page: Page, pattern: str, max_matches: int = 50, context_lines: int = 4) -> Page:
    """Every line of `page` holding `pattern` (case-insensitive; links read as their text), each with
    the lines after it, as a page of matches: `open(id=k)` on it opens the page at match k."""
    lines = [MARKER.sub(r"\1", line) for line in page.lines]
    needle = pattern.lower()
    chunks, links, link_lines = [], {}, {}
    i = 0
    while i < len(lines) and len(chunks) < max_matches:
        if needle in lines[i].lower():
            k = len(chunks)
            chunks.append(f"# 【{k}†match at L{i}】\n" + "\n".join(lines[i:i + context_lines]))
            links[k], link_lines[k] = page.url, i
            i += context_lines
        else:
            i += 1
    text = "\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`"
    return Page(url=page.url, title=f"Find results for text: `{pattern}` in `{page.title}`", text=text,
                links=links, kind="find", source=page, link_lines=link_lines)


def view_end(lines: list[str], loc: int, view_tokens: int) -> int:
    """The line after the last one that fits in `view_tokens` tokens from `loc` (at least one)."""
    numbered = number(lines[loc:], loc)
    kept, _ = toktok.truncate(numbered, view_tokens, ENCODING)
    return min(len(lines), loc + kept.count("\n") + 1)


def number(lines: list[str], first: int) -> str:
    return "\n".join(f"L{first + i}: {line}" for i, line in enumerate(lines))


def render(page: Page, cursor: int, loc: int, end: int) -> str:
    """One view of a page, as the tool message the model reads."""
    header = f"[{cursor}] {page.title}"
    if page.url:
        header += f" ({unquote(page.url)[:1024]})"
    scrollbar = f"**viewing lines [{loc} - {end - 1}] of {len(page.lines) - 1}**"
    return f"{header}\n{scrollbar}\n\n{number(page.lines[loc:end], loc)}"
