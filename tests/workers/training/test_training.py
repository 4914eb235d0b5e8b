"""Training: losses on hand cases, the clip forward, short CLI runs, resume, and a two-process gloo run."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from typer.testing import CliRunner

from repo_paths import REPO
from workers.imagenet import IMAGENET_MEAN, IMAGENET_STD
from workers.training.augment import ClipAugmentation, video_augmentation
from workers.training.cli import plot_command, train_command
from workers.training.config import DEFAULT_STAGES, TrainConfig
from workers.training.losses import (
    bootstrap_fraction,
    bootstrapped_cross_entropy,
    clip_loss,
    dice_loss,
    frame_loss,
)
from workers.training.model import anisotropic_similarity, draw_plan, object_selector, read_memory
from workers.training.pretrained import (
    PretrainedWeightsError,
    convert_lite0,
    fold_normalisation,
    lite0_imagenet_state,
    lite0_weights_path,
)
from workers.training.trainer import (
    STATE_FILE,
    TrainingError,
    freeze_parameters,
    hold_frozen_batchnorm,
    initial_network,
    read_training_state,
    train,
    training_network,
    warn_unmatched_held_out,
)
from workers.xmem.backbones import LITE_BN_EPS, OTHERS_CHANNEL, LiteKeyEncoder
from workers.xmem.checkpoint import load_network
from workers.xmem.network import NetworkSpec
from workers.xmem.random_init import make_random_network

TINY = dict(variant="small", iterations=2, batch_size=2, crop_size=64, num_workers=0, device="cpu",
            log_every=1, synthetic_clips=4)


# ------------------------------------------------------------------------------------------------- losses


def test_bootstrap_fraction_follows_the_warm_up_schedule() -> None:
    assert bootstrap_fraction(0, 20_000, 70_000) == 1.0
    assert bootstrap_fraction(19_999, 20_000, 70_000) == 1.0
    assert bootstrap_fraction(45_000, 20_000, 70_000) == pytest.approx(0.575)
    assert bootstrap_fraction(70_000, 20_000, 70_000) == pytest.approx(0.15)
    assert bootstrap_fraction(10**6, 20_000, 70_000) == pytest.approx(0.15)


def test_bootstrapped_cross_entropy_keeps_the_hardest_pixels() -> None:
    # two classes, four pixels; target class 0 everywhere; pixel losses are log(1 + e^d) for logit gaps d
    gaps = torch.tensor([0.0, 1.0, 2.0, 3.0])
    logits = torch.stack([torch.zeros(4), gaps]).view(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    losses = [math.log1p(math.exp(d)) for d in gaps.tolist()]
    assert bootstrapped_cross_entropy(logits, target, 1.0).item() == pytest.approx(sum(losses) / 4)
    hardest_half = (losses[2] + losses[3]) / 2
    assert bootstrapped_cross_entropy(logits, target, 0.5).item() == pytest.approx(hardest_half)
    assert bootstrapped_cross_entropy(logits, target, 0.01).item() == pytest.approx(losses[3])


def test_dice_loss_hand_cases() -> None:
    square = torch.zeros(1, 4, 4)
    square[0, :2, :2] = 1
    assert dice_loss(square, square).item() == pytest.approx(0.0)
    assert dice_loss(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)).item() == pytest.approx(0.0)
    other = torch.zeros(1, 4, 4)
    other[0, 2:, 2:] = 1
    assert dice_loss(square, other).item() == pytest.approx(1 - 1 / 9)
    half = square * 0.5
    assert dice_loss(half, square).item() == pytest.approx(1 - (2 * 2 + 1) / (2 + 4 + 1))
    two = torch.stack([square[0], other[0]])
    assert dice_loss(two, torch.stack([square[0], square[0]])).item() == pytest.approx((1 - 1 / 9) / 2)


def test_frame_loss_scores_each_sample_on_its_own_objects() -> None:
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[:, :2, :2] = 1
    logits = torch.randn(2, 3, 4, 4)
    logits[1, 2] = 50.0  # a padding channel of sample 1 (one object) screaming "object 2"
    prob = torch.softmax(logits, dim=1)
    ce, dice = frame_loss(logits, prob, labels, [2, 1], 1.0)
    expected_ce = (F.cross_entropy(logits[:1], labels[:1]) + F.cross_entropy(logits[1:, :2], labels[1:])) / 2
    assert ce.item() == pytest.approx(expected_ce.item(), rel=1e-5)
    expected_dice = (dice_loss(prob[0, 1:3], torch.stack([labels[0] == 1, labels[0] == 2]))
                     + dice_loss(prob[1, 1:2], (labels[1] == 1)[None])) / 2
    assert dice.item() == pytest.approx(expected_dice.item(), rel=1e-5)


def test_clip_loss_sums_predicted_frames() -> None:
    labels = torch.randint(0, 3, (1, 3, 4, 4))
    logits = [torch.randn(1, 3, 4, 4) for _ in range(2)]
    probs = [torch.softmax(x, dim=1) for x in logits]
    losses = clip_loss(logits, probs, labels, [2], 1.0)
    parts = [frame_loss(logits[i], probs[i], labels[:, i + 1], [2], 1.0) for i in range(2)]
    assert losses["ce"].item() == pytest.approx(sum(p[0].item() for p in parts), rel=1e-6)
    assert losses["dice"].item() == pytest.approx(sum(p[1].item() for p in parts), rel=1e-6)
    assert losses["total"].item() == pytest.approx(losses["ce"].item() + losses["dice"].item(), rel=1e-6)
    with pytest.raises(ValueError):
        clip_loss(logits[:1], probs[:1], labels, [2], 1.0)


# -------------------------------------------------------------------------------------------------- model


def test_plan_reads_all_earlier_frames_then_the_first_plus_random_ones() -> None:
    plan = draw_plan(batch=3, num_frames=8, num_ref_frames=3, deep_update_prob=0.0,
                     generator=torch.Generator().manual_seed(0))
    assert len(plan.references) == 7 and plan.deep_updates == (False,) * 6
    for t, frames in enumerate(plan.references, start=1):
        if t <= 3:
            assert frames.tolist() == [list(range(t))] * 3
        else:
            assert frames.shape == (3, 3)
            for row in frames.tolist():
                assert row[0] == 0 and len(set(row)) == 3 and all(1 <= f < t for f in row[1:])
    always = draw_plan(1, 5, 2, 1.0, torch.Generator().manual_seed(0))
    assert always.deep_updates == (True, True, True)


def test_similarity_and_full_softmax_readout_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    batch, key_dim, frames, objects, value_dim, h, w = 2, 4, 2, 3, 5, 2, 3
    memory_key = torch.randn(batch, frames, key_dim, h, w)
    shrinkage = torch.rand(batch, frames, 1, h, w) + 1
    values = torch.randn(batch, frames, objects, value_dim, h, w)
    query_key = torch.randn(batch, key_dim, h, w)
    selection = torch.rand(batch, key_dim, h, w)
    readout = read_memory(query_key, selection, memory_key, shrinkage, values)
    assert readout.shape == (batch, objects, value_dim, h, w)
    for b in range(batch):
        mem_k = memory_key[b].permute(1, 0, 2, 3).reshape(key_dim, -1)  # (Ck, M) frame-major
        mem_s = shrinkage[b].permute(1, 0, 2, 3).reshape(-1)
        mem_v = values[b].permute(1, 2, 0, 3, 4).reshape(objects, value_dim, -1)
        q = query_key[b].reshape(key_dim, -1)
        e = selection[b].reshape(key_dim, -1)
        similarity = torch.empty(mem_k.shape[1], q.shape[1])
        for m in range(mem_k.shape[1]):
            for p in range(q.shape[1]):
                distance = (e[:, p] * (mem_k[:, m] - q[:, p]) ** 2).sum()
                similarity[m, p] = -distance * mem_s[m] / math.sqrt(key_dim)
        assert torch.allclose(anisotropic_similarity(mem_k[None], mem_s[None, None], q[None], e[None])[0],
                              similarity, atol=1e-5)
        expected = torch.einsum("ncm,mp->ncp", mem_v, torch.softmax(similarity, dim=0))
        assert torch.allclose(readout[b].reshape(objects, value_dim, -1), expected, atol=1e-5)


@pytest.fixture(scope="module")
def small_network() -> torch.nn.Module:
    return training_network(make_random_network(NetworkSpec.small(), seed=0))


def test_clip_forward_predicts_later_frames_and_trains_end_to_end(small_network: torch.nn.Module) -> None:
    torch.manual_seed(0)
    labels = torch.zeros(2, 3, 64, 64, dtype=torch.long)
    labels[:, :, 8:30, 8:30] = 1
    labels[0, :, 36:60, 30:60] = 2
    first = F.one_hot(labels[:, 0], 3)[..., 1:].permute(0, 3, 1, 2).float()
    num_objects = torch.tensor([2, 1])
    plan = draw_plan(2, 3, 2, 0.2, torch.Generator().manual_seed(1))
    small_network.zero_grad()
    output = small_network(torch.randn(2, 3, 3, 64, 64), first, num_objects, plan)
    assert len(output.logits) == len(output.probs) == 2
    for logits, prob in zip(output.logits, output.probs, strict=True):
        assert logits.shape == prob.shape == (2, 3, 64, 64)
        assert torch.allclose(prob.sum(dim=1), torch.ones(2, 64, 64), atol=1e-5)
        assert torch.allclose(torch.softmax(logits, dim=1), prob, atol=1e-6)
        assert prob[1, 2].max() < 1e-6  # sample 1 has one object: its second channel is padding
    losses = clip_loss(output.logits, output.probs, labels, num_objects.tolist(), 1.0)
    losses["total"].backward()
    for name in ("key_encoder.conv1.weight", "key_proj.key_proj.weight", "value_encoder.conv1.weight",
                 "decoder.pred.weight", "decoder.hidden_update.transform.weight",
                 "value_encoder.hidden_reinforce.transform.weight"):
        gradient = dict(small_network.named_parameters())[name].grad
        assert gradient is not None and gradient.abs().sum() > 0, name
    assert object_selector(num_objects, 3).tolist() == [[1, 1, 0], [1, 0, 0]]


# ---------------------------------------------------------------------------------------------- schedules


def test_stage_scaling_moves_every_schedule_point() -> None:
    stage = DEFAULT_STAGES["3"].scaled(1000)
    assert (stage.iterations, stage.finetune_iterations, stage.lr_steps) == (1000, 100, (800,))
    assert (stage.bootstrap_start, stage.bootstrap_end) == (200, 700)
    assert [stage.max_skip_at(i) for i in (0, 99, 100, 300, 900)] == [5, 5, 10, 15, 5]
    config = TrainConfig(stages="03", iterations=10, batch_size=4, lr=1e-4)
    assert config.stage("0").batch_size == 4 and config.stage("3").lr == 1e-4
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        TrainConfig(stages="04")


# ------------------------------------------------------------------------------------------ training runs


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("plot")(plot_command)
    return app


def test_two_iterations_through_the_cli_save_a_loadable_checkpoint(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), [
        "train", "--stage", "0", "--variant", "small", "--iterations", "2", "--batch-size", "2",
        "--crop-size", "64", "--num-workers", "0", "--device", "cpu", "--log-every", "1",
        "--output-dir", str(tmp_path), "--exp-id", "tiny"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "tiny"
    network = load_network(folder / "tiny_s0.pth")
    assert network.spec.variant == "small"
    initial = make_random_network(NetworkSpec.small(), seed=14159265)
    changed = [name for name, value in network.state_dict().items()
               if not torch.equal(value, initial.state_dict()[name])]
    assert changed, "two AdamW steps should change the weights"
    assert load_network(folder / "tiny_s0_2.pth").state_dict().keys() == network.state_dict().keys()
    rows = (folder / "losses.csv").read_text().splitlines()
    assert rows[0].startswith("stage,step,iteration") and len(rows) == 3
    with Image.open(folder / "losses.png") as image:
        assert image.size[0] > 100
    result = CliRunner().invoke(cli(), ["plot", str(folder), "--output", str(tmp_path / "again.png")])
    assert result.exit_code == 0 and (tmp_path / "again.png").is_file()


def test_resume_continues_from_the_saved_iteration_with_optimizer_state(tmp_path: Path) -> None:
    first = TrainConfig(stages="0", exp_id="r", output_dir=tmp_path, **TINY)
    train(first)
    state = read_training_state(tmp_path / "r")
    assert (state["stage"], state["iteration"]) == ("0", 2)
    saved_weights = load_network(tmp_path / "r" / state["weights"]).state_dict()

    with pytest.raises(TrainingError):
        train(TrainConfig(stages="0", exp_id="elsewhere", output_dir=tmp_path, resume=True, **TINY))
    with pytest.raises(TrainingError):
        train(TrainConfig(stages="03", exp_id="r", output_dir=tmp_path, resume=True, **TINY))

    longer = TrainConfig(stages="0", exp_id="r", output_dir=tmp_path, resume=True,
                         **{**TINY, "iterations": 3})
    train(longer)
    state = read_training_state(tmp_path / "r")
    assert state["iteration"] == 3 and state["step"] == 3
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {3}, "AdamW's step count continues from the saved optimizer state"
    assert state["scheduler"]["last_epoch"] == 3
    iterations = [line.split(",")[2] for line in (tmp_path / "r" / "losses.csv").read_text().splitlines()[1:]]
    assert iterations == ["1", "2", "3"]
    # the resumed run started from the saved weights: three AdamW steps (about lr each) away from the
    # initial weights, not one
    resumed = load_network(tmp_path / "r" / "r_s0.pth").state_dict()
    initial = make_random_network(NetworkSpec.small(), seed=first.seed).state_dict()

    def moved(weights: dict[str, torch.Tensor]) -> float:
        return sum(float((weights[k] - initial[k]).abs().sum())
                   for k in initial if weights[k].is_floating_point())

    assert moved(resumed) > 1.15 * moved(saved_weights)
    assert (tmp_path / "r" / STATE_FILE).is_file()


def test_minutes_budget_stops_the_stage_saves_and_skips_later_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.training.trainer as trainer_module

    calls = iter(range(0, 10**6, 60))  # a clock that moves one minute each time the trainer reads it
    clock = type("Clock", (), {"monotonic": staticmethod(lambda: float(next(calls))),
                               "perf_counter": staticmethod(trainer_module.time.perf_counter)})
    monkeypatch.setattr(trainer_module, "time", clock)
    config = TrainConfig(stages="01", exp_id="m", output_dir=tmp_path, minutes=2.5,
                         **{**TINY, "iterations": 5})
    final = train(config)
    # deadline at 150 s: the checks at 60 s and 120 s let two iterations run, the one at 180 s stops
    assert final == tmp_path / "m" / "m_s0.pth"
    state = read_training_state(tmp_path / "m")
    assert (state["stage"], state["iteration"], state["weights"]) == ("0", 2, "m_s0_2.pth")
    assert load_network(final).spec.variant == "small"
    assert not list((tmp_path / "m").glob("m_s01*")), "stage 1 is skipped once the budget is spent"
    with pytest.raises(ValueError):
        TrainConfig(minutes=0)


def test_two_gloo_processes_keep_identical_weights(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "workers.training.trainer", "--stage", "0", "--variant", "small", "--iterations", "2",
        "--batch-size", "2", "--crop-size", "64", "--num-workers", "0", "--device", "cpu", "--log-every", "1",
        "--output-dir", str(tmp_path), "--exp-id", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "weights identical on 2 ranks" in output
    rows = (tmp_path / "ddp" / "losses.csv").read_text().splitlines()
    assert len(rows) == 3, "only rank 0 writes the log"
    assert load_network(tmp_path / "ddp" / "ddp_s0.pth").spec.variant == "small"


def test_held_out_names_matching_no_sequence_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("bear", "dog"):
        (tmp_path / "JPEGImages" / "480p" / name).mkdir(parents=True)
    config = TrainConfig(stages="3", davis_root=tmp_path, held_out=("dog", "dgo"))
    with caplog.at_level(logging.WARNING):
        warn_unmatched_held_out(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].endswith(": dgo")


# ----------------------------------------------------------------------------- lite variant: ImageNet weights


def to_minus_one_one(x: torch.Tensor) -> torch.Tensor:
    """The [-1, 1] input the EfficientNet weights expect, from an ImageNet-normalised image."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return 2 * (std * x + mean) - 1


@torch.no_grad()
def test_fold_normalisation_is_exact_away_from_the_border() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 3, 3, 3, generator=generator, dtype=torch.float64)
    norm = torch.nn.BatchNorm2d(32, eps=LITE_BN_EPS).double().eval()
    norm.weight.copy_(torch.rand(32, generator=generator) + 0.5)
    norm.bias.copy_(torch.randn(32, generator=generator))
    norm.running_mean.copy_(torch.randn(32, generator=generator))
    norm.running_var.copy_(torch.rand(32, generator=generator) + 0.5)
    x = torch.randn(2, 3, 32, 48, generator=generator, dtype=torch.float64)
    reference = norm(F.conv2d(to_minus_one_one(x), weight, stride=2, padding=1))
    folded_weight, folded_mean = fold_normalisation(weight, norm.running_mean)
    assert folded_weight.shape == weight.shape and folded_mean.shape == (32,)
    assert not torch.equal(folded_weight, weight)
    folded_norm = copy.deepcopy(norm)
    folded_norm.running_mean.copy_(folded_mean)
    folded = folded_norm(F.conv2d(x, folded_weight, stride=2, padding=1))
    assert folded.shape == reference.shape == (2, 32, 16, 24)
    # output row/column 0 read the zero padding above/left of the image; every other pixel is exact
    assert torch.allclose(folded[..., 1:, 1:], reference[..., 1:, 1:], rtol=1e-9, atol=1e-9)
    assert not torch.allclose(folded[..., 0, :], reference[..., 0, :], atol=1e-3)


@pytest.fixture(scope="module")
def lite0_raw() -> dict[str, torch.Tensor]:
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


@torch.no_grad()
def test_installed_lite0_weights_convert_to_the_lite_key_encoder(lite0_raw: dict[str, torch.Tensor]) -> None:
    assert lite0_weights_path().name == "efficientnet-lite0-57934424.pth"
    raw_stem = lite0_raw["_conv_stem.weight"].clone()
    converted = convert_lite0(lite0_raw)
    assert torch.equal(lite0_raw["_conv_stem.weight"], raw_stem), "the source state dict is not modified"
    encoder = LiteKeyEncoder()
    encoder.load_state_dict(converted, strict=True)
    assert converted.keys() == encoder.state_dict().keys()
    assert torch.equal(converted["stride16.5.project.1.running_var"],
                       lite0_raw["_blocks.10._bn2.running_var"])
    depthwise = lite0_raw["_blocks.0._depthwise_conv.weight"]
    assert torch.equal(converted["stride2.0.depthwise.0.weight"], depthwise)
    weight, mean = fold_normalisation(lite0_raw["_conv_stem.weight"], lite0_raw["_bn0.running_mean"])
    assert torch.equal(converted["stem.0.weight"], weight)
    assert torch.equal(converted["stem.1.running_mean"], mean)
    assert torch.equal(converted["stem.1.running_var"], lite0_raw["_bn0.running_var"])
    # the converted encoder on ImageNet-normalised frames = the original weights on [-1, 1] frames, except
    # within the reach of the stem's border (three f4 pixels)
    original = LiteKeyEncoder().eval()
    original.load_state_dict({**converted, "stem.0.weight": lite0_raw["_conv_stem.weight"],
                              "stem.1.running_mean": lite0_raw["_bn0.running_mean"]}, strict=True)
    encoder.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours, theirs = encoder(x)[2], original(to_minus_one_one(x))[2]
    assert torch.allclose(ours[..., 3:, 3:], theirs[..., 3:, 3:], atol=1e-4)
    assert theirs.abs().max() > 0.1


def test_lite0_state_with_a_missing_or_misshapen_block_is_refused(lite0_raw: dict[str, torch.Tensor]) -> None:
    without = {name: tensor for name, tensor in lite0_raw.items() if not name.startswith("_blocks.3.")}
    with pytest.raises(PretrainedWeightsError, match="EfficientNet-Lite0 tensors up to stride 16"):
        convert_lite0(without)
    misshapen = {**lite0_raw, "_blocks.4._project_conv.weight": torch.zeros(24, 144, 3, 3)}
    with pytest.raises(PretrainedWeightsError, match=r"_blocks\.4\._project_conv\.weight"):
        convert_lite0(misshapen)


def test_lite0_imagenet_state_reads_the_installed_package(lite0_raw: dict[str, torch.Tensor]) -> None:
    state = lite0_imagenet_state()
    expected = convert_lite0(lite0_raw)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[name], expected[name]) for name in expected)


@pytest.fixture(scope="module")
def lite_initial() -> torch.nn.Module:
    """The lite variant's starting network with the default seed (what `vosd train --variant lite` uses)."""
    return initial_network(TrainConfig(variant="lite"), None)


def test_lite_initial_network_has_the_imagenet_key_encoder_and_a_silent_others_channel(
    lite_initial: torch.nn.Module,
) -> None:
    assert lite_initial.spec == NetworkSpec.lite()
    imagenet = lite0_imagenet_state()
    kept = lite_initial.key_encoder.state_dict()
    assert all(torch.equal(kept[name], imagenet[name]) for name in imagenet)
    weight = lite_initial.value_encoder.conv1.weight
    assert OTHERS_CHANNEL == 4 and weight.shape[1] == 5
    assert torch.equal(weight[:, OTHERS_CHANNEL], torch.zeros_like(weight[:, OTHERS_CHANNEL]))
    assert all(weight[:, channel].abs().sum() > 0 for channel in range(OTHERS_CHANNEL))


# ------------------------------------------------------------------------------------ freezing and overrides


def test_freeze_parameters_fixes_matching_prefixes_only(small_network: torch.nn.Module) -> None:
    network = copy.deepcopy(small_network)
    prefixes = ("key_encoder.conv1", "key_encoder.bn1", "decoder.pred")
    freeze_parameters(network, prefixes)
    frozen = {name for name, p in network.named_parameters() if not p.requires_grad}
    assert frozen == {"key_encoder.conv1.weight", "key_encoder.bn1.weight", "key_encoder.bn1.bias",
                      "decoder.pred.weight", "decoder.pred.bias"}
    assert sum(1 for _ in network.named_parameters()) > len(frozen)
    other = copy.deepcopy(small_network)
    with pytest.raises(TrainingError, match=r"no parameter name starts with key_encoder\.nope"):
        freeze_parameters(other, ("key_encoder.conv1", "key_encoder.nope"))
    assert all(p.requires_grad for p in other.parameters()), "nothing is frozen when a prefix is unmatched"
    freeze_parameters(other, ())
    assert all(p.requires_grad for p in other.parameters())


def test_frozen_batchnorm_keeps_its_statistics_when_the_rest_trains_them(small_network: torch.nn.Module
                                                                          ) -> None:
    network = copy.deepcopy(small_network)
    network.train(True)
    hold_frozen_batchnorm(network, ("key_encoder.bn1", "decoder"))
    assert not network.key_encoder.bn1.training
    assert network.key_encoder.res2[0].bn1.training and network.value_encoder.bn1.training
    before = network.key_encoder.bn1.running_mean.clone()
    network.key_encoder(torch.randn(2, 3, 64, 64))
    assert torch.equal(network.key_encoder.bn1.running_mean, before)
    hold_frozen_batchnorm(network, ())
    assert network.key_encoder.res2[0].bn1.training


def test_max_objects_and_frozen_overrides() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_objects"):
            TrainConfig(max_objects=bad)
    assert TrainConfig().stage("3").max_objects == DEFAULT_STAGES["3"].max_objects == 3
    one = TrainConfig(max_objects=1)
    assert one.stage("3").max_objects == 1 and one.stage("0").max_objects == 1
    config = TrainConfig(stages="3", variant="lite", max_objects=2,
                         frozen=("key_encoder.stem", "key_encoder.stride4"))
    plain = config.to_dict()
    assert plain["frozen"] == ["key_encoder.stem", "key_encoder.stride4"] and plain["max_objects"] == 2
    again = TrainConfig.from_dict(plain)
    assert again == config and again.frozen == ("key_encoder.stem", "key_encoder.stride4")
    assert TrainConfig.from_dict(TrainConfig().to_dict()).frozen == ()


def test_video_crops_keep_xmem_object_scale() -> None:
    half = video_augmentation(192)
    assert half.crop_size == 192 and half.crop_scale == pytest.approx((0.36 / 4, 1 / 4))
    assert video_augmentation(96).crop_scale == pytest.approx((0.36 / 16, 1 / 16))
    assert dataclasses.replace(half, crop_size=384, crop_scale=(0.36, 1.0)) == ClipAugmentation()
    for size in (384, 480, 768):
        assert video_augmentation(size) == ClipAugmentation(crop_size=size)
        assert video_augmentation(size).crop_scale == (0.36, 1.0)


def test_lite_cli_run_with_frozen_stem_and_one_object(tmp_path: Path, lite_initial: torch.nn.Module) -> None:
    options = ["train", "--stage", "0", "--variant", "lite", "--iterations", "2", "--batch-size", "2",
               "--crop-size", "64", "--num-workers", "0", "--device", "cpu", "--log-every", "1",
               "--output-dir", str(tmp_path), "--exp-id", "lite"]
    result = CliRunner().invoke(cli(), [*options, "--max-objects", "0"])
    assert result.exit_code == 2 and "max_objects" in result.output
    result = CliRunner().invoke(cli(), [*options, "--max-objects", "1", "--freeze", "key_encoder.stem"])
    assert result.exit_code == 0, result.output
    state = read_training_state(tmp_path / "lite")
    assert state["config"]["frozen"] == ["key_encoder.stem"] and state["config"]["max_objects"] == 1
    network = load_network(tmp_path / "lite" / "lite_s0.pth")
    assert network.spec == NetworkSpec.lite()
    trained, initial = network.state_dict(), lite_initial.state_dict()
    assert trained.keys() == initial.keys()
    stem = [name for name in initial if name.startswith("key_encoder.stem.")]
    assert len(stem) == 6
    for name in stem:
        assert torch.equal(trained[name], initial[name]), name
    parameters = {name for name, _ in lite_initial.named_parameters()}
    changed = {name for name in parameters if not torch.equal(trained[name], initial[name])}
    assert parameters - changed == {"key_encoder.stem.0.weight", "key_encoder.stem.1.weight",
                                    "key_encoder.stem.1.bias"}, "every parameter but the frozen ones moved"
