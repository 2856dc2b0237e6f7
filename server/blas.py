"""The Linux CPU fast path: Debian's OpenBLAS instead of the reference BLAS the mlx wheel links.

On Linux without Metal or CUDA, MLX's float matmuls go through whatever BLAS the process has;
the wheel's own is a reference implementation, and Debian's `libopenblas0-pthread` made eight
streams ~5x faster here. A library has to be loaded before the program starts to take its
place, so when it is installed and not loaded yet, the server starts itself again with it in
LD_PRELOAD (once: the variable marks the second start). `--no-openblas` (or `openblas = false`)
keeps the reference BLAS.
"""

import glob
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("swallow.blas")

OPENBLAS_GLOB = "/usr/lib/*/openblas-pthread/libblas.so.3"  # Debian's libopenblas0-pthread
MARK = "SWALLOW_OPENBLAS_PRELOADED"


def find_openblas() -> str | None:
    found = sorted(glob.glob(OPENBLAS_GLOB))
    return found[0] if found else None


def _has_accelerator() -> bool:
    import mlx.core as mx

    return mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available())


def preload_openblas(enabled: bool) -> None:
    """Re-executes this process with OpenBLAS preloaded when that helps and hasn't been done."""
    if not enabled or not sys.platform.startswith("linux") or os.environ.get(MARK):
        return
    library = find_openblas()
    if library is None or library in os.environ.get("LD_PRELOAD", "") or _has_accelerator():
        return
    preload = [library, *os.environ.get("LD_PRELOAD", "").split()]
    env = {**os.environ, "LD_PRELOAD": " ".join(preload), MARK: "1"}
    log.info("restarting with Debian's OpenBLAS preloaded (%s); --no-openblas keeps the reference BLAS", library)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def blas_in_use() -> str:
    """Which BLAS this process has mapped, for the startup log."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "the platform's (Accelerate on macOS)" if sys.platform == "darwin" else "unknown"
    if "/openblas-pthread/" in maps:
        return "OpenBLAS (Debian's libopenblas0-pthread)"
    return "the reference BLAS the mlx wheel links (apt install libopenblas0-pthread for ~5x on CPU)"
