"""Job routes: submit (JSON or multipart), list, get, cancel, stop, server-sent events, outputs, and
the first frame of a source for drawing a mask.

Size: about 420 lines, one handler per route and the multipart parsing they share; the models live in
streamer/api/models.py and the first-frame preview in streamer/api/preview.py.

Routes talk to Redis only through `JobQueue`, so one API serves the jobs of every daemon sharing it.
Blocking work (Redis, files, decoding) runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from streamer.api.app import ApiContext, Ctx
from streamer.api.auth import require_token
from streamer.api.models import JobPage, JobSubmission, JobView, StateReply
from streamer.api.sources import (
    InvalidInput,
    SourceRefused,
    first_frame_png,
    save_mask_png,
    save_polygon_mask,
    upload_name,
)
from streamer.ingest.sources import is_live_uri
from streamer.modes import job_mode_options
from streamer.queue.jobs import JobNotFound, JobQueue, JobRecord, JobState

router = APIRouter(dependencies=[Depends(require_token)])

EVENT_POLL_S = 0.25
"""How often an event stream reads the job's status hash."""
KEEPALIVE_S = 15.0
"""An event stream with nothing new sends a comment this often, so proxies keep it open."""
SCAN_CHUNK = 500
"""Job ids read per round when a listing filters by state."""
OUTPUT_NAME = re.compile(r"overlay\.mp4|masks\.jsonl|masks/\d{5,7}\.png")
"""The only names under a job's folder that /outputs serves; nothing else, no `..`, no temporary files."""
MEDIA_TYPES = {".mp4": "video/mp4", ".jsonl": "application/x-ndjson", ".png": "image/png"}
OUTPUT_URLS = {"overlay": "overlay.mp4", "rle": "masks.jsonl", "masks": "masks/{frame:05d}.png"}
FORM_FIELDS = frozenset({"source", "live", "options", "mask_polygons", "video", "mask"})
PROGRESS_FIELDS = (
    "frames_done",
    "frames_total",
    "fps",
    "frames_dropped",
    "source_state",
    "latency_p50_s",
    "reconnect_attempts",
)

SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobSubmission"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "source": {"type": "string", "description": "Instead of video: a path or URL."},
                        "video": {"type": "string", "format": "binary", "description": "An uploaded video."},
                        "mask": {"type": "string", "format": "binary", "description": "First-frame PNG."},
                        "mask_polygons": {"type": "string", "description": "PolygonMask as JSON text."},
                        "options": {"type": "string", "description": "JobOptions as JSON text."},
                        "live": {"type": "boolean"},
                    },
                }
            },
        },
    }
}


def job_view(record: JobRecord) -> JobView:
    """The record plus its progress fraction and output URLs."""
    progress = None
    if record.frames_total:
        progress = min(1.0, record.frames_done / record.frames_total)
    urls = {
        kind: f"/jobs/{record.id}/outputs/{OUTPUT_URLS[kind]}"
        for kind in record.outputs
        if kind in OUTPUT_URLS
    }
    return JobView(**record.model_dump(), progress=progress, output_urls=urls)


def _get(queue: JobQueue, job_id: str) -> JobRecord:
    try:
        return queue.get(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id!r}") from None


def _invalid(message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body",), "msg": message, "type": "value_error"}])


# ------------------------------------------------------------------------------------------------ submit


@router.post("/jobs", status_code=201, response_model=JobView, openapi_extra=SUBMIT_BODY, tags=["jobs"])
async def submit_job(request: Request, ctx: Ctx) -> JobView:
    """Queue a job on a source the daemon may read, or on an uploaded video; the mask is a PNG (upload or
    base64) or polygons drawn on the first frame."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    video: UploadFile | None = None
    mask_png: bytes | None = None
    if kind == "application/json":
        submission = _validated(await request.body(), json_text=True)
        if submission.mask_png is not None:
            try:
                mask_png = base64.b64decode(submission.mask_png, validate=True)
            except binascii.Error:
                raise _invalid("mask_png: not valid base64") from None
    elif kind == "multipart/form-data":
        form = await request.form(max_files=2, max_fields=8)
        submission, video, mask_png = await _from_form(form)
    else:
        raise HTTPException(415, "send application/json or multipart/form-data")
    if (submission.source is None) == (video is None):
        raise _invalid("give exactly one of source (a path or URL) and video (an upload)")
    limit = int(ctx.config.http.max_mask_mb * (1 << 20))
    if mask_png is not None and len(mask_png) > limit:
        raise HTTPException(
            413, f"mask of {len(mask_png)} bytes is over the limit of {limit} (http.max_mask_mb)"
        )
    record = await run_in_threadpool(_accept, ctx, submission, video, mask_png)
    return job_view(record)


def _validated(data: Any, *, json_text: bool) -> JobSubmission:
    try:
        if json_text:
            return JobSubmission.model_validate_json(data or b"null")
        return JobSubmission.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def _from_form(form: Any) -> tuple[JobSubmission, UploadFile | None, bytes | None]:
    unknown = sorted(set(form.keys()) - FORM_FIELDS)
    if unknown:
        raise _invalid(f"unknown form fields {unknown}; expected {sorted(FORM_FIELDS)}")
    data: dict[str, Any] = {}
    for name in ("source", "live", "options", "mask_polygons"):
        value = form.get(name)
        if isinstance(value, UploadFile):
            raise _invalid(f"{name}: expected text, got a file")
        if value is None or value == "":
            continue
        if name in ("options", "mask_polygons"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise _invalid(f"{name}: not JSON ({exc.msg})") from None
        data[name] = value
    submission = _validated(data, json_text=False)
    video, mask = form.get("video"), form.get("mask")
    for name, value in (("video", video), ("mask", mask)):
        if value is not None and not isinstance(value, UploadFile):
            raise _invalid(f"{name}: expected a file upload")
    mask_png = await mask.read() if isinstance(mask, UploadFile) else None
    return submission, video, mask_png


def _accept(
    ctx: ApiContext, submission: JobSubmission, video: UploadFile | None, mask_png: bytes | None
) -> JobRecord:
    """Store the uploads in ``uploads/<job id>/``, check the source, and submit; nothing is left on error."""
    job_id = uuid.uuid4().hex[:16]
    folder = ctx.uploads_dir / job_id
    max_objects = ctx.config.workers.max_objects
    try:
        if video is not None:
            folder.mkdir(parents=True)
            path = folder / upload_name(video.filename)
            with path.open("wb") as sink:
                shutil.copyfileobj(video.file, sink)
            if path.stat().st_size == 0:
                raise InvalidInput("video: the upload is empty")
            source = str(path)
        else:
            assert submission.source is not None
            source = ctx.policy.check(submission.source)
        mask_path = None
        if mask_png is not None:
            mask_path = str(save_mask_png(mask_png, folder / "mask.png", max_objects=max_objects))
        elif submission.mask_polygons is not None:
            mask_path = str(
                save_polygon_mask(submission.mask_polygons, folder / "mask.png", max_objects=max_objects)
            )
        live = is_live_uri(source) if submission.live is None else submission.live
        asked = submission.options
        how = job_mode_options(mask_path is not None, asked.mode, asked.objects)  # ModeError: a ValueError
        return ctx.queue().submit(
            source, mask_path=mask_path, live=live, options={**asked.to_job_options(), **how}, job_id=job_id,
            mode=how["mode"],
        )
    except SourceRefused as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(403, str(exc)) from None
    except (InvalidInput, ValueError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise _invalid(str(exc)) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------- read and control


@router.get("/jobs", response_model=JobPage, tags=["jobs"])
def list_jobs(
    ctx: Ctx,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    """Jobs newest first, a page at a time."""
    queue = ctx.queue()
    if state is None:
        records = queue.list_jobs(limit=limit + 1, offset=offset)
    else:
        records = _filtered(queue, state, limit + 1, offset)
    more = len(records) > limit
    return JobPage(jobs=[job_view(r) for r in records[:limit]], next_offset=offset + limit if more else None)


def _filtered(queue: JobQueue, state: JobState, count: int, offset: int) -> list[JobRecord]:
    """Up to `count` jobs in `state` after skipping `offset` of them, newest first."""
    matched: list[str] = []
    skipped = position = 0
    while len(matched) < count:
        ids = queue.redis.zrevrange(queue.keys.index, position, position + SCAN_CHUNK - 1)
        if not ids:
            break
        pipe = queue.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(queue.keys.job(job_id), "state")
        for job_id, value in zip(ids, pipe.execute(), strict=True):
            if value != state.value or len(matched) >= count:
                continue
            if skipped < offset:
                skipped += 1
            else:
                matched.append(job_id)
        position += SCAN_CHUNK
    pipe = queue.redis.pipeline(transaction=False)
    for job_id in matched:
        pipe.hgetall(queue.keys.job(job_id))
    return [JobRecord.from_fields(fields) for fields in pipe.execute() if fields]


@router.get("/jobs/{job_id}", response_model=JobView, tags=["jobs"])
def get_job(job_id: str, ctx: Ctx) -> JobView:
    return job_view(_get(ctx.queue(), job_id))


@router.delete("/jobs/{job_id}", response_model=StateReply, tags=["jobs"])
def cancel_job(job_id: str, ctx: Ctx) -> StateReply:
    """Cancel: a queued job at once, a running one within a heartbeat; its outputs are discarded."""
    try:
        state = ctx.queue().cancel(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id!r}") from None
    messages = {
        JobState.RUNNING: "cancel requested; the job stops within a second and its outputs are discarded",
        JobState.CANCELLED: "cancelled",
    }
    return StateReply(id=job_id, state=state.value, message=messages.get(state, f"already {state.value}"))


@router.post("/jobs/{job_id}/stop", response_model=StateReply, tags=["jobs"])
def stop_job(job_id: str, ctx: Ctx) -> StateReply:
    """End a running job now, keeping its outputs (done, stopped_early); a queued job is cancelled."""
    queue = ctx.queue()
    before = _get(queue, job_id).state
    try:
        state = queue.stop(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id!r}") from None
    if state is JobState.RUNNING:
        message = "stop requested; the job ends with the frames so far written and kept"
    elif before is JobState.QUEUED:
        message = "cancelled: it was still queued, so nothing was produced"
    else:
        message = f"already {state.value}"
    return StateReply(id=job_id, state=state.value, message=message)


@router.get(
    "/jobs/{job_id}/events",
    tags=["jobs"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "state, progress and end events"}},
)
async def job_events(job_id: str, request: Request, ctx: Ctx) -> StreamingResponse:
    """Server-sent events: ``state`` on every state change, ``progress`` when counters move, then ``end``
    once the job is final. Each event's data is the job as JSON (JobView)."""
    queue = ctx.queue()
    first = await run_in_threadpool(_get, queue, job_id)

    async def stream() -> AsyncIterator[str]:
        record, last = first, None
        quiet_since = time.monotonic()
        while True:
            event = _change(last, record)
            if event is not None:
                yield f"event: {event}\ndata: {job_view(record).model_dump_json()}\n\n"
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            if record.state.final:
                yield f"event: end\ndata: {json.dumps({'id': job_id, 'state': record.state.value})}\n\n"
                return
            await asyncio.sleep(EVENT_POLL_S)
            if await request.is_disconnected():
                return
            last, record = record, await run_in_threadpool(_get, queue, job_id)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def _change(last: JobRecord | None, record: JobRecord) -> str | None:
    if last is None or last.state is not record.state:
        return "state"
    if any(getattr(last, name) != getattr(record, name) for name in PROGRESS_FIELDS):
        return "progress"
    return None


# ----------------------------------------------------------------------------------------------- outputs


def job_folder(ctx: ApiContext, record: JobRecord) -> Path:
    """The one folder a job's outputs live in: where the writer put them, else where it will."""
    if record.outputs:
        return Path(next(iter(record.outputs.values()))).parent
    return Path(record.options.get("output_dir") or ctx.outputs_dir / record.id)


@router.get(
    "/jobs/{job_id}/outputs/{name:path}",
    tags=["outputs"],
    response_class=FileResponse,
    responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}, 206: {"description": "a byte range"}},
)
def job_output(job_id: str, name: str, ctx: Ctx) -> FileResponse:
    """``overlay.mp4`` (with HTTP range requests), ``masks.jsonl`` (RLE) or ``masks/NNNNN.png``."""
    record = _get(ctx.queue(), job_id)
    if not OUTPUT_NAME.fullmatch(name):
        raise HTTPException(404, f"no output {name!r}: use overlay.mp4, masks.jsonl or masks/NNNNN.png")
    folder = job_folder(ctx, record).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        raise HTTPException(404, f"job {job_id} has no output {name!r} (yet)")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])


# ------------------------------------------------------------------------------------------------ sources


@router.get(
    "/sources/first-frame",
    tags=["sources"],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def first_frame(source: Annotated[str, Query(min_length=1, max_length=4096)], ctx: Ctx) -> Response:
    """The first frame of a source the API may read, as PNG, to draw a mask on."""
    try:
        checked = ctx.policy.check(source)
        png = await run_in_threadpool(
            first_frame_png, checked, open_timeout_s=ctx.config.sources.open_timeout_s
        )
    except SourceRefused as exc:
        raise HTTPException(403, str(exc)) from None
    except InvalidInput as exc:
        raise _invalid(str(exc)) from None
    return Response(png, media_type="image/png")


@router.post(
    "/sources/first-frame",
    tags=["sources"],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def first_frame_of_upload(request: Request, ctx: Ctx) -> Response:
    """The first frame of a video uploaded as the multipart field ``video``; the upload is not kept."""
    form = await request.form(max_files=1, max_fields=1)
    video = form.get("video")
    if not isinstance(video, UploadFile):
        raise _invalid("video: expected a file upload")
    scratch = ctx.uploads_dir / "scratch" / f"{uuid.uuid4().hex}-{upload_name(video.filename)}"

    def decode() -> bytes:
        scratch.parent.mkdir(parents=True, exist_ok=True)
        try:
            with scratch.open("wb") as sink:
                shutil.copyfileobj(video.file, sink)
            return first_frame_png(str(scratch), open_timeout_s=ctx.config.sources.open_timeout_s)
        finally:
            scratch.unlink(missing_ok=True)

    try:
        png = await run_in_threadpool(decode)
    except InvalidInput as exc:
        raise _invalid(str(exc)) from None
    return Response(png, media_type="image/png")
