"""What an API job may read: sources checked against the configured roots and schemes, uploaded files
stored in the job's upload folder, first-frame masks from PNGs or polygons, and a source's first frame.

The daemon reads whatever path a job names, so the HTTP API, unlike the local CLI, must not let a caller
point it at /etc/shadow or an internal URL: a local path must resolve (symlinks followed) inside one of
``http.source_roots``, a URL must use one of ``http.source_schemes``, and anything else is refused.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, ImageDraw

from streamer.api.models import PolygonMask
from streamer.ingest.sources import SourceError, UnsupportedSourceError, check_supported, open_source
from streamer.masks import MaskFileError, read_index_mask, write_index_mask

VIDEO_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
"""Kept from an uploaded file's name so the demuxer can guess the container; the rest of the name is not."""


class SourceRefused(PermissionError):
    """The source is outside what the API may read (roots, schemes); the message says what is allowed."""


class InvalidInput(ValueError):
    """A source that does not exist, or a mask that is not one; the message says which."""


class SourcePolicy:
    """Checks API sources against ``http.source_roots`` and ``http.source_schemes``."""

    def __init__(self, roots: list[str], schemes: list[str]) -> None:
        self.roots = [Path(root).expanduser().resolve() for root in roots]
        self.schemes = frozenset(schemes)

    def check(self, source: str) -> str:
        """The source as the daemon should get it (a resolved path, or the URL), or SourceRefused."""
        if "\x00" in source:
            raise InvalidInput("source contains a NUL character")
        match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", source)
        if match is None:
            return str(self._local(source))
        try:
            check_supported(source)
        except UnsupportedSourceError as exc:
            raise SourceRefused(str(exc)) from None
        scheme = match.group(1).lower()
        if scheme == "file":
            return str(self._local(unquote(urlparse(source).path)))
        if scheme not in self.schemes:
            allowed = ", ".join(f"{s}://" for s in sorted(self.schemes)) or "none"
            raise SourceRefused(
                f"URL scheme {scheme}:// is not allowed here (http.source_schemes: {allowed})"
            )
        return source

    def _local(self, text: str) -> Path:
        path = Path(text)
        if not path.is_absolute():
            raise SourceRefused(f"source path {text!r} must be absolute")
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
            roots = ", ".join(str(root) for root in self.roots) or "none configured"
            raise SourceRefused(
                f"source path {text!r} is outside the allowed roots (http.source_roots: {roots})"
            )
        if not resolved.is_file():
            raise InvalidInput(f"source file {text!r} not found")
        return resolved


def upload_name(filename: str | None) -> str:
    """``video`` plus the upload's extension when it looks like one; the client's name is never a path."""
    suffix = Path(filename or "").suffix
    return "video" + (suffix.lower() if VIDEO_SUFFIX.fullmatch(suffix) else "")


def save_mask_png(data: bytes, path: Path, *, max_objects: int) -> Path:
    """Store an uploaded mask after checking it reads as an index mask with 1..max_objects objects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    try:
        mask = read_index_mask(path)
    except MaskFileError as exc:
        path.unlink(missing_ok=True)
        raise InvalidInput(f"mask: {str(exc).replace(str(path), 'the upload')}") from None
    _check_labels(mask, max_objects)
    return path


def save_polygon_mask(drawn: PolygonMask, path: Path, *, max_objects: int) -> Path:
    """Rasterise polygons (no anti-aliasing, so every pixel is one label) into a palette PNG."""
    canvas = Image.new("L", (drawn.width, drawn.height), 0)
    pen = ImageDraw.Draw(canvas)
    for polygon in drawn.polygons:
        pen.polygon([(float(x), float(y)) for x, y in polygon.points], fill=polygon.object)
    mask = np.asarray(canvas, dtype=np.uint8)
    _check_labels(mask, max_objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_index_mask(path, mask)
    return path


def _check_labels(mask: np.ndarray, max_objects: int) -> None:
    labels = np.unique(mask)
    if labels.max() == 0:
        raise InvalidInput("mask: it marks no object (every pixel is background)")
    if labels.max() > max_objects:
        raise InvalidInput(f"mask: label {labels.max()} is above workers.max_objects ({max_objects})")


def first_frame_png(source: str, *, open_timeout_s: float) -> bytes:
    """The source's first frame at full size, as PNG, for drawing a mask on it."""
    try:
        with open_source(source, live=False, open_timeout=open_timeout_s) as opened:
            frame = next(iter(opened), None)
    except SourceError as exc:
        raise InvalidInput(f"cannot read the source: {exc}") from None
    if frame is None:
        raise InvalidInput("the source has no frame")
    buffer = io.BytesIO()
    Image.fromarray(frame.image).save(buffer, format="PNG")
    return buffer.getvalue()
