"""What a batch line runs, for each endpoint a batch may use: the endpoint's request schema and
its own non-stream answer (the function its route calls), with the engine's errors as that
endpoint's HTTP errors. The batch runner (server/batches/runner.py) gets this table from the app,
so that a line's answer is exactly the body the live endpoint returns."""

from server.api.chat.routes import chat_completion
from server.api.chat.schema import ChatCompletionRequest
from server.api.completions.routes import text_completion
from server.api.completions.schema import CompletionRequest
from server.api.engine_errors import as_api_error
from server.api.messages.routes import reply as message_reply
from server.api.messages.schema import MessagesRequest
from server.api.responses.routes import respond
from server.api.responses.schema import ResponsesRequest
from server.batches.runner import Endpoint
from server.engine.errors import EngineError, GaveWay
from server.registry.lease import RELEASES


class Detached:
    """What the endpoints' code reads of its HTTP request, for a batch line, which has none: the
    app (its MCP servers, its stores), the scope where what must be let go once the answer is done
    is registered (the MCP servers a line named), and a client that never hangs up."""

    def __init__(self, app):
        self.app = app
        self.scope = {"state": {RELEASES: []}}

    async def is_disconnected(self) -> bool:
        return False

    def release(self) -> None:
        for release in self.scope["state"][RELEASES]:
            release()


def batch_endpoints(app) -> dict[str, Endpoint]:
    def answer(reply):
        async def run(state, body) -> dict:
            request = Detached(app)
            try:
                return await reply(state, body, request)
            except GaveWay:  # not an answer: the runner runs the line again
                raise
            except EngineError as e:
                raise as_api_error(e) from e
            finally:
                request.release()

        return run

    def response(state, body, request):
        return respond(state, body, app.state.responses_store, request)

    return {
        "/v1/chat/completions": Endpoint(ChatCompletionRequest, answer(chat_completion)),
        "/v1/responses": Endpoint(ResponsesRequest, answer(response)),
        "/v1/completions": Endpoint(CompletionRequest, answer(text_completion)),
        "/v1/messages": Endpoint(MessagesRequest, answer(message_reply)),  # Anthropic's Message Batches
    }
