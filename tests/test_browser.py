"""The browser tool and its SSRF guard, offline: a web site and a SearXNG-shaped search endpoint
served by the test on 127.0.0.1 (tests/web_site.py), names resolved by a test resolver.

The browser is driven the way the tool loop drives it: `session.call(function, arguments_json)`,
and each reply's text is what the model would read."""

import asyncio
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme

from server.config import ConfigError, load_settings
from server.tools import browser as browser_tool
from server.tools.browser import Browser, Searxng, namespace
from server.tools.browser.search import ddgs_results
from server.tools.net import (
    AddressPolicy,
    FetchError,
    FetchLimits,
    Refused,
    fetch,
    why_blocked,
)
from tests.web_site import LocalSite

# A public-looking name that resolves to a private address, one that resolves to a public and a
# loopback address, and a name of our own for the local site.
NAMES = {"sneaky.example": ["10.0.0.5"], "mixed.example": ["93.184.216.34", "127.0.0.1"],
         "site.test": ["127.0.0.1"]}


async def resolver(host: str, port: int) -> list[str]:
    resolver.calls.append(host)
    if host not in NAMES:
        raise FetchError(f"cannot resolve {host}")
    return NAMES[host]


resolver.calls = []


@pytest.fixture(scope="module")
def site():
    with LocalSite() as site:
        yield site


def run(coroutine):
    return asyncio.run(coroutine)


def make_browser(site, allowed=("127.0.0.1",), **limits) -> Browser:
    return Browser(Searxng(site.searxng), AddressPolicy(allowed), FetchLimits(**{"timeout": 5, **limits}),
                   max_results=5, view_tokens=300, resolver=resolver)


def test_search_open_scroll_find_and_cite(site):
    """A conversation's browsing, as the model sees it: search, open a result by id, open a URL,
    scroll, find, open a match, and the answer's citations turned into links."""
    session = make_browser(site).session()

    async def browse():
        replies = [await session.call("search", json.dumps({"query": "東京 天気", "topn": 3}))]
        replies.append(await session.call("open", '{"id": 0}'))  # the first result
        replies.append(await session.call("open", json.dumps({"id": site.url("/en/guide.html")})))
        replies.append(await session.call("open", '{"cursor": 2, "loc": 40}'))  # scroll
        replies.append(await session.call("find", '{"pattern": "SWALLOW"}'))
        replies.append(await session.call("open", '{"id": 0}'))  # the match, in its page
        return replies

    search, tokyo, guide, scrolled, found, match = run(browse())
    assert search.error is None and site.searches[-1] == "東京 天気"
    assert search.action == {"type": "search", "query": "東京 天気"}
    assert [r.url for r in search.results] == [site.url("/tokyo.html"), site.url("/en/guide.html"),
                                               site.url("/forecast.html")]  # javascript: is no page
    lines = search.text.splitlines()
    assert lines[:3] == ["[0] 東京 天気", "**viewing lines [0 - 4] of 4**", ""]
    assert f"L2: * 【0†東京の天気†127.0.0.1:{site.port}】 今日の東京は晴れです。" in lines
    assert f"L4: * 【2†週間予報〖9‡L1〗†127.0.0.1:{site.port}】 月曜日から" in lines  # a title can't forge a marker

    assert tokyo.action == {"type": "open_page", "url": site.url("/tokyo.html")}
    assert tokyo.text.startswith(f"[1] 東京の天気 ({site.url('/tokyo.html')})\n**viewing lines [0 - ")
    assert "L0: # 東京の天気" in tokyo.text
    assert "詳しくは【0†週間予報】をご覧ください。" in tokyo.text  # a link on the same site
    assert "【1†気象庁のサイト†www.jma.go.jp】" in tokyo.text  # a link elsewhere names its domain
    assert "〖0‡偽のリンク〗は本物ではありません" in tokyo.text  # the page's own 【】 can't pose as a link

    first_view = re.search(r"viewing lines \[0 - (\d+)\] of (\d+)", guide.text)
    assert guide.text.startswith("[2] A guide to Tokyo's parks (")
    assert int(first_view.group(1)) < int(first_view.group(2))  # a long page takes several views
    assert "[3] A guide to Tokyo's parks" in scrolled.text and "**viewing lines [40 - " in scrolled.text
    assert "L40: " in scrolled.text and "L39: " not in scrolled.text

    assert found.action == {"type": "find_in_page", "pattern": "SWALLOW", "url": site.url("/en/guide.html")}
    match_line = int(re.search(r"【0†match at L(\d+)】", found.text).group(1))
    assert "The swallow migrates south in autumn." in found.text  # case-insensitive
    assert match.text.startswith("[5] A guide to Tokyo's parks") and f"L{match_line}: " in match.text

    answer = ("今日の東京は晴れです【1†L2】。The guide covers ponds【3†L40-L42】; "
              "【9†L1】 names no page, nor does the search page【0†L2】.")
    cited = session.cite(answer)
    tokyo_link = f"([127.0.0.1:{site.port}]({site.url('/tokyo.html')}))"
    assert cited.text.startswith(f"今日の東京は晴れです{tokyo_link}。The guide covers ponds ([127.0.0.1")
    assert cited.text.endswith("; 【9†L1】 names no page, nor does the search page【0†L2】.")
    first, second = cited.citations
    assert (first.url, first.title, first.first_line, first.last_line) == (site.url("/tokyo.html"), "東京の天気", 2, 2)
    assert cited.text[first.start_index:first.end_index] == tokyo_link
    assert (second.url, second.cursor, second.first_line, second.last_line) == (site.url("/en/guide.html"), 3, 40, 42)
    assert cited.text[second.start_index:second.end_index].startswith(" ([127.0.0.1")  # a space after English

    # Streamed: the same text and spans, whichever way the answer is cut into pieces.
    for size in (1, 3, 7):
        stream, pieces, spans = session.citation_stream(), [], []
        for i in range(0, len(answer), size):
            out = stream.feed(answer[i:i + size])
            pieces.append(out.text)
            spans += out.citations
        last = stream.close()
        pieces.append(last.text)
        spans += last.citations
        assert "".join(pieces) == cited.text and spans == cited.citations


def test_what_the_model_gets_wrong_is_answered_not_raised(site):
    session = make_browser(site).session()

    async def calls():
        early = await session.call("find", '{"pattern": "x"}')
        await session.call("search", '{"query": "天気"}')
        return [early] + [await session.call(fn, args) for fn, args in [
            ("open", '{"id": 7}'),
            ("open", '{"cursor": 9}'),
            ("find", '{"pattern": "晴れ"}'),
            ("open", '{"loc": 500}'),
            ("search", "not json"),
            ("search", '{"topn": 3}'),
            ("open", '{"id": true}'),
            ("click", "{}"),
        ]]

    replies = run(calls())
    assert [r.text for r in replies] == [
        "No pages to access!",
        "Invalid link id `7`.",
        "Cursor `9` is out of range. Available cursor indices: [0 - 0].",
        "Cannot run `find` on search results page or find results page",
        "Invalid location parameter: `500`. Cannot exceed page maximum of 4.",
        "Invalid function arguments: not a JSON object",
        "`query` is required",
        "`id` should be an integer, not `bool`",
        "Unknown function: `click` (the browser has search, open and find)",
    ]
    assert all(r.error == r.text for r in replies)
    assert len(session.pages) == 1  # no failed call took a cursor


def test_pages_of_every_kind_and_their_limits(site):
    session = make_browser(site, max_bytes=50_000, timeout=1, max_redirects=2).session()

    def open_(url, **more):
        return run(session.call("open", {"id": url, **more}))

    sjis = open_(site.url("/sjis.html"))
    assert "[0] シフトJISのページ" in sjis.text and "このページはシフトJISで書かれています。" in sjis.text
    notes = open_(site.url("/notes.txt"))
    assert notes.text.splitlines()[3:5] == ["L0: Plain notes.", "L1: Second line: 二行目。"]
    big = open_(site.url("/big.txt"), num_lines=2)
    assert "**viewing lines [0 - 1] of " in big.text  # num_lines as asked
    assert session.pages[-1].text.endswith("[The page is longer than 48 KB; the rest was not read.]")
    redirected = open_(site.url("/redirect?to=/forecast.html"))
    assert redirected.action["url"] == site.url("/forecast.html") and "火曜日: 雨、20度" in redirected.text
    assert open_(site.url("/logo.png")).error.endswith(
        "it is image/png, and the browser reads only HTML and text")
    assert open_(site.url("/missing")).error.endswith("the server answered HTTP 404")
    assert open_(site.url("/loop")).error.endswith("more than 2 redirects")
    assert open_(site.url("/slow")).error.endswith("did not answer within 1 s")
    assert open_("ftp://127.0.0.1/file").error.endswith("only http and https URLs are fetched")


def test_the_guard_refuses_this_machine_and_private_networks(site):
    """By default: no loopback, link-local (the cloud's metadata service), private or CGNAT address,
    whether written in the URL, resolved from a public-looking name, or reached by a redirect."""
    session = make_browser(site, allowed=()).session()
    hosts_before = len(site.hosts)
    refused = {
        site.url("/tokyo.html"): "127.0.0.1 is a loopback address (this machine)",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a link-local address",
        "http://10.1.2.3/": "10.1.2.3 is a private-network address",
        "http://[::1]:8000/": "::1 is a loopback address",
        "http://[::ffff:192.168.1.1]/": "::ffff:192.168.1.1 is a private-network address",
        "http://0.0.0.0:8000/": "0.0.0.0 is the unspecified address",
        "http://100.64.1.1/": "100.64.1.1 is a carrier-grade NAT address",
        "http://sneaky.example/admin": "sneaky.example (10.0.0.5) is a private-network address",
        "http://mixed.example/": "mixed.example (127.0.0.1) is a loopback address",
    }
    for url, reason in refused.items():
        reply = run(session.call("open", {"id": url}))
        assert reply.error.startswith(f"Error fetching URL `{url}`: {reason}"), reply.error
    assert len(site.hosts) == hosts_before  # not one reached the local site

    # A redirect into them, from a site that is allowed by name: the next hop is checked too.
    allowed = make_browser(site, allowed=("site.test",)).session()
    for target, reason in [(site.url("/tokyo.html"), "127.0.0.1 is a loopback address"),
                           ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local")]:
        reply = run(allowed.call("open", {"id": site.url(f"/redirect?to={target}", host="site.test")}))
        assert reason in reply.error
    assert len(site.hosts) == hosts_before + 2  # the redirects were served, their targets never reached
    # The pinned connection: resolved once, to the checked address; the Host header keeps the name.
    resolver.calls.clear()
    reply = run(allowed.call("open", {"id": site.url("/forecast.html", host="site.test")}))
    assert reply.error is None and resolver.calls == ["site.test"]
    assert site.hosts[-1] == f"site.test:{site.port}"


def test_tls_to_the_pinned_address_still_checks_the_name(site):
    """Over HTTPS the connection goes to the checked address while TLS (SNI, the certificate) keeps
    the name: a certificate for site.test passes for site.test, and fails for another name that
    resolves to the same address."""
    ca = trustme.CA()
    hosts, sni = [], []  # each request's Host header; each TLS handshake's server name

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hosts.append(self.headers["Host"])
            body = "<html><head><title>TLS</title></head><body><p>暗号化された本文です。</p></body></html>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("site.test").configure_cert(server_context)
    server_context.sni_callback = lambda sock, name, context: sni.append(name)  # None: go on
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = server.server_address[1]
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    NAMES["other.test"] = ["127.0.0.1"]
    policy = AddressPolicy(("site.test", "other.test"))
    try:
        fetched = run(fetch(f"https://site.test:{port}/", policy, FetchLimits(timeout=5), resolver, client_context))
        assert fetched.status == 200 and "暗号化された本文です。".encode() in fetched.body
        assert hosts == [f"site.test:{port}"] and sni == ["site.test"]  # the name, not 127.0.0.1
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            run(fetch(f"https://other.test:{port}/", policy, FetchLimits(timeout=5), resolver, client_context))
    finally:
        del NAMES["other.test"]
        server.shutdown()
        server.server_close()
    assert sni == ["site.test", "other.test"] and len(hosts) == 1  # the second never got past TLS


def test_why_blocked_by_address():
    assert why_blocked("8.8.8.8") is None and why_blocked("2606:4700:4700::1111") is None
    for address in ("127.0.0.2", "::1", "169.254.169.254", "fe80::1", "10.0.0.1", "172.16.5.4", "192.168.0.1",
                    "fc00::1", "fd12::1", "0.0.0.0", "::", "100.64.0.1", "224.0.0.1", "240.0.0.1",
                    "::ffff:10.0.0.1", "2002:a00:1::", "64:ff9b::a00:1"):  # the last three carry 10.0.0.1
        assert why_blocked(address), address
    policy = AddressPolicy(("intranet.example", "10.0.0.0/8", "::1"))
    policy.check("intranet.example", ["192.168.1.1"])  # allowed by name
    policy.check("wiki.example", ["10.9.8.7"])  # allowed by network
    policy.check("[::1]", ["::1"])
    with pytest.raises(Refused, match="192.168.1.1"):
        policy.check("wiki.example", ["10.9.8.7", "192.168.1.1"])  # every address must pass


def test_fetch_refuses_before_connecting():
    """A refused address is never connected to: no server listens there, the answer is immediate."""
    with pytest.raises(Refused, match="link-local"):
        run(fetch("http://169.254.169.254/latest/meta-data/", AddressPolicy(), FetchLimits(timeout=30)))


def test_search_backends(site):
    searxng = Searxng(site.searxng)
    results = run(searxng.search("parks", 2))
    assert [(r.title, r.url) for r in results] == [("東京の天気", site.url("/tokyo.html")),
                                                   ("A guide to Tokyo's parks", site.url("/en/guide.html"))]

    reply = run(Browser(Searxng(f"{site.searxng}/nojson"), AddressPolicy()).session().call("search", '{"query": "x"}'))
    assert reply.error == ("Error during search for `x`: the search service answered 403 "
                           "(is `json` in its settings.yml search.formats?)")
    # ddgs has no base URL to point at a local fake: its rows' mapping is what is ours
    rows = [{"title": "気象庁", "href": "https://www.jma.go.jp/", "body": "天気予報"},
            {"title": "no link", "href": "javascript:void(0)", "body": ""}, {"title": "broken"}]
    assert [(r.title, r.url, r.snippet) for r in ddgs_results(rows)] == [("気象庁", "https://www.jma.go.jp/", "天気予報")]


def test_settings_and_the_system_message_declaration(tmp_path):
    assert browser_tool.from_settings(load_settings(overrides={})) is None  # off by default
    with pytest.raises(ConfigError, match="needs browser_searxng_url"):
        load_settings(overrides={"browser_tool": True})
    settings = load_settings(overrides={"browser_tool": True, "browser_searxng_url": "http://127.0.0.1:8888",
                                        "browser_allowed_hosts": "intranet.example, 10.0.0.0/8"})
    browser = browser_tool.from_settings(settings)
    assert browser.policy.names == {"intranet.example"} and browser.limits.max_redirects == 5
    config = namespace()
    assert config.name == "browser" and [t.name for t in config.tools] == ["search", "open", "find"]
    assert "【{cursor}†L{line_start}(-L{line_end})?】" in config.description
