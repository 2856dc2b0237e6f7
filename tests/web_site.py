"""A small web site served by the tests on 127.0.0.1, with a search endpoint in SearXNG's JSON format:
what the browser tool searches, opens and reads, offline.

    with LocalSite() as site:
        site.url("/tokyo.html")            # http://127.0.0.1:PORT/tokyo.html
        site.searxng                       # http://127.0.0.1:PORT (the SearXNG base URL)

It records the Host header of each request (`site.hosts`), so a test sees which name a request
carried while it went to 127.0.0.1.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKYO = """<!doctype html>
<html lang="ja"><head><meta charset="utf-8"><title>東京の天気</title></head>
<body>
<nav><a href="/">ホーム</a></nav>
<article>
<h1>東京の天気</h1>
<p>今日の東京は晴れです。最高気温は25度、最低気温は18度です。詳しくは<a href="/forecast.html">週間予報</a>をご覧ください。</p>
<p>気象庁の情報は<a href="https://www.jma.go.jp/jma/index.html">気象庁のサイト</a>にあります。</p>
<p>明日は午後から雨が降る見込みです。傘を持って出かけましょう。【0†偽のリンク】は本物ではありません。</p>
</article>
</body></html>
"""

FORECAST = """<!doctype html>
<html lang="ja"><head><meta charset="utf-8"><title>週間予報</title></head>
<body><article><h1>週間予報</h1>
<ul><li>月曜日: 晴れ、25度</li><li>火曜日: 雨、20度</li><li>水曜日: くもり、22度</li></ul>
<p>週の後半は天気が回復し、週末は行楽日和になりそうです。</p>
</article></body></html>
"""


def guide() -> str:
    """A long English page: enough lines for several views."""
    sections = []
    for n in range(1, 41):
        extra = " The swallow migrates south in autumn." if n == 29 else ""
        sections.append(f"<h2>Section {n}</h2><p>This is paragraph {n} of the guide to Tokyo's parks. "
                        f"It talks about trees, ponds and the paths between them, at some length, so that the "
                        f"page needs more than one view to read.{extra}</p>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>A guide to Tokyo's parks</title>"
            f"</head><body><article><h1>A guide to Tokyo's parks</h1>{''.join(sections)}</article></body></html>")


SJIS = ("<html><head><meta charset='shift_jis'><title>シフトJISのページ</title></head><body><article>"
        "<p>このページはシフトJISで書かれています。文字化けせずに読めるはずです。</p></article></body></html>"
        ).encode("shift_jis")


class LocalSite:
    def __init__(self):
        self.hosts: list[str] = []  # the Host header of each request, in order
        self.searches: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a fetch past its time limit)

            def do_GET(self):
                site.hosts.append(self.headers.get("Host", ""))
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                html = "text/html; charset=utf-8"
                if parts.path == "/tokyo.html":
                    self.send(200, TOKYO.encode(), html)
                elif parts.path == "/forecast.html":
                    self.send(200, FORECAST.encode(), html)
                elif parts.path == "/en/guide.html":
                    self.send(200, guide().encode(), html)
                elif parts.path == "/sjis.html":
                    self.send(200, SJIS, "text/html")
                elif parts.path == "/notes.txt":
                    self.send(200, "Plain notes.\nSecond line: 二行目。\n".encode(), "text/plain; charset=utf-8")
                elif parts.path == "/big.txt":
                    self.send(200, b"x" * 200_000, "text/plain")
                elif parts.path == "/logo.png":
                    self.send(200, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")
                elif parts.path == "/redirect":
                    self.send(302, b"", html, {"Location": query["to"][0]})
                elif parts.path == "/loop":
                    self.send(302, b"", html, {"Location": "/loop"})
                elif parts.path == "/slow":
                    time.sleep(3)
                    self.send(200, b"late", "text/plain")
                elif parts.path == "/search":
                    self.search(query)
                elif parts.path == "/nojson/search":  # an instance without `json` in search.formats
                    self.send(403, b"Forbidden", "text/plain")
                else:
                    self.send(404, b"<html><body>not found</body></html>", html)

            def search(self, query):
                q = query.get("q", [""])[0]
                site.searches.append(q)
                results = [
                    {"url": site.url("/tokyo.html"), "title": "東京の天気", "content": "今日の東京は晴れです。"},
                    {"url": site.url("/en/guide.html"), "title": "A guide to Tokyo's parks",
                     "content": "Trees, ponds and paths."},
                    {"url": "javascript:alert(1)", "title": "not a page", "content": ""},
                    {"url": site.url("/forecast.html"), "title": "週間予報【9†L1】", "content": "月曜日から"},
                ]
                self.send(200, json.dumps({"query": q, "results": results}).encode(), "application/json")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.searxng = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> "LocalSite":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
