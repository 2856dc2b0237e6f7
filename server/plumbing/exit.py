"""Ending the server process with its own exit status.

A normal interpreter exit runs the native libraries' static destructors after their threads
are gone, and some abort there ("terminate called without an active exception", status 134):
torch's thread pools (before server/cli.py kept torch out of the server, transformers imported
it whenever installed) about half the time after a request, and the ring group of mx.distributed
every time.
A supervisor would read that as a crash. Once the server has shut down cleanly (requests
finished, engines stopped, stores closed), nothing is left for those destructors to do, so
the process flushes its logs and ends at once.
"""

import logging
import os
import sys
from typing import NoReturn


def exit_now(status: int) -> NoReturn:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
