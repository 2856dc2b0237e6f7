"""Keep-alive durations, as Ollama takes them: seconds (300), a duration ("5m", "1h30m", "90s"),
0 (unload as soon as the model is idle) or a negative value (never unload it for idleness)."""

import re

DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def seconds(value: str | float | int | None) -> float | None:
    """The idle time in seconds; None: forever. ValueError for what is neither."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"keep_alive {value!r} is not a duration")
    if isinstance(value, int | float):
        return None if value < 0 else float(value)
    text = value.strip().lower()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return None if number < 0 else number
    if text.startswith("-"):
        return None
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"keep_alive {value!r} is not a duration like 300, \"5m\", \"1h30m\", 0 or -1")
    return sum(float(n) * UNITS[u] for n, u in parts)


def describe(value: float | None) -> str:
    return "forever" if value is None else f"{value:g} s"
