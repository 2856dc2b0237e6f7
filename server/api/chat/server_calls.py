"""Calls the server ran (server/turn/loop.py), as chat completions shows them.

Chat completions has no shape of its own for them, so they come twice:

- as readable lines in the reasoning (`reasoning_content` / `reasoning`), where chat UIs show the
  thinking block: the call when it starts, its result (cut to RESULT_PREVIEW characters) when it ends;

      [tool call] fs.read_text_file {"path": "notes.txt"}
      [tool result] hello from a file

- in this server's extension field `server_tool_calls`, in full: on the message,
  `[{"id", "type": "mcp", "server", "name", "arguments", "output", "error"}]` (`type` "browser" or
  "python" for the built-ins; a browser call also has its `action`, as a Responses web_search_call's);
  in a stream, deltas built like `tool_calls`' (the first with `index`, `id`, `type`, `server`,
  `name`; then argument fragments; then one with `output` or `error`).

`tool_calls` stays for the client's own functions. The answer's citations of the browser's pages are
links in its text and, as OpenAI's search models give them, `annotations` of type `url_citation`
(`citation`).
"""

RESULT_PREVIEW = 500


def call_line(call) -> str:
    return f"\n[tool call] {call.recipient} {call.arguments.strip()}\n"


def result_line(call) -> str:
    if call.error is not None:
        return f"[tool error] {call.error}\n\n"
    text = call.output.strip()
    if len(text) > RESULT_PREVIEW:
        text = text[:RESULT_PREVIEW] + f"… ({len(call.output):,} characters)"
    return f"[tool result] {text}\n\n"


def started(call, index: int) -> dict:
    """The first stream delta of a call."""
    return {"index": index, "id": call.id, "type": call.kind, "server": call.label, "name": call.name,
            "arguments": ""}


def ended(call, index: int) -> dict:
    """The last stream delta of a call."""
    return {"index": index, "output": call.output, "error": call.error, **_action(call)}


def whole(call) -> dict:
    """A call on a non-streamed message."""
    return {"id": call.id, "type": call.kind, "server": call.label, "name": call.name, "arguments": call.arguments,
            "output": call.output, "error": call.error, **_action(call)}


def _action(call) -> dict:
    return {"action": call.details["action"]} if "action" in call.details else {}


def citation(event, start: int) -> dict:
    """A citation of the answer (a content piece that is one), as chat completions' `url_citation`
    annotation; `start`: where the piece begins in the message's content."""
    return {"type": "url_citation", "url_citation": {"url": event.citation.url, "title": event.citation.title,
                                                     "start_index": start, "end_index": start + len(event.text)}}
