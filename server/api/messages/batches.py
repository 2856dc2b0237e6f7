"""Anthropic's Message Batches: POST /v1/messages/batches (the requests inline), GET
/v1/messages/batches (paginated), GET /v1/messages/batches/{id}, POST .../{id}/cancel,
DELETE /v1/messages/batches/{id}, GET .../{id}/results (JSONL).

The same machinery as OpenAI's Batch API (server/batches/): each request's `params` is a
/v1/messages body, answered by that route's own code in the background; the results are
Anthropic's (`succeeded` with the message, `errored` with the error, `canceled`, `expired`).
Errors on these paths are Anthropic's shape, as everywhere under /v1/messages. The request counts
are live (Anthropic's API fills them in only once a batch has ended).
"""

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from server.batches.intake import IntakeError, message_lines
from server.batches.store import ENDED, BatchRecord, BatchStore
from server.plumbing.errors import APIError, invalid_request

router = APIRouter()
WINDOW = "24h"
STATUS = {"cancelling": "canceling", **{status: "ended" for status in ENDED}}  # the rest: in_progress
UNRUN = {"cancelled": "canceled", "expired": "expired"}


class CreateMessageBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    requests: list


def _store(request: Request) -> BatchStore:
    return request.app.state.batch_store


def _time(timestamp: int | None) -> str | None:
    """RFC 3339, as Anthropic writes times."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def message_batch(batch: BatchRecord, request: Request) -> dict:
    ended = batch.status in ENDED
    unrun = UNRUN.get(batch.status)
    counts = {"processing": 0 if ended else batch.pending, "succeeded": batch.succeeded, "errored": batch.failed,
              "canceled": batch.pending if unrun == "canceled" else 0,
              "expired": batch.pending if unrun == "expired" else 0}
    return {
        "id": batch.id, "type": "message_batch", "processing_status": STATUS.get(batch.status, "in_progress"),
        "request_counts": counts,
        "ended_at": _time(batch.completed_at or batch.cancelled_at or batch.expired_at or batch.failed_at),
        "created_at": _time(batch.created_at), "expires_at": _time(batch.expires_at), "archived_at": None,
        "cancel_initiated_at": _time(batch.cancelling_at),
        "results_url": f"{str(request.base_url).rstrip('/')}/v1/messages/batches/{batch.id}/results" if ended else None,
    }


def _find(request: Request, batch_id: str) -> BatchRecord:
    batch = _store(request).batch(batch_id, api="anthropic")
    if batch is None:
        raise APIError(404, f"No Message Batch found with id {batch_id!r}.", type="not_found_error")
    return batch


@router.post("/v1/messages/batches")
async def create_message_batch(body: CreateMessageBatch, request: Request):
    store = _store(request)
    try:
        lines = message_lines(body.requests)
        batch = await asyncio.to_thread(store.create_batch, "anthropic", "/v1/messages", lines, window=WINDOW,
                                        window_seconds=86400)
    except IntakeError as e:
        raise invalid_request(str(e)) from None
    except (OSError, sqlite3.Error) as e:
        raise store.full_disk(e) or e
    request.app.state.batch_runner.wake()
    return message_batch(batch, request)


@router.get("/v1/messages/batches")
async def list_message_batches(request: Request, after_id: str | None = None, before_id: str | None = None,
                               limit: Annotated[int, Query(ge=1, le=1000)] = 20):
    batches, has_more = _store(request).list_batches("anthropic", after=after_id, before=before_id, limit=limit)
    data = [message_batch(b, request) for b in batches]
    return {"data": data, "has_more": has_more, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


@router.get("/v1/messages/batches/{batch_id}")
async def retrieve_message_batch(batch_id: str, request: Request):
    return message_batch(_find(request, batch_id), request)


@router.post("/v1/messages/batches/{batch_id}/cancel")
async def cancel_message_batch(batch_id: str, request: Request):
    batch = _find(request, batch_id)
    if _store(request).set_status(batch.id, "cancelling", only_from=("validating", "in_progress")):
        request.app.state.batch_runner.wake()
    return message_batch(_find(request, batch_id), request)


@router.delete("/v1/messages/batches/{batch_id}")
async def delete_message_batch(batch_id: str, request: Request):
    batch = _find(request, batch_id)
    if batch.status not in ENDED:
        raise invalid_request("A Message Batch can be deleted once it has ended; cancel it first.")
    _store(request).delete_batch(batch.id)
    return {"id": batch.id, "type": "message_batch_deleted"}


@router.get("/v1/messages/batches/{batch_id}/results")
async def message_batch_results(batch_id: str, request: Request):
    batch = _find(request, batch_id)
    if batch.status not in ENDED:
        raise invalid_request("The Message Batch is still in progress: its results come once it has ended.")
    unrun = {"type": UNRUN.get(batch.status, "canceled")}

    def lines():
        for row in _store(request).results(batch.id):
            if row["state"] == "succeeded":
                result = {"type": "succeeded", "message": json.loads(row["response"])}
            elif row["state"] == "failed":
                result = {"type": "errored", "error": json.loads(row["response"])}
            else:
                result = unrun
            yield json.dumps({"custom_id": row["custom_id"], "result": result}, ensure_ascii=False) + "\n"

    return StreamingResponse(lines(), media_type="application/x-jsonl")
