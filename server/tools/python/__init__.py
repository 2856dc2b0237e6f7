"""harmony's built-in python tool: one sandboxed, stateful interpreter per conversation.

    python = from_settings(settings)           # None when off or no sandbox (the log says why)
    python.namespace()                         # the ToolNamespaceConfig for the system message
    result = await python.run(conversation_key, code)   # result.output: the tool message
    await python.close()                       # at shutdown: every interpreter and its files
"""

import logging
import sys

from server.config import Settings
from server.tools.python.interpreter import Interpreter, inspect
from server.tools.python.session import (
    PythonLimits,
    PythonResult,
    PythonSession,
    PythonTool,
    namespace,
)
from server.tools.sandbox import Sandbox, Unsandboxed, find_sandbox

log = logging.getLogger("swallow.tools.python")

__all__ = ["Interpreter", "PythonLimits", "PythonResult", "PythonSession", "PythonTool", "from_settings",
           "namespace"]


def limits_from(settings: Settings) -> PythonLimits:
    return PythonLimits(timeout=settings.python_timeout, memory_mb=settings.python_memory_mb,
                        max_processes=settings.python_max_processes, max_output_kb=settings.python_max_output_kb,
                        max_disk_mb=settings.python_max_disk_mb)


def from_settings(settings: Settings) -> PythonTool | None:
    """The python tool the settings describe, or None: off, or no sandbox works here (and running
    without one was not asked for by name)."""
    if not settings.python_tool:
        return None
    path = settings.python_executable or sys.executable
    try:
        interpreter = inspect(path)
    except OSError as e:
        log.warning("python: not offered: %s", e)
        return None
    sandbox: Sandbox | None
    sandbox, why = find_sandbox(path, interpreter.dirs)
    if sandbox is None:
        if not settings.python_unsandboxed_i_understand_the_risk:
            log.warning("python: not offered: no sandbox: %s. (python_unsandboxed_i_understand_the_risk = true "
                        "runs the model's code with your user's rights, network and files.)", why)
            return None
        log.warning("python: RUNNING WITHOUT A SANDBOX (%s): the model's code runs with this user's rights, "
                    "files and network", why)
        sandbox = Unsandboxed()
    else:
        log.info("python: on, sandboxed by %s, Python %s at %s", why, interpreter.version, path)
    return PythonTool(sandbox, interpreter, limits_from(settings), work_dir=settings.python_work_dir,
                      idle_timeout=settings.python_idle_timeout, max_interpreters=settings.python_max_interpreters)
