"""A turn's events -> Messages content blocks, and the stream events that build them.

One builder serves both modes (a stream sends what `feed` returns; a non-streamed reply keeps
only the blocks). Consecutive events of one kind make one block, in the order generated:
reasoning -> `thinking` (its `signature` sent last, as Anthropic does), content -> `text`, a tool
call -> `tool_use` with its arguments streamed as `input_json_delta` fragments. A call the server
runs on an MCP server (server/turn/loop.py) is the MCP connector's pair: an `mcp_tool_use` block (its
input streamed the same way) when the model writes it, an `mcp_tool_result` block when it has run.

The built-ins come in the shapes of Anthropic's server tools, both blocks once the call has run:
a search is `server_tool_use` (name `web_search`, input {"query"}) and `web_search_tool_result`
(the results: url, title); an open or a find is `server_tool_use` (name `web_fetch`, input {"url"},
and a find's {"pattern"}) and `web_fetch_tool_result` (the view the model read, as a text
document); python is `server_tool_use` (name `code_execution`, input {"code"}) and
`code_execution_tool_result` (its output as stdout). The answer's citations of the browser's pages
end a text block each, with a `web_search_result_location` citation (url, title, the cited lines),
sent as a `citations_delta`.
"""

import datetime
import hashlib
import json
import logging
import uuid

from server.harmony.parse import Event
from server.harmony.tools import ToolNames, call_arguments
from server.turn.run import TurnEnd

log = logging.getLogger("swallow.messages")

KINDS = {"reasoning": "thinking", "content": "text", "tool_call": "tool_use", "tool_arguments": "tool_use"}
DELTAS = {"thinking": ("thinking_delta", "thinking"), "text": ("text_delta", "text"),
          "tool_use": ("input_json_delta", "partial_json")}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def signature(thinking: str) -> str:
    """An opaque mark for a thinking block. The text comes back with it and is read as it is:
    this server keeps no secret to verify, and has nothing to hide from a local client."""
    return "swallow-" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def stop_reason(end: TurnEnd) -> str:
    return "stop_sequence" if end.stop_string is not None else STOP_REASONS.get(end.finish_reason, "end_turn")


def usage(end: TurnEnd | None, prompt_tokens: int, server_tool_use: dict | None = None) -> dict:
    """Anthropic counts cache reads apart from `input_tokens` (the prompt is their sum); the browser's
    searches and fetches are counted in `server_tool_use` when there were any."""
    cached = end.cached_tokens if end else 0
    counted = {"input_tokens": (end.prompt_tokens if end else prompt_tokens) - cached,
               "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
               "output_tokens": end.completion_tokens if end else 0}
    if server_tool_use and any(server_tool_use.values()):
        counted["server_tool_use"] = dict(server_tool_use)
    return counted


class ContentBuilder:
    def __init__(self, names: ToolNames):
        self.names = names
        self.blocks: list[dict] = []  # finished blocks
        self.server_tool_use = {"web_search_requests": 0, "web_fetch_requests": 0}  # the browser's calls
        self._block: dict | None = None  # the block being generated
        self._text: list[str] = []

    def feed(self, event: Event) -> list[dict]:
        if event.kind in ("server_call", "server_arguments", "server_running", "server_result"):
            return self._server(event)
        kind = KINDS.get(event.kind)
        if kind is None:
            return []
        events = []
        if event.kind == "tool_call" or self._block is None or self._block["type"] != kind:
            if event.kind == "tool_arguments":
                return []  # arguments of no call: the parser never sends them
            events += self._close()
            events += self._open(kind, event.text)
            if event.kind == "tool_call":
                return events
        if event.text:
            self._text.append(event.text)
            delta_type, field = DELTAS[kind]
            events.append({"type": "content_block_delta", "index": len(self.blocks),
                           "delta": {"type": delta_type, field: event.text}})
        citation = getattr(event, "citation", None)
        if citation is not None and kind == "text":  # the cited text ends here: its block carries the citation
            cited = {"type": "web_search_result_location", "url": citation.url, "title": citation.title,
                     "cited_text": event.quote, "encrypted_index": ""}
            self._block["citations"] = [cited]
            events.append({"type": "content_block_delta", "index": len(self.blocks),
                           "delta": {"type": "citations_delta", "citation": cited}})
            events += self._close()
        return events

    def finish(self) -> list[dict]:
        return self._close()

    def _server(self, event) -> list[dict]:
        """mcp_tool_use, then mcp_tool_result. A call to a tool this request doesn't have has no
        blocks (the model hears "not available" and goes on)."""
        call = event.call
        if call.kind in ("browser", "python"):
            return self._builtin(event)
        if event.kind == "server_call":
            events = self._close()
            if call.kind == "mcp":
                self._text = []
                self._block = {"type": "mcp_tool_use", "id": f"mcptoolu_{uuid.uuid4().hex[:24]}", "name": call.name,
                               "server_name": call.label, "input": {}}
                events.append({"type": "content_block_start", "index": len(self.blocks),
                               "content_block": dict(self._block)})
            return events
        block = self._block
        if block is None or block["type"] != "mcp_tool_use":
            return []
        if event.kind == "server_arguments":
            self._text.append(event.text)
            return [{"type": "content_block_delta", "index": len(self.blocks),
                     "delta": {"type": "input_json_delta", "partial_json": event.text}}]
        if event.kind == "server_running":
            return []
        use_id, events = block["id"], self._close()
        result = {"type": "mcp_tool_result", "tool_use_id": use_id, "is_error": call.error is not None,
                  "content": [{"type": "text", "text": call.model_text() if call.error is None else call.error}]}
        events.append({"type": "content_block_start", "index": len(self.blocks), "content_block": result})
        events.append({"type": "content_block_stop", "index": len(self.blocks)})
        self.blocks.append(result)
        return events

    def _builtin(self, event) -> list[dict]:
        """The server_tool_use block and its result, both once the call has run."""
        call = event.call
        if event.kind == "server_call":
            return self._close()
        if event.kind != "server_result":
            return []
        name, tool_input, result = _builtin_blocks(call)
        if name != "code_execution":
            self.server_tool_use[f"{name}_requests"] += 1
        use = {"type": "server_tool_use", "id": f"srvtoolu_{uuid.uuid4().hex[:24]}", "name": name, "input": {}}
        result["tool_use_id"] = use["id"]
        events = [{"type": "content_block_start", "index": len(self.blocks), "content_block": dict(use)},
                  {"type": "content_block_delta", "index": len(self.blocks),
                   "delta": {"type": "input_json_delta", "partial_json": json.dumps(tool_input, ensure_ascii=False)}},
                  {"type": "content_block_stop", "index": len(self.blocks)}]
        use["input"] = tool_input
        self.blocks.append(use)
        events += [{"type": "content_block_start", "index": len(self.blocks), "content_block": result},
                   {"type": "content_block_stop", "index": len(self.blocks)}]
        self.blocks.append(result)
        return events

    def _open(self, kind: str, text: str) -> list[dict]:
        self._text = []
        if kind == "thinking":
            self._block = {"type": "thinking", "thinking": "", "signature": ""}
        elif kind == "text":
            self._block = {"type": "text", "text": ""}
        else:
            self._block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}",
                           "name": self.names.client_name(text), "input": {}}
        return [{"type": "content_block_start", "index": len(self.blocks), "content_block": dict(self._block)}]

    def _close(self) -> list[dict]:
        if self._block is None:
            return []
        block, text, index = self._block, "".join(self._text), len(self.blocks)
        events = []
        if block["type"] == "thinking":
            block["thinking"], block["signature"] = text, signature(text)
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "signature_delta", "signature": block["signature"]}})
        elif block["type"] == "text":
            block["text"] = text
        else:  # tool_use, mcp_tool_use
            block["input"] = call_arguments(text)
        events.append({"type": "content_block_stop", "index": index})
        self.blocks.append(block)
        self._block, self._text = None, []
        return events


def _builtin_blocks(call) -> tuple[str, dict, dict]:
    """(the server tool's name, its input, its result block) of a built-in's call."""
    error = call.error
    if call.kind == "python":
        if call.output is None:  # never ran (not run, timed out)
            content = {"type": "code_execution_tool_result_error",
                       "error_code": "execution_time_exceeded" if "longer than" in error else "unavailable"}
        else:
            content = {"type": "code_execution_result", "stdout": call.output, "stderr": "",
                       "return_code": 0 if error is None else 1, "content": []}
        return "code_execution", {"code": call.arguments}, {"type": "code_execution_tool_result", "content": content}
    action = call.details.get("action") or {}
    if call.name == "search":
        tool_input = {"query": action.get("query", call_arguments(call.arguments).get("query", ""))}
        if error is not None:
            content = {"type": "web_search_tool_result_error", "error_code": "unavailable"}
        else:
            content = [{"type": "web_search_result", "url": r["url"], "title": r["title"], "encrypted_content": "",
                        "page_age": None} for r in call.details.get("results", [])]
        return "web_search", tool_input, {"type": "web_search_tool_result", "content": content}
    url = call.details.get("url") or action.get("url") or ""
    tool_input = {"url": url, **({"pattern": action["pattern"]} if "pattern" in action else {})}
    if error is not None:
        content = {"type": "web_fetch_tool_result_error", "error_code": "url_not_accessible" if url else "unavailable"}
    else:
        content = {"type": "web_fetch_result", "url": url,
                   "retrieved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                   "content": {"type": "document", "title": call.details.get("title"),
                               "source": {"type": "text", "media_type": "text/plain", "data": call.output}}}
    return "web_fetch", tool_input, {"type": "web_fetch_tool_result", "content": content}

