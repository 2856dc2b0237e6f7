"""The requests of a benchmark run, the same token for token on every system.

swallow-server gets chat messages and renders them with harmony itself; raw mlx-lm gets the
token ids that rendering gives (server/harmony/render.py, with the server's own identity, cutoff and
effort settings); mlx_lm.server gets their text on /v1/completions (the GPT-OSS tokenizer has no
chat template for its chat endpoint, and its completions endpoint re-tokenizes the text to the
same ids: harmony's special tokens are added tokens). Prompt lengths are checked against the
servers' usage afterwards.
"""

import random
from dataclasses import dataclass, field
from pathlib import Path

from bench.models import CYCLE_WORDS

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their been has when who will more no if "
    "out so said what up its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made after also did many "
    "before must through back years where much your way well down should because each just those "
    "people how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year off come "
    "since against go came right used take three parcel quarry ribbon saddle pebble thunder cobalt "
    "falcon glacier mosaic pepper quartz saffron tundra velvet walnut"
).split()
WORDS = [w for w in WORDS if w not in CYCLE_WORDS]  # the bench model's reply words stay out of prompts


def filler(encoding, n_tokens: int, seed: int) -> str:
    """Deterministic English-looking text of about n_tokens tokens."""
    rng = random.Random(seed)
    sentences, count = [], 0
    while count < n_tokens:
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
        sentence = " ".join(words).capitalize() + "."
        count += len(encoding.encode(" " + sentence, allowed_special=set()))
        sentences.append(sentence)
    return " ".join(sentences)


@dataclass
class Request:
    messages: list  # chat-completions messages (swallow-server)
    tokens: list  # the harmony rendering (raw mlx-lm; decoded to text for mlx_lm.server)
    text: str  # the same, as text with harmony's special tokens in it


@dataclass
class Conversation:
    turn1: Request
    question2: str
    turn2_suffix: list  # what follows turn 1's reply in a verbatim history (raw, mlx_lm.server)
    turn2_suffix_text: str = ""


@dataclass
class Workload:
    warmup: Request
    decode: Request
    streams: list = field(default_factory=list)  # of Request
    conversations: dict = field(default_factory=dict)  # system name -> [Conversation per round]


class Renderer:
    """Renders chat messages exactly as swallow-server will."""

    def __init__(self, model_dir: Path):
        from models.vocab import load_harmony_encoding_offline
        from server.config import load_settings

        root = Path(__file__).resolve().parent.parent
        config = root / "config.toml"
        self.settings = load_settings(str(config) if config.is_file() else None)
        self.encoding = load_harmony_encoding_offline(model_dir)

    def request(self, messages: list, tools: list | None = None) -> Request:
        """Chat-completions messages (and function tools) as swallow-server renders them."""
        from server.harmony import render as harmony
        from server.harmony.tools import describe

        instructions = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
        history, called = [], {}
        for m in messages:
            if m["role"] == "user":
                history.append(harmony.user(m["content"]))
            elif m["role"] == "assistant":
                if m.get("reasoning_content"):
                    history.append(harmony.assistant_reasoning(m["reasoning_content"]))
                for call in m.get("tool_calls") or ():
                    called[call["id"]] = call["function"]["name"]
                    history.append(harmony.tool_call(call["function"]["name"], call["function"]["arguments"]))
                if m.get("content") and not m.get("tool_calls"):
                    history.append(harmony.assistant_final(m["content"]))
            elif m["role"] == "tool":
                history.append(harmony.tool_result(called[m["tool_call_id"]], m["content"]))
        described = [describe(t["function"]["name"], t["function"].get("description"), t["function"].get("parameters"))
                     for t in tools or ()]
        prompt = harmony.Prompt(effort=self.settings.reasoning_effort, instructions=instructions, tools=described,
                                messages=history)
        tokens, _ = harmony.render_with_boundary(self.encoding, prompt, self.settings.model_identity,
                                                 self.settings.knowledge_cutoff)
        return Request(messages, tokens, self.encoding.decode(tokens))

    def encode(self, text: str) -> list:
        return self.encoding.encode(text, allowed_special="all")


def build(renderer: Renderer, prefix_tokens: int, systems: list[str], rounds: int = 1) -> Workload:
    enc = renderer.encoding
    r = renderer.request
    workload = Workload(
        warmup=r([{"role": "user", "content": "Say hello."}]),
        decode=r([{"role": "user", "content": "Tell me a long story about a lighthouse keeper and a fox."}]),
        streams=[r([{"role": "user", "content": f"Story {i:02d}: tell me a long story about a falcon, a glacier and "
                                                 f"a walnut."}]) for i in range(16)],
    )
    # ~3/4 of the shared prefix in the instructions, the rest in the first question; each system
    # and round gets its own nonce in front, so its turn 1 is cold however the others went.
    base = r([{"role": "user", "content": "x"}])
    body = max(prefix_tokens - len(base.tokens), 64)
    instructions = filler(enc, body * 3 // 4, seed=1)
    question1 = filler(enc, body - body * 3 // 4, seed=2) + " Summarize all of the above."
    question2 = "Thank you. Now say it again in fewer words."
    for k, name in enumerate(systems):
        workload.conversations[name] = []
        for round in range(rounds):
            nonce = f"Session {4100 + 10 * k + round}."
            turn1 = r([{"role": "system", "content": f"{nonce} {instructions}"},
                       {"role": "user", "content": question1}])
            suffix_text = f"<|end|><|start|>user<|message|>{question2}<|end|><|start|>assistant"
            workload.conversations[name].append(
                Conversation(turn1, question2, renderer.encode(suffix_text), suffix_text))
    return workload


def turn2_messages(conversation: Conversation, reasoning: str, content: str) -> list:
    """The second turn as a chat client sends it: the first reply back, then a new question."""
    reply = {"role": "assistant", "content": content}
    if reasoning:
        reply["reasoning_content"] = reasoning
    return conversation.turn1.messages + [reply, {"role": "user", "content": conversation.question2}]
