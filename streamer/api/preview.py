"""``GET /jobs/{id}/preview``: the newest overlay frames of a running job as MJPEG
(``multipart/x-mixed-replace``), which a browser shows in a plain ``<img>``.

Each viewer polls the preview file the writer replaces (streamer/output/preview.py) and sends it when it
changed, so a slow viewer only skips frames: its send waits on its own TCP connection, never on the writer. At
most `MAX_VIEWERS` streams run at once (503 beyond), and a stream ends when the job stops running.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from streamer.api.app import Ctx
from streamer.api.auth import require_token_or_query
from streamer.api.routes import job_folder
from streamer.output.preview import preview_path
from streamer.queue.jobs import JobNotFound, JobQueue, JobRecord, JobState

router = APIRouter(dependencies=[Depends(require_token_or_query)])

POLL_S = 0.1
"""How often a stream looks for a new preview file (the writer makes at most five a second)."""
STATE_CHECK_S = 1.0
"""How often a stream reads the job's state, to end when the job does."""
MAX_VIEWERS = 16
BOUNDARY = "frame"


def _job(queue: JobQueue, job_id: str) -> JobRecord:
    try:
        return queue.get(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id!r}") from None


def _read_if_new(path: Path, seen: tuple[int, int] | None) -> tuple[bytes | None, tuple[int, int] | None]:
    """The file's bytes when it is not the one already sent (each rename makes a new inode)."""
    try:
        with path.open("rb") as source:
            status = os.fstat(source.fileno())
            stamp = (status.st_ino, status.st_mtime_ns)
            return (None, seen) if stamp == seen else (source.read(), stamp)
    except FileNotFoundError:  # not written yet, or the job just ended
        return None, seen


@router.get(
    "/jobs/{job_id}/preview",
    tags=["jobs"],
    response_class=StreamingResponse,
    responses={
        200: {"content": {f"multipart/x-mixed-replace; boundary={BOUNDARY}": {}}},
        409: {"description": "the job is not running"},
    },
)
async def job_preview(job_id: str, request: Request, ctx: Ctx) -> StreamingResponse:
    """MJPEG of a running job's newest overlay frames, at most 5 a second and 640 px wide."""
    queue = ctx.queue()
    record = await run_in_threadpool(_job, queue, job_id)
    if record.state is not JobState.RUNNING:
        raise HTTPException(409, f"job {job_id} is {record.state.value}: a preview exists only while it runs")
    if ctx.preview_viewers >= MAX_VIEWERS:
        raise HTTPException(503, f"{MAX_VIEWERS} previews are open already; close one and retry")
    path = preview_path(job_folder(ctx, record))

    async def stream() -> AsyncIterator[bytes]:
        ctx.preview_viewers += 1
        try:
            seen: tuple[int, int] | None = None
            next_check = time.monotonic() + STATE_CHECK_S
            while True:
                data, seen = await run_in_threadpool(_read_if_new, path, seen)
                if data is not None:
                    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                    yield head.encode() + data + b"\r\n"
                await asyncio.sleep(POLL_S)
                if await request.is_disconnected():
                    return
                if time.monotonic() >= next_check:  # end with the job
                    next_check = time.monotonic() + STATE_CHECK_S
                    if (await run_in_threadpool(_job, queue, job_id)).state is not JobState.RUNNING:
                        return
        finally:
            ctx.preview_viewers -= 1

    headers = {"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        stream(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}", headers=headers
    )

