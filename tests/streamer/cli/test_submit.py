"""`vosd submit` records exactly what the user chose: output flags left unset stay unset, so the serving
daemon's writer config decides (a live-camera profile writes no PNGs unless the job asks for them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_lib
import yaml
from typer.testing import CliRunner

from streamer.cli.app import app
from streamer.daemon.lifecycle import split_options
from streamer.queue.jobs import JobQueue, KeyNames
from videos import write_first_mask, write_moving_shape_video


@pytest.fixture
def submitted(tmp_path: Path, redis_url: str):
    masks = write_moving_shape_video(tmp_path / "clip.mp4", frames=4)
    mask = write_first_mask(tmp_path / "first.png", masks[0])
    config = tmp_path / "vosd.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "redis": {"url": redis_url}}))
    queue = JobQueue(redis_lib.Redis.from_url(redis_url, decode_responses=True), keys=KeyNames("vosd"))

    def submit(*flags: str) -> dict:
        args = ["submit", str(tmp_path / "clip.mp4"), "--mask", str(mask), *flags, "--config", str(config)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return queue.get(result.output.strip().splitlines()[-1]).options

    yield submit
    queue.redis.close()


def test_output_flags_left_unset_defer_to_the_daemons_writer_config(submitted, tmp_path: Path) -> None:
    options = submitted()
    assert not {"overlay", "masks", "rle"} & set(options)
    live_camera = ("overlay", "rle")  # configs/live-camera.yaml: writer.masks is false
    outputs, _, _ = split_options("j", options, tmp_path, live_camera)
    assert (outputs["overlay"], outputs["masks"], outputs["rle"]) == (True, False, True)


def test_output_flags_given_override_the_config(submitted, tmp_path: Path) -> None:
    options = submitted("--masks", "--no-rle")
    assert (options["masks"], options["rle"]) == (True, False) and "overlay" not in options
    outputs, _, _ = split_options("j", options, tmp_path, ("overlay", "rle"))
    assert (outputs["overlay"], outputs["masks"], outputs["rle"]) == (True, True, False)


def test_without_a_mask_the_job_is_in_auto_mode(tmp_path: Path, redis_url: str) -> None:
    write_moving_shape_video(tmp_path / "clip.mp4", frames=4)
    config = tmp_path / "vosd.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "redis": {"url": redis_url}}))
    queue = JobQueue(redis_lib.Redis.from_url(redis_url, decode_responses=True), keys=KeyNames("vosd"))

    def submit(*flags: str) -> tuple[int, str]:
        arguments = ["submit", str(tmp_path / "clip.mp4"), *flags, "--config", str(config)]
        result = CliRunner().invoke(app, arguments)
        return result.exit_code, result.output

    code, output = submit("--objects", "2")
    assert code == 0, output
    record = queue.get(output.strip().splitlines()[-1])
    assert record.mask_path is None and record.mode == "auto"
    assert (record.options["mode"], record.options["objects"]) == ("auto", 2)
    assert (record.auto_state, record.seeds, record.last_seed_frame) == (None, 0, None)
    code, output = submit("--mode", "tmo")
    assert code == 0 and queue.get(output.strip().splitlines()[-1]).mode == "tmo"
    code, output = submit("--mode", "xmem")
    assert code == 2 and "needs a first-frame mask" in output
    assert len(queue.redis.keys("vosd:job:*")) == 2, "nothing queued for the refused one"
    queue.redis.close()
