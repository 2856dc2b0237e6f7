"""A local stand-in for the Hugging Face Hub's download protocol: point HF_ENDPOINT at `hub.url`
and huggingface_hub downloads from it, offline.

It speaks what huggingface_hub (2.x, read from its source) uses to pull a model:
- GET  /api/models/{repo}[/revision/{rev}]   model info: `sha`, `siblings` with `size`, `blobId` and,
                                             for LFS files, `lfs` {sha256, size, pointerSize}
- HEAD /{repo}/resolve/{rev}/{file}          X-Repo-Commit, ETag (the git blob id), Content-Length; an LFS
                                             file answers 302 to a CDN address on another origin, with
                                             X-Linked-Etag (its sha256) and X-Linked-Size
- GET  /{repo}/resolve/{rev}/{file}          the bytes (small files), or the same 302 (LFS)
- GET  /cdn/{repo}/{sha256}                  an LFS file's bytes; `Range: bytes=N-` gets 206 + Content-Range
Unknown repos, revisions and files are 404s with the X-Error-Code huggingface_hub reads
(RepoNotFound, RevisionNotFound, EntryNotFound).

Faults a test can ask for, per "repo/file": `drop` (close the connection half-way, the next time
only), `stall` (stop half-way until `release()`), `corrupt` (serve its bytes with one
flipped, every time), `slow` (1 MB every 20 ms). Every request is logged in `requests` as (method, path, Range header).
"""

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS = (".safetensors", "tokenizer.json")  # what the Hub's repos keep in LFS (.gitattributes)


@dataclass
class HubFile:
    repo_id: str
    name: str
    data: bytes
    sha256: str = ""
    blob_id: str = ""

    def __post_init__(self):
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.blob_id = hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def lfs(self) -> bool:
        return self.name.endswith(LFS)

    @property
    def key(self) -> str:
        return f"{self.repo_id}/{self.name}"

    @property
    def cdn_path(self) -> str:
        return f"/cdn/{self.repo_id}/{self.sha256}"


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    commit: str = ""

    def __post_init__(self):
        ids = "".join(f"{name}:{f.blob_id}" for name, f in sorted(self.files.items()))
        self.commit = hashlib.sha1(f"{self.repo_id}\n{ids}".encode()).hexdigest()


@dataclass
class Faults:
    drop: set[str] = field(default_factory=set)
    stall: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    slow: set[str] = field(default_factory=set)


class FakeHub:
    def __init__(self):
        self.repos: dict[str, HubRepo] = {}
        self.faults = Faults()
        self.requests: list[tuple[str, str, str | None]] = []
        self.released = threading.Event()
        self.stalled = threading.Event()  # set when a stalled download has sent its first half
        handler = type("Handler", (_Handler,), {"hub": self})
        self._api = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # another origin, as the Hub's CDN is
        self.url = f"http://127.0.0.1:{self._api.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._cdn.server_address[1]}"
        for server in (self._api, self._cdn):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def add_repo(self, repo_id: str, directory: Path) -> HubRepo:
        files = {p.name: HubFile(repo_id, p.name, p.read_bytes())
                 for p in sorted(Path(directory).iterdir()) if p.is_file()}
        repo = self.repos[repo_id] = HubRepo(repo_id, files)
        return repo

    def gets(self, repo_id: str, name: str) -> list[str | None]:
        """The Range headers of the GETs of a file's bytes, in order (None: the whole file)."""
        repo = self.repos[repo_id]
        paths = {repo.files[name].cdn_path, f"/{repo_id}/resolve/{repo.commit}/{name}"}
        return [rng for method, path, rng in self.requests if method == "GET" and path in paths]

    def reset(self) -> None:
        """Forget the requests and faults so far (between tests)."""
        self.requests.clear()
        self.faults = Faults()
        self.stalled.clear()
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def env(self, hf_home: Path) -> dict:
        """The environment that sends huggingface_hub here, with its cache in `hf_home`."""
        return {"HF_ENDPOINT": self.url, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DOWNLOAD_TIMEOUT": "10", "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(Path(hf_home) / "hub")}

    def close(self) -> None:
        self.release()
        for server in (self._api, self._cdn):
            server.shutdown()
            server.server_close()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/api/models/"):
            return self._model_info(path.removeprefix("/api/models/"))
        if path.startswith("/cdn/"):
            found = next((f for r in self.hub.repos.values() for f in r.files.values() if f.cdn_path == path), None)
            return self._bytes(found, body) if found else self._error(404, "EntryNotFound")
        repo_id, sep, rest = path.lstrip("/").partition("/resolve/")
        revision, _, name = rest.partition("/")
        repo = self.hub.repos.get(repo_id)
        if not sep or repo is None:
            return self._error(404, "RepoNotFound")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound")
        found = repo.files.get(name)
        if found is None:
            return self._error(404, "EntryNotFound", commit=repo.commit)
        if found.lfs:
            self.send_response(302)
            self.send_header("Location", f"{self.hub.cdn_url}{found.cdn_path}")
            self.send_header("X-Linked-Etag", f'"{found.sha256}"')
            self.send_header("X-Linked-Size", str(len(found.data)))
            self.send_header("ETag", f'"{found.blob_id}"')
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._bytes(found, body, commit=repo.commit)

    def _model_info(self, rest: str) -> None:
        repo_id, _, revision = rest.partition("/revision/")
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound")
        if revision not in ("", "main", repo.commit):
            return self._error(404, "RevisionNotFound")
        siblings = [{"rfilename": f.name, "size": len(f.data), "blobId": f.blob_id,
                     **({"lfs": {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}} if f.lfs else {})}
                    for f in repo.files.values()]
        payload = json.dumps({"_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit,
                              "private": False, "gated": False, "disabled": False, "siblings": siblings}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        return None

    def _bytes(self, found: HubFile, body: bool, commit: str | None = None) -> None:
        data = found.data
        if found.key in self.hub.faults.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        requested = self.headers.get("Range", "")
        if requested.startswith("bytes=") and requested.endswith("-"):
            start = int(requested.removeprefix("bytes=").removesuffix("-"))
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{found.sha256 if found.lfs else found.blob_id}"')
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if not body:
            return
        rest = data[start:]
        half = len(rest) // 2
        for fault in ("drop", "stall"):
            if found.key in getattr(self.hub.faults, fault):
                getattr(self.hub.faults, fault).discard(found.key)  # the next time it is served whole
                self.wfile.write(rest[:half])
                self.wfile.flush()
                if fault == "stall":
                    self.hub.stalled.set()
                    self.hub.released.wait(60)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body cut short
                except OSError:  # it has gone already (a stalled pull that was interrupted)
                    pass
                return
        if found.key in self.hub.faults.slow:
            for at in range(0, len(rest), 2**20):
                self.wfile.write(rest[at:at + 2**20])
                time.sleep(0.02)
            return
        self.wfile.write(rest)

    def _error(self, status: int, code: str, commit: str | None = None) -> None:
        payload = json.dumps({"error": f"{code} (fake hub)"}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", f"{code} (fake hub)")
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
