"""The request contract of POST /v1/completions (OpenAI's legacy completions).

The prompt is text (or token ids) used as it is: no chat template, no harmony rendering; the
client owns the format (as in mlx_lm.server and vLLM). Harmony's special tokens written in the
text (`<|start|>`, `<|channel|>`, ...) are encoded as special tokens.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.vocab import VOCAB_SIZE
from server.plumbing.errors import invalid_request

DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for this endpoint


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    # Ollama's: how long the model stays loaded once idle ("5m", 300, 0, -1: forever)
    keep_alive: str | float | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    stop: str | list[str] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None

    @model_validator(mode="after")
    def _check(self):
        stops = self.stop_strings()
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: up to 4 non-empty strings")
        return self

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def check(self) -> None:
        """400s for what the server doesn't do."""
        if self.suffix:
            raise invalid_request("suffix is not supported (no fill-in-the-middle for this model)", param="suffix")
        if self.best_of is not None and self.best_of > 1:
            raise invalid_request("best_of > 1 is not supported; use n for several completions", param="best_of")
        if self.max_tokens == 0 and not self.echo:
            raise invalid_request("max_tokens: 0 is only allowed with echo (to score the prompt)", param="max_tokens")

    def prompts(self, encoding) -> list[list[int]]:
        """The prompt(s) as token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            prompts = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [prompt]
        else:
            prompts = list(prompt)
        if not prompts:
            raise invalid_request("prompt: an empty list", param="prompt")
        out = []
        for i, p in enumerate(prompts):
            tokens = encoding.encode(p, allowed_special="all") if isinstance(p, str) else list(p)
            if not tokens:
                raise invalid_request("prompt: empty; give at least one token of text", param="prompt")
            bad = next((t for t in tokens if not 0 <= t < VOCAB_SIZE), None)
            if bad is not None:
                raise invalid_request(f"prompt[{i}]: token id {bad} is outside the vocabulary (0..{VOCAB_SIZE - 1})",
                                      param="prompt")
            out.append(tokens)
        return out
