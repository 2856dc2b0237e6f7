"""OpenAI's Batch API: POST /v1/batches, GET /v1/batches (paginated), GET /v1/batches/{id},
POST /v1/batches/{id}/cancel.

The HTTP side only: a batch is created from an uploaded JSONL file (files/routes.py), checked
whole here (server/batches/intake.py: a 400 for a file that isn't a batch), and kept and run by
server/batches/ (store.py, runner.py). Its object is OpenAI's `Batch`: status, request_counts,
usage, and once it has ended its output_file_id and error_file_id.
"""

import asyncio
import sqlite3
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, field_validator

from server.batches.intake import IntakeError, openai_lines
from server.batches.store import BatchRecord, BatchStore
from server.config import DURATION, UNITS
from server.plumbing.errors import APIError, invalid_request

router = APIRouter()
ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/completions")


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value):
        if value and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("at most 16 pairs, keys of at most 64 characters and values of at most 512")
        return value


def window_seconds(window: str) -> float:
    """A completion window ("24h", "1h30m") in seconds; 400 for anything else."""
    text = window.strip().lower()
    parts = DURATION.findall(text)
    seconds = sum(float(n) * UNITS[u] for n, u in parts)
    if not parts or "".join(n + u for n, u in parts) != text or seconds <= 0:
        raise invalid_request(f"completion_window {window!r} is not a duration like \"24h\".",
                              param="completion_window")
    return seconds


def batch_object(batch: BatchRecord) -> dict:
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "errors": None,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window,
        "status": batch.status, "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": batch.created_at, "in_progress_at": batch.in_progress_at, "expires_at": batch.expires_at,
        "finalizing_at": batch.finalizing_at, "completed_at": batch.completed_at, "failed_at": batch.failed_at,
        "expired_at": batch.expired_at, "cancelling_at": batch.cancelling_at, "cancelled_at": batch.cancelled_at,
        "request_counts": {"total": batch.total, "completed": batch.succeeded, "failed": batch.failed},
        "metadata": batch.metadata, "model": None,
        "usage": {"input_tokens": batch.input_tokens, "input_tokens_details": {"cached_tokens": batch.cached_tokens},
                  "output_tokens": batch.output_tokens,
                  "output_tokens_details": {"reasoning_tokens": batch.reasoning_tokens},
                  "total_tokens": batch.input_tokens + batch.output_tokens},
    }


def _store(request: Request) -> BatchStore:
    return request.app.state.batch_store


def not_found(batch_id: str) -> APIError:
    return APIError(404, f"No batch found with id {batch_id!r}.", type="not_found_error", param="batch_id",
                    code="batch_not_found")


@router.post("/v1/batches")
async def create_batch(body: CreateBatch, request: Request):
    if body.endpoint not in ENDPOINTS:
        raise invalid_request(f"This server runs batches for {', '.join(ENDPOINTS)}, not {body.endpoint!r}.",
                              param="endpoint")
    seconds = window_seconds(body.completion_window)
    store = _store(request)
    record = store.file(body.input_file_id)
    if record is None or record.purpose != "batch":
        raise invalid_request(f"No input file with id {body.input_file_id!r}: upload one with POST /v1/files "
                              "(purpose 'batch').", param="input_file_id")
    try:
        data = await asyncio.to_thread(store.file_path(record.id).read_bytes)
        lines = await asyncio.to_thread(openai_lines, data, body.endpoint)
        batch = await asyncio.to_thread(store.create_batch, "openai", body.endpoint, lines,
                                        window=body.completion_window, window_seconds=seconds,
                                        input_file_id=record.id, metadata=body.metadata)
    except IntakeError as e:
        raise invalid_request(str(e), param="input_file_id") from None
    except (OSError, sqlite3.Error) as e:
        raise store.full_disk(e) or e
    request.app.state.batch_runner.wake()
    return batch_object(batch)


@router.get("/v1/batches")
async def list_batches(request: Request, after: str | None = None,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20):
    batches, has_more = _store(request).list_batches("openai", after=after, limit=limit)
    data = [batch_object(b) for b in batches]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, request: Request):
    batch = _store(request).batch(batch_id, api="openai")
    if batch is None:
        raise not_found(batch_id)
    return batch_object(batch)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request):
    """Lines in flight stop; the batch ends `cancelled` with the answers it has (output file)
    and the lines it never ran (error file, batch_cancelled)."""
    store = _store(request)
    batch = store.batch(batch_id, api="openai")
    if batch is None:
        raise not_found(batch_id)
    if batch.status not in ("cancelling", "cancelled"):
        if not store.set_status(batch_id, "cancelling", only_from=("validating", "in_progress")):
            raise APIError(409, f"The batch is {store.batch(batch_id).status}: only a batch in progress can be "
                           "cancelled.", code="batch_not_cancellable")
        request.app.state.batch_runner.wake()
    return batch_object(store.batch(batch_id))
