"""harmony's StreamableParser over a reply, with its state and message count kept cheaply.

openai-harmony's `state` and `messages` serialize the parser to JSON on every call, the
current message's tokens and every finished message included: O(reply length) per call, so
asking them after each token makes a long reply quadratic (at 2,000 tokens of reasoning,
~0.2 ms a call, several calls a token, on the engine thread and on the event loop). Inside a
message body an ordinary token changes neither: only special tokens end a message or a header.
So they are read from harmony after special tokens and outside message bodies (headers are a
handful of tokens), and kept in between.
"""

from openai_harmony import HarmonyEncoding, Message, Role, StreamableParser, StreamState

FIRST_SPECIAL_TOKEN = 199998
MAX_HEADER_TOKENS = 48  # a real header is a handful of tokens; past this it is not one


class ReplyStream:
    def __init__(self, encoding: HarmonyEncoding):
        self.parser = StreamableParser(encoding, Role.ASSISTANT, strict=False)
        self.state: StreamState = self.parser.state
        self.message_count = 0  # messages the reply has finished
        self.header: list[int] = []  # tokens of the header being read

    @property
    def header_runs_on(self) -> bool:
        """A header longer than any real one: the reply is text outside the format."""
        return len(self.header) > MAX_HEADER_TOKENS

    def process(self, token: int) -> None:
        """Feeds one token (raises harmony's HarmonyError when the reply leaves the format)."""
        self.parser.process(token)
        if token >= FIRST_SPECIAL_TOKEN or self.state != StreamState.CONTENT:
            self.state = self.parser.state
            self.message_count = len(self.parser.messages)
        if self.state == StreamState.HEADER:
            self.header.append(token)
        else:
            self.header = []

    @property
    def messages(self) -> list[Message]:
        return self.parser.messages

    @property
    def channel(self) -> str | None:
        return self.parser.current_channel

    @property
    def recipient(self) -> str | None:
        return self.parser.current_recipient

    @property
    def last_content_delta(self) -> str | None:
        return self.parser.last_content_delta
