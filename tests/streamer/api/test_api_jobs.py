"""The job API against a real daemon: submit as JSON and as a multipart upload, follow the events,
fetch outputs with range requests, stop and cancel, page and filter, and refuse bad input with a clear
JSON 4xx while the server keeps serving."""

from __future__ import annotations

import base64
import io
import json

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import MAX_MASK_MB, MAX_UPLOAD_MB, TOKEN, Api

pytestmark = pytest.mark.timeout(300)


def _events(client: httpx.Client, job_id: str) -> list[tuple[str, dict]]:
    """Every server-sent event of a job until its ``end`` event."""
    events: list[tuple[str, dict]] = []
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if name == "end":
                    break
    return events


def _submit_path(client: httpx.Client, api: Api, **options: object) -> dict:
    mask = base64.b64encode((api.media / "first.png").read_bytes()).decode()
    body = {"source": str(api.media / "shapes.mp4"), "mask_png": mask, "options": options}
    response = client.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_json_job_streams_events_and_serves_its_outputs(api: Api) -> None:
    with api.client() as client:
        job = _submit_path(client, api)
        assert job["state"] == "queued" and job["source"] == str(api.media / "shapes.mp4")
        events = _events(client, job["id"])
        states = [data["state"] for name, data in events if name == "state"]
        assert states[0] in ("queued", "running") and states[-1] == "done", events
        assert events[-1] == ("end", {"id": job["id"], "state": "done"})
        done = client.get(f"/jobs/{job['id']}").json()
        assert (done["frames_done"], done["frames_total"], done["progress"]) == (12, 12, 1.0)
        assert set(done["output_urls"]) == {"overlay", "masks", "rle"}

        overlay = client.get(done["output_urls"]["overlay"])
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "video/mp4"
        with av.open(io.BytesIO(overlay.content)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 12
        part = client.get(done["output_urls"]["overlay"], headers={"Range": "bytes=10-109"})
        assert part.status_code == 206, part.text
        assert part.content == overlay.content[10:110]
        assert part.headers["content-range"] == f"bytes 10-109/{len(overlay.content)}"

        mask = client.get(f"/jobs/{job['id']}/outputs/masks/00011.png")
        assert mask.headers["content-type"] == "image/png"
        assert np.asarray(Image.open(io.BytesIO(mask.content))).shape == (120, 160)
        rle = client.get(done["output_urls"]["rle"])
        assert [json.loads(line)["frame"] for line in rle.text.splitlines()] == list(range(12))


def test_uploaded_video_with_a_polygon_mask_then_stop_and_cancel(api: Api) -> None:
    polygons = {
        "width": 160,
        "height": 120,
        "polygons": [
            {"object": 1, "points": [[10, 40], [50, 40], [50, 80], [10, 80]]},
            {"object": 2, "points": [[100, 10], [140, 10], [120, 50]]},
        ],
    }
    with api.client() as client:
        response = client.post(
            "/jobs",
            files={"video": ("clip from phone.MP4", (api.media / "long.mp4").read_bytes(), "video/mp4")},
            data={"mask_polygons": json.dumps(polygons), "options": json.dumps({"xmem": {"mem_every": 3}})},
        )
        assert response.status_code == 201, response.text
        job = response.json()
        assert job["source"].endswith(f"/uploads/{job['id']}/video.mp4")
        assert job["options"] == {"mem_every": 3, "mode": "xmem"}
        drawn = np.asarray(Image.open(job["mask_path"]))
        assert set(np.unique(drawn)) == {0, 1, 2} and drawn[60, 30] == 1 and drawn[20, 120] == 2

        running = api.wait(client, job["id"], frames=3)
        assert running["state"] == "running", running
        stopped = client.post(f"/jobs/{job['id']}/stop").json()
        assert stopped["state"] in ("running", "done"), stopped
        done = api.wait(client, job["id"])
        assert done["state"] == "done" and done["stopped_early"], done
        assert client.delete(f"/jobs/{job['id']}").json()["message"] == "already done"

        second = _submit_path(client, api)
        reply = client.delete(f"/jobs/{second['id']}")
        assert reply.status_code == 200 and reply.json()["state"] in ("queued", "cancelled", "running")
        assert api.wait(client, second["id"])["state"] == "cancelled"


def test_a_job_without_a_mask_is_queued_in_auto_mode_with_its_objects(api: Api) -> None:
    with api.client() as client:
        source = str(api.media / "shapes.mp4")
        response = client.post("/jobs", json={"source": source, "options": {"objects": 2}})
        assert response.status_code == 201, response.text
        job = response.json()
        assert job["mode"] == "auto" and job["mask_path"] is None
        assert job["options"] == {"mode": "auto", "objects": 2}
        tmo = client.post("/jobs", json={"source": source, "options": {"mode": "tmo"}})
        assert tmo.status_code == 201 and tmo.json()["mode"] == "tmo", tmo.text
        for queued in (job, tmo.json()):  # the daemon need not segment them here
            assert client.delete(f"/jobs/{queued['id']}").status_code == 200


def test_jobs_are_paged_newest_first_and_filtered_by_state(api: Api) -> None:
    with api.client() as client:
        ids = [_submit_path(client, api, max_frames=2)["id"] for _ in range(3)]
        for job_id in ids:
            api.wait(client, job_id)
        first = client.get("/jobs", params={"limit": 2}).json()
        assert [job["id"] for job in first["jobs"]] == ids[::-1][:2] and first["next_offset"] == 2
        second = client.get("/jobs", params={"limit": 2, "offset": 2}).json()
        assert second["jobs"][0]["id"] == ids[0]
        done = client.get("/jobs", params={"state": "done", "limit": 500}).json()
        assert {job["state"] for job in done["jobs"]} == {"done"} and set(ids) <= {
            j["id"] for j in done["jobs"]
        }
        assert done["next_offset"] is None
        cancelled = client.get("/jobs", params={"state": "cancelled"}).json()["jobs"]
        assert all(job["state"] == "cancelled" for job in cancelled)


def _chunks(size: int):
    for _ in range(size // 65536 + 1):
        yield b"\0" * 65536


def test_bad_requests_get_a_clear_json_4xx_and_the_server_keeps_working(api: Api) -> None:
    media = api.media
    png = (media / "first.png").read_bytes()
    good = {"source": str(media / "shapes.mp4")}
    big = int(MAX_UPLOAD_MB * (1 << 20)) + 1
    cases = [
        # (method, path, request keyword arguments, token, status, words in the error)
        ("GET", "/jobs", {}, None, 401, "missing bearer token"),
        ("GET", "/jobs", {}, "wrong", 401, "invalid bearer token"),
        ("GET", "/metrics", {}, None, 401, "missing bearer token"),
        ("POST", "/jobs", {"content": b"{not json", "headers": JSON}, "json", 422, "invalid request"),
        ("POST", "/jobs", {"json": [1, 2]}, "json", 422, "invalid request"),
        ("POST", "/jobs", {"json": {**good, "colour": "red"}}, "json", 422, "invalid request"),
        ("POST", "/jobs", {"json": {}}, "json", 422, "invalid request"),
        ("POST", "/jobs", {"json": {"source": "/etc/passwd"}}, "json", 403, "outside the allowed roots"),
        ("POST", "/jobs", {"json": {"source": f"{media}/../../../etc/passwd"}}, "json", 403, "outside"),
        ("POST", "/jobs", {"json": {"source": "shapes.mp4"}}, "json", 403, "must be absolute"),
        ("POST", "/jobs", {"json": {"source": "file:///etc/passwd"}}, "json", 403, "outside"),
        ("POST", "/jobs", {"json": {"source": "ftp://host/a.mp4"}}, "json", 403, "unsupported source scheme"),
        ("POST", "/jobs", {"json": {"source": "http://10.0.0.1/a.mp4"}}, "json", 403, "not allowed here"),
        ("POST", "/jobs", {"json": {"source": f"{media}/missing.mp4"}}, "json", 422, "invalid request"),
        ("POST", "/jobs", {"json": {"source": "/a\u0000b"}}, "json", 422, "invalid request"),
        ("POST", "/jobs", {"json": {**good, "mask_png": "***"}}, "json", 422, "invalid request"),
        (
            "POST",
            "/jobs",
            {"json": {**good, "mask_png": base64.b64encode(b"GIF89a").decode()}},
            "json",
            422,
            "",
        ),
        ("POST", "/jobs", {"json": {**good, "options": {"xmem": {"warp": 9}}}}, "json", 422, ""),
        ("POST", "/jobs", {"json": {**good, "options": {"output_dir": "/etc"}}}, "json", 422, ""),
        ("POST", "/jobs", {"json": {**good, "options": {"max_frames": -1}}}, "json", 422, ""),
        ("POST", "/jobs", {"json": {**good, "options": {"mode": "xmem"}}}, "json", 422, "needs a first"),
        ("POST", "/jobs", {"json": {**good, "options": {"mode": "any"}}}, "json", 422, ""),
        ("POST", "/jobs", {"json": {**good, "options": {"objects": 0}}}, "json", 422, ""),
        (
            "POST",
            "/jobs",
            {"json": {**good, "mask_png": base64.b64encode(png).decode(), "options": {"mode": "tmo"}}},
            "json",
            422,
            "takes no mask",
        ),
        (
            "POST",
            "/jobs",
            {"json": {**good, "mask_png": base64.b64encode(png).decode(), "options": {"objects": 2}}},
            "json",
            422,
            "auto only",
        ),
        ("POST", "/jobs", {"content": b"x", "headers": {"content-type": "text/plain"}}, "json", 415, "send"),
        ("POST", "/jobs", {"content": b"\0" * big, "headers": JSON}, "json", 413, "over the limit"),
        ("POST", "/jobs", {"content": _chunks(big), "headers": JSON}, "json", 413, "over the limit"),
        (
            "POST",
            "/jobs",
            {"data": good, "files": {"mask": ("m.png", b"\x89PNG" + b"\0" * 60000)}},
            "json",
            413,
            "http.max_mask_mb",
        ),
        (
            "POST",
            "/jobs",
            {"data": {**good, "evil": "1"}, "files": {"mask": ("m.png", png)}},
            "json",
            422,
            "",
        ),
        ("POST", "/jobs", {"data": {"options": "{"}, "files": {"video": ("a.mp4", b"")}}, "json", 422, ""),
        ("POST", "/jobs", {"data": good, "files": {"video": ("a.mp4", b"abc")}}, "json", 422, ""),
        ("POST", "/jobs", {"files": {"video": ("a.mp4", b"")}}, "json", 422, ""),
        ("GET", "/jobs/nope", {}, "json", 404, "no job 'nope'"),
        ("DELETE", "/jobs/nope", {}, "json", 404, "no job"),
        ("POST", "/jobs/nope/stop", {}, "json", 404, "no job"),
        ("GET", "/jobs/nope/events", {}, "json", 404, "no job"),
        ("GET", "/jobs", {"params": {"state": "sleeping"}}, "json", 422, ""),
        ("GET", "/jobs", {"params": {"limit": 0}}, "json", 422, ""),
        ("GET", "/nowhere", {}, "json", 404, "no route GET /nowhere"),
        ("PUT", "/jobs", {}, "json", 405, ""),
        ("GET", "/sources/first-frame", {"params": {"source": "/etc/hostname"}}, "json", 403, "outside"),
    ]
    assert MAX_MASK_MB * (1 << 20) < 60000
    with api.client() as client:
        done = _submit_path(client, api, max_frames=2)
        traversal = [
            "../../../etc/passwd",
            "masks/../../../../etc/passwd",
            "%2e%2e/%2e%2e/etc/passwd",
            "overlay.mp4.part",
            "masks",
            "masks/1.png",
            "/etc/passwd",
        ]
        cases += [("GET", f"/jobs/{done['id']}/outputs/{name}", {}, "json", 404, "") for name in traversal]
        for method, path, kwargs, token, status, words in cases:
            request_token = TOKEN_FOR[token]
            with api.client(request_token) as caller:
                response = caller.request(method, path, **kwargs)
            assert response.status_code == status, (method, path, kwargs, response.text)
            body = response.json()
            assert body["status"] == status and body["error"], body
            assert words in body["error"] + " ".join(body.get("details", [])), (path, body)
            if status == 422 and body["error"] == "invalid request":
                assert body["details"], body
        assert client.get("/healthz").json() == {"status": "alive"}
        final = api.wait(client, _submit_path(client, api, max_frames=4)["id"])
        assert final["state"] == "done" and final["frames_done"] == 4, final
        jobs = {job["id"] for job in client.get("/jobs", params={"limit": 500}).json()["jobs"]}
        leftovers = {path.name for path in (api.data_dir / "uploads").glob("*")} - {"scratch"}
        assert leftovers <= jobs, "a refused upload was kept"


TOKEN_FOR = {None: None, "wrong": "wrong", "json": TOKEN}
JSON = {"content-type": "application/json"}
