"""The Responses store under pressure, against real servers with their own data directories:
kill -9 in the middle of streams, clients that leave before the end, retention.
"""

import json
import sqlite3
import threading
import time

import httpx
import pytest

from server.api.responses.store import ResponseStore
from tests.scripts import LONG_WORDS, REMEMBER_FIRST, REMEMBER_SECOND
from tests.test_responses import create

ESSAY = {"input": "Write a long essay", "stream": True, "max_output_tokens": 3000}


def scripted_args(model) -> list[str]:
    return ["--model", str(model), "--trust-remote-code", "--served-model-name", "scripted"]


def rows(path) -> dict[str, dict]:
    """The stored responses, read straight from the SQLite file: id -> response."""
    with sqlite3.connect(path) as db:
        return {id_: json.loads(response) for id_, response in db.execute("SELECT id, response FROM responses")}


def integrity(path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def stream_until(server, deltas: int, started: threading.Event | None = None, body=ESSAY) -> str | None:
    """Stream a response until `deltas` text deltas came, then hang up; its id."""
    response_id = None
    try:
        with httpx.stream("POST", f"{server.url}/v1/responses", json=body, timeout=60) as response:
            seen = 0
            for line in response.iter_lines():
                if line.startswith("data: ") and response_id is None:
                    response_id = json.loads(line[6:])["response"]["id"]
                seen += "output_text.delta" in line
                if seen == deltas and started is not None:
                    started.set()
                if seen >= deltas and started is None:
                    break
    except httpx.HTTPError:  # the server was killed under it
        pass
    return response_id


def wait_for(condition, seconds: float = 10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


# ---- kill -9 ------------------------------------------------------------------------------------

def test_kill_9_mid_streams_loses_no_completed_response(start_server, scripted_model, tmp_path):
    """Completed responses, a writer storing more while long streams run, SIGKILL; after a
    restart on the same data_dir every response the server had answered is there, intact."""
    env = {"SWALLOW_DATA_DIR": str(tmp_path)}
    server = start_server(scripted_args(scripted_model), env=env)
    client = server.client()
    first = create(client, "Remember the word pineapple.")
    completed = {first.id: first.output_text}
    for _ in range(3):
        answer = create(client, "What is 2+2?")
        completed[answer.id] = answer.output_text

    streaming = [threading.Event() for _ in range(4)]
    streams = [threading.Thread(target=stream_until, args=(server, 3, started)) for started in streaming]
    stop_writing = threading.Event()

    def writer():  # keeps storing responses until the kill: each one answered must survive
        while not stop_writing.is_set():
            try:
                reply = httpx.post(f"{server.url}/v1/responses", json={"input": "hello"}, timeout=30)
            except httpx.HTTPError:
                return
            if reply.status_code == 200:
                completed[reply.json()["id"]] = reply.json()["output_text"]

    writing = threading.Thread(target=writer)
    for thread in [*streams, writing]:
        thread.start()
    assert all(started.wait(60) for started in streaming)
    time.sleep(0.5)  # the writer stores a few more, the streams go on
    server.process.kill()  # SIGKILL: no shutdown, no cleanup
    assert server.process.wait(10) == -9
    stop_writing.set()
    for thread in [*streams, writing]:
        thread.join(30)
    assert len(completed) > 5

    database = tmp_path / "responses.sqlite3"
    assert integrity(database) == "ok"
    restarted = start_server(scripted_args(scripted_model), env=env)
    client = restarted.client()
    for response_id, text in completed.items():
        assert client.responses.retrieve(response_id).output_text == text
    assert completed[first.id] == REMEMBER_FIRST
    assert create(client, "Which word?", previous_response_id=first.id).output_text == REMEMBER_SECOND
    assert integrity(database) == "ok"
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---- a client that leaves ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def stored_server(start_server, scripted_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    server = start_server(scripted_args(scripted_model), env={"SWALLOW_DATA_DIR": str(data)})
    server.database = data / "responses.sqlite3"
    yield server
    server.stop()


def test_a_stream_cut_off_is_stored_incomplete_and_can_be_continued(stored_server):
    response_id = stream_until(stored_server, 5)
    client = stored_server.client()
    stored = wait_for(lambda: httpx.get(f"{stored_server.url}/v1/responses/{response_id}").status_code == 200
                      and client.responses.retrieve(response_id))
    assert stored.status == "incomplete"
    assert stored.incomplete_details.reason == "interrupted"
    assert [item.type for item in stored.output] == ["reasoning", "message"]
    assert stored.output[-1].status == "incomplete"
    assert stored.output_text and LONG_WORDS.startswith(stored.output_text)
    assert stored.output_text != LONG_WORDS
    follow_up = create(client, "Go on", previous_response_id=response_id, max_output_tokens=4)
    items = client.responses.input_items.list(follow_up.id, order="asc").data
    assert [item.type for item in items] == ["message", "reasoning", "message", "message"]
    assert items[2].content[0].text == stored.output_text  # the model saw what it had written
    assert items[3].content[0].text == "Go on"


def test_a_non_stream_request_cut_off_is_stored_incomplete(stored_server):
    before = set(rows(stored_server.database))
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
        httpx.post(f"{stored_server.url}/v1/responses", timeout=1.5,
                   json={"input": "Write a long essay", "max_output_tokens": 3000})
    new = wait_for(lambda: {k: v for k, v in rows(stored_server.database).items() if k not in before})
    (response_id, response), = new.items()
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "interrupted"}
    assert response["output_text"] and LONG_WORDS.startswith(response["output_text"])
    follow_up = create(stored_server.client(), "Go on", previous_response_id=response_id, max_output_tokens=4)
    assert follow_up.status == "incomplete" and follow_up.incomplete_details.reason == "max_output_tokens"
    assert stored_server.health()["running"] == 0


# ---- retention ----------------------------------------------------------------------------------

def test_retention_by_age_and_count(start_server, scripted_model, tmp_path):
    """Five stored responses, two of them 40 days old; a server keeping 30 days and 2 responses
    prunes at start, and with every save after."""
    store = ResponseStore(tmp_path / "responses.sqlite3")
    now = int(time.time())
    for i, age in enumerate([40, 40, 0, 0, 0]):
        store.save({"id": f"resp_{i}", "created_at": now - age * 86400, "output": []}, [])
    store.close()
    env = {"SWALLOW_DATA_DIR": str(tmp_path), "SWALLOW_RESPONSES_MAX_AGE_DAYS": "30",
           "SWALLOW_RESPONSES_MAX_COUNT": "2"}
    server = start_server(scripted_args(scripted_model), env=env)
    assert set(rows(tmp_path / "responses.sqlite3")) == {"resp_3", "resp_4"}
    made = [create(server.client(), "hello").id for _ in range(3)]
    assert set(rows(tmp_path / "responses.sqlite3")) == set(made[1:])
    for response_id, status in [("resp_4", 404), (made[0], 404), (made[2], 200)]:
        assert httpx.get(f"{server.url}/v1/responses/{response_id}").status_code == status
    server.stop()
