"""The chat page at / and the status view, driven in headless Chromium against the real server.

The browser is Debian's chromium with its chromedriver (`apt-get install chromium chromium-driver`),
driven with Selenium; nothing is downloaded. Without them the browser tests skip, saying so, and the
HTTP tests of the page's files and /status.json still run.

The browser speaks Japanese (`--lang=ja`, Accept-Language `ja`), as most of Swallow's users'
browsers do, so the page's labels are Japanese here; one test switches it to English.

A screenshot of a Japanese conversation is written to $SWALLOW_SCREENSHOT_DIR (when set) or the
test's tmp dir: docs/chat-page.png in the README is one of those.
"""

import os
import re
import shutil
import time
import warnings
from pathlib import Path

import httpx
import pytest

from models.scripted import build_scripted_model
from tests.scripts import JAPANESE_ANSWER, JAPANESE_REASONING, SCRIPTS, final, thought

HOSTILE = "Show me some HTML"
JAPANESE_QUESTION = "2たす2はいくつですか？"
CODE_QUESTION = "Pythonで挨拶するコードを見せてください"
WEB_SCRIPTS = {
    # model output that would run script if the page put it into the DOM as HTML
    HOSTILE: final('<script>window.pwned = "script"</script>\n\nLook: <img src=x onerror="window.pwned = \'img\'"> '
                   "and `<b>code</b>`."),
    # a Japanese conversation with reasoning and a code block (the README's screenshot)
    JAPANESE_QUESTION: thought(JAPANESE_REASONING, JAPANESE_ANSWER),
    CODE_QUESTION: thought("Pythonで挨拶を表示する短い例を示せばよい。",
                           "はい、どうぞ：\n\n```python\nprint('こんにちは')\n```\n"),
}
KEY = "page-test-key"


@pytest.fixture(scope="module")
def web_model(cache_dir, tmp_path_factory) -> Path:
    return build_scripted_model(tmp_path_factory.mktemp("web"), {**SCRIPTS, **WEB_SCRIPTS}, context_length=4096)


@pytest.fixture(scope="module")
def server(start_server, web_model):
    return start_server(["--model", str(web_model), "--trust-remote-code", "--served-model-name", "scripted"])


# ---- the page's files and /status.json, over plain HTTP ---------------------------------------

def test_the_page_is_served_at_the_root(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/web/app.js", "/web/style.css", "/web/vendor/marked.umd.js", "/web/vendor/purify.min.js"):
        assert asset in page.text
        response = httpx.get(server.url + asset)
        assert response.status_code == 200, asset
    assert "cdn" not in page.text.lower() and "https://" not in page.text  # works offline
    assert httpx.get(server.url + "/web/vendor/LICENSE-marked.md").status_code == 200


def test_only_the_page_files_are_served(server):
    for path in ("/web/../routes.py", "/web/%2e%2e/routes.py", "/web/..%2f..%2fapp.py", "/web/nothing.js", "/web/"):
        assert httpx.get(server.url + path).status_code == 404, path


def test_status_json_has_what_the_panel_shows(server):
    status = httpx.get(server.url + "/status.json").json()
    assert status["model"] == "scripted" and status["context_length"] == 4096
    assert status["requests"]["running"] == 0 and status["requests"]["queued"] == 0
    assert {"entries", "bytes", "budget_bytes", "hit_rate"} <= set(status["prompt_cache"])
    assert status["memory"]["weights_bytes"] > 0
    assert isinstance(status["tokens_per_second"], list)
    assert status["batches"]["running"] == 0 and status["batches"]["in_progress"] == []


def test_status_json_counts_tokens_and_prompt_cache_hits(server):
    before = httpx.get(server.url + "/status.json").json()
    conversation = [{"role": "user", "content": "What is 2+2?"}]
    first = server.client().chat.completions.create(model="scripted", messages=conversation)
    conversation += [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "What is 2+2?"}]
    server.client().chat.completions.create(model="scripted", messages=conversation)  # from the cache
    time.sleep(1.1)
    after = httpx.get(server.url + "/status.json").json()
    assert after["tokens"]["completion"] - before["tokens"]["completion"] == 2 * first.usage.completion_tokens
    cache = after["prompt_cache"]
    assert cache["hits"] > before["prompt_cache"]["hits"] and cache["entries"] > 0
    assert 0 < cache["hit_rate"] <= 1 and 0 < cache["token_hit_rate"] <= 1
    assert any(p["tokens_per_second"] > 0 for p in after["tokens_per_second"])


def test_with_an_api_key_the_page_and_status_stay_open(start_server, web_model):
    locked = start_server(["--model", str(web_model), "--trust-remote-code", "--api-key", KEY])
    assert httpx.get(locked.url + "/").status_code == 200
    assert httpx.get(locked.url + "/status.json").status_code == 200
    assert httpx.get(locked.url + "/v1/models").status_code == 401
    same_origin = {"Origin": locked.url, "Authorization": f"Bearer {KEY}"}
    assert httpx.get(locked.url + "/v1/models", headers=same_origin).status_code == 200
    locked.stop()


# ---- in the browser --------------------------------------------------------------------------

# SWALLOW_CHROMIUM / SWALLOW_CHROMEDRIVER point at another Chromium (e.g. Chrome on a Mac) and its driver
CHROMIUM = os.environ.get("SWALLOW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("SWALLOW_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        reason = (f"BROWSER TESTS SKIPPED: {', '.join(missing)} not found; install Debian's "
                  "`chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver)")
        warnings.warn(reason)  # in the warnings summary too, not only in the skip list
        pytest.skip(reason)
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("BROWSER TESTS SKIPPED: selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,860", "--lang=ja",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"intl.accept_languages": "ja"})  # navigator.languages
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


class Page:
    """The chat page open in the browser, with what a person does on it."""

    def __init__(self, driver, url: str):
        self.driver, self.url = driver, url
        driver.get(url)
        driver.execute_script("localStorage.clear()")
        driver.get(url)
        # the status panel fills from /status.json after the load; a test starts once it has
        self.wait(lambda: self.el("#status-model").text != "–", 10, "the status panel's first figures")

    def el(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def type(self, *keys) -> None:
        self.el("#input").send_keys(*keys)

    def send(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        self.type(text, Keys.ENTER)

    def wait(self, condition, timeout: float = 20, what: str = "the page") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def wait_for_reply(self, timeout: float = 30):
        """The last assistant message, once its stream has ended."""
        self.wait(lambda: self.js("const m = [...document.querySelectorAll('.message.assistant')].pop();"
                                  "return !!m && !m.classList.contains('streaming')"
                                  " && m.querySelector('.stats').children.length > 0"),
                  timeout, "the reply to end")
        return self.all(".message.assistant")[-1]

    def settings(self) -> None:
        if not self.el("#settings").is_displayed():
            self.el("#toggle-settings").click()

    def messages(self) -> list[tuple[str, str]]:
        return [(m.get_attribute("class").split()[1], m.text) for m in self.all(".message")]


@pytest.fixture
def page(browser, server):
    return Page(browser, server.url)


def test_the_page_is_light_and_quick(page):
    timing = page.js("""const n = performance.getEntriesByType('navigation')[0];
        return {load: n.loadEventEnd - n.startTime,
                bytes: performance.getEntriesByType('resource').reduce((sum, r) => sum + r.decodedBodySize,
                                                                       n.decodedBodySize)};""")
    assert timing["load"] < 1000, timing
    assert timing["bytes"] < 200_000, timing
    assert page.el("#status-model").text == "scripted"  # it fetched /status.json
    assert page.el("#status-batches").text == "実行中なし"  # the Batch API's line (none in progress)


def test_the_page_speaks_the_browsers_language(page, server):
    def labels() -> dict:
        page.wait(lambda: page.el("#status-context").text != "–", 5, "the status panel")
        return {"lang": page.js("return document.documentElement.lang"), "send": page.el("#send").text,
                "settings": page.el("#toggle-settings").text, "server": page.el("#status-panel h2").text,
                "input": page.el("#input").get_attribute("placeholder"), "context": page.el("#status-context").text}

    assert labels() == {"lang": "ja", "send": "送信", "settings": "設定", "server": "サーバー",
                        "input": "メッセージを入力（Enter で送信、Shift+Enter で改行）", "context": "4,096 トークン"}
    agent = page.js("return navigator.userAgent")
    try:  # a browser that prefers English (and knows no Japanese)
        page.driver.execute_cdp_cmd("Emulation.setUserAgentOverride", {"userAgent": agent, "acceptLanguage": "en-US,fr"})
        english = Page(page.driver, server.url)
        assert labels() == {"lang": "en", "send": "Send", "settings": "Settings", "server": "Server",
                            "input": "Message (Enter sends, Shift+Enter adds a line)", "context": "4,096 tokens"}
        english.send("What is 2+2?")
        assert re.fullmatch(r"\d+ tokens", english.wait_for_reply().find_element(
            "css selector", "[data-stat=tokens]").text)
    finally:
        page.driver.execute_cdp_cmd("Emulation.setUserAgentOverride", {"userAgent": agent, "acceptLanguage": "ja"})


def record_states(page: Page) -> None:
    """Start noting, every frame, whether the reply's thinking block is open and what it shows."""
    page.js("""window.states = [];
        (function note() {
          const m = [...document.querySelectorAll('.message.assistant')].pop();
          if (m) window.states.push({open: m.querySelector('.thinking').open,
                                     reasoning: m.querySelector('.reasoning').textContent.length,
                                     answer: m.querySelector('.answer').textContent.length,
                                     streaming: m.classList.contains('streaming')});
          requestAnimationFrame(note);
        })();""")


def test_a_reply_streams_in_with_its_reasoning_folded_away(page):
    record_states(page)
    page.send("What is 2+2?")
    reply = page.wait_for_reply()
    thinking = reply.find_element("css selector", ".thinking")
    assert thinking.get_attribute("open") is None  # folded once the answer began
    assert reply.find_element("css selector", ".answer").text == JAPANESE_ANSWER.replace("**", "")
    assert reply.find_element("css selector", ".answer strong").text == "4"  # markdown rendered
    thinking.find_element("css selector", "summary").click()  # and it opens again
    assert thinking.get_attribute("open") is not None
    assert reply.find_element("css selector", ".reasoning").text == JAPANESE_REASONING
    states = page.js("return window.states")
    streamed = [s for s in states if s["streaming"]]
    assert streamed, "the reply was never seen streaming"
    # while only reasoning had come, the thinking block was open; once the answer came, folded
    assert all(s["open"] for s in streamed if s["answer"] == 0)
    assert all(not s["open"] for s in streamed if s["answer"] > 0)
    stats = {s.get_attribute("data-stat"): s.text for s in reply.find_elements("css selector", ".stats span")}
    assert {"tokens", "reasoning-tokens", "cached-tokens", "tps", "ttft"} <= set(stats), stats
    count = {name: int(re.search(r"\d+", text).group()) for name, text in stats.items() if name != "ttft"}
    assert 0 < count["reasoning-tokens"] < count["tokens"]


def test_stop_mid_stream_frees_the_server_at_once(page, server):
    page.send("Write a long essay")
    page.wait(lambda: "word20 " in page.js("return document.querySelector('.message.assistant .answer').textContent"),
              what="the essay to begin")
    page.el("#stop").click()
    reply = page.wait_for_reply(5)
    assert "停止しました" in reply.find_element("css selector", ".stats").text  # "stopped"
    stopped = time.monotonic()
    page.wait(lambda: server.health()["running"] == 0, 3, "the engine to drop the request")
    page.wait(lambda: httpx.get(server.url + "/status.json").json()["requests"]["running"] == 0, 3, "the slot")
    assert time.monotonic() - stopped < 3
    assert "word2999" not in reply.text
    assert page.el("#send").is_displayed() and page.el("#regenerate").is_enabled()


def test_enter_while_an_ime_composition_is_active_never_sends(page):
    from selenium.webdriver.common.keys import Keys

    page.el("#input").click()
    page.type("にほんご")
    # what the browser sends when Enter confirms a conversion: isComposing, or (Safari, older
    # Chrome) keyCode 229 once the composition has just ended
    sent = page.js("""
        const input = document.getElementById('input');
        const enter = {key: 'Enter', code: 'Enter', bubbles: true, cancelable: true};
        const events = [new KeyboardEvent('keydown', {...enter, isComposing: true}),
                        new KeyboardEvent('keydown', {...enter, keyCode: 229})];
        return events.map((e) => [e.isComposing, e.keyCode, input.dispatchEvent(e)]);""")
    assert sent == [[True, 0, True], [False, 229, True]]  # delivered, and not cancelled by the page
    time.sleep(0.3)
    assert page.messages() == [] and page.el("#input").get_attribute("value") == "にほんご"
    page.type(Keys.SHIFT, Keys.ENTER, Keys.NULL, "です")  # Shift+Enter: a newline
    assert page.messages() == [] and page.el("#input").get_attribute("value") == "にほんご\nです"
    page.type(Keys.ENTER)  # Enter: send
    page.wait_for_reply()
    assert page.messages()[0] == ("user", "にほんご\nです")
    assert page.el("#input").get_attribute("value") == ""


def test_a_hostile_reply_is_shown_as_text(page):
    page.send(HOSTILE)
    answer = page.wait_for_reply().find_element("css selector", ".answer")
    assert '<script>window.pwned = "script"</script>' in answer.text
    assert "<img src=x onerror=" in answer.text
    assert answer.find_elements("css selector", "script, img, b") == []
    time.sleep(0.3)
    assert page.js("return window.pwned === undefined")


def test_the_effort_control_reaches_the_system_message(page):
    from selenium.webdriver.support.ui import Select

    page.settings()
    for effort in ("high", "low"):
        Select(page.el("#effort")).select_by_value(effort)
        page.send(f"Which effort, {effort}?")  # no trigger: the system message's effort line answers
        assert page.wait_for_reply().find_element("css selector", ".answer").text == f"effort={effort}"
    page.el("#system").send_keys("Speak like a pirate.")
    page.send("Hello")
    assert page.wait_for_reply().find_element("css selector", ".answer").text == "Arr, instructions received."


def test_the_status_view_shows_a_running_request(page):
    assert page.el("#status-model").text == "scripted"
    page.send("Write a long essay")
    page.wait(lambda: page.el("#status-running").text == "1", 10, "the status view to show the request")
    page.wait(lambda: page.js("return document.getElementById('tps-line').getAttribute('points')") != "", 10,
              "the tokens/s chart")
    page.el("#stop").click()
    page.wait(lambda: page.el("#status-running").text == "0", 5, "the status view to show it ended")


def test_conversations_are_kept_and_listed(page):
    page.send("What is 2+2?")
    page.wait_for_reply()
    page.el("#new-chat").click()
    page.send(HOSTILE)
    page.wait_for_reply()
    page.driver.refresh()  # kept in localStorage
    titles = [t.text for t in page.all("#conversations .title")]
    assert titles == [HOSTILE, "What is 2+2?"]
    page.all("#conversations .title")[1].click()
    assert [role for role, _ in page.messages()] == ["user", "assistant"]
    assert JAPANESE_ANSWER.replace("**", "") in page.messages()[1][1]
    page.el("#regenerate").click()  # the last reply again
    assert page.wait_for_reply().find_element("css selector", ".answer").text == JAPANESE_ANSWER.replace("**", "")
    assert len(page.messages()) == 2


def test_code_blocks_have_a_copy_button(page):
    page.send(CODE_QUESTION)
    reply = page.wait_for_reply()
    assert reply.find_element("css selector", "pre code").text == "print('こんにちは')"
    assert reply.find_element("css selector", "pre button.copy").text == "コピー"  # "Copy"


def test_with_an_api_key_the_page_asks_for_it_once(browser, start_server, web_model):
    locked = start_server(["--model", str(web_model), "--trust-remote-code", "--api-key", KEY])
    try:
        page = Page(browser, locked.url)
        page.wait(lambda: page.el("#key-dialog").is_displayed(), 5, "the key dialog")
        page.el("#key-input").send_keys(KEY)
        page.el("#key-save").click()
        page.send("What is 2+2?")
        assert page.wait_for_reply().find_element("css selector", ".answer").text == JAPANESE_ANSWER.replace("**", "")
        page.driver.refresh()
        time.sleep(0.5)
        assert not page.el("#key-dialog").is_displayed()  # kept in localStorage
    finally:
        locked.stop()


def test_screenshot_of_a_japanese_conversation(page, tmp_path):
    page.send(JAPANESE_QUESTION)
    first = page.wait_for_reply()
    page.send(CODE_QUESTION)
    page.wait_for_reply()
    first.find_element("css selector", ".thinking summary").click()  # show the first reasoning
    page.js("document.activeElement.blur()")
    time.sleep(1.2)  # one more status poll
    path = Path(os.environ.get("SWALLOW_SCREENSHOT_DIR") or tmp_path) / "chat-page.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    assert page.driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
