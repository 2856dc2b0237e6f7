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


def _answer(reply):
    async def answer(state, body) -> dict:
        try:
            return await reply(state, body)
        except GaveWay:  # not an answer: the runner runs the line again
            raise
        except EngineError as e:
            raise as_api_error(e) from e

    return answer


def batch_endpoints(responses_store) -> dict[str, Endpoint]:
    return {
        "/v1/chat/completions": Endpoint(ChatCompletionRequest, _answer(chat_completion)),
        "/v1/responses": Endpoint(ResponsesRequest, _answer(lambda state, body: respond(state, body, responses_store))),
        "/v1/completions": Endpoint(CompletionRequest, _answer(text_completion)),
        "/v1/messages": Endpoint(MessagesRequest, _answer(message_reply)),  # Anthropic's Message Batches
    }
