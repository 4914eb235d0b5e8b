"""The dashboard: one static page (static/index.html) and its script, no build step.

The page is public (it holds no data); its script asks for the token once, keeps it in the browser's
localStorage, and sends it as a bearer token with every API call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")
