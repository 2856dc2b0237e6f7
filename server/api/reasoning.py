"""The `reasoning` object chat completions and the Responses API share (OpenRouter's form: a
budget, exclude, enabled; plus this server's loop-guard switch), read once for both.

Each API's ReasoningOptions subclasses ReasoningControls with the efforts it accepts."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from server.turn.request import ReasoningAsk


class ReasoningControls(BaseModel):
    model_config = ConfigDict(extra="ignore")
    max_tokens: Annotated[int, Field(ge=0)] | None = None  # the reasoning budget
    exclude: bool | None = None
    enabled: bool | None = None
    loop_guard: bool | None = None  # see server/engine/reasoning_control.py


def reasoning_ask(options: ReasoningControls | None) -> ReasoningAsk:
    if options is None:
        return ReasoningAsk()
    return ReasoningAsk(options.max_tokens, options.enabled, bool(options.exclude), options.loop_guard)


def asked_effort(body) -> str | None:
    """The effort a request gave: `reasoning_effort` at the top, or `reasoning.effort`."""
    return body.reasoning_effort or (body.reasoning.effort if body.reasoning else None)
