"""Live preview of a running job: the writer drops a small JPEG of the newest overlay frame in the job's
output folder, and the HTTP API (``GET /jobs/{id}/preview``) streams whichever file is newest.

Why a file and not a socket to the viewers: the writer must never wait for a viewer. A file replaced
atomically (temporary name + rename) decouples the two completely: the writer writes at most
`INTERVAL_S` apart whatever the number of viewers, each viewer reads at its own pace and simply skips
the files it was too slow for, and any daemon's API sharing the output folder (NFS, a Kubernetes volume)
previews a job another daemon runs. Downscaling before blending keeps the cost to about a millisecond a
preview, so it is always on. The file goes when the job's outputs are completed or discarded.
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from streamer.masks import overlay

logger = logging.getLogger(__name__)

FILE_NAME = ".preview.jpg"
INTERVAL_S = 0.2
"""At most five previews a second: enough to watch, too few to cost the writer anything."""
MAX_WIDTH = 640
QUALITY = 75


def preview_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / FILE_NAME


def preview_jpeg(frame: np.ndarray, mask: np.ndarray, alpha: float) -> bytes:
    """The overlay of `mask` on `frame` at most `MAX_WIDTH` wide, as JPEG."""
    height, width = frame.shape[:2]
    scale = min(1.0, MAX_WIDTH / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else frame
    labels = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) if mask.shape != size[::-1] else mask
    buffer = io.BytesIO()
    Image.fromarray(overlay(small, labels, alpha)).save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


class PreviewWriter:
    """Replaces one job's preview file at most every `INTERVAL_S`; `remove` when the job ends."""

    def __init__(self, output_dir: str | Path, alpha: float) -> None:
        self.path = preview_path(output_dir)
        self.alpha = alpha
        self._written_at = 0.0

    def offer(self, frame: np.ndarray, mask: np.ndarray) -> None:
        now = time.monotonic()
        if now - self._written_at < INTERVAL_S:
            return
        self._written_at = now
        temporary = self.path.with_name(f"{FILE_NAME}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(preview_jpeg(frame, mask, self.alpha))
            os.replace(temporary, self.path)
        except OSError as exc:  # a full disk may fail the outputs, never because of the preview
            logger.warning("preview %s not written: %s", self.path, exc)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
