"""Outputs: the overlay MP4 read back with PyAV, palette PNGs, RLE lines, ordering, atomicity, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from repo_paths import TESTS
from streamer.masks import DAVIS_PALETTE, overlay, read_index_mask, rle_decode
from streamer.output.writer import OutputWriter, WriterError, durable_frames
from videos import interior, render_moving_shapes

pytestmark = pytest.mark.timeout(60)

SIZE = (160, 120)
FRAMES = 30


@pytest.fixture(scope="module")
def scene() -> tuple[list[np.ndarray], list[np.ndarray]]:
    frames, masks = zip(*render_moving_shapes(FRAMES, SIZE, objects=2), strict=True)
    return list(frames), list(masks)


@dataclass(frozen=True)
class StreamFacts:
    """What the tests check of an encoded stream, read while the container is open (PyAV 18 refuses after)."""

    codec: str
    width: int
    height: int
    average_rate: Fraction | None
    pix_fmt: str | None


def _decode(path: Path) -> tuple[StreamFacts, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        images = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        facts = StreamFacts(stream.codec_context.name, stream.width, stream.height, stream.average_rate,
                            stream.codec_context.pix_fmt)
        return facts, images


def _rle_masks(path: Path) -> list[tuple[int, np.ndarray]]:
    result = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        mask = np.zeros(record["size"], dtype=np.uint8)
        for item in record["objects"]:
            mask[rle_decode(item["rle"])] = item["id"]
        result.append((record["frame"], mask))
    return result


def _check_masks(out: Path, masks: list[np.ndarray]) -> None:
    names = sorted(os.listdir(out / "masks"))
    assert names == [f"{i:05d}.png" for i in range(len(masks))]
    for i, mask in enumerate(masks):
        with Image.open(out / "masks" / names[i]) as image:
            assert image.mode == "P"
            assert np.array_equal(np.asarray(image), mask)
            assert np.array_equal(np.asarray(image.getpalette()[:12]).reshape(4, 3), DAVIS_PALETTE[:4])
    decoded = _rle_masks(out / "masks.jsonl")
    assert [index for index, _ in decoded] == list(range(len(masks)))
    assert all(np.array_equal(got, want) for (_, got), want in zip(decoded, masks, strict=True))


def test_overlay_mp4_pngs_and_rle_round_trip(tmp_path: Path, scene) -> None:
    frames, masks = scene
    out = tmp_path / "job"
    with OutputWriter(out, fps=24, source_size=SIZE, alpha=0.5) as writer:
        for i, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
            writer.write(i, frame, mask)
        assert writer.frames_written == FRAMES
    data = (out / "overlay.mp4").read_bytes()
    assert data.find(b"moov") < data.find(b"mdat"), "moov must be at the front (faststart) for browsers"
    stream, images = _decode(out / "overlay.mp4")
    assert (stream.codec, stream.width, stream.height) == ("h264", 160, 120)
    assert stream.average_rate == 24 and stream.pix_fmt == "yuv420p"
    assert len(images) == FRAMES
    for i in (0, 15, 29):  # blended where the mask is set, the plain frame elsewhere
        expected = overlay(frames[i], masks[i], 0.5).astype(float)
        got = images[i].astype(float)
        for label in (1, 2):
            inside = interior(masks[i] == label)
            assert np.abs(got[inside] - expected[inside]).mean() < 8
            assert np.abs(got[inside] - frames[i][inside]).mean() > 40
        outside = interior(masks[i] == 0)
        assert np.abs(got[outside] - frames[i][outside].astype(float)).mean() < 8
    _check_masks(out, masks)


def test_working_size_masks_are_upscaled_and_odd_sizes_encode(tmp_path: Path) -> None:
    size = (161, 121)
    frames, masks = zip(*render_moving_shapes(6, size, objects=2), strict=True)
    small = [cv2.resize(m, (80, 60), interpolation=cv2.INTER_NEAREST) for m in masks]
    with OutputWriter(tmp_path, fps=12.5, source_size=size) as writer:
        for i in range(6):
            writer.write(i, frames[i], small[i])
    stream, images = _decode(tmp_path / "overlay.mp4")
    assert (stream.width, stream.height, len(images), stream.average_rate) == (162, 122, 6, 12.5)
    for i in range(6):
        assert np.array_equal(
            read_index_mask(tmp_path / "masks" / f"{i:05d}.png"),
            cv2.resize(small[i], size, interpolation=cv2.INTER_NEAREST),
        )


def test_duplicates_and_out_of_order_frames_are_written_once_in_order(tmp_path: Path, scene) -> None:
    frames, masks = scene
    rng = np.random.default_rng(5)
    order = list(range(12)) + list(range(8))  # a restarted worker resends from frame 0
    tail = list(range(12, FRAMES))
    for start in range(0, len(tail), 6):  # shuffled inside windows smaller than the reorder buffer
        chunk = tail[start : start + 6]
        order += [int(i) for i in rng.permutation(chunk)] + chunk[:2]
    writer = OutputWriter(tmp_path, fps=24, source_size=SIZE, reorder_window=8)
    for i in order:
        writer.write(i, frames[i], masks[i])
    report = writer.close(expected_frames=FRAMES)
    assert report.frames_written == FRAMES and report.gaps == [] and report.late == 0
    assert report.duplicates == len(order) - FRAMES
    _check_masks(tmp_path, masks)
    _, images = _decode(tmp_path / "overlay.mp4")
    expected = [overlay(f, m, 0.5).astype(np.int16) for f, m in zip(frames, masks, strict=True)]
    for i, image in enumerate(images):  # each encoded frame is closest to its own index's overlay
        errors = [np.abs(image.astype(np.int16) - e).mean() for e in expected]
        assert int(np.argmin(errors)) == i


def test_missing_frame_becomes_a_reported_gap_and_late_arrival_is_dropped(tmp_path: Path, scene) -> None:
    _, masks = scene
    writer = OutputWriter(masks_dir=tmp_path / "masks", rle_path=tmp_path / "masks.jsonl", fps=24,
                          source_size=SIZE, reorder_window=4)
    for i in [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]:
        writer.write(i, None, masks[i])
    assert writer.report.gaps == [(5, 5)]
    writer.write(5, None, masks[5])
    report = writer.close(expected_frames=14)
    assert report.late == 1 and report.gaps == [(5, 5), (12, 13)] and report.missing_frames == 3
    assert report.frames_written == 11
    assert [index for index, _ in _rle_masks(tmp_path / "masks.jsonl")] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert not (tmp_path / "masks" / "00005.png").exists()


def test_nothing_under_final_names_before_close_and_abort_removes_everything(tmp_path: Path, scene) -> None:
    frames, masks = scene
    out = tmp_path / "job"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    writer = OutputWriter(out, fps=24, source_size=SIZE)
    for i in range(FRAMES):
        writer.write(i, frames[i], masks[i])
        names = {p.name for p in out.iterdir()}
        assert {"keep.txt", "masks.part", "masks.jsonl.part"} <= names
        assert names <= {"keep.txt", "overlay.mp4.part", "masks.part", "masks.jsonl.part"}
    assert (out / "overlay.mp4.part").stat().st_size > 0
    assert len(list((out / "masks.part").glob("*.png"))) == FRAMES  # masks are durable as soon as written
    writer.abort()
    assert {p.name for p in out.iterdir()} == {"keep.txt"}
    with pytest.raises(RuntimeError), OutputWriter(out, fps=24, source_size=SIZE) as failing:
        failing.write(0, frames[0], masks[0])
        raise RuntimeError("job failed")
    assert {p.name for p in out.iterdir()} == {"keep.txt"}


def test_a_rerun_replaces_old_outputs_only_at_close(tmp_path: Path, scene) -> None:
    frames, masks = scene
    with OutputWriter(tmp_path, fps=24, source_size=SIZE) as writer:
        for i in range(4):
            writer.write(i, frames[i], masks[i])
    writer = OutputWriter(tmp_path, fps=24, source_size=SIZE)
    for i in range(FRAMES):
        writer.write(i, frames[i], masks[i])
    # the earlier result stays whole until the new one is done
    assert len(os.listdir(tmp_path / "masks")) == 4
    writer.close()
    _check_masks(tmp_path, masks)
    assert not any(p.name.endswith((".part", ".old")) for p in tmp_path.iterdir())


def test_bad_input_is_rejected_with_clear_errors(tmp_path: Path, scene) -> None:
    frames, masks = scene
    writer = OutputWriter(tmp_path, fps=24, source_size=SIZE)
    with pytest.raises(WriterError, match="needs the RGB frame"):
        writer.write(0, None, masks[0])
    with pytest.raises(WriterError, match="at the source size"):
        writer.write(0, frames[0][:60], masks[0])
    with pytest.raises(WriterError, match="uint8"):
        writer.write(0, frames[0], masks[0].astype(np.int32))
    writer.abort()


CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from streamer.output.writer import OutputWriter
    from videos import render_moving_shapes
    out, stop = sys.argv[1], int(sys.argv[2])
    writer = OutputWriter(out, fps=24, source_size=(160, 120))
    for i, (frame, mask) in enumerate(render_moving_shapes(30, (160, 120), objects=2)):
        if i == stop:
            os.kill(os.getpid(), signal.SIGKILL)
        writer.write(i, frame, mask)
    """
)


def test_resume_after_a_killed_writer_keeps_durable_masks(tmp_path: Path, scene) -> None:
    frames, masks = scene
    out = tmp_path / "job"
    paths = [str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(out), "17"], env=env, timeout=60)
    assert done.returncode == -9
    assert not (out / "masks").exists() and not (out / "overlay.mp4").exists()
    assert durable_frames(out / "masks") == 17
    writer = OutputWriter(out, fps=24, source_size=SIZE, resume=True)
    assert writer.resume_from == 17
    for i in range(FRAMES):  # the overlay is rebuilt from frame 0; saved masks are reused before 17
        writer.write(i, frames[i], None if i < 17 else masks[i])
    report = writer.close(expected_frames=FRAMES)
    assert report.resumed_from == 17 and report.frames_written == FRAMES and report.gaps == []
    _check_masks(out, masks)
    _, images = _decode(out / "overlay.mp4")
    assert len(images) == FRAMES
    inside = interior(masks[5] == 1)
    assert np.abs(images[5][inside].astype(float) - overlay(frames[5], masks[5])[inside]).mean() < 8


def test_seed_events_go_into_their_frames_rle_lines_and_the_report(tmp_path: Path, scene) -> None:
    frames, masks = scene
    seed = {"kind": "seed", "frame": 2, "reason": "first"}
    reseed = {"kind": "reseed", "frame": 4, "reason": "cut"}
    with OutputWriter(rle_path=tmp_path / "masks.jsonl", fps=24, source_size=SIZE) as writer:
        for i in (1, 0, 2, 4, 3):  # out of order: events travel with their frames through the reorder buffer
            writer.write(i, frames[i], masks[i], {2: seed, 4: reseed}.get(i))
    lines = [json.loads(line) for line in (tmp_path / "masks.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2, 3, 4]
    assert [line.get("event") for line in lines] == [None, None, seed, None, reseed]
    assert writer.report.events == [seed, reseed]
