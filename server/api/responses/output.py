"""A turn's events -> Responses output items, and the stream events that build them.

One builder serves both modes: a streamed response sends the events it returns, a non-streamed
one only keeps the items, so both carry the same output. Consecutive events of one kind make one
item: reasoning -> a `reasoning` item (its text as `reasoning_text` content), content -> a
`message` item (`output_text`), a tool call and its arguments -> a `function_call` item with the
arguments streamed as they are generated. A call the server runs on an MCP server (server/turn/loop.py)
is an `mcp_call` item, and each MCP server the request picked is listed first, in an
`mcp_list_tools` item (unless the conversation has one for it). The built-in browser's calls are
`web_search_call` items (their action: search, open_page, find_in_page), python's are
`code_interpreter_call` items (the code, its output as logs, the container), and the answer's
citations of the browser's pages are `url_citation` annotations of its text. Events come in
OpenAI's order:

    output_item.added
      (list)      mcp_list_tools.in_progress, mcp_list_tools.completed | .failed
      (reasoning) reasoning_text.delta... reasoning_text.done
      (message)   content_part.added, output_text.delta... (output_text.annotation.added after a
                  citation's delta) output_text.done, content_part.done
      (call)      function_call_arguments.delta... function_call_arguments.done
      (mcp call)  mcp_call.in_progress, mcp_call_arguments.delta... mcp_call_arguments.done
                  (the call runs) mcp_call.completed | .failed
      (browser)   web_search_call.in_progress, web_search_call.searching (it runs),
                  web_search_call.completed   (the item is added once its arguments are complete)
      (python)    code_interpreter_call.in_progress, code_interpreter_call_code.delta...
                  code_interpreter_call_code.done, code_interpreter_call.interpreting (it runs),
                  code_interpreter_call.completed
    output_item.done

When the request asks for a reasoning summary (`reasoning.summary`), a reasoning item also carries
its text as `summary` (one `summary_text` part: the model's own chain of thought, whole; clients
such as the Vercel AI SDK and LangChain read only summaries), and its events are, each delta sent
both ways:

    output_item.added, reasoning_summary_part.added,
      (reasoning_text.delta, reasoning_summary_text.delta)...,
      reasoning_text.done, reasoning_summary_text.done, reasoning_summary_part.done,
    output_item.done
"""

import json
import time
import uuid

from server.api.responses.prompt import encrypt_reasoning
from server.harmony.parse import Event
from server.turn.logprobs import openai_entry
from server.turn.resolve import ResolvedTools
from server.turn.run import TurnEnd


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


KINDS = {"reasoning": "reasoning", "content": "message", "tool_call": "function_call", "tool_arguments": "function_call"}
SERVER_KINDS = ("server_call", "server_arguments", "server_running", "server_result")
PROTOCOL_ERROR = -32000  # an mcp_call's error that is not the tool's own: JSON-RPC's "server error"


class OutputBuilder:
    def __init__(self, tools: ResolvedTools, encrypted_reasoning: bool, encoding=None, top_logprobs: int | None = None,
                 summary: bool = False, container: str = "", sources: bool = False):
        self.tools = tools
        self.container = container  # python's container id (code_interpreter_call items)
        self.sources = sources  # a search action lists its results (include web_search_call.action.sources)
        self._annotations: list[dict] = []  # of the message being generated
        self.encrypted_reasoning = encrypted_reasoning
        self.summary = summary  # reasoning as a summary too (reasoning.summary asked for)
        self.output: list[dict] = []  # finished items
        self._item: dict | None = None  # the item being generated
        self._text: list[str] = []
        # include ["message.output_text.logprobs"]: the answer's token logprobs, top-N each
        self.encoding, self.top_logprobs = encoding, top_logprobs
        self._pending: list[dict] = []  # logprobs of answer tokens whose text is not sent yet
        self._logprobs: list[dict] = []  # of the message being generated

    def listings(self, toolset, listed: set[str] = frozenset()) -> list[dict]:
        """An `mcp_list_tools` item for each MCP server the request picked and the conversation
        has not listed yet (`listed`: their labels)."""
        events = []
        for listing in toolset.listings:
            if listing.source.kind != "mcp" or listing.label in listed:
                continue
            item = {"id": new_id("mcpl"), "type": "mcp_list_tools", "server_label": listing.label, "tools": []}
            where = {"item_id": item["id"], "output_index": len(self.output)}
            events.append({"type": "response.output_item.added", "output_index": where["output_index"],
                           "item": dict(item)})
            events.append({"type": "response.mcp_list_tools.in_progress", **where})
            item["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.parameters or {},
                              "annotations": t.annotations} for t in listing.tools]
            if listing.error is not None:
                item["error"] = listing.error
            events.append({"type": "response.mcp_list_tools.failed" if listing.error else
                           "response.mcp_list_tools.completed", **where})
            events.append({"type": "response.output_item.done", "output_index": where["output_index"], "item": item})
            self.output.append(item)
        return events

    def feed(self, event: Event) -> list[dict]:
        if event.kind in SERVER_KINDS:
            return self._server(event)
        if event.kind == "logprob":
            if event.channel == "content" and self.top_logprobs is not None:
                self._pending.append(openai_entry(self.encoding, event, self.top_logprobs))
            return []
        kind = KINDS.get(event.kind)
        if kind is None:
            return []
        events = []
        if event.kind == "tool_call" or self._item is None or self._item["type"] != kind:
            if event.kind == "tool_arguments":
                return []  # arguments of no call: the parser never sends them
            events += self._close("completed")
            events += self._open(kind, event.text)
            if event.kind == "tool_call":
                return events
        if event.text:
            start = sum(map(len, self._text))
            events += self._delta(event.text)
            citation = getattr(event, "citation", None)
            if citation is not None and self._item["type"] == "message":
                events += self._annotate(citation, start, start + len(event.text))
        return events

    def _annotate(self, citation, start: int, end: int) -> list[dict]:
        annotation = {"type": "url_citation", "url": citation.url, "title": citation.title,
                      "start_index": start, "end_index": end}
        self._annotations.append(annotation)
        return [{"type": "response.output_text.annotation.added", **self._where(), "content_index": 0,
                 "annotation_index": len(self._annotations) - 1, "annotation": annotation}]

    def finish(self, end: TurnEnd) -> list[dict]:
        return self._close("completed" if end.finish_reason in ("stop", "tool_calls") else "incomplete")

    # ---- calls the server runs -----------------------------------------------------------

    def _server(self, event) -> list[dict]:
        """An mcp_call item: opened when the model begins the call, its arguments streamed, closed
        with the output (or error) once the call ran. A call to a tool this request doesn't have
        has no item (the model hears "not available" and goes on)."""
        call = event.call
        if call.kind == "browser":
            return self._web_search(event)
        if call.kind == "python":
            return self._code_interpreter(event)
        if event.kind == "server_call":
            events = self._close("completed")
            if call.kind != "mcp":
                return events
            self._item = {"id": new_id("mcp"), "type": "mcp_call", "status": "in_progress",
                          "server_label": call.label, "name": call.name, "arguments": "",
                          "output": None, "error": None, "approval_request_id": None}
            self._text = []
            where = self._where()
            return events + [{"type": "response.output_item.added", "output_index": where["output_index"],
                              "item": dict(self._item)},
                             {"type": "response.mcp_call.in_progress", **where}]
        item = self._item
        if item is None or item["type"] != "mcp_call":
            return []
        where = self._where()
        if event.kind == "server_arguments":
            self._text.append(event.text)
            return [{"type": "response.mcp_call_arguments.delta", **where, "delta": event.text}]
        if event.kind == "server_running":
            item["arguments"] = call.arguments
            return [{"type": "response.mcp_call_arguments.done", **where, "arguments": call.arguments}]
        item["arguments"], item["output"] = call.arguments, call.output
        if call.error is not None:
            item["error"] = (
                {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": call.error}]}
                if call.error_from_tool else
                {"type": "mcp_protocol_error", "code": PROTOCOL_ERROR, "message": call.error})
        item["status"] = "failed" if call.error is not None else "completed"
        self.output.append(item)
        self._item, self._text = None, []
        return [{"type": "response.mcp_call.failed" if call.error is not None else "response.mcp_call.completed",
                 **where},
                {"type": "response.output_item.done", "output_index": where["output_index"], "item": item}]

    def _web_search(self, event) -> list[dict]:
        """A web_search_call item, added once the call's arguments are complete (its action is known
        then), done when it ran. A call that never ran (the reply ended inside it) has none."""
        call = event.call
        if event.kind == "server_call":
            return self._close("completed")
        if event.kind == "server_arguments":
            return []
        if event.kind == "server_running":
            self._item = {"id": new_id("ws"), "type": "web_search_call", "status": "in_progress",
                          "action": self._action(call)}
            self._text = []
            where = self._where()
            return [{"type": "response.output_item.added", "output_index": where["output_index"],
                     "item": dict(self._item)},
                    {"type": "response.web_search_call.in_progress", **where},
                    {"type": "response.web_search_call.searching", **where}]
        item = self._item
        if item is None or item["type"] != "web_search_call":
            return []
        where = self._where()
        item["action"] = self._action(call)
        item["status"] = "failed" if call.error is not None else "completed"
        self.output.append(item)
        self._item = None
        return [{"type": "response.web_search_call.completed", **where},
                {"type": "response.output_item.done", "output_index": where["output_index"], "item": item}]

    def _action(self, call) -> dict:
        """The call's action: as the browser reports it once it ran, else from the model's arguments."""
        action = dict(call.details.get("action") or {})
        if not action:
            try:
                arguments = json.loads(call.arguments or "{}")
            except ValueError:
                arguments = {}
            arguments = arguments if isinstance(arguments, dict) else {}
            kind = {"search": "search", "open": "open_page", "find": "find_in_page"}.get(call.name, call.name)
            action = {"type": kind}
            if kind == "search":
                action["query"] = str(arguments.get("query", ""))
            elif kind == "find_in_page":
                action["pattern"], action["url"] = str(arguments.get("pattern", "")), ""
            elif isinstance(arguments.get("id"), str):
                action["url"] = arguments["id"]
        if action.get("type") == "search" and self.sources:
            action["sources"] = [{"type": "url", "url": r["url"]} for r in call.details.get("results", [])]
        return action

    def _code_interpreter(self, event) -> list[dict]:
        """A code_interpreter_call item: added when the model begins the call, its code streamed,
        interpreting while it runs, done with its output as logs."""
        call = event.call
        if event.kind == "server_call":
            events = self._close("completed")
            self._item = {"id": new_id("ci"), "type": "code_interpreter_call", "status": "in_progress", "code": "",
                          "container_id": self.container, "outputs": None}
            self._text = []
            where = self._where()
            return events + [{"type": "response.output_item.added", "output_index": where["output_index"],
                              "item": dict(self._item)},
                             {"type": "response.code_interpreter_call.in_progress", **where}]
        item = self._item
        if item is None or item["type"] != "code_interpreter_call":
            return []
        where = self._where()
        if event.kind == "server_arguments":
            self._text.append(event.text)
            return [{"type": "response.code_interpreter_call_code.delta", **where, "delta": event.text}]
        if event.kind == "server_running":
            item["code"], item["status"] = call.arguments, "interpreting"
            return [{"type": "response.code_interpreter_call_code.done", **where, "code": call.arguments},
                    {"type": "response.code_interpreter_call.interpreting", **where}]
        item["code"] = call.arguments
        item["outputs"] = [{"type": "logs", "logs": call.model_text()}]
        item["status"] = "failed" if call.error is not None else "completed"
        self.output.append(item)
        self._item, self._text = None, []
        return [{"type": "response.code_interpreter_call.completed", **where},
                {"type": "response.output_item.done", "output_index": where["output_index"], "item": item}]

    # ---- items -----------------------------------------------------------------------

    def _where(self) -> dict:
        return {"item_id": self._item["id"], "output_index": len(self.output)}

    def _open(self, kind: str, text: str) -> list[dict]:
        self._text = []
        if kind == "reasoning":
            self._item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
        elif kind == "message":
            self._item = {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                          "content": []}
        else:
            namespace, name = self.tools.client(text)
            self._item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                          "call_id": new_id("call"), "name": name, "arguments": ""}
            if namespace:
                self._item["namespace"] = namespace
        events = [{"type": "response.output_item.added", "output_index": len(self.output), "item": dict(self._item)}]
        if kind == "reasoning" and self.summary:
            events.append({"type": "response.reasoning_summary_part.added", **self._where(), "summary_index": 0,
                           "part": _summary_part("")})
        if kind == "message":
            events.append({"type": "response.content_part.added", **self._where(), "content_index": 0,
                           "part": _text_part("")})
        return events

    def _delta(self, text: str) -> list[dict]:
        self._text.append(text)
        kind = self._item["type"]
        if kind == "reasoning":
            events = [{"type": "response.reasoning_text.delta", **self._where(), "content_index": 0, "delta": text}]
            if self.summary:
                events.append({"type": "response.reasoning_summary_text.delta", **self._where(), "summary_index": 0,
                               "delta": text})
            return events
        if kind == "message":
            logprobs, self._pending = self._pending, []
            self._logprobs += logprobs
            return [{"type": "response.output_text.delta", **self._where(), "content_index": 0, "delta": text,
                     "logprobs": logprobs}]
        return [{"type": "response.function_call_arguments.delta", **self._where(), "delta": text}]

    def _close(self, status: str) -> list[dict]:
        if self._item is None:
            return []
        item, text = self._item, "".join(self._text)
        where = self._where()
        if item["type"] == "reasoning":
            item["content"] = [{"type": "reasoning_text", "text": text}]
            if self.encrypted_reasoning:
                item["encrypted_content"] = encrypt_reasoning(text)
            events = [{"type": "response.reasoning_text.done", **where, "content_index": 0, "text": text}]
            if self.summary:
                item["summary"] = [_summary_part(text)]
                cut_short = {"status": "incomplete"} if status == "incomplete" else {}
                events += [
                    {"type": "response.reasoning_summary_text.done", **where, "summary_index": 0, "text": text},
                    {"type": "response.reasoning_summary_part.done", **where, "summary_index": 0,
                     "part": _summary_part(text), **cut_short},
                ]
        elif item["type"] == "message":
            logprobs, self._pending, self._logprobs = self._logprobs + self._pending, [], []
            annotations, self._annotations = self._annotations, []
            item["content"] = [_text_part(text, logprobs, annotations)]
            events = [
                {"type": "response.output_text.done", **where, "content_index": 0, "text": text,
                 "logprobs": logprobs},
                {"type": "response.content_part.done", **where, "content_index": 0,
                 "part": _text_part(text, logprobs, annotations)},
            ]
        elif item["type"] == "mcp_call":  # never ran: the reply ended inside it
            item["arguments"] = text
            events = [{"type": "response.mcp_call.failed", **where}]
        elif item["type"] == "code_interpreter_call":  # cut short: the client left before it ran
            item["code"] = text
            events = [{"type": "response.code_interpreter_call_code.done", **where, "code": text}]
            status = "incomplete"
        elif item["type"] == "web_search_call":  # it was running when the client left
            events, status = [], "incomplete"
        else:
            item["arguments"] = text
            events = [{"type": "response.function_call_arguments.done", **where, "name": item["name"],
                       "arguments": text}]
        item["status"] = status
        events.append({"type": "response.output_item.done", "output_index": where["output_index"], "item": item})
        self.output.append(item)
        self._item, self._text = None, []
        return events


def _summary_part(text: str) -> dict:
    return {"type": "summary_text", "text": text}


def _text_part(text: str, logprobs: list | None = None, annotations: list | None = None) -> dict:
    return {"type": "output_text", "text": text, "annotations": annotations or [], "logprobs": logprobs or []}


def output_text(output: list[dict]) -> str:
    return "".join(
        part["text"] for item in output if item["type"] == "message"
        for part in item["content"] if part["type"] == "output_text"
    )


def usage(end: TurnEnd) -> dict:
    return {
        "input_tokens": end.prompt_tokens,
        "input_tokens_details": {"cached_tokens": end.cached_tokens},
        "output_tokens": end.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": end.reasoning_tokens},
        "total_tokens": end.prompt_tokens + end.completion_tokens,
    }


class ResponseShell:
    """The fields of one response that don't change while it is generated."""

    def __init__(self, body, model: str, effort: str, sampling):
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.fields = {
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls,
            "model": model,
            "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": effort, "summary": body.reasoning.summary_asked() if body.reasoning else None},
            "store": body.store,
            "temperature": sampling.temperature,
            "text": {"format": body.text.format.model_dump(by_alias=True, exclude_none=True)
                     if body.text is not None and body.text.format is not None else {"type": "text"}},
            "tool_choice": body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump")
            else (body.tool_choice or "auto"),
            "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or []],
            "top_p": sampling.top_p,
            "truncation": "disabled",
            "user": None,
            "metadata": body.metadata or {},
        }

    def snapshot(self, status: str, output: list[dict] | None = None, end: TurnEnd | None = None,
                 error: dict | None = None) -> dict:
        output = output or []
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            **self.fields,
            "output": output,
            "output_text": output_text(output),
            "usage": usage(end) if end is not None else None,
        }


def final_status(end: TurnEnd) -> str:
    if end.finish_reason == "error":
        return "failed"
    return "incomplete" if end.finish_reason == "length" else "completed"
