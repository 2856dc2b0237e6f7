"""`swallow-server batch INPUT.jsonl -o OUTPUT.jsonl`: a batch input file through the Batch API.

The input is OpenAI's batch input: one request a line, {"custom_id", "method": "POST", "url",
"body"}, every line for the same endpoint. The command uploads it (POST /v1/files), creates a
batch (POST /v1/batches) whose metadata holds the input's SHA-256, and shows the progress (lines
done, tokens per second, time left) until the batch ends. Then OUTPUT gets the answers (OpenAI's
output lines, one per custom_id answered, in input order) and the error file (--errors, by
default OUTPUT with .errors before its suffix) the lines that failed, when some did.

The batch runs in the server: Ctrl-C only stops watching it. Against a running server it goes on
meanwhile; with a server started in this process (nothing at --url) it stops, its lines kept in
data_dir. The same command again finds the batch by the input's hash and goes on from where it is.

Exit status: 0 every line answered, 3 some lines failed (see the error file), 1 an error (or the
batch was cancelled or expired), 2 a bad command line, 130 interrupted.
"""

import argparse
import hashlib
import json
import sys
import time
from collections import deque
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from server.console.client import Client, ClientError, Connection, _error_message, add_connection_arguments
from server.console.messages import say

HASH_KEY = "swallow_input_sha256"  # the batch's metadata: which input file it was made from
ENDED = ("completed", "failed", "cancelled", "expired")
POLL_SECONDS = 0.5
RATE_WINDOW = 20.0  # seconds of history behind tokens/s and the time left


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="swallow-server batch",
        description="Run a batch input file (OpenAI's JSONL: custom_id, method, url, body a line) through the "
        "server's Batch API, with progress; Ctrl-C stops watching, the same command again resumes.")
    p.add_argument("input", help="the batch input file (JSONL)")
    p.add_argument("-o", "--output", required=True, help="where the answers go (OpenAI's batch output JSONL)")
    p.add_argument("--errors", help="where the failed lines go (default: OUTPUT with .errors before its suffix)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress, only the last line")
    add_connection_arguments(p)
    return p


def errors_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.errors{output.suffix or '.jsonl'}")


def read_input(path: Path) -> tuple[bytes, str]:
    """(the file's bytes, the endpoint of its first request)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ClientError(say("cannot_read_input", path=path, error=e)) from e
    for line in data.splitlines():
        if line.strip():
            try:
                url = json.loads(line).get("url")
            except (ValueError, AttributeError):
                url = None
            if isinstance(url, str):
                return data, url
            break
    raise ClientError(say("no_url", path=path))


class BatchClient:
    """The Files and Batch API calls this command makes."""

    def __init__(self, client: Client):
        self.http, self.url = client.http, client.url

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ClientError(say("lost_server", url=self.url, error=e)) from e
        if response.status_code >= 400:
            raise ClientError(_error_message(response))
        return response

    def find(self, digest: str, endpoint: str) -> dict | None:
        """The newest batch made from this input that is running or completed."""
        after = None
        while True:
            page = self._call("GET", "/v1/batches", params={"limit": 100, **({"after": after} if after else {})}).json()
            for batch in page["data"]:
                if (batch.get("metadata") or {}).get(HASH_KEY) == digest and batch["endpoint"] == endpoint \
                        and batch["status"] not in ("failed", "cancelled", "expired"):
                    return batch
            if not page.get("has_more") or not page["data"]:
                return None
            after = page["data"][-1]["id"]

    def create(self, data: bytes, name: str, endpoint: str, digest: str) -> dict:
        uploaded = self._call("POST", "/v1/files", files={"file": (name, data, "application/jsonl")},
                              data={"purpose": "batch"}).json()
        return self._call("POST", "/v1/batches", json={
            "input_file_id": uploaded["id"], "endpoint": endpoint, "completion_window": "24h",
            "metadata": {HASH_KEY: digest, "swallow_input_name": name[:512]}}).json()

    def batch(self, batch_id: str) -> dict:
        return self._call("GET", f"/v1/batches/{batch_id}").json()

    def download(self, file_id: str, path: Path) -> None:
        content = self._call("GET", f"/v1/files/{file_id}/content").content
        path.write_bytes(content)


class Watch:
    """The progress: a rich bar on a terminal, else a line now and then."""

    def __init__(self, batch: dict, quiet: bool):
        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.id = batch["id"]
        self.samples: deque = deque()  # (time, lines done, output tokens)
        self.progress = None
        self.printed = 0.0
        if not quiet and self.console.is_terminal:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn(say("batch_lines") + " · {task.fields[rate]} tok/s"),
                                     TimeRemainingColumn(), console=self.console, transient=False)
            self.task = self.progress.add_task(self.id, total=batch["request_counts"]["total"], rate="–")
            self.progress.start()

    def update(self, batch: dict) -> None:
        counts = batch["request_counts"]
        done, total = counts["completed"] + counts["failed"], counts["total"]
        now = time.monotonic()
        self.samples.append((now, done, (batch.get("usage") or {}).get("output_tokens") or 0))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()
        (t0, done0, tokens0), (t1, done1, tokens1) = self.samples[0], self.samples[-1]
        elapsed = t1 - t0
        rate = (tokens1 - tokens0) / elapsed if elapsed > 0 else 0.0
        lines_per_second = (done1 - done0) / elapsed if elapsed > 0 else 0.0
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total, rate=f"{rate:.1f}")
        elif not self.quiet and (now - self.printed >= 2.0 or done == total):
            self.printed = now
            eta = f"{(total - done) / lines_per_second:.0f} s" if lines_per_second > 0 else "–"
            self.console.print(say("batch_progress", id=self.id, done=done, total=total, rate=rate, eta=eta),
                               markup=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def run(args, client: Client) -> int:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    input_path, output = Path(args.input), Path(args.output)
    data, endpoint = read_input(input_path)
    digest = hashlib.sha256(data).hexdigest()
    api = BatchClient(client)
    batch, created = api.find(digest, endpoint), False
    if batch is None:
        batch, created = api.create(data, input_path.name, endpoint, digest), True
    watch = None
    try:  # from here on the batch exists: Ctrl-C leaves it to a later run of the same command
        counts = batch["request_counts"]
        if created:
            err.print(say("batch_created", id=batch["id"], total=counts["total"], endpoint=endpoint), markup=False)
        else:
            err.print(say("batch_resumed", id=batch["id"], status=batch["status"], total=counts["total"],
                          done=counts["completed"] + counts["failed"]), markup=False)
        watch = Watch(batch, args.quiet)
        while True:
            watch.update(batch)
            if batch["status"] in ENDED:
                break
            time.sleep(POLL_SECONDS)
            batch = api.batch(batch["id"])
        watch.close()
        return finish(api, batch, output, Path(args.errors) if args.errors else errors_path(output), err)
    except KeyboardInterrupt:
        if watch is not None:
            watch.close()
        err.print(say("batch_interrupted", id=batch["id"]), markup=False)
        return 130


def finish(api: BatchClient, batch: dict, output: Path, errors: Path, err: Console) -> int:
    """Writes the output and error files; the exit status."""
    if batch["output_file_id"]:
        api.download(batch["output_file_id"], output)
    else:
        output.write_bytes(b"")
    line = say("batch_ended", id=batch["id"], status=batch["status"], completed=batch["request_counts"]["completed"],
               failed=batch["request_counts"]["failed"], output=output)
    if batch["error_file_id"]:
        api.download(batch["error_file_id"], errors)
        line += say("batch_errors_in", path=errors)
    err.print(line, markup=False)
    if batch["status"] != "completed":
        err.print(say("batch_unfinished", id=batch["id"], status=batch["status"]), markup=False)
        return 1
    return 3 if batch["request_counts"]["failed"] else 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        with Connection(args) as client:
            return run(args, client)
    except ClientError as e:
        print(f"swallow-server batch: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # while the in-process server was starting or stopping
        print(f"\nswallow-server batch: {say('interrupted')}", file=sys.stderr)
        return 130
