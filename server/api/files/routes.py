"""OpenAI's Files API, for the Batch API: POST /v1/files (multipart, purpose "batch"), GET
/v1/files (paginated), GET /v1/files/{id}, GET /v1/files/{id}/content, DELETE /v1/files/{id}.

Uploads are a batch's input (JSONL, checked when a batch is created from it); the server adds
each batch's output and error files (purpose "batch_output"). The bytes live under
data_dir/batches/files (server/batches/store.py), within the batch_disk_mb cap, and go after
batch_retention_days.
"""

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse

from server.batches.store import BatchStore, FileRecord
from server.plumbing.errors import APIError, invalid_request

router = APIRouter()
PURPOSES = ("batch",)  # what may be uploaded here


def _store(request: Request) -> BatchStore:
    return request.app.state.batch_store


def file_object(record: FileRecord, retention_days: int) -> dict:
    return {"id": record.id, "object": "file", "bytes": record.bytes, "created_at": record.created_at,
            "filename": record.filename, "purpose": record.purpose, "status": "processed", "status_details": None,
            "expires_at": record.created_at + retention_days * 86400 if retention_days else None}


def not_found(file_id: str) -> APIError:
    return APIError(404, f"No such File object: {file_id}", type="not_found_error", param="file_id",
                    code="file_not_found")


def _copy(source, path: Path) -> None:
    with open(path, "wb") as out:
        shutil.copyfileobj(source, out, 2**20)


@router.post("/v1/files")
async def upload_file(request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]):
    if purpose not in PURPOSES:
        raise invalid_request(f"This server keeps files for the Batch API: purpose must be 'batch', not {purpose!r}.",
                              param="purpose")
    store = _store(request)
    path = store.incoming()
    try:
        await asyncio.to_thread(_copy, file.file, path)
        record = await asyncio.to_thread(store.add_file, path, file.filename or "input.jsonl", purpose)
    except (OSError, sqlite3.Error) as e:
        path.unlink(missing_ok=True)
        raise store.full_disk(e) or e
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return file_object(record, store.retention_days)


@router.get("/v1/files")
async def list_files(request: Request, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
                     order: Literal["asc", "desc"] = "desc", purpose: str | None = None):
    store = _store(request)
    records, has_more = store.list_files(after, limit, order, purpose)
    data = [file_object(r, store.retention_days) for r in records]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request):
    store = _store(request)
    record = store.file(file_id)
    if record is None:
        raise not_found(file_id)
    return file_object(record, store.retention_days)


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request):
    store = _store(request)
    record = store.file(file_id)
    if record is None:
        raise not_found(file_id)
    return FileResponse(store.file_path(file_id), media_type="application/jsonl", filename=record.filename)


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request):
    if not _store(request).delete_file(file_id):
        raise not_found(file_id)
    return {"id": file_id, "object": "file", "deleted": True}
