"""Checkpoint loading and saving in the official XMem format, and the errors for unusable files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers.xmem.checkpoint import (
    LITE_STEM,
    RESNET_FIRST_BLOCK,
    CheckpointError,
    key_encoder_variant,
    load_network,
    save_state_dict,
    spec_from_state_dict,
)
from workers.xmem.network import NetworkSpec, XMemNetwork
from workers.xmem.random_init import (
    calibrated_random_state_dict,
    make_random_network,
    write_random_checkpoint,
)

H, W = 48, 64
SMALL = NetworkSpec.small()
LITE = NetworkSpec.lite()


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    return calibrated_random_state_dict(SMALL, seed=3)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory, small_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("checkpoints") / "small.pth"
    torch.save(small_state, path)
    return path


@torch.no_grad()
def run_all_steps(network: XMemNetwork, objects: int = 2) -> list[torch.Tensor]:
    """Every output of the three steps on a fixed input, for comparing networks."""
    generator = torch.Generator().manual_seed(11)
    frame = torch.randn(1, 3, H, W, generator=generator)
    masks = (torch.rand(1, objects, H, W, generator=generator) > 0.5).float()
    key, shrinkage, selection, f16, f8, f4 = network.encode_key(
        frame, need_shrinkage=True, need_selection=True
    )
    hidden = torch.zeros(1, objects, network.spec.hidden_dim, H // 16, W // 16)
    value, hidden = network.encode_value(frame, f16, hidden, masks, deep_update=True)
    new_hidden, logits, prob = network.segment(f16, f8, f4, hidden, value, update_hidden=True)
    outputs = [key, shrinkage, selection, f16, value, logits, prob]
    return outputs + [t for t in (hidden, new_hidden) if t is not None]


def assert_same_outputs(a: XMemNetwork, b: XMemNetwork) -> None:
    for left, right in zip(run_all_steps(a), run_all_steps(b), strict=True):
        assert torch.equal(left, right)


def test_official_round_trip(tmp_path: Path) -> None:
    network = make_random_network(NetworkSpec(), seed=1)
    path = save_state_dict(network, tmp_path / "sub" / "XMem.pth")
    assert not list(path.parent.glob("*.partial"))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert type(raw) is dict and len(raw) == 412
    assert all(t.device.type == "cpu" for t in raw.values())
    loaded = load_network(path)
    assert loaded.spec == NetworkSpec() and not loaded.training
    assert_same_outputs(network, loaded)


def test_write_random_checkpoint_matches_make_random_network(tmp_path: Path) -> None:
    path = write_random_checkpoint(tmp_path / "random.pth", spec=SMALL, seed=5)
    assert_same_outputs(make_random_network(SMALL, seed=5), load_network(path))


def test_small_variant_round_trip(small_file: Path, small_state: dict[str, torch.Tensor]) -> None:
    loaded = load_network(small_file)
    assert loaded.spec == SMALL
    original = make_random_network(SMALL, seed=3)
    assert_same_outputs(original, loaded)
    assert_same_outputs(loaded, load_network(small_state))


def test_spec_is_read_from_shapes() -> None:
    for spec in (NetworkSpec(), NetworkSpec.official(hidden_dim=0), SMALL,
                 NetworkSpec(key_dim=32, value_dim=128, hidden_dim=16, variant="small",
                             decoder_dims=(96, 48, 24), update_dim=40)):
        with torch.device("meta"):
            state = XMemNetwork(spec).state_dict()
        assert spec_from_state_dict(state) == spec


def test_no_sensory_checkpoint_is_detected() -> None:
    state = calibrated_random_state_dict(NetworkSpec.small(hidden_dim=0), seed=0)
    assert not any("hidden" in name for name in state)
    network = load_network(state)
    assert network.spec.hidden_dim == 0 and network.decoder.hidden_update is None
    assert all(torch.isfinite(t).all() for t in run_all_steps(network))


def test_single_object_checkpoint_gets_a_zero_fifth_channel(small_state: dict[str, torch.Tensor]) -> None:
    five = dict(small_state)
    five["value_encoder.conv1.weight"] = small_state["value_encoder.conv1.weight"].clone()
    five["value_encoder.conv1.weight"][:, 4] = 0
    four = {**five, "value_encoder.conv1.weight": five["value_encoder.conv1.weight"][:, :4].clone()}
    network = load_network(four)
    weight = network.value_encoder.conv1.weight
    assert weight.shape == (64, 5, 7, 7) and torch.equal(weight[:, 4], torch.zeros(64, 7, 7))
    assert torch.equal(weight[:, :4], four["value_encoder.conv1.weight"])
    assert four["value_encoder.conv1.weight"].shape[1] == 4  # the caller's dict is not modified
    assert_same_outputs(network, load_network(five))


def test_missing_batch_counters_are_tolerated(small_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in small_state.items() if not k.endswith("num_batches_tracked")}
    assert_same_outputs(load_network(state), load_network(small_state))


def test_half_precision_checkpoint_loads_as_float32(small_state: dict[str, torch.Tensor]) -> None:
    half = {k: v.half() if v.is_floating_point() else v for k, v in small_state.items()}
    network = load_network(half)
    assert network.decoder.pred.weight.dtype == torch.float32
    assert torch.equal(network.decoder.pred.weight, half["decoder.pred.weight"].float())


def test_wrapped_state_dict_is_unwrapped(tmp_path: Path, small_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "training.pth"
    torch.save({"network": small_state, "iteration": 7}, path)
    assert_same_outputs(load_network(path), load_network(small_state))


def expect_error(source: object, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_network(source)  # type: ignore[arg-type]
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.pth", "not found", "nope.pth")
    expect_error(tmp_path, "is a directory")
    expect_error(str(tmp_path / "nope.pth"), "not found")


@pytest.mark.parametrize(("content", "fragment"), [
    (b"", "empty"),
    (b"model weights go here\n", "not a PyTorch checkpoint"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(200), "not a PyTorch checkpoint"),
])
def test_files_that_are_not_checkpoints(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "file.pth"
    path.write_bytes(content)
    expect_error(path, fragment, str(path))


def test_truncated_checkpoint(tmp_path: Path, small_file: Path) -> None:
    path = tmp_path / "cut.pth"
    data = small_file.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "truncated")


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    expect_error(path, "torch.nn.modules.linear.Linear", "refuses")


def test_dict_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "optimizer.pth"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, path)
    expect_error(path, "not a state dict", "epoch", "optimizer")
    expect_error({"model": {"a": 1}}, "not a state dict")
    tensor_path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_path)
    expect_error(tensor_path, "holds a Tensor")


def test_foreign_state_dict_names_the_keys(small_state: dict[str, torch.Tensor]) -> None:
    prefixed = {f"module.{k}": v for k, v in small_state.items()}
    expect_error(prefixed, "not an XMem state dict", "key_proj.key_proj.weight", "'module.'")
    expect_error({"conv.weight": torch.zeros(1)}, "not an XMem state dict", "value_dim")


def test_layout_mismatch_lists_keys_with_counts(small_state: dict[str, torch.Tensor]) -> None:
    state = dict(small_state)
    del state["decoder.pred.bias"]
    state["decoder.extra.weight"] = torch.zeros(3)
    state["key_proj.e_proj.bias"] = torch.zeros(65)
    message = expect_error(
        state, "1 key(s) missing: decoder.pred.bias", "1 key(s) unexpected: decoder.extra.weight",
        "1 key(s) with the wrong shape: key_proj.e_proj.bias (65,) != (64,)")
    assert "small" in message


def test_many_missing_keys_are_summarised(small_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in small_state.items() if not k.startswith("key_encoder.layer3.")}
    missing = sum(
        k.startswith("key_encoder.layer3.") and not k.endswith("num_batches_tracked") for k in small_state
    )
    expect_error(state, f"{missing} key(s) missing", f"(and {missing - 10} more)")


def test_non_float_weights_are_reported(small_state: dict[str, torch.Tensor]) -> None:
    state = {**small_state, "decoder.pred.weight": small_state["decoder.pred.weight"].long()}
    expect_error(state, "not floating point", "decoder.pred.weight")


# ----------------------------------------------------------------------------------------------- lite variant


def meta_state(spec: NetworkSpec) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return XMemNetwork(spec).state_dict()


def test_lite_network_round_trip(tmp_path: Path) -> None:
    network = make_random_network(LITE, seed=4)
    outputs = run_all_steps(network, objects=3)
    key, _shrinkage, _selection, f16, value, _logits, prob, hidden, new_hidden = outputs
    assert f16.shape == (1, 112, H // 16, W // 16) and key.shape == (1, 64, H // 16, W // 16)
    assert value.shape == (1, 3, 256, H // 16, W // 16) and prob.shape == (1, 4, H, W)
    assert new_hidden.shape == hidden.shape == (1, 3, 32, H // 16, W // 16)
    assert all(torch.isfinite(t).all() for t in outputs)
    *_, f8, f4 = network.encode_key(torch.zeros(1, 3, H, W), need_shrinkage=False, need_selection=False)
    assert f8.shape == (1, 40, H // 8, W // 8) and f4.shape == (1, 24, H // 4, W // 4)
    path = save_state_dict(network, tmp_path / "lite.pth")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert key_encoder_variant(raw) == "lite" and LITE_STEM in raw and RESNET_FIRST_BLOCK not in raw
    assert spec_from_state_dict(raw) == LITE
    loaded = load_network(path)
    assert loaded.spec == LITE and not loaded.training
    assert_same_outputs(network, loaded)
    assert_same_outputs(network, load_network(raw))


def test_lite_spec_is_read_from_shapes() -> None:
    for spec in (LITE, NetworkSpec.lite(hidden_dim=0),
                 NetworkSpec(key_dim=32, value_dim=128, hidden_dim=16, variant="lite",
                             decoder_dims=(96, 48, 24), update_dim=40)):
        assert spec_from_state_dict(meta_state(spec)) == spec


def test_key_encoder_variant_of_each_layout() -> None:
    assert key_encoder_variant(meta_state(NetworkSpec())) == "official"
    assert key_encoder_variant(meta_state(SMALL)) == "small"
    assert key_encoder_variant(meta_state(LITE)) == "lite"
    assert key_encoder_variant({"decoder.pred.weight": torch.zeros(1)}) is None


@pytest.mark.parametrize("spec", [SMALL, LITE], ids=["small", "lite"])
def test_missing_key_encoder_trunk_names_both_trunk_keys(spec: NetworkSpec) -> None:
    state = {k: v for k, v in meta_state(spec).items() if k not in (RESNET_FIRST_BLOCK, LITE_STEM)}
    assert key_encoder_variant(state) is None
    with pytest.raises(CheckpointError) as caught:
        spec_from_state_dict(state)
    message = str(caught.value)
    assert "not an XMem state dict: 1 key(s)" in message, message
    assert f"{RESNET_FIRST_BLOCK} or {LITE_STEM} (the key encoder trunk)" in message, message
