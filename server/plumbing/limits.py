"""Request limits the schemas check while they parse, before any work is done on a request.

`max_messages` bounds the messages (chat, Messages API) or input items (Responses) of one
request: a list longer than that is refused by a validator that runs before its elements are
parsed, so 100,000 tiny messages cost a length check, not 100,000 validations and a render.
The value is the server's setting, set by create_app (one server per process). A Responses
request that continues a stored conversation is checked again with the stored items counted
(`check_total`).
"""

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from server.plumbing.errors import invalid_request

MAX_STOP_LENGTH = 256  # characters of one stop string / stop sequence


class Limits:
    max_messages: int = 10000


LIMITS = Limits()


def configure(settings) -> None:
    LIMITS.max_messages = settings.max_messages


def _at_most_max_messages(value):
    if isinstance(value, list) and len(value) > LIMITS.max_messages:
        raise PydanticCustomError(
            "too_many_messages", "{count} items; this server takes at most {limit} per request (max_messages)",
            {"count": len(value), "limit": LIMITS.max_messages})
    return value


# Annotated[list[Message], AT_MOST_MAX_MESSAGES]
AT_MOST_MAX_MESSAGES = BeforeValidator(_at_most_max_messages)


def check_total(count: int, param: str) -> None:
    """400 when a request's items with the stored ones it continues are more than max_messages."""
    if count > LIMITS.max_messages:
        raise invalid_request(f"The conversation has {count} items with the stored ones it continues; this "
                              f"server takes at most {LIMITS.max_messages} per request (max_messages).",
                              param=param, code="too_many_messages")
