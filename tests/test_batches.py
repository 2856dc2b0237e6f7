"""The Batch API against the scripted model: OpenAI's Files and Batches with the `openai` SDK,
Anthropic's Message Batches with the `anthropic` SDK, a live request beside a running batch,
cancel, kill -9 and restart, and `swallow-server batch` with its progress and resume.

Every batch a test starts on the session's shared server has ended when the test returns."""

import json
import os
import signal
import subprocess
import sys
import time

import anthropic
import httpx
import openai
import pytest

from tests.conftest import ROOT
from tests.scripts import BATCH_BLUE, BATCH_RED

ENDED = ("completed", "failed", "cancelled", "expired")
ENGLISH = {"LC_ALL": "C.UTF-8"}


def colour_line(i: int, url: str = "/v1/chat/completions", **body) -> dict:
    """Request i: even ones ask for red, odd ones for blue."""
    colour = "red" if i % 2 == 0 else "blue"
    return {"custom_id": f"line-{i}", "method": "POST", "url": url,
            "body": {"model": "scripted", "messages": [{"role": "user", "content": f"Batch line: say {colour}"}],
                     **body}}


def jsonl(lines: list) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def answer_of(custom_id: str) -> str:
    return BATCH_RED if int(custom_id.split("-")[1]) % 2 == 0 else BATCH_BLUE


def wait_until(client: openai.OpenAI, batch_id: str, done, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} is still {batch.status}: {batch.request_counts}"
        time.sleep(0.2)


def ended(batch) -> bool:
    return batch.status in ENDED


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_a_batch_of_hundreds_of_lines_answers_each_custom_id_once(scripted_server):
    client = scripted_server.client()
    good = [colour_line(i) for i in range(200)]
    bad = [  # requests that fail alone, as the live endpoint would refuse them
        {"custom_id": "not-a-list", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "scripted", "messages": "say red"}},
        {"custom_id": "too-many-choices", **{k: v for k, v in colour_line(0, n=100).items() if k != "custom_id"}},
    ]
    uploaded = client.files.create(file=("colours.jsonl", jsonl(good[:100] + bad + good[100:])), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0 and uploaded.filename == "colours.jsonl"
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"job": "colours"})
    assert batch.status in ("validating", "in_progress") and batch.request_counts.total == 202
    assert batch.metadata == {"job": "colours"} and batch.output_file_id is None
    health = scripted_server.health()["batches"]
    assert health["running"] >= 1 and health["lines_total"] >= 202
    batch = wait_until(client, batch.id, ended)

    assert batch.status == "completed" and batch.completed_at and batch.in_progress_at
    assert (batch.request_counts.completed, batch.request_counts.failed) == (200, 2)
    assert batch.usage.output_tokens > 0 and batch.usage.input_tokens > batch.usage.output_tokens
    output = lines_of(client, batch.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in good)
    for line in output:  # each answer is its own request's, in the live endpoint's shape
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"]
        assert response["body"]["object"] == "chat.completion"
        assert response["body"]["choices"][0]["message"]["content"] == answer_of(line["custom_id"])
    live = httpx.post(f"{scripted_server.url}/v1/chat/completions", json=good[0]["body"], timeout=60).json()
    batched = next(line["response"]["body"] for line in output if line["custom_id"] == "line-0")
    assert set(batched) == set(live) and batched["choices"][0]["message"] == live["choices"][0]["message"]

    errors = {line["custom_id"]: line for line in lines_of(client, batch.error_file_id)}
    assert set(errors) == {"not-a-list", "too-many-choices"}
    refused = errors["not-a-list"]["response"]
    assert refused["status_code"] == 400 and refused["body"]["error"]["param"] == "messages"
    assert errors["too-many-choices"]["response"]["body"]["error"]["param"] == "n"
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"

    listed = client.batches.list(limit=1)
    assert listed.data[0].id == batch.id
    assert metric(scripted_server, 'swallow_batch_lines_total{result="succeeded"}') >= 200
    status = httpx.get(f"{scripted_server.url}/status.json", timeout=10).json()["batches"]
    assert status["by_status"]["completed"] >= 1 and status["in_progress"] == []

    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    assert client.batches.retrieve(batch.id).status == "completed"  # its lines were kept
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_a_file_that_is_not_a_batch_is_refused_at_creation(scripted_server):
    client = scripted_server.client()

    def create(data: bytes, endpoint="/v1/chat/completions", completion_window="24h"):
        uploaded = client.files.create(file=("input.jsonl", data), purpose="batch")
        return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint,
                                     completion_window=completion_window)

    cases = {
        b"this is not JSON\n": "Line 1 of the input file is not JSON",
        jsonl([colour_line(0), colour_line(0)]): "also line 1's",  # a custom_id twice
        jsonl([colour_line(0), colour_line(1, url="/v1/completions")]): "Line 2 is a request for '/v1/completions'",
        b"\n\n": "no requests",
    }
    for data, words in cases.items():
        with pytest.raises(openai.BadRequestError) as refused:
            create(data)
        assert words in refused.value.message and refused.value.body["param"] == "input_file_id"
    with pytest.raises(openai.BadRequestError, match="/v1/embeddings"):
        create(jsonl([colour_line(0, url="/v1/embeddings")]), endpoint="/v1/embeddings")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        create(jsonl([colour_line(0)]), completion_window="tomorrow")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("input.jsonl", jsonl([colour_line(0)])), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="No input file"):
        client.batches.create(input_file_id="file-nothing", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nothing")


def test_a_live_request_goes_first_and_cancel_keeps_the_answers(scripted_server):
    """A batch that fills the engine's batch; a live request beside it is answered while the batch
    runs (a batch row gives way to it); then cancel: the answers so far, and the lines never run
    in the error file, each custom_id once."""
    client = scripted_server.client()
    lines = [{"custom_id": f"essay-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "scripted", "max_tokens": 12,
                       "messages": [{"role": "user", "content": "Write a long essay"}]}} for i in range(200)]
    uploaded = client.files.create(file=("essays.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    try:
        wait_until(client, batch.id, lambda b: b.request_counts.completed >= 16)
        gave_way = metric(scripted_server, "swallow_batch_rows_gave_way_total")
        live = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "What is 2+2?"}])
        assert live.choices[0].message.content.startswith("答えは")
        during = client.batches.retrieve(batch.id)
        assert during.status == "in_progress" and during.request_counts.completed < 200
        assert metric(scripted_server, "swallow_batch_rows_gave_way_total") > gave_way
    finally:
        cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait_until(client, batch.id, ended)
    assert batch.status == "cancelled" and batch.cancelled_at
    answered = lines_of(client, batch.output_file_id)
    assert len(answered) == batch.request_counts.completed and 16 <= len(answered) < 200
    assert all(line["response"]["body"]["choices"][0]["finish_reason"] == "length" for line in answered)
    never_run = lines_of(client, batch.error_file_id)
    assert {line["error"]["code"] for line in never_run} == {"batch_cancelled"}
    assert sorted(line["custom_id"] for line in answered + never_run) == sorted(line["custom_id"] for line in lines)
    assert client.batches.cancel(batch.id).status == "cancelled"  # cancelled already: as it is


def test_kill_9_mid_batch_then_restart_resumes_without_duplicates(start_server, scripted_model, tmp_path):
    args = ["--model", str(scripted_model), "--trust-remote-code", "--served-model-name", "scripted"]
    env = {"SWALLOW_DATA_DIR": str(tmp_path / "data"), "SWALLOW_BATCH_DISK_MB": "2"}
    server = start_server(args, env=env)
    client = server.client()
    lines = [colour_line(i) for i in range(120)]
    uploaded = client.files.create(file=("colours.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    seen = wait_until(client, batch.id, lambda b: b.request_counts.completed >= 20).request_counts.completed
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=20)

    again = start_server(args, env=env)
    client = again.client()
    assert client.batches.retrieve(batch.id).request_counts.completed >= seen  # kept across the kill
    batch = wait_until(client, batch.id, ended)
    assert batch.status == "completed" and batch.request_counts.completed == 120
    output = lines_of(client, batch.output_file_id)
    custom_ids = [line["custom_id"] for line in output]
    assert sorted(custom_ids) == sorted(line["custom_id"] for line in lines)  # each once
    assert all(line["response"]["body"]["choices"][0]["message"]["content"] == answer_of(line["custom_id"])
               for line in output)
    # the lines answered before the kill were not run again
    run_after_restart = metric(again, 'swallow_batch_lines_total{result="succeeded"}')
    assert 0 < run_after_restart <= 120 - seen
    assert client.files.content(uploaded.id).content == jsonl(lines)
    with pytest.raises(openai.APIStatusError) as full:  # past batch_disk_mb
        client.files.create(file=("big.jsonl", b"x" * 3 * 2**20), purpose="batch")
    assert full.value.status_code == 507 and full.value.body["code"] == "insufficient_storage"
    assert [f.id for f in client.files.list()].count(uploaded.id) == 1  # nothing of it was kept


def test_retention_deletes_old_files_and_ended_batches(tmp_path):
    """The store alone (no server): what batch_retention_days removes when the store opens."""
    import sqlite3

    from server.batches.intake import openai_lines
    from server.batches.store import BatchStore

    store = BatchStore(tmp_path, retention_days=30)
    source = tmp_path / "upload"
    source.write_bytes(jsonl([colour_line(0)]))
    upload = store.add_file(source, "in.jsonl", "batch")
    lines = openai_lines(store.file_path(upload.id).read_bytes(), "/v1/chat/completions")
    ended = store.create_batch("openai", "/v1/chat/completions", lines, window="24h", window_seconds=86400,
                               input_file_id=upload.id)
    store.finalize(ended.id, "cancelled")
    running = store.create_batch("openai", "/v1/chat/completions", lines, window="24h", window_seconds=86400,
                                 input_file_id=upload.id)
    error_file = store.batch(ended.id).error_file_id
    store.close()
    with sqlite3.connect(tmp_path / "batches.sqlite3") as db:  # 31 days pass
        for table in ("files", "batches"):
            db.execute(f"UPDATE {table} SET created_at = created_at - 31 * 86400")
    store = BatchStore(tmp_path, retention_days=30)
    assert store.batch(ended.id) is None and store.file(error_file) is None
    assert store.batch(running.id) is not None and store.file(upload.id) is not None  # its input stays
    assert not store.file_path(error_file).exists()


def test_the_command_line_shows_progress_and_resumes(scripted_server, tmp_path):
    source = tmp_path / "colours.jsonl"
    source.write_bytes(jsonl([colour_line(i) for i in range(300, 360)]))
    output = tmp_path / "answers.jsonl"
    command = [sys.executable, "-m", "server", "batch", str(source), "-o", str(output), "--url", scripted_server.url]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **ENGLISH},
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        created = first.stderr.readline()
        assert created.startswith("batch batch_") and "60 requests to /v1/chat/completions" in created
        batch_id = created.split()[1].rstrip(":")
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=30)
    finally:
        first.kill()
    assert first.returncode == 130 and "run the same command again" in stderr and "Traceback" not in stderr, stderr

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, **ENGLISH}, check=False)
    assert second.returncode == 0, second.stderr
    assert f"resuming batch {batch_id}" in second.stderr
    assert "/60 lines" in second.stderr and "tokens/s" in second.stderr
    assert f"batch {batch_id} completed: 60 answered, 0 failed" in second.stderr
    answers = [json.loads(line) for line in output.read_text().splitlines()]
    assert [a["custom_id"] for a in answers] == [f"line-{i}" for i in range(300, 360)]  # input order
    assert all(a["response"]["body"]["choices"][0]["message"]["content"] == answer_of(a["custom_id"])
               for a in answers)
    assert not (tmp_path / "answers.errors.jsonl").exists()


def test_anthropic_message_batches(scripted_server):
    client = anthropic.Anthropic(base_url=scripted_server.url, api_key="not-needed", max_retries=0)
    requests = [{"custom_id": f"line-{i}", "params": {"model": "scripted", "max_tokens": 100, "messages": [
        {"role": "user", "content": f"Batch line: say {'red' if i % 2 == 0 else 'blue'}"}]}} for i in range(20)]
    requests.append({"custom_id": "not-a-list", "params": {"model": "scripted", "max_tokens": 100,
                                                           "messages": "say red"}})
    batch = client.messages.batches.create(requests=requests)
    assert batch.id.startswith("msgbatch_") and batch.processing_status == "in_progress"
    deadline = time.monotonic() + 120
    while batch.processing_status != "ended":
        assert time.monotonic() < deadline
        time.sleep(0.2)
        batch = client.messages.batches.retrieve(batch.id)
    assert (batch.request_counts.succeeded, batch.request_counts.errored) == (20, 1) and batch.ended_at
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert len(results) == 21
    for custom_id, result in results.items():
        if custom_id == "not-a-list":
            assert result.type == "errored" and result.error.error.type == "invalid_request_error"
        else:
            assert result.type == "succeeded" and result.message.content[-1].text == answer_of(custom_id)
    assert batch.id in [b.id for b in client.messages.batches.list(limit=5)]
    assert client.messages.batches.cancel(batch.id).processing_status == "ended"  # nothing left to cancel
    assert client.messages.batches.delete(batch.id).id == batch.id
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        client.messages.batches.create(requests=[requests[0], requests[0]])
