"""TMO training: the stills + video-flow data, the lite variant's ImageNet start, and tiny real runs through
`vosd train --method tmo` (checkpoints that load, finite losses, resume). Data is made in each test."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from repo_paths import REPO
from workers.tmo import load_network
from workers.tmo.flow import flow_to_colour
from workers.training.cli import train_command
from workers.training.datasets import StillLoader, list_davis
from workers.training.pretrained import lite0_imagenet_state
from workers.training.tmo_config import TMOTrainConfig
from workers.training.tmo_data import (
    Geometry,
    TMOAugmentation,
    TMOMixDataset,
    flip_flow,
    inference_window,
    list_saliency,
)
from workers.training.tmo_trainer import lite_imagenet_network, train_tmo
from workers.training.trainer import TrainingError, read_training_state

SIDE = 64


def square_frame(left: int, top: int = 20, size: int = 24, shape: tuple[int, int] = (72, 96)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a bright textured square; (RGB frame, 0/255 mask)."""
    rng = np.random.default_rng(7)
    frame = (rng.integers(0, 80, (*shape, 3))).astype(np.uint8)
    frame[top:top + size, left:left + size] = 160 + rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
    mask = np.zeros(shape, np.uint8)
    mask[top:top + size, left:left + size] = 255
    return frame, mask


def write_data(root: Path) -> tuple[Path, Path]:
    """A DUTS-style still folder (images/ + masks/) and a DAVIS folder with one 4-frame video."""
    stills = root / "stills"
    for folder in ("images", "masks"):
        (stills / folder).mkdir(parents=True)
    for index in range(3):
        frame, mask = square_frame(10 + 20 * index)
        Image.fromarray(frame).save(stills / "images" / f"s{index}.jpg", quality=95)
        Image.fromarray(mask).save(stills / "masks" / f"s{index}.png")
    davis = root / "davis"
    for folder in ("JPEGImages", "Annotations"):
        (davis / folder / "480p" / "square").mkdir(parents=True)
    for index in range(4):
        frame, mask = square_frame(10 + 6 * index)
        Image.fromarray(frame).save(davis / "JPEGImages" / "480p" / "square" / f"{index:05d}.jpg", quality=95)
        Image.fromarray(mask).save(davis / "Annotations" / "480p" / "square" / f"{index:05d}.png")
    return stills, davis


def test_stills_use_the_image_as_motion_and_video_frames_use_flow(tmp_path: Path) -> None:
    stills, davis = write_data(tmp_path)
    assert [p.name for p, _ in list_saliency(stills)] == ["s0.jpg", "s1.jpg", "s2.jpg"]
    augmentation = TMOAugmentation(crop_size=SIDE, hflip_prob=0.0, vflip_prob=0.0)
    dataset = TMOMixDataset(StillLoader(list_saliency(stills)), list_davis(davis), stills_per_epoch=2,
                            video_frames_per_epoch=3, augmentation=augmentation)
    assert len(dataset) == 5
    torch.manual_seed(0)
    still, video = dataset[0], dataset[4]
    for sample in (still, video):
        assert sample["image"].shape == sample["motion"].shape == (3, SIDE, SIDE)
        assert sample["mask"].shape == (SIDE, SIDE) and set(sample["mask"].unique().tolist()) <= {0, 1}
        assert 0 < int(sample["mask"].sum()) < SIDE * SIDE
    assert not still["flow"] and torch.equal(still["motion"], still["image"])
    assert video["flow"] and not torch.equal(video["motion"], video["image"])
    # the square moved right: its flow colour is not white and differs from the still background's
    inside = video["motion"][:, video["mask"] == 1].mean(dim=1)
    outside = video["motion"][:, video["mask"] == 0].mean(dim=1)
    assert float((inside - outside).abs().sum()) > 0.3


def test_flips_mirror_the_flow_and_reverse_its_component() -> None:
    flow = np.zeros((4, 6, 2), np.float32)
    flow[1, 2] = (3.0, -1.0)
    mirrored = flip_flow(flow, Geometry((0, 0, 4, 6), hflip=True, vflip=False))
    assert tuple(mirrored[1, 3]) == (-3.0, -1.0)
    upside_down = flip_flow(flow, Geometry((0, 0, 4, 6), hflip=False, vflip=True))
    assert tuple(upside_down[2, 2]) == (3.0, 1.0)
    # the colour of a mirrored rightward motion is the colour of leftward motion
    right = np.tile(np.array([2.0, 0.0], np.float32), (3, 3, 1))
    left = flip_flow(right, Geometry((0, 0, 3, 3), hflip=True, vflip=False))
    assert np.array_equal(flow_to_colour(left), flow_to_colour(-right))


def test_inference_window_keeps_object_scale() -> None:
    assert inference_window(192, 384) == pytest.approx(0.25)
    assert inference_window(384, 224) == 1.0


def test_lite_network_starts_from_imagenet_in_both_encoders() -> None:
    network = lite_imagenet_network(SIDE)
    trunk = lite0_imagenet_state(stride32=True)
    for encoder in (network.app_encoder, network.mo_encoder):
        for name, tensor in encoder.trunk.state_dict().items():
            assert torch.equal(tensor, trunk[name]), name
    # the stride-16 part is exactly what XMem's lite key encoder gets
    stride16 = lite0_imagenet_state()
    assert all(torch.equal(trunk[name], tensor) for name, tensor in stride16.items())
    assert any(name.startswith("stride32.") for name in trunk)


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("other")(lambda: None)  # a second command keeps "train" as a subcommand name
    return app


def tiny_run(tmp_path: Path, iterations: int, *extra: str) -> Path:
    """`vosd train --method tmo` on the lite variant at 64x64, batch 2; the data is written once."""
    stills, davis = tmp_path / "data" / "stills", tmp_path / "data" / "davis"
    if not stills.exists():
        write_data(tmp_path / "data")
    result = CliRunner().invoke(cli(), [
        "train", "--method", "tmo", "--variant", "lite", "--static-root", str(stills), "--davis-root",
        str(davis), "--iterations", str(iterations), "--batch-size", "2", "--crop-size", str(SIDE),
        "--input-size", str(SIDE), "--num-workers", "0", "--device", "cpu", "--log-every", "1",
        "--output-dir", str(tmp_path), "--exp-id", "tiny", *extra])
    assert result.exit_code == 0, result.output
    return tmp_path / "tiny"


def test_two_iterations_write_a_checkpoint_that_loads_and_a_finite_loss(tmp_path: Path) -> None:
    folder = tiny_run(tmp_path, 2)
    network = load_network(folder / "tiny.pth", input_size=SIDE)
    assert network.variant == "lite"
    keys = torch.load(folder / "tiny_2.pth", weights_only=True).keys()
    assert all(key.startswith(("vos.app_encoder.", "vos.mo_encoder.", "vos.decoder.")) for key in keys)
    initial = lite_imagenet_network(SIDE).state_dict()
    changed = [name for name, value in network.state_dict().items() if not torch.equal(value, initial[name])]
    assert any(name.startswith("decoder.") for name in changed)
    assert any(name.startswith("mo_encoder.") for name in changed)
    rows = (folder / "losses.csv").read_text().splitlines()
    assert len(rows) == 3
    losses = [float(row.split(",")[4]) for row in rows[1:]]
    assert all(math.isfinite(loss) and 0 < loss < 5 for loss in losses)
    assert (folder / "losses.png").is_file()
    logits = network.segment(torch.rand(1, 3, 48, 80), torch.rand(1, 3, 48, 80))
    assert logits.shape == (1, 2, 48, 80) and torch.isfinite(logits).all()


def test_resume_continues_the_iteration_count_and_the_optimizer(tmp_path: Path) -> None:
    folder = tiny_run(tmp_path, 2)
    assert read_training_state(folder)["iteration"] == 2
    tiny_run(tmp_path, 3, "--resume")
    state = read_training_state(folder)
    assert state["iteration"] == 3 and state["weights"] == "tiny_3.pth"
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {3}
    iterations = [row.split(",")[2] for row in (folder / "losses.csv").read_text().splitlines()[1:]]
    assert iterations == ["1", "2", "3"]


def test_config_rejects_a_run_without_data_and_round_trips() -> None:
    with pytest.raises(ValueError, match="static-root"):
        TMOTrainConfig()
    config = TMOTrainConfig(variant="lite", static_root=Path("s"), held_out=("dog",), input_size=160)
    assert TMOTrainConfig.from_dict(config.to_dict()) == config


def test_resuming_an_xmem_run_as_tmo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    torch.save({"stages": "0", "iteration": 1}, tmp_path / "x" / "training_state.pth")
    with pytest.raises(TrainingError, match="XMem run"):
        train_tmo(TMOTrainConfig(exp_id="x", output_dir=tmp_path, variant="lite", static_root=tmp_path,
                                 resume=True, device="cpu"))


def test_two_gloo_processes_keep_identical_weights(tmp_path: Path) -> None:
    stills, davis = write_data(tmp_path / "data")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "workers.training.trainer", "--method", "tmo", "--variant", "lite",
        "--static-root", str(stills),
        "--davis-root", str(davis), "--iterations", "2", "--batch-size", "2", "--crop-size", str(SIDE),
        "--input-size", str(SIDE), "--num-workers", "0", "--device", "cpu", "--log-every", "1",
        "--output-dir", str(tmp_path), "--exp-id", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "weights identical on 2 ranks" in output
    assert len((tmp_path / "ddp" / "losses.csv").read_text().splitlines()) == 3, "only rank 0 writes the log"
    assert load_network(tmp_path / "ddp" / "ddp.pth").variant == "lite"
