"""Generated token ids -> what the client sees, through harmony's streaming parser.

Each token goes to openai-harmony's StreamableParser (non-strict, through stream.ReplyStream,
which keeps its state cheaply); the text it adds is routed by the message's channel and
recipient:

    analysis                      -> reasoning
    final, commentary (no recipient), no channel -> content
    recipient functions.NAME (any channel)       -> a tool call's arguments (a function the client runs)
    any other recipient (fs.read_file, browser.search, python) -> a server call's arguments: a tool
                                  the server runs, or says is not available (server/turn/loop.py)

Replies that break the format are never lost: when the parser fails, or a header runs on
without ever reaching <|message|>, the rest of the reply is decoded as plain content, and a
message that ended inside its header is delivered as content too. No harmony markup reaches
the client: the tokens of a real header (one with special tokens) are dropped, not decoded.
Tokens are held back only while they can still be a header: a reply whose first text can't
begin one (" to=" is the one header that starts with plain text) streams from its first token.

Text outside the format is decoded with the vocabulary of the served model (models/vocab.py:
a tiktoken Encoding over the o200k_base.tiktoken rebuilt from its tokenizer.json).
"""

import codecs
import logging
import re
from dataclasses import dataclass

from openai_harmony import HarmonyEncoding, HarmonyError, StreamState

from models.vocab import token_vocabulary
from server.harmony.stream import FIRST_SPECIAL_TOKEN, ReplyStream

log = logging.getLogger("swallow.reply")

PLAIN_HEADER_START = b" to="  # a recipient before the channel: the only header without a special first


@dataclass
class Event:
    # "reasoning", "content", "tool_call" (text = the function's name), "tool_arguments",
    # "server_call" (text = the whole recipient: "fs.read_file"), "server_arguments"
    kind: str
    text: str
    channel: str | None = None  # of a call: the channel it was written on (its result goes there too)


FUNCTIONS = "functions."
# A recipient that names a tool: `fs.read_file`, `python`, `browser.search`. harmony's non-strict
# parser can make one of a broken header (`<|channel|>final`): that is no call, its text is content.
TOOL_RECIPIENT = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")


def is_call(recipient: str | None) -> bool:
    """Whether a message to `recipient` is a tool call (a client's function, or a tool the server runs)."""
    return bool(recipient) and recipient != "assistant" and TOOL_RECIPIENT.fullmatch(recipient) is not None


class ReplyParser:
    def __init__(self, encoding: HarmonyEncoding):
        self._parser = ReplyStream(encoding)
        self._vocabulary = token_vocabulary()
        self._raw = None  # an incremental UTF-8 decoder once the reply left the format
        self._messages_seen = 0
        self._emitted_in_message = False
        self._call_open = False
        self.reasoning_tokens = 0
        self.done = False  # a final answer or a tool call is complete: nothing more to wait for
        self.last_kind: str | None = None  # what the last token fed was (see feed)

    def feed(self, token: int) -> list[Event]:
        """The events of one more token. `last_kind` then says what the token was: text of
        "reasoning", "content" or "tool_arguments", or None (markup: headers, special tokens)."""
        self.last_kind = None
        if self._raw is not None:
            self.last_kind = "content" if token < FIRST_SPECIAL_TOKEN else None
            return self._decode_raw([token])
        in_message, messages = self._parser.state == StreamState.CONTENT, self._parser.message_count
        try:
            self._parser.process(token)
        except HarmonyError as e:
            log.warning("reply left the harmony format (%s); delivering it as content", e)
            self.last_kind = None if self._real_header() or token >= FIRST_SPECIAL_TOKEN else "content"
            return self._leave_format([token])

        events: list[Event] = []
        state = self._parser.state
        channel = self._parser.channel
        if state == StreamState.HEADER and (self._parser.header_runs_on or not self._may_be_header()):
            self.last_kind = None if self._real_header() or token >= FIRST_SPECIAL_TOKEN else "content"
            return self._leave_format([])
        # reasoning_tokens: the analysis text's tokens (not its header or <|end|>), the unit of the
        # reasoning budget (reasoning_control.py)
        in_message = in_message and state == StreamState.CONTENT and self._parser.message_count == messages
        if in_message and channel == "analysis" and not self._is_call(self._parser.recipient):
            self.reasoning_tokens += 1
        if in_message and token < FIRST_SPECIAL_TOKEN:
            self.last_kind = ("tool_arguments" if self._is_call(self._parser.recipient)
                              else "reasoning" if channel == "analysis" else "content")
        delta = self._parser.last_content_delta
        if state == StreamState.CONTENT:
            events.extend(self._route(delta))
        if self._parser.message_count > self._messages_seen:
            events.extend(self._completed_messages())
        return events

    def finish(self) -> list[Event]:
        """The generation ended (stop token or limit): deliver anything still held back."""
        if self._raw is not None:
            return self._decode_raw([], final=True)
        # Cut off inside a header: a real one (it has special tokens) holds no text for the
        # client; anything else was a reply without a header.
        header = self._parser.header
        if header and all(t < FIRST_SPECIAL_TOKEN for t in header):
            return self._leave_format([]) + self._decode_raw([], final=True)
        return []

    # ---- routing ---------------------------------------------------------------------

    @staticmethod
    def _is_call(recipient: str | None) -> bool:
        return is_call(recipient)

    @staticmethod
    def _call_events(recipient: str, channel: str | None, arguments: str | None) -> list[Event]:
        """The start of a call (and its first arguments): to a client's function, or one the server runs."""
        if recipient.startswith(FUNCTIONS):
            events = [Event("tool_call", recipient[len(FUNCTIONS):], channel)]
            kind = "tool_arguments"
        else:
            events = [Event("server_call", recipient, channel or "commentary")]
            kind = "server_arguments"
        return events + ([Event(kind, arguments)] if arguments else [])

    def _route(self, delta: str | None) -> list[Event]:
        recipient = self._parser.recipient
        events = []
        if self._is_call(recipient):
            if not self._call_open:
                self._call_open = True
                events += self._call_events(recipient, self._parser.channel, delta)
            elif delta:
                events.append(Event("tool_arguments" if recipient.startswith(FUNCTIONS) else "server_arguments",
                                    delta))
        elif delta:
            kind = "reasoning" if self._parser.channel == "analysis" else "content"
            events.append(Event(kind, delta))
        if delta:
            self._emitted_in_message = True
        return events

    def _completed_messages(self) -> list[Event]:
        messages = self._parser.messages
        events = []
        for message in messages[self._messages_seen:]:
            text = "".join(getattr(c, "text", "") for c in message.content)
            is_call = self._is_call(message.recipient)
            if not self._emitted_in_message and text and message.channel is None and not is_call:
                events.append(Event("content", text))  # a reply with no usable header
            if is_call and not self._call_open:
                events += self._call_events(message.recipient, message.channel, text)
            if is_call or message.channel in ("final", None):
                self.done = True
            self._emitted_in_message = False
            self._call_open = False
        self._messages_seen = len(messages)
        return events

    # ---- outside the format ----------------------------------------------------------

    def _real_header(self) -> bool:
        return any(t >= FIRST_SPECIAL_TOKEN for t in self._parser.header)

    def _may_be_header(self) -> bool:
        """Whether the tokens held so far can still turn out to be a header."""
        if self._real_header():
            return True
        text = self._bytes(self._parser.header)
        return text.startswith(PLAIN_HEADER_START) or PLAIN_HEADER_START.startswith(text)

    def _leave_format(self, tokens: list[int]) -> list[Event]:
        """From here on the reply is plain text. A real header that was being read is markup,
        not text for the client: its tokens are dropped, and so are the ones that broke it."""
        real, held = self._real_header(), self._parser.header
        self._raw = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return self._decode_raw([] if real else held + tokens)

    def _bytes(self, tokens: list[int]) -> bytes:
        return b"".join(self._vocabulary.decode_single_token_bytes(t) for t in tokens if t < FIRST_SPECIAL_TOKEN)

    def _decode_raw(self, tokens: list[int], final: bool = False) -> list[Event]:
        data = self._bytes(tokens)
        text = self._raw.decode(data, final=final)
        return [Event("content", text)] if text else []
