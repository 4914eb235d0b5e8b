"""`vosd segment`, the README's first command, through the real CLI: a synthetic H.264 clip, a random
small network, and the three outputs; bad inputs end in one clear line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from streamer.cli.app import app
from streamer.masks import read_index_mask
from videos import write_first_mask, write_moving_shape_video
from workers.xmem.network import NetworkSpec
from workers.xmem.random_init import write_random_checkpoint

FRAMES = 12


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("segment")
    masks = write_moving_shape_video(directory / "clip.mp4", frames=FRAMES, objects=2)
    return {
        "video": directory / "clip.mp4",
        "mask": write_first_mask(directory / "first.png", masks[0]),
        "model": write_random_checkpoint(directory / "small.pth", NetworkSpec.small(), seed=3),
    }


def test_segment_writes_overlay_masks_and_rle_for_every_frame(clip, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "segment", str(clip["video"]), "--mask", str(clip["mask"]), "-o", str(out / "overlay.mp4"),
            "--masks", str(out / "masks"), "--rle", str(out / "masks.jsonl"), "--model", str(clip["model"]),
            "--size", "64", "--device", "cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with av.open(str(out / "overlay.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (120, 160, 3)
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{i:05d}.png" for i in range(FRAMES)]
    lines = [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    first = read_index_mask(out / "masks" / "00000.png")
    given = read_index_mask(clip["mask"])
    for label in (1, 2):  # frame 0 is the given mask, back at source size after the 64-pixel model
        overlap = np.logical_and(first == label, given == label).sum()
        assert overlap / max(np.logical_or(first == label, given == label).sum(), 1) > 0.8
    assert not list(out.glob("*.part"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mask": "missing.png"}, "missing.png"),
        ({"video": "missing.mp4"}, "missing.mp4"),
        ({"model": "missing.pth"}, "missing.pth"),
    ],
)
def test_segment_bad_inputs_fail_in_one_line(
    clip, tmp_path: Path, change: dict[str, str], message: str
) -> None:
    paths = {name: str(path) for name, path in clip.items()}
    paths.update({name: str(tmp_path / value) for name, value in change.items()})
    result = CliRunner().invoke(
        app,
        ["segment", paths["video"], "--mask", paths["mask"], "-o", str(tmp_path / "o.mp4"),
         "--model", paths["model"], "--size", "64", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o.mp4").exists()


AUTO_CONFIG = """\
# Thresholds loose enough for the bundled TMO-lite on a 160x120 synthetic clip at TMO's 224 input.
auto:
  stable_frames: 2
  stable_iou: 0.2
  min_confidence: 0.5
  flow: dis
"""


def test_segment_without_a_mask_runs_auto_mode_and_reports_the_seed(clip, tmp_path: Path) -> None:
    config = tmp_path / "auto.yaml"
    config.write_text(AUTO_CONFIG)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["segment", str(clip["video"]), "-o", str(out / "overlay.mp4"), "--rle", str(out / "masks.jsonl"),
         "--config", str(config), "--size", "64", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mode auto" in result.output and "vosd-tmo-lite.pth" in result.output
    lines = [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    events = [line["event"] for line in lines if "event" in line]
    assert events and events[0] == {"kind": "seed", "frame": events[0]["frame"], "reason": "first"}
    seeded = events[0]["frame"]
    assert seeded >= 1, "two stable TMO frames are needed"
    assert all(not line["objects"] for line in lines[:seeded]), "searching frames have no object"
    assert lines[seeded]["objects"], "the seed frame has the object"
    assert f"seed at frame {seeded} (first)" in " ".join(result.output.split())
    with av.open(str(out / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == FRAMES


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--mode", "xmem"], "needs a first-frame mask"),
        (["--mode", "auto", "--mask", "MASK"], "takes no mask"),
        (["--objects", "2", "--mode", "tmo"], "--objects applies to mode auto only"),
    ],
)
def test_segment_mode_errors_are_one_line(clip, tmp_path: Path, arguments: list[str], message: str) -> None:
    arguments = [str(clip["mask"]) if a == "MASK" else a for a in arguments]
    result = CliRunner().invoke(
        app, ["segment", str(clip["video"]), "-o", str(tmp_path / "o.mp4"), "--device", "cpu", *arguments])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "o.mp4").exists()
