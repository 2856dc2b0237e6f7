"""The Responses API's stored state (previous_response_id, GET, DELETE, restarts) and its 400s."""

import time

import httpx
import openai
import pytest

from tests.scripts import REMEMBER_FIRST, REMEMBER_SECOND
from tests.test_responses import UNSCRIPTED, WEATHER_TOOL, create, post

# ---- stored state ---------------------------------------------------------------------------------

def test_previous_response_id_continues_the_conversation(client):
    first = create(client, "Remember the word pineapple.")
    assert first.output_text == REMEMBER_FIRST
    assert create(client, "Which word?", previous_response_id=first.id).output_text == REMEMBER_SECOND
    assert create(client, "Which word?").output_text == UNSCRIPTED  # without the history


def test_instructions_are_not_carried_over(client):
    first = create(client, "Hello", instructions="Speak like a pirate.")
    assert first.output_text == "Arr, instructions received."
    assert create(client, "Hello again", previous_response_id=first.id).output_text == UNSCRIPTED


def test_get_and_delete(client):
    created = create(client, "What is 2+2?", metadata={"k": "v"})
    fetched = client.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    deleted = httpx.delete(f"{client.base_url}responses/{created.id}", timeout=10)  # the SDK's delete returns None
    assert deleted.status_code == 200
    assert deleted.json() == {"id": created.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_input_items_list_what_a_response_was_generated_from(client):
    first = create(client, "Remember the word pineapple.")
    second = client.responses.create(model="m", previous_response_id=first.id, input=[
        {"role": "user", "content": "Which word?"}, {"role": "user", "content": [{"type": "input_text", "text": "Say it."}]}])
    listed = client.responses.input_items.list(second.id)  # newest first, as OpenAI's
    assert [item.type for item in listed.data] == ["message", "message", "message", "message"]
    assert [item.content[0].text for item in listed.data] == ["Say it.", "Which word?", REMEMBER_FIRST,
                                                              "Remember the word pineapple."]
    assert [item.role for item in listed.data] == ["user", "user", "assistant", "user"]
    assert listed.data[2].id == first.output[0].id  # the stored conversation keeps its ids
    assert listed.data[3].content[0].type == "input_text" and listed.data[3].id.startswith("msg_")
    assert (listed.first_id, listed.last_id, listed.has_more) == (listed.data[0].id, listed.data[3].id, False)
    assert [item.id for item in client.responses.input_items.list(first.id).data] == [listed.data[3].id]


def test_input_items_pages(client, scripted_server):
    items = [{"role": "user", "content": f"line {i}"} for i in range(5)]
    response = client.responses.create(model="m", input=items)
    url = f"{scripted_server.url}/v1/responses/{response.id}/input_items"
    page = httpx.get(url, params={"limit": 2, "order": "asc"}).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [item["content"][0]["text"] for item in page["data"]] == ["line 0", "line 1"]
    rest = httpx.get(url, params={"limit": 10, "order": "asc", "after": page["last_id"]}).json()
    assert [item["content"][0]["text"] for item in rest["data"]] == ["line 2", "line 3", "line 4"]
    assert rest["has_more"] is False and rest["first_id"] == rest["data"][0]["id"]
    newest = httpx.get(url, params={"limit": 1}).json()
    assert newest["data"][0]["content"][0]["text"] == "line 4" and newest["has_more"] is True
    before = httpx.get(url, params={"order": "asc", "before": rest["first_id"]}).json()
    assert [item["content"][0]["text"] for item in before["data"]] == ["line 0", "line 1"]
    every = [item.content[0].text for item in client.responses.input_items.list(response.id, order="asc")]
    assert every == [f"line {i}" for i in range(5)]


@pytest.mark.parametrize("params, param", [({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
                                           ({"order": "sideways"}, "order"), ({"after": "msg_nope"}, "after")])
def test_input_items_bad_parameters_are_400(client, scripted_server, params, param):
    response = create(client, "hello")
    reply = httpx.get(f"{scripted_server.url}/v1/responses/{response.id}/input_items", params=params)
    assert_400(reply, param=param)


def test_input_items_of_an_unknown_response_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_nothing")


def test_delete_body(scripted_server):
    created = post(scripted_server, {"input": "What is 2+2?"}).json()
    response = httpx.delete(f"{scripted_server.url}/v1/responses/{created['id']}")
    assert response.json() == {"id": created["id"], "object": "response.deleted", "deleted": True}


def test_store_false_keeps_nothing(client):
    response = create(client, "What is 2+2?", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, "Which word?", previous_response_id=response.id)
    assert caught.value.body["param"] == "previous_response_id"


def test_previous_response_id_survives_a_restart(start_server, scripted_model, tmp_path):
    args = ["--model", str(scripted_model), "--trust-remote-code", "--served-model-name", "scripted"]
    env = {"SWALLOW_DATA_DIR": str(tmp_path / "data")}
    server = start_server(args, env=env)
    first = create(server.client(), "Remember the word pineapple.")
    server.stop()
    restarted = start_server(args, env=env)
    client = restarted.client()
    assert client.responses.retrieve(first.id).output_text == REMEMBER_FIRST
    assert create(client, "Which word?", previous_response_id=first.id).output_text == REMEMBER_SECOND
    assert (tmp_path / "data" / "responses.sqlite3").is_file()


def test_a_client_that_leaves_stops_the_generation(scripted_server):
    with httpx.stream("POST", f"{scripted_server.url}/v1/responses", timeout=60,
                      json={"input": "Write a long essay", "stream": True, "max_output_tokens": 3000}) as response:
        deltas = 0
        for line in response.iter_lines():
            deltas += line.startswith("data: ") and "output_text.delta" in line
            if deltas >= 5:
                break
    deadline = time.monotonic() + 10
    while scripted_server.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scripted_server.health()["running"] == 0


# ---- errors ---------------------------------------------------------------------------------------

def assert_400(response, mentions: str = "", param: str | None = None):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert mentions in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param
    return error


# (web_search and code_interpreter are the built-in browser and python: tests/test_builtin_tools.py)
@pytest.mark.parametrize("tool", ["file_search", "computer_use_preview", "image_generation", "local_shell", "custom"])
def test_unsupported_tool_types_are_400_naming_them(scripted_server, tool):
    assert_400(post(scripted_server, {"input": "hi", "tools": [WEATHER_TOOL, {"type": tool}]}), f"'{tool}'", "tools[1].type")


@pytest.mark.parametrize("body, mentions, param", [
    ({}, "input", None),
    ({"input": 42}, "", "input"),
    ({"input": [{"role": "user", "content": "hi"}, {"type": "computer_call", "id": "cu_1"}]}, "'computer_call'",
     "input[1].type"),
    ({"input": [{"type": "item_reference", "id": "rs_never_stored"}]}, "'rs_never_stored'", "input[0].id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "'input_image'",
     "input[0].content[0].type"),
    ({"input": [{"role": "wizard", "content": "hi"}]}, "", "input[0].role"),
    ({"input": [{"type": "function_call", "call_id": "c1"}]}, "input[0].name: Field required", "input[0].name"),
    ({"input": "hi", "reasoning": {"summary": "verbose"}}, "", "reasoning.summary"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "'xml'", "text.format.type"),
    ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, "'nope'", "input[0].call_id"),
    ({"input": "hi", "reasoning": {"effort": "extreme"}}, "", "reasoning.effort"),
    ({"input": "hi", "tool_choice": "required"}, "tool_choice", "tool_choice"),
    ({"input": "hi", "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "other"}}, "'other'", None),
    ({"input": "hi", "tools": [WEATHER_TOOL, WEATHER_TOOL]}, "unique", "tools"),
    ({"input": "hi", "tools": [{**WEATHER_TOOL, "parameters": {"type": "array"}}]}, "object", "tools[0].parameters"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "json_schema", None),
    ({"input": "hi", "background": True}, "background", None),
    ({"input": "hi", "temperature": 5}, "", "temperature"),
    ({"input": "hi", "max_output_tokens": 0}, "", "max_output_tokens"),
    ({"input": "hi", "previous_response_id": "resp_missing"}, "resp_missing", "previous_response_id"),
])
def test_invalid_requests_are_400(scripted_server, body, mentions, param):
    assert_400(post(scripted_server, body), mentions, param)


def test_context_overflow_is_400(scripted_server):
    error = assert_400(post(scripted_server, {"input": "word " * 5000}), "4096", "input")
    assert error["code"] == "context_length_exceeded"


def test_unknown_response_is_404(scripted_server):
    response = httpx.get(f"{scripted_server.url}/v1/responses/resp_nothing")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
