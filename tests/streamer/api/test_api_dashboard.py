"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright): submit an upload
with a PNG mask and watch it reach done, submit a path with a mask drawn as polygons on its first frame,
open the live preview of a long job, save a screenshot to docs/dashboard.png and cancel that job. Any
JavaScript error on the page fails the test."""

from __future__ import annotations

import re
import shutil
from typing import Any

import pytest

from repo_paths import REPO

from .conftest import TOKEN, Api

pytestmark = pytest.mark.timeout(300)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_dashboard_submits_watches_and_draws_a_mask(api: Api) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(api.url)
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")

        page.set_input_files("#video", str(api.media / "shapes.mp4"))
        page.set_input_files("#mask", str(api.media / "first.png"))
        page.click("#submit-button")
        uploaded = _queued_job(page, expect, previous=None)
        expect(page.locator(f'tr[data-id="{uploaded}"] .state')).to_have_text("done", timeout=120_000)

        page.set_input_files("#video", [])
        page.set_input_files("#mask", [])
        page.fill("#source", str(api.media / "shapes.mp4"))
        page.click("#load-frame")
        canvas = page.locator("#canvas")
        expect(canvas).to_be_visible(timeout=30_000)
        box = canvas.bounding_box()
        assert box is not None
        for x, y in ((0.1, 0.3), (0.35, 0.3), (0.35, 0.7), (0.1, 0.7)):
            page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.click("#next-object")
        for x, y in ((0.6, 0.1), (0.9, 0.1), (0.75, 0.45)):
            page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.click("#close-polygon")
        page.fill("#max-frames", "8")
        page.click("#submit-button")
        drawn = _queued_job(page, expect, previous=uploaded)
        expect(page.locator(f'tr[data-id="{drawn}"] .state')).to_have_text("done", timeout=120_000)
        with api.client() as client:
            job = client.get(f"/jobs/{drawn}").json()
        assert job["frames_done"] == 8 and job["mask_path"].endswith("/mask.png")

        page.fill("#max-frames", "")
        page.fill("#source", str(api.media / "long.mp4"))
        page.set_input_files("#mask", str(api.media / "long-first.png"))
        page.click("#submit-button")
        long = _queued_job(page, expect, previous=drawn)
        page.locator(f'tr[data-id="{long}"] button.preview').click(timeout=60_000)
        page.wait_for_function("document.getElementById('preview').naturalWidth > 0", timeout=30_000)
        page.screenshot(path=str(REPO / "docs" / "dashboard.png"), full_page=True)
        page.locator(f'tr[data-id="{long}"] button.cancel').click()
        expect(page.locator(f'tr[data-id="{long}"] .state')).to_have_text("cancelled", timeout=60_000)
        browser.close()
        assert errors == []


def _queued_job(page: Any, expect: Any, *, previous: str | None) -> str:
    """The id in the page's "Job ID queued." message for the submission just made: other messages (hints
    such as "Click around each object...") and the previous job's message are waited out."""
    other = "" if previous is None else rf"(?!{re.escape(previous)} )"
    pattern = re.compile(rf"^Job {other}(\w+) queued\.$")
    expect(page.locator("#message")).to_have_text(pattern, timeout=30_000)
    found = pattern.match(page.locator("#message").inner_text())
    assert found is not None
    return found.group(1)
