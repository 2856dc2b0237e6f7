"""Where swallow-server keeps files it builds or downloads itself."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache directory: $SWALLOW_CACHE_DIR, else ~/.cache/swallow-server.

    Read on every call (not at import) so tests and the CLI can point it elsewhere
    after the package was imported. Not created here: writers create what they need.
    """
    env = os.environ.get("SWALLOW_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "swallow-server"
