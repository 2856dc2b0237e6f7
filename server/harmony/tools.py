"""Function tools: the names a model can write in a harmony header, and back.

A harmony recipient is `functions.NAME`, read up to a space or a special token, so a client's
tool called "get weather" or "web-search" would break the header. Each tool gets a safe
identifier for the model and is mapped back to the client's name in responses.
"""

import json
import logging
import re

from openai_harmony import ToolDescription

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")

log = logging.getLogger("swallow.tools")


class ToolNames:
    def __init__(self, names: list[str]):
        self.to_model: dict[str, str] = {}
        self.to_client: dict[str, str] = {}
        for name in names:
            safe = _UNSAFE.sub("_", name) or "tool"
            if safe[0].isdigit():
                safe = f"_{safe}"
            candidate, n = safe, 2
            while candidate in self.to_client:
                candidate, n = f"{safe}_{n}", n + 1
            self.to_model[name] = candidate
            self.to_client[candidate] = name

    def model_name(self, client_name: str) -> str:
        # A name from the history that isn't among today's tools still needs a safe form.
        return self.to_model.get(client_name) or _UNSAFE.sub("_", client_name) or "tool"

    def client_name(self, model_name: str) -> str:
        return self.to_client.get(model_name, model_name)


def describe(model_name: str, description: str | None, parameters: dict | None) -> ToolDescription:
    return ToolDescription.new(model_name, description or "", parameters=parameters or None)


def check_parameters(name: str, parameters) -> str | None:
    """A problem with a tool's JSON schema, or None."""
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        return f"tool {name!r}: parameters must be a JSON schema object"
    kind = parameters.get("type", "object")
    if kind != "object":
        return f"tool {name!r}: parameters must be a JSON schema of type 'object', not {kind!r}"
    properties = parameters.get("properties", {})
    if not isinstance(properties, dict):
        return f"tool {name!r}: parameters.properties must be an object"
    required = parameters.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return f"tool {name!r}: parameters.required must be a list of property names"
    return None


def forced_call_prefix(model_name: str | None = None) -> str:
    """The start of a reply that must be a tool call: to any function (None), or to the named one.
    For any function the prefix stops before the dot, which the model writes merged with the
    name's first piece."""
    if model_name is None:
        return "<|channel|>commentary to=functions"
    return f"<|channel|>commentary to=functions.{model_name} <|constrain|>json<|message|>"


def call_arguments(text: str) -> dict:
    """A call's arguments, as the model wrote them, as the JSON object clients expect (Anthropic's
    `input`, Ollama's `arguments`); {} when the model wrote no object."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        log.warning("a tool call's arguments are not JSON: %.200r", text)
        return {}
    return value if isinstance(value, dict) else {}
