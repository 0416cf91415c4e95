"""The naive baseline: what a Python developer would write for a Segment-style endpoint.

FastAPI + pydantic models for a track message and a batch; each request is parsed and validated,
gets a receivedAt, and is answered with {"success": true}. Nothing is stored, nothing is
authenticated. Run it as uvicorn does:

    .venv/bin/uvicorn --app-dir bench fastapi_baseline:app --workers 1 --log-level warning \
        --no-access-log

Segment's browser library posts with `Content-Type: text/plain` (to avoid a CORS preflight), which
FastAPI's typed-body parameters reject with 422, so the handlers read the body and validate it the
way FastAPI does internally for application/json: `json.loads`, then the pydantic model.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field, ValidationError


class Library(BaseModel):
    name: str
    version: str


class Context(BaseModel):
    library: Library | None = None
    model_config = {"extra": "allow"}


class Message(BaseModel):
    """A Segment track message."""

    type: Literal["track"] = "track"
    event: str
    userId: str | None = None
    anonymousId: str | None = None
    messageId: str | None = Field(default=None, max_length=100)
    properties: dict[str, Any] = Field(default_factory=dict)
    context: Context = Field(default_factory=Context)
    integrations: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime | None = None
    sentAt: datetime | None = None
    receivedAt: datetime | None = None


class Batch(BaseModel):
    """A batch of messages as the server-side libraries send them."""

    batch: list[Message]
    sentAt: datetime | None = None
    context: dict[str, Any] = Field(default_factory=dict)


app = FastAPI(title="Segment-style baseline")


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(json.loads(await request.body()))
    except (ValueError, ValidationError) as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


@app.post("/v1/track")
async def track(request: Request) -> dict[str, bool]:
    message: Message = await _parse(request, Message)
    message.receivedAt = datetime.now(UTC)
    return {"success": True}


@app.post("/v1/batch")
async def batch(request: Request) -> dict[str, bool]:
    body: Batch = await _parse(request, Batch)
    now = datetime.now(UTC)
    for message in body.batch:
        message.receivedAt = now
    return {"success": True}


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}
