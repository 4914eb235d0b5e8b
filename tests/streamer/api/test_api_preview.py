"""The live preview against the real daemon: a running batch job streams distinct JPEG overlays as MJPEG
(token in the query, as the dashboard's <img> sends it); a job that is not running, an unknown job and a
missing token get a clear JSON error; the preview file goes with the job."""

from __future__ import annotations

import base64
import io
import re

import httpx
import pytest
from PIL import Image

from streamer.output.preview import FILE_NAME

from .conftest import TOKEN, Api

pytestmark = pytest.mark.timeout(300)

PART = re.compile(rb"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: (\d+)\r\n\r\n")


def _jpegs(response: httpx.Response, wanted: int) -> list[bytes]:
    """The first `wanted` distinct JPEGs of a multipart/x-mixed-replace stream."""
    buffer, frames = b"", []
    for chunk in response.iter_bytes():
        buffer += chunk
        while (match := PART.match(buffer)) and len(buffer) >= match.end() + int(match[1]) + 2:
            end = match.end() + int(match[1])
            if buffer[match.end():end] not in frames:
                frames.append(buffer[match.end():end])
            assert buffer[end:end + 2] == b"\r\n"
            buffer = buffer[end + 2:]
        if len(frames) >= wanted:
            return frames
    return frames


def test_a_running_job_streams_its_newest_overlays_and_a_finished_one_gets_409(api: Api) -> None:
    mask = base64.b64encode((api.media / "long-first.png").read_bytes()).decode()
    with api.client() as client, api.client(None) as anonymous:
        job = client.post("/jobs", json={"source": str(api.media / "long.mp4"), "mask_png": mask}).json()
        assert api.wait(client, job["id"], frames=1)["state"] == "running"
        url = f"/jobs/{job['id']}/preview"
        with anonymous.stream("GET", url, params={"token": TOKEN}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
            frames = _jpegs(response, 2)
        assert len(frames) == 2, "the job ended before two previews were written"
        for data in frames:
            image = Image.open(io.BytesIO(data))
            assert (image.format, image.size) == ("JPEG", (160, 120))
        preview = api.data_dir / "outputs" / job["id"] / FILE_NAME
        assert preview.is_file()

        assert anonymous.get(url).json()["error"].startswith("missing bearer token")
        assert anonymous.get(url, params={"token": "wrong"}).status_code == 401
        assert client.delete(f"/jobs/{job['id']}").status_code == 200
        assert api.wait(client, job["id"])["state"] == "cancelled"
        assert not preview.exists()
        ended = client.get(url)
        assert ended.status_code == 409, ended.text
        assert ended.json()["error"] == f"job {job['id']} is cancelled: a preview exists only while it runs"
        unknown = client.get("/jobs/nope/preview")
        assert (unknown.status_code, unknown.json()["error"]) == (404, "no job 'nope'")
