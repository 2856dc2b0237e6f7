"""What the engine can't do for a request, in the engine's own words.

The engine knows nothing of HTTP: the API layer (server/api/engine_errors.py) gives each of
these a status and the error shape of the API the request came to. `param` names the request
field at fault where there is one, `code` is a stable machine-readable reason.
"""


class EngineError(Exception):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class EngineStopped(EngineError):
    """The engine thread died; the server is on its way out to be restarted."""


class ModelNotLoaded(EngineError):
    """The request needs the loaded model (its tokenizer, its weights) and there is none."""


class CacheWontFit(EngineError):
    """The request's worst-case KV cache is larger than the whole cache budget: it could never run."""


class SchemaUnusable(EngineError):
    """A JSON schema (a response format, a strict tool's parameters) that can't become a grammar."""


class StructuredOutputUnavailable(EngineError):
    """This model can't do structured output at all (no usable tokenizer.json)."""


class GaveWay(EngineError):
    """A batch row was taken out of the batch to make room for a live request (engine.py's
    admission); the batch runner runs that line again later, from the prompt cache."""
