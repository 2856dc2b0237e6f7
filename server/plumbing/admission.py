"""Admission: how many requests generate at once, how many wait, and who gets turned away.

A generating request (chat completions, responses) holds a slot from admission until its
response has been sent or its client has left. Past `max_concurrency` slots, requests wait in a
first-come queue of `max_queue` places; past both, the answer is an immediate 429. This sits at
the HTTP layer (server/plumbing/middleware.py), before the endpoint runs and so before engine.submit: the
engine's batch size is a separate matter. The slot is given back in a `finally` around the whole
ASGI call, so it comes back however the request ends: finished, failed, client gone before the
first byte, or cancelled at shutdown.
"""

import asyncio
from collections import deque


class Full(Exception):
    """Every slot is taken and the queue is full."""


class Admission:
    def __init__(self, max_concurrency: int, max_queue: int):
        self.max_concurrency = max(1, max_concurrency)
        self.max_queue = max(0, max_queue)
        self.running = 0  # slots held
        self._waiting: deque[asyncio.Future] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for f in self._waiting if not f.done())

    def enter(self) -> asyncio.Future:
        """A ticket: done when it holds a slot, pending while it waits in the queue.
        Raises Full when there is neither a slot nor a place in the queue."""
        ticket = asyncio.get_running_loop().create_future()
        if self.running < self.max_concurrency and not self.queued:
            self.running += 1
            ticket.set_result(None)
        elif self.queued < self.max_queue:
            self._waiting.append(ticket)
        else:
            raise Full()
        return ticket

    def leave(self, ticket: asyncio.Future) -> None:
        """Gives back what the ticket holds: its slot (to the next in line), or its place."""
        if ticket.done() and not ticket.cancelled():
            self._pass_slot_on()
            return
        ticket.cancel()
        try:
            self._waiting.remove(ticket)
        except ValueError:
            pass

    def _pass_slot_on(self) -> None:
        while self._waiting:
            ticket = self._waiting.popleft()
            if not ticket.done():
                ticket.set_result(None)  # the slot changes hands; `running` stays
                return
        self.running -= 1

    def retry_after(self) -> int:
        """Seconds a turned-away client should wait before trying again (a hint)."""
        return 1
