"""Text the tokenizer would read too slowly: long runs of characters with no break.

The o200k tokenizer first splits text into pieces (a run of letters, of punctuation or symbols,
of whitespace; digits go three at a time), then merges each piece's bytes. openai-harmony's
merge takes time that grows with the square of a piece's length, holds the GIL while it runs
(so the event loop, and every stream on it, stops), and can't be interrupted: 400 KB of one
letter take over a minute on a CPU, and a request may carry 16 MiB. Natural text has no such
pieces (words, and even unpunctuated Japanese, break far sooner), so a body whose pieces would
cost more than MAX_COST (about a second of tokenizing) gets a 400 before anything is rendered.

Cheap for every request: bodies too small to reach MAX_COST are not looked at; in the others,
the strings are first cut at ASCII digits and at changes between ASCII whitespace and the rest
(numpy, over their UTF-8 bytes), and only when a run of MIN_RUN_BYTES or more is found are they
measured piece by piece, with the tokenizer's own Unicode classes.
"""

import json
import math

import numpy as np
import regex

MIN_RUN_BYTES = 256  # shorter pieces cost nothing worth counting
MAX_COST = 2 * 10**9  # sum of the pieces' squared byte lengths: ~1 s of tokenizing, one 44 KB piece alone
SMALLEST_COSTLY_BODY = math.isqrt(MAX_COST)  # no body shorter than this can hold pieces costing more
# A run that may be one tokenizer piece: letters and marks, symbols and punctuation, or whitespace
# (each run is looked at once: from its start, which the look-behind finds).
TEXT_RUN = regex.compile("|".join(f"(?<!{c}){c}{{{MIN_RUN_BYTES // 4},}}"
                                  for c in (r"[\p{L}\p{M}]", r"[^\s\p{L}\p{N}]", r"\s")))
_CLASS = np.full(256, 2, dtype=np.int8)  # a byte's class: 0 digit, 1 ASCII whitespace, 2 anything else
_CLASS[list(b"0123456789")] = 0
_CLASS[list(b" \t\n\r\x0b\x0c")] = 1


def _strings(data):
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _longest_run(data: bytes) -> int:
    """The longest run of bytes of one class (whitespace, or neither digit nor whitespace):
    every tokenizer piece longer than a digit lies within one."""
    if not data:
        return 0
    classes = _CLASS[np.frombuffer(data, dtype=np.uint8)]
    edges = np.flatnonzero(np.diff(classes)) + 1
    bounds = np.concatenate(([0], edges, [len(classes)]))
    lengths = np.diff(bounds)
    lengths[classes[bounds[:-1]] == 0] = 0  # digits go three at a time
    return int(lengths.max(initial=0))


def cost(text: str) -> tuple[int, int]:
    """(the tokenizing cost of the text's long pieces: their squared byte lengths summed, the
    longest one's bytes)."""
    total, longest = 0, 0
    for run in TEXT_RUN.finditer(text):
        size = len(run.group().encode("utf-8", errors="surrogatepass"))
        if size >= MIN_RUN_BYTES:
            total += size * size
            longest = max(longest, size)
    return total, longest


def slow_to_tokenize(body: bytes) -> str | None:
    """Why the JSON body's text would take the tokenizer too long, or None."""
    if len(body) < SMALLEST_COSTLY_BODY:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON (or too deep): said elsewhere
    texts = [text for text in _strings(data) if len(text) >= MIN_RUN_BYTES // 4]
    if _longest_run("0".join(texts).encode("utf-8", errors="surrogatepass")) < MIN_RUN_BYTES:
        return None  # the usual case: no run long enough to be a costly piece
    total, longest = 0, 0
    for text in texts:
        text_cost, text_longest = cost(text)
        total += text_cost
        longest = max(longest, text_longest)
    if total <= MAX_COST:
        return None
    return (f"The request's text has runs of characters that the tokenizer reads as one piece each (letters "
            f"with no space, digit or punctuation between them, or long rows of symbols or spaces; the longest "
            f"is {longest:,} bytes). Its time grows with the square of a piece's length: these would take it "
            "too long. Break them up.")
