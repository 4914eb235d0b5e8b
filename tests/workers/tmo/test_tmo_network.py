"""TMO network: official checkpoint layouts, the per-frame computation, adaptive output selection."""

from __future__ import annotations

import pytest
import torch

from tmo_helpers import SMALL, random_network, reference_confidence, reference_segment
from workers.tmo import load_network
from workers.tmo.checkpoint import CheckpointError, save_checkpoint
from workers.tmo.layouts import Layout, from_network_keys, hf4_to_hf5, hf5_to_hf4
from workers.tmo.random_init import TMOInitOptions, random_checkpoint_state, write_random_checkpoint

LAYOUTS = [Layout("current"), Layout("current", True), Layout("wacv"), Layout("wacv", True)]
MIT_LAYOUTS = [*LAYOUTS, Layout("current", False, "hf5"), Layout("wacv", True, "hf5")]


def frames(seed: int, size: tuple[int, int] = (40, 56)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 1, 1, generator=generator) * 0.6 + 0.2 + 0.1 * torch.rand(
        1, 3, *size, generator=generator)
    motion = torch.rand(1, 3, *size, generator=generator)
    return image.clamp(0, 1), motion


def state_of(variant: str) -> dict[str, torch.Tensor]:
    return random_network(variant).state_dict()


def test_official_sizes() -> None:
    """The spec's counts: rn101 1310 tensors and 93.0 M parameters; MiT-b1 13.15 M per encoder."""
    rn101 = state_of("rn101")
    assert len(rn101) == 1310
    assert sum(v.numel() for k, v in rn101.items() if "running" not in k and "num_batches" not in k
               and not k.endswith((".mean", ".std"))) == pytest.approx(93.0e6, rel=2e-3)
    assert len([k for k in rn101 if k.startswith("app_encoder.")]) == 626
    assert len([k for k in rn101 if k.startswith("decoder.")]) == 58
    mit = random_network("mitb1")
    assert sum(p.numel() for p in mit.app_encoder.parameters()) == pytest.approx(13.15e6, rel=2e-3)
    assert mit.decoder.conv1.conv.weight.shape == (256, 512, 1, 1)
    assert mit.decoder.conv4.conv.weight.shape == (256, 64, 1, 1)


@pytest.mark.parametrize("layout", MIT_LAYOUTS, ids=Layout.describe)
def test_mitb1_layouts_load_to_the_same_weights(layout: Layout) -> None:
    state = state_of("mitb1")
    keys = from_network_keys(state, layout)
    if layout.prefix == "wacv":
        lead = "module." if layout.data_parallel else ""
        assert any(k.startswith(f"{lead}vos.flow_encoder.") for k in keys)
    if layout.naming == "hf5":
        assert any(".backbone.encoder.stages.3.blocks.1.attention.q_proj.weight" in k for k in keys)
        assert not any(".block." in k for k in keys)
    loaded = load_network(keys)
    assert loaded.variant == "mitb1" and not loaded.training
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name


@pytest.mark.parametrize("layout", [Layout("current"), Layout("wacv", True)], ids=Layout.describe)
def test_rn101_layouts_load(layout: Layout) -> None:
    state = state_of("rn101")
    keys = from_network_keys(state, layout)
    assert ("module.vos.img_encoder.layer4.2.bn3.running_var" in keys) == (layout.prefix == "wacv")
    loaded = load_network(keys)
    assert loaded.variant == "rn101"
    assert torch.equal(loaded.mo_encoder.layer3[22].conv2.weight, state["mo_encoder.layer3.22.conv2.weight"])
    assert torch.equal(loaded.decoder.cbam4.conv3[1].conv.weight, state["decoder.cbam4.conv3.1.conv.weight"])


def test_hf_renames_are_inverse() -> None:
    names = ["block.2.1.attention.self.sr.weight", "block.0.0.mlp.dwconv.dwconv.bias", "layer_norm.3.weight",
             "patch_embeddings.1.proj.weight", "block.3.1.attention.output.dense.bias"]
    for name in names:
        assert hf5_to_hf4(hf4_to_hf5(name)) == name
    assert hf4_to_hf5(names[0]) == "stages.2.blocks.1.attention.sr.weight"
    assert hf4_to_hf5(names[2]) == "stages.3.layer_norm.weight"


def test_file_round_trip_and_missing_constant_buffers(tmp_path) -> None:
    reference = random_network("mitb1")
    path = save_checkpoint(reference, tmp_path / "tmo.pth", Layout("wacv", True, "hf5"))
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("module.vos.") for k in raw)
    net = load_network(path)
    assert torch.equal(net.decoder.predictor.conv.bias, reference.decoder.predictor.conv.bias)
    without = {k: v for k, v in raw.items() if not k.endswith(("_encoder.mean", "_encoder.std"))}
    assert len(without) == len(raw) - 4
    net = load_network(without)
    assert torch.allclose(net.app_encoder.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))


def test_random_checkpoints_are_reproducible(tmp_path) -> None:
    """Same seed, same weights; the writer's layout is what load_network reads back."""
    options = TMOInitOptions(batches=1, image_size=32)
    state = random_checkpoint_state("mitb1", seed=3, layout=Layout("current", True), options=options)
    path = write_random_checkpoint(tmp_path / "r.pth", "mitb1", seed=3, options=options)
    written = torch.load(path, weights_only=True)
    assert all(torch.equal(state[f"module.{k}"], v) for k, v in written.items())
    other = random_checkpoint_state("mitb1", seed=4, options=options)
    predictor = "vos.decoder.predictor.conv.weight"
    assert not torch.equal(written[predictor], other[predictor])


def test_bad_checkpoints_name_the_problem(tmp_path) -> None:
    state = from_network_keys(state_of("mitb1"), Layout())
    with pytest.raises(CheckpointError, match="not found"):
        load_network(tmp_path / "absent.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_network(tmp_path / "empty.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_network(tmp_path / "text.pth")
    with pytest.raises(CheckpointError, match="not a TMO checkpoint"):
        load_network({"key_encoder.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no ResNet-101, MiT-b1 or lite"):
        load_network({"vos.app_encoder.something": torch.zeros(1)})
    broken = dict(state)
    del broken["vos.decoder.cbam2.conv3.0.conv.weight"]
    broken["vos.decoder.extra.weight"] = torch.zeros(1)
    broken["vos.decoder.predictor.conv.weight"] = torch.zeros(3, 256, 3, 3)
    with pytest.raises(CheckpointError) as error:
        load_network(broken)
    message = str(error.value)
    assert "1 key(s) missing: decoder.cbam2.conv3.0.conv.weight" in message
    assert "1 key(s) unexpected: decoder.extra.weight" in message
    assert "decoder.predictor.conv.weight (3, 256, 3, 3) != (2, 256, 3, 3)" in message
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    assert load_network(tmp_path / "wrapped.pth").variant == "mitb1"


@pytest.mark.parametrize("variant", ["mitb1", "rn101"])
def test_segment_equals_the_official_computation(variant: str) -> None:
    net = random_network(variant)
    image, motion = frames(1)
    with torch.no_grad():
        logits = net.segment(image, motion)
    expected = reference_segment(net.state_dict(), image, motion)
    assert logits.shape == (1, 2, 40, 56)
    assert torch.allclose(logits, expected, atol=1e-4, rtol=0), (logits - expected).abs().max()
    if variant == "mitb1":  # calibrated at the size it runs at: neither all background nor all foreground
        assert 0 < (logits.argmax(dim=1) == 1).float().mean() < 1


def test_segment_batches_and_rejects_bad_inputs() -> None:
    net = random_network("mitb1", SMALL)
    image, motion = frames(2, (24, 32))
    batch = torch.cat([image, motion])
    with torch.no_grad():
        both = net.segment(batch, batch.flip(0))
        single = net.segment(motion, image)
    assert both.shape == (2, 2, 24, 32)
    assert torch.allclose(both[1:], single, atol=1e-5)
    with pytest.raises(ValueError, match="B = 1"):
        net.segment(batch, batch, aos=True)
    with pytest.raises(ValueError, match="float RGB"):
        net.segment(image[:, :2], motion)
    with pytest.raises(RuntimeError, match="segment"):
        net(image, motion)


def test_adaptive_output_selection_keeps_the_more_confident_path() -> None:
    net = random_network("mitb1", SMALL)
    state = net.state_dict()
    chosen = set()
    for seed in (3, 4, 5, 6):
        image, flow = frames(seed)
        with torch.no_grad():
            result = net.select_output(image, flow)
            logits = net.segment(image, flow, aos=True)
        rgb = reference_segment(state, image, image, SMALL)
        flowed = reference_segment(state, image, flow, SMALL)
        rgb_score, flow_score = reference_confidence(rgb), reference_confidence(flowed)
        assert result.rgb_confidence == pytest.approx(rgb_score, rel=1e-4, abs=1e-6)
        assert result.flow_confidence == pytest.approx(flow_score, rel=1e-4, abs=1e-6)
        assert result.used_flow == (flow_score >= rgb_score)
        assert torch.allclose(logits, flowed if result.used_flow else rgb, atol=1e-4)
        chosen.add(result.used_flow)
    assert chosen == {True, False}, "the inputs should exercise both paths"
