"""A request's model: picked by the `model` it names, held until its answer has been sent.

Routes call `serving(request, body.model, body.keep_alive)`; the model stays busy (never
unloaded) until the whole response, stream included, is out: HoldModels, the innermost
middleware, gives it back when the app has finished with the request.
"""

from fastapi import Request

from server.config import keep_alive_seconds
from server.plumbing.errors import invalid_request
from server.registry.registry import UNCHANGED
from server.state import ServerState

RELEASES = "swallow_model_releases"


async def serving(request: Request, name: str | None, keep_alive=None) -> ServerState:
    """The loaded model this request names (loading it if it must), held for the request."""
    registry = request.app.state.registry
    slot = registry.find(name)
    state = await registry.acquire(slot, idle_time(keep_alive))
    request.scope.setdefault("state", {}).setdefault(RELEASES, []).append(lambda: registry.release(slot))
    return state


def idle_time(keep_alive):
    """A request's `keep_alive` as `Registry.acquire` takes it; 400 for one that isn't a duration."""
    if keep_alive is None:
        return UNCHANGED
    try:
        return keep_alive_seconds(keep_alive)
    except ValueError as e:
        raise invalid_request(str(e), param="keep_alive") from None


def facts(request: Request, name: str | None) -> ServerState:
    """The named model's settings and tokenizer, without loading it (tokenizing needs no engine)."""
    registry = request.app.state.registry
    return registry.facts(registry.find(name))


class HoldModels:
    """Gives back the models a request took once the app is done with it (its last byte sent)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        releases = scope.setdefault("state", {}).setdefault(RELEASES, [])
        try:
            await self.app(scope, receive, send)
        finally:
            for release in releases:
                release()
            releases.clear()
