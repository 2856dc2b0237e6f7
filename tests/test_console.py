"""`swallow-server generate` as a subprocess and `swallow-server chat` in a real terminal (tmux),
both against the scripted model: the answer and the reasoning kept apart, effort, Ctrl-C, /quit."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port
from tests.scripts import (
    CAPITAL_ANSWER,
    CAPITAL_QUESTION,
    CAPITAL_REASONING,
    JAPANESE_ANSWER,
    JAPANESE_REASONING,
    WEATHER_JSON,
)


ENGLISH = {"LC_ALL": "C.UTF-8"}  # the commands speak the terminal's language: these tests read English


def generate(*args, input=None, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "server", "generate", *args], cwd=ROOT, input=input,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENGLISH, **(env or {})}, check=False)


# ---- generate ----------------------------------------------------------------------------

def test_generate_prints_only_the_answer_on_stdout(scripted_server):
    result = generate("--url", scripted_server.url, "--prompt", CAPITAL_QUESTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout == CAPITAL_ANSWER + "\n"   # the answer, then exactly one newline
    assert CAPITAL_REASONING in result.stderr and CAPITAL_REASONING not in result.stdout
    assert result.stderr.rstrip().splitlines()[-1].startswith("usage: prompt ")
    assert "\x1b[" not in result.stderr            # no colour codes when stderr is not a terminal


def test_generate_hide_reasoning_and_quiet(scripted_server):
    result = generate("--url", scripted_server.url, "--prompt", CAPITAL_QUESTION, "--hide-reasoning", "--quiet")
    assert result.returncode == 0
    assert result.stdout == CAPITAL_ANSWER + "\n"
    assert result.stderr == ""
    result = generate("--url", scripted_server.url, "--prompt", CAPITAL_QUESTION, "--hide-reasoning")
    assert CAPITAL_REASONING not in result.stderr and "usage:" in result.stderr


def test_generate_reads_the_prompt_from_stdin(scripted_server):
    result = generate("--url", scripted_server.url, input="What is 2+2?\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == JAPANESE_ANSWER + "\n"
    assert JAPANESE_REASONING in result.stderr
    empty = generate("--url", scripted_server.url, input="  \n")
    assert empty.returncode == 2 and "empty" in empty.stderr


def test_generate_effort_and_system_reach_the_prompt(scripted_server):
    for effort in ("low", "high"):
        result = generate("--url", scripted_server.url, "--prompt", "Hello", "--effort", effort, "-q")
        assert result.stdout == f"effort={effort}\n"
    result = generate("--url", scripted_server.url, "--prompt", "Hello", "--system", "Speak like a pirate.", "-q")
    assert result.stdout == "Arr, instructions received.\n"
    # --max-tokens bounds the reply (reasoning included): the usage line says it was cut
    result = generate("--url", scripted_server.url, "--prompt", "Write a long essay", "--max-tokens", "20")
    assert result.returncode == 0 and "finish: length" in result.stderr
    assert "completion 20 " in result.stderr


def test_generate_json_schema(scripted_server, tmp_path):
    schema = tmp_path / "weather.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"city": {"type": "string"},
                                                                    "temperature": {"type": "integer"}},
                                  "required": ["city", "temperature"], "additionalProperties": False}))
    result = generate("--url", scripted_server.url, "--prompt", "Weather as JSON", "--json-schema", str(schema))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(WEATHER_JSON)
    assert "The user wants JSON." in result.stderr
    # a model that won't write JSON is held to the schema all the same
    result = generate("--url", scripted_server.url, "--prompt", "Answer in prose", "--json-schema", str(schema))
    assert result.returncode == 0
    assert set(json.loads(result.stdout)) == {"city", "temperature"}
    # JSON cut short by --max-tokens: an error on stderr, nothing on stdout (never half a JSON)
    result = generate("--url", scripted_server.url, "--prompt", "Weather as JSON", "--json-schema", str(schema),
                      "--max-tokens", "14")
    assert result.returncode == 1 and result.stdout == "", result.stdout
    assert "max_tokens" in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = generate("--url", scripted_server.url, "--prompt", "x", "--json-schema", str(bad))
    assert result.returncode == 1 and "cannot read the JSON schema" in result.stderr


def test_generate_loads_the_model_in_process_when_no_server_listens(scripted_model):
    url = f"http://127.0.0.1:{free_port()}"
    result = generate("--url", url, "--model", str(scripted_model), "--trust-remote-code",
                      "--prompt", CAPITAL_QUESTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout == CAPITAL_ANSWER + "\n"
    assert CAPITAL_REASONING in result.stderr and "in this process" in result.stderr
    with pytest.raises(httpx.ConnectError):  # nothing was left listening at --url
        httpx.get(f"{url}/health", timeout=1)


def test_generate_sends_the_api_key(start_server, scripted_model):
    server = start_server(["--model", str(scripted_model), "--trust-remote-code"],
                          env={"SWALLOW_API_KEY": "sesame"})
    env = {"SWALLOW_API_KEY": ""}
    result = generate("--url", server.url, "--prompt", "Hello", "--api-key", "sesame", "-q", env=env)
    assert result.returncode == 0 and result.stdout == "effort=medium\n"
    result = generate("--url", server.url, "--prompt", "Hello", "-q", env={"SWALLOW_API_KEY": "sesame"})
    assert result.returncode == 0 and result.stdout == "effort=medium\n"
    result = generate("--url", server.url, "--prompt", "Hello", "--api-key", "wrong", env=env)
    assert result.returncode == 1 and "401" in result.stderr and "Traceback" not in result.stderr


def test_generate_ctrl_c_stops_the_generation(scripted_server):
    # Ctrl-C at a terminal: SIGINT not ignored, even when this suite runs in the background (a
    # shell starts background jobs with SIGINT ignored, and children inherit that)
    process = subprocess.Popen([sys.executable, "-m", "server", "generate", "--url", scripted_server.url,
                                "--prompt", "Write a long essay"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **ENGLISH},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert process.stdout.read(6) == "word0 "      # the answer is streaming
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 10
    while scripted_server.health()["running"] != 0:
        assert time.monotonic() < deadline, "the server still generates the interrupted reply"
        time.sleep(0.1)


def test_chat_wants_a_terminal(scripted_server):
    result = subprocess.run([sys.executable, "-m", "server", "chat", "--url", scripted_server.url], cwd=ROOT,
                            input="hello\n", capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, **ENGLISH})
    assert result.returncode == 2 and "not a terminal" in result.stderr


# ---- chat, in a real terminal --------------------------------------------------------------

class Terminal:
    """A tmux session of fixed size running one command, on a private tmux server."""

    def __init__(self, tmp_path: Path, command: list[str], width: int = 120, height: int = 40,
                 lang: str = "C.UTF-8"):
        self.socket = str(tmp_path / "tmux.sock")
        self.name = "chat"
        # the locale as a terminal sets it: LANG alone (LC_ALL and LC_MESSAGES would override it)
        shell = (f"cd {shlex.quote(str(ROOT))} && env -u LC_ALL -u LC_MESSAGES LANG={shlex.quote(lang)} "
                 f"{shlex.join(command)}; echo CHAT-EXITED rc=$?; sleep 600")
        self.tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), shell)

    def tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-u", "-f", "/dev/null", "-S", self.socket, *args], check=True,
                              capture_output=True, text=True, timeout=20).stdout

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def send(self, text: str) -> None:
        self.type(text)
        self.keys("Enter")

    def screen(self, escapes: bool = False) -> str:
        """The whole pane with its scrollback, wrapped lines joined (-e: with colour codes)."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", self.name, *(["-e"] if escapes else []))

    def wait_for(self, text: str, count: int = 1, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} (x{count}) did not appear; the terminal shows:\n{screen}")
            time.sleep(0.1)

    def wait_for_prompt(self, count: int, timeout: float = 60) -> str:
        """Until `count` input prompts ("> " at the start of a line) have been shown."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if sum(line.startswith(">") for line in screen.splitlines()) >= count:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"prompt {count} did not appear; the terminal shows:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=20, check=False)


@pytest.fixture
def terminal(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("TMUX IS NOT INSTALLED: the chat tests drive a real terminal with tmux "
                    "(apt-get install tmux / brew install tmux)")
    opened = []

    def open_terminal(*chat_args: str, lang: str = "C.UTF-8") -> Terminal:
        term = Terminal(tmp_path, [sys.executable, "-m", "server", "chat", *chat_args], lang=lang)
        opened.append(term)
        term.wait_for("/help")  # the banner, in either language
        term.wait_for_prompt(1)
        return term

    yield open_terminal
    for term in opened:
        term.close()


def test_chat_japanese_question_with_reasoning_apart(terminal, scripted_server):
    term = terminal("--url", scripted_server.url)
    term.send(CAPITAL_QUESTION)
    screen = term.wait_for("usage: prompt ")                     # the reply is complete
    lines = screen.splitlines()
    asked = lines.index("> " + CAPITAL_QUESTION)                 # wide characters echoed as typed
    assert lines[asked + 1] == CAPITAL_REASONING                  # the reasoning on its own line...
    assert lines[asked + 2] == CAPITAL_ANSWER                     # ...then the answer on its own
    assert lines[asked + 3].startswith("usage: prompt ")
    colours = term.screen(escapes=True)
    assert "\x1b[2m" + CAPITAL_REASONING in colours               # the reasoning dimmed
    answer_line = next(line for line in colours.splitlines() if CAPITAL_ANSWER in line and
                       CAPITAL_REASONING not in line)
    assert "\x1b[2m" not in answer_line                           # the answer in the normal colour
    # the up arrow brings the question back
    term.wait_for_prompt(2)
    term.keys("Up")
    term.wait_for("> " + CAPITAL_QUESTION, count=2)
    term.keys("Enter")
    term.wait_for(CAPITAL_ANSWER, count=2)


def test_chat_speaks_japanese_under_a_japanese_locale(terminal, scripted_server):
    term = terminal("--url", scripted_server.url, lang="ja_JP.UTF-8")
    assert "Enter で送信、Alt+Enter で改行、/help でコマンド一覧。" in term.screen()
    term.send("/effort high")
    term.wait_for("推論の深さ: high")
    term.send(CAPITAL_QUESTION)
    screen = term.wait_for("使用量: プロンプト ")
    assert CAPITAL_ANSWER in screen and "usage:" not in screen
    term.send("/help")
    term.wait_for("/save FILE                会話を JSON で保存")


def test_chat_effort_and_system_reach_the_system_message(terminal, scripted_server):
    term = terminal("--url", scripted_server.url)
    term.send("Hello there")
    term.wait_for("effort=medium")            # the server's default effort
    term.send("/effort high")
    term.wait_for("reasoning effort: high")
    term.send("Hello again")
    term.wait_for("effort=high")
    term.send("/effort")
    term.wait_for("reasoning effort: high", count=2)
    term.send("/effort extreme")
    term.wait_for("usage: /effort low|medium|high")
    term.send("/system Speak like a pirate.")
    term.wait_for("system message: Speak like a pirate.")
    term.send("Hi")
    term.wait_for("Arr, instructions received.")
    term.send("/clear")
    term.send("/system")
    term.wait_for("system message removed")
    term.send("/effort low")
    term.send("Hello once more")
    term.wait_for("effort=low")
    # the reasoning folded to one line
    term.send("/reasoning fold")
    term.send(CAPITAL_QUESTION)
    screen = term.wait_for(CAPITAL_ANSWER)
    assert "▸ thought for " in screen and CAPITAL_REASONING not in screen


def test_chat_ctrl_c_stops_the_reply_and_frees_its_slot(terminal, scripted_server):
    term = terminal("--url", scripted_server.url)
    term.send("Write a long essay")
    term.wait_for("word30 ")
    term.keys("C-c")
    screen = term.wait_for("[stopped]", timeout=20)
    assert "word2999" not in screen                                # stopped mid-reply
    deadline = time.monotonic() + 10
    while scripted_server.health()["running"] != 0:
        assert time.monotonic() < deadline, "the server still generates the stopped reply"
        time.sleep(0.1)
    term.wait_for_prompt(2)
    term.send("What is 2+2?")                                      # still in the chat
    term.wait_for(JAPANESE_ANSWER)
    assert "CHAT-EXITED" not in term.screen()
    # Ctrl-C at the prompt only clears the line
    term.type("never sent")
    term.keys("C-c")
    term.wait_for_prompt(4)  # a fresh prompt (the 4th: essay, 2+2, the cleared line, this one)
    term.send("/quit")
    screen = term.wait_for("CHAT-EXITED rc=0")
    assert "> /quit" in screen.splitlines()


def test_chat_in_process_multiline_save_and_quit(terminal, scripted_model, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    term = terminal("--url", url, "--model", str(scripted_model), "--trust-remote-code")
    assert "in this process" in term.screen()
    term.type("line one")
    term.keys("M-Enter")                                           # Alt+Enter: a new line, not sent
    term.type(CAPITAL_QUESTION)
    term.wait_for(CAPITAL_QUESTION)
    assert CAPITAL_ANSWER not in term.screen()
    term.keys("Enter")
    term.wait_for(CAPITAL_ANSWER)
    saved = tmp_path / "conversation.json"
    term.send(f"/save {saved}")
    term.wait_for("saved 2 messages")
    document = json.loads(saved.read_text())
    assert document["messages"] == [
        {"role": "user", "content": "line one\n" + CAPITAL_QUESTION},
        {"role": "assistant", "content": CAPITAL_ANSWER, "reasoning_content": CAPITAL_REASONING},
    ]
    term.send("/quit")
    term.wait_for("CHAT-EXITED rc=0")
