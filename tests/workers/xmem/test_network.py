"""XMemNetwork: official state-dict layout, step shapes and semantics, calibrated random initialisation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from workers.xmem.aggregate import aggregate
from workers.xmem.backbones import LITE_DIMS, LiteKeyEncoder
from workers.xmem.modules import SpatialGate, gru_step, resize_groups
from workers.xmem.network import NetworkSpec, XMemNetwork, others_masks
from workers.xmem.random_init import make_random_network

H, W = 64, 96


@pytest.fixture(scope="module")
def official() -> XMemNetwork:
    return make_random_network(NetworkSpec(), seed=0)


@pytest.fixture(scope="module")
def small() -> XMemNetwork:
    return make_random_network(NetworkSpec.small(), seed=0)


@pytest.fixture(scope="module")
def lite() -> XMemNetwork:
    return make_random_network(NetworkSpec.lite(), seed=0)


@pytest.fixture(scope="module")
def no_sensory() -> XMemNetwork:
    return make_random_network(NetworkSpec.small(hidden_dim=0), seed=0)


def layout(spec: NetworkSpec) -> dict[str, torch.Size]:
    with torch.device("meta"):
        network = XMemNetwork(spec)
    return {name: tensor.shape for name, tensor in network.state_dict().items()}


def image(seed: int, batch: int = 1, size: tuple[int, int] = (H, W)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 3, size[0] // 8, size[1] // 8, generator=generator)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def box_masks(objects: int, batch: int = 1, size: tuple[int, int] = (H, W)) -> torch.Tensor:
    masks = torch.zeros(batch, objects, *size)
    for i in range(objects):
        masks[:, i, 8 + 10 * i : 30 + 10 * i, 10 + 20 * i : 40 + 20 * i] = 1
    return masks


def similarity(memory_key, shrinkage, query_key, selection) -> torch.Tensor:
    """Anisotropic L2 similarity of XMem, (M, P), for single-image keys."""
    km, sm = memory_key.flatten(2)[0], shrinkage.flatten(2)[0]
    kq, eq = query_key.flatten(2)[0], selection.flatten(2)[0]
    distance = (eq[:, None, :] * (km[:, :, None] - kq[:, None, :]) ** 2).sum(0)
    return -distance * sm[0][:, None] / km.shape[0] ** 0.5


OFFICIAL_SHAPES = {
    "key_encoder.conv1.weight": (64, 3, 7, 7),
    "key_encoder.bn1.running_var": (64,),
    "key_encoder.res2.0.conv1.weight": (64, 64, 1, 1),
    "key_encoder.res2.0.downsample.0.weight": (256, 64, 1, 1),
    "key_encoder.res2.2.conv3.weight": (256, 64, 1, 1),
    "key_encoder.layer2.0.conv2.weight": (128, 128, 3, 3),
    "key_encoder.layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "key_encoder.layer3.5.bn3.weight": (1024,),
    "key_encoder.layer3.0.downsample.1.num_batches_tracked": (),
    "value_encoder.conv1.weight": (64, 5, 7, 7),
    "value_encoder.layer1.1.conv2.weight": (64, 64, 3, 3),
    "value_encoder.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "value_encoder.layer3.1.bn2.running_mean": (256,),
    "value_encoder.fuser.block1.downsample.weight": (512, 1280, 3, 3),
    "value_encoder.fuser.block1.conv1.bias": (512,),
    "value_encoder.fuser.attention.ChannelGate.mlp.1.weight": (32, 512),
    "value_encoder.fuser.attention.ChannelGate.mlp.3.weight": (512, 32),
    "value_encoder.fuser.attention.SpatialGate.spatial.conv.weight": (1, 2, 7, 7),
    "value_encoder.fuser.block2.conv2.weight": (512, 512, 3, 3),
    "value_encoder.hidden_reinforce.transform.weight": (192, 576, 3, 3),
    "key_proj.key_proj.weight": (64, 1024, 3, 3),
    "key_proj.d_proj.weight": (1, 1024, 3, 3),
    "key_proj.e_proj.bias": (64,),
    "decoder.fuser.block1.downsample.weight": (512, 1600, 3, 3),
    "decoder.fuser.attention.SpatialGate.spatial.conv.bias": (1,),
    "decoder.hidden_update.g16_conv.weight": (256, 512, 1, 1),
    "decoder.hidden_update.g8_conv.weight": (256, 256, 1, 1),
    "decoder.hidden_update.g4_conv.weight": (256, 257, 1, 1),
    "decoder.hidden_update.transform.weight": (192, 320, 3, 3),
    "decoder.up_16_8.skip_conv.weight": (512, 512, 3, 3),
    "decoder.up_16_8.out_conv.downsample.weight": (256, 512, 3, 3),
    "decoder.up_8_4.skip_conv.weight": (256, 256, 3, 3),
    "decoder.up_8_4.out_conv.conv2.bias": (256,),
    "decoder.pred.weight": (1, 256, 3, 3),
}


def test_official_layout_matches_spec() -> None:
    shapes = layout(NetworkSpec())
    assert len(shapes) == 412
    assert sum(name.endswith("num_batches_tracked") for name in shapes) == 58
    assert {name.split(".")[0] for name in shapes} == {"key_encoder", "value_encoder", "key_proj", "decoder"}
    assert "decoder.up_8_4.out_conv.downsample.weight" not in shapes
    assert not any(".layer4." in name or name.startswith("key_encoder.layer1.") for name in shapes)
    for name, shape in OFFICIAL_SHAPES.items():
        assert tuple(shapes[name]) == shape, name


def test_official_element_counts() -> None:
    with torch.device("meta"):
        network = XMemNetwork(NetworkSpec())
    floats = sum(t.numel() for t in network.state_dict().values() if t.is_floating_point())
    assert floats == 62_220_296
    assert sum(p.numel() for p in network.parameters() if p.requires_grad) == 62_185_224
    parts = {name: sum(p.numel() for p in module.parameters()) for name, module in network.named_children()}
    assert parts == {"key_encoder": 8_543_296, "value_encoder": 22_694_915, "key_proj": 1_188_993,
                     "decoder": 29_758_020}


def test_no_sensory_layout() -> None:
    shapes = layout(NetworkSpec.official(hidden_dim=0))
    assert len(shapes) == 402
    assert not any("hidden_reinforce" in name or "hidden_update" in name for name in shapes)
    assert tuple(shapes["decoder.fuser.block1.downsample.weight"]) == (512, 1536, 3, 3)
    assert tuple(shapes["decoder.fuser.block1.conv1.weight"]) == (512, 1536, 3, 3)


def test_small_variant_is_smaller_and_keeps_the_name_scheme() -> None:
    spec = NetworkSpec.small()
    shapes = layout(spec)
    assert spec.feature_dims == (256, 128, 64)
    official = layout(NetworkSpec())
    rest = {n for n in shapes if not n.startswith("key_encoder.")}
    downsample = "decoder.up_8_4.out_conv.downsample"  # 128 -> 64 needs one; the official 256 -> 256 does not
    assert rest - set(official) == {f"{downsample}.weight", f"{downsample}.bias"}
    assert {n for n in official if not n.startswith("key_encoder.")} <= rest
    assert "key_encoder.res2.0.conv3.weight" not in shapes  # basic blocks, not bottlenecks
    assert tuple(shapes["key_proj.key_proj.weight"]) == (64, 256, 3, 3)
    assert shapes["value_encoder.fuser.block2.conv2.weight"][0] == spec.value_dim
    with torch.device("meta"):
        count = sum(p.numel() for p in XMemNetwork(spec).parameters())
    assert count < 62_185_224 / 3


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="variant"):
        NetworkSpec(variant="large")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="widths"):
        NetworkSpec(hidden_dim=-1)


def test_forward_points_to_the_named_steps(small: XMemNetwork) -> None:
    with pytest.raises(NotImplementedError, match="encode_key"):
        small(image(0))


@pytest.mark.parametrize(
    ("objects", "batch", "size"), [(1, 1, (64, 96)), (2, 2, (80, 112)), (3, 1, (48, 64))]
)
@torch.no_grad()
def test_step_shapes(official: XMemNetwork, objects: int, batch: int, size: tuple[int, int]) -> None:
    spec = official.spec
    h, w = size[0] // 16, size[1] // 16
    frames = image(objects, batch, size)
    key, shrinkage, selection, f16, f8, f4 = official.encode_key(
        frames, need_shrinkage=True, need_selection=True
    )
    assert key.shape == (batch, 64, h, w) and shrinkage.shape == (batch, 1, h, w)
    assert selection.shape == (batch, 64, h, w)
    assert (f16.shape, f8.shape, f4.shape) == (
        (batch, 1024, h, w), (batch, 512, 2 * h, 2 * w), (batch, 256, 4 * h, 4 * w))
    assert shrinkage.min() >= 1 and selection.min() > 0 and selection.max() < 1
    hidden = torch.zeros(batch, objects, spec.hidden_dim, h, w)
    masks = box_masks(objects, batch, size)
    value, hidden = official.encode_value(frames, f16, hidden, masks, deep_update=True)
    assert value.shape == (batch, objects, 512, h, w) and hidden.shape == (batch, objects, 64, h, w)
    new_hidden, logits, prob = official.segment(f16, f8, f4, hidden, value, update_hidden=True)
    assert new_hidden.shape == (batch, objects, 64, h, w)
    assert logits.shape == prob.shape == (batch, objects + 1, *size)
    assert torch.allclose(prob.sum(dim=1), torch.ones(batch, *size), atol=1e-5)


@torch.no_grad()
def test_optional_outputs_are_skipped(small: XMemNetwork) -> None:
    key, shrinkage, selection, f16, f8, f4 = small.encode_key(
        image(1), need_shrinkage=False, need_selection=False
    )
    assert shrinkage is None and selection is None
    hidden = torch.randn(1, 2, small.spec.hidden_dim, *key.shape[-2:])
    value, same = small.encode_value(image(1), f16, hidden, box_masks(2), deep_update=False)
    assert torch.equal(same, hidden)
    new_hidden, _, _ = small.segment(f16, f8, f4, hidden, value, update_hidden=False)
    assert new_hidden is None


@torch.no_grad()
def test_hidden_updates_change_the_state(small: XMemNetwork) -> None:
    key, _, _, f16, f8, f4 = small.encode_key(image(2), need_shrinkage=False, need_selection=False)
    hidden = torch.zeros(1, 2, small.spec.hidden_dim, *key.shape[-2:])
    value, deep = small.encode_value(image(2), f16, hidden, box_masks(2), deep_update=True)
    assert deep.abs().max() > 0 and deep.abs().max() < 1
    normal, _, _ = small.segment(f16, f8, f4, deep, value, update_hidden=True)
    assert normal.shape == deep.shape and not torch.allclose(normal, deep)
    # the hidden state is an input of the decoder
    _, _, with_hidden = small.segment(f16, f8, f4, deep, value, update_hidden=False)
    _, _, with_zero = small.segment(f16, f8, f4, hidden, value, update_hidden=False)
    assert not torch.allclose(with_hidden, with_zero)


@torch.no_grad()
def test_no_sensory_network_runs(no_sensory: XMemNetwork) -> None:
    assert no_sensory.value_encoder.hidden_reinforce is None and no_sensory.decoder.hidden_update is None
    _key, _, _, f16, f8, f4 = no_sensory.encode_key(image(3), need_shrinkage=True, need_selection=True)
    value, hidden = no_sensory.encode_value(image(3), f16, None, box_masks(2), deep_update=True)
    assert hidden is None and value.shape == (1, 2, 256, H // 16, W // 16)
    new_hidden, _logits, prob = no_sensory.segment(f16, f8, f4, None, value, update_hidden=True)
    assert new_hidden is None and prob.shape == (1, 3, H, W)


@torch.no_grad()
def test_segment_aggregates_independent_objects(small: XMemNetwork) -> None:
    _, _, _, f16, f8, f4 = small.encode_key(image(4), need_shrinkage=False, need_selection=False)
    hidden = torch.randn(1, 2, small.spec.hidden_dim, H // 16, W // 16) * 0.3
    readout = torch.randn(1, 2, small.spec.value_dim, H // 16, W // 16)
    _, object_logits = small.decoder(f16, f8, f4, hidden, readout, False)
    _, logits, prob = small.segment(f16, f8, f4, hidden, readout, update_hidden=False)
    assert torch.allclose(prob, aggregate(torch.sigmoid(object_logits), dim=1))
    assert torch.allclose(torch.softmax(logits, dim=1), prob, atol=1e-6)
    # objects are decoded independently: object 1 alone gives the same per-object logits
    _, alone = small.decoder(f16, f8, f4, hidden[:, 1:], readout[:, 1:], False)
    assert torch.allclose(alone[:, 0], object_logits[:, 1], atol=1e-4)


@torch.no_grad()
def test_value_of_an_object_sees_the_others(small: XMemNetwork) -> None:
    _, _, _, f16, _, _ = small.encode_key(image(5), need_shrinkage=False, need_selection=False)
    hidden = torch.zeros(1, 2, small.spec.hidden_dim, H // 16, W // 16)
    masks = box_masks(2)
    alone, _ = small.encode_value(image(5), f16, hidden[:, :1], masks[:, :1], deep_update=False)
    empty_other = torch.cat([masks[:, :1], torch.zeros_like(masks[:, :1])], dim=1)
    padded, _ = small.encode_value(image(5), f16, hidden, empty_other, deep_update=False)
    together, _ = small.encode_value(image(5), f16, hidden, masks, deep_update=False)
    assert torch.allclose(alone[:, 0], padded[:, 0], atol=1e-5)
    assert not torch.allclose(alone[:, 0], together[:, 0], atol=1e-3)


@torch.no_grad()
def test_value_encoder_input_channel_order(small: XMemNetwork) -> None:
    """Channels are R, G, B, own mask, others: silencing channel 3 makes a value blind to its own mask."""
    network = copy.deepcopy(small)
    network.value_encoder.conv1.weight[:, 3] = 0
    _, _, _, f16, _, _ = network.encode_key(image(5), need_shrinkage=False, need_selection=False)
    masks = box_masks(2)
    moved = torch.stack([masks[:, 0].roll(12, dims=-1), masks[:, 1]], dim=1)
    base, _ = network.encode_value(image(5), f16, None, masks, deep_update=False)
    own_moved, _ = network.encode_value(image(5), f16, None, moved, deep_update=False)
    assert torch.allclose(base[:, 0], own_moved[:, 0], atol=1e-5)
    assert not torch.allclose(base[:, 1], own_moved[:, 1], atol=1e-3)


@torch.no_grad()
def test_decoder_takes_image_then_readout_then_hidden(small: XMemNetwork) -> None:
    """Silencing the readout's input columns of the decoder's first block leaves only image and hidden."""
    network = copy.deepcopy(small)
    f16_dim, value_dim = network.spec.feature_dims[0], network.spec.value_dim
    block = network.decoder.fuser.block1
    for conv in (block.conv1, block.downsample):
        conv.weight[:, f16_dim : f16_dim + value_dim] = 0
    _, _, _, f16, f8, f4 = network.encode_key(image(6), need_shrinkage=False, need_selection=False)
    shape = (1, 1, H // 16, W // 16)
    hidden = torch.rand(shape[0], shape[1], network.spec.hidden_dim, *shape[2:])
    readout = torch.randn(shape[0], shape[1], value_dim, *shape[2:])
    _, _, base = network.segment(f16, f8, f4, hidden, readout, update_hidden=False)
    _, _, other_readout = network.segment(f16, f8, f4, hidden, readout * 3, update_hidden=False)
    _, _, other_hidden = network.segment(f16, f8, f4, hidden.flip(-1), readout, update_hidden=False)
    assert torch.allclose(base, other_readout, atol=1e-5)
    assert not torch.allclose(base, other_hidden, atol=1e-4)


def test_others_masks_sum_the_other_objects() -> None:
    masks = torch.rand(2, 3, 4, 5)
    others = others_masks(masks)
    assert torch.allclose(others[:, 0], masks[:, 1] + masks[:, 2])
    assert torch.allclose(others[:, 2], masks[:, 0] + masks[:, 1])
    assert torch.equal(others_masks(masks[:, :1]), torch.zeros(2, 1, 4, 5))


@torch.no_grad()
def test_batch_items_are_independent(small: XMemNetwork) -> None:
    frames = torch.cat([image(6), image(7)])
    both = small.encode_key(frames, need_shrinkage=True, need_selection=True)
    second = small.encode_key(image(7), need_shrinkage=True, need_selection=True)
    for batched, single in zip(both, second, strict=True):
        assert torch.allclose(batched[1:], single, atol=1e-4)


def test_gru_step_formula() -> None:
    hidden = torch.full((1, 1, 2, 1, 1), 0.8)
    # forget = update = sigmoid(0) = 0.5, candidate = tanh(0) = 0 -> 0.5 * h * 0.5
    assert torch.allclose(gru_step(torch.zeros(1, 1, 6, 1, 1), hidden), 0.25 * hidden)
    # update saturated -> the candidate tanh(1) replaces the state
    gates = torch.tensor([0.0, 0.0, 50.0, 50.0, 1.0, 1.0]).view(1, 1, 6, 1, 1)
    candidate = torch.tanh(torch.tensor(1.0)).item()
    assert torch.allclose(gru_step(gates, hidden), torch.full_like(hidden, candidate))


def test_spatial_gate_pools_max_then_mean() -> None:
    gate = SpatialGate()
    with torch.no_grad():
        gate.spatial.conv.weight.zero_()
        gate.spatial.conv.bias.zero_()
        gate.spatial.conv.weight[0, 0, 3, 3] = 1.0  # looks only at the first pooled channel
    x = torch.tensor([[[[2.0]], [[-4.0]]]])
    assert torch.allclose(gate(x), x * torch.sigmoid(torch.tensor(2.0)))


def test_area_downsampling_is_block_average() -> None:
    g = torch.rand(1, 2, 3, 8, 12)
    expected = F.avg_pool2d(g.flatten(0, 1), 4).view(1, 2, 3, 2, 3)
    assert torch.allclose(resize_groups(g, 0.25), expected, atol=1e-6)
    assert resize_groups(g, 2).shape == (1, 2, 3, 16, 24)


def test_random_init_is_deterministic_per_seed() -> None:
    spec = NetworkSpec.small(hidden_dim=8)
    first, again, other = (make_random_network(spec, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["decoder.pred.weight"], other["decoder.pred.weight"])


@torch.no_grad()
def test_calibrated_init_gives_usable_outputs(official: XMemNetwork) -> None:
    assert not official.training
    norms = [m for m in official.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not torch.all(m.running_var == 1) and m.weight.std() > 0 for m in norms)
    memory_key, shrinkage, _, f16, f8, f4 = official.encode_key(
        image(8), need_shrinkage=True, need_selection=False
    )
    query_key, _, selection, *_ = official.encode_key(image(9), need_shrinkage=False, need_selection=True)
    scores = similarity(memory_key, shrinkage, query_key, selection)
    top = scores.topk(16, dim=0).values
    assert torch.isfinite(top).all() and top.min() > -104  # exp() of every top-k score stays > 0 in float32
    assert scores.std() > 0.1  # but the keys are not all alike
    hidden = torch.zeros(1, 2, 64, H // 16, W // 16)
    value, hidden = official.encode_value(image(8), f16, hidden, box_masks(2), deep_update=True)
    _, _, prob = official.segment(f16, f8, f4, hidden, value, update_hidden=False)
    assert torch.isfinite(prob).all()
    assert prob.std(dim=(2, 3)).min() > 0.01  # varies over the image for every class
    assert prob.max() > 0.5


# ----------------------------------------------------------------------------------------------- lite variant


def test_lite_spec_is_the_small_layout_on_an_efficientnet_trunk() -> None:
    spec = NetworkSpec.lite()
    small = NetworkSpec.small()
    assert spec.variant == "lite" and spec.feature_dims == LITE_DIMS == (112, 40, 24)
    assert (spec.key_dim, spec.value_dim, spec.hidden_dim, spec.decoder_dims, spec.update_dim) == (
        small.key_dim, small.value_dim, small.hidden_dim, small.decoder_dims, small.update_dim)
    assert NetworkSpec.lite(hidden_dim=0).hidden_dim == 0
    assert NetworkSpec.preset("lite") == spec and NetworkSpec.preset("lite", 8) == NetworkSpec.lite(8)
    assert NetworkSpec.preset("small") == small and NetworkSpec.preset("official") == NetworkSpec()
    assert NetworkSpec.preset("official", 0) == NetworkSpec.official(hidden_dim=0)
    with pytest.raises(ValueError, match="lite"):
        NetworkSpec.preset("large")
    shapes = layout(spec)
    assert tuple(shapes["key_encoder.stem.0.weight"]) == (32, 3, 3, 3)
    assert tuple(shapes["key_encoder.stride16.5.project.0.weight"]) == (112, 672, 1, 1)
    assert not any(name.startswith(("key_encoder.res2", "key_encoder.conv1")) for name in shapes)
    assert tuple(shapes["key_proj.key_proj.weight"]) == (64, 112, 3, 3)
    small_shapes = layout(small)
    # besides the key encoder, only the layers that read its features (f16, f8, f4) differ from small
    rest = {name for name in shapes if not name.startswith("key_encoder.")}
    assert rest == {name for name in small_shapes if not name.startswith("key_encoder.")}
    assert {name for name in rest if shapes[name] != small_shapes[name]} == {
        "key_proj.key_proj.weight", "key_proj.d_proj.weight", "key_proj.e_proj.weight",
        "value_encoder.fuser.block1.conv1.weight", "value_encoder.fuser.block1.downsample.weight",
        "decoder.fuser.block1.conv1.weight", "decoder.fuser.block1.downsample.weight",
        "decoder.up_16_8.skip_conv.weight", "decoder.up_8_4.skip_conv.weight"}
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in XMemNetwork(s).key_encoder.parameters())
                  for name, s in (("lite", spec), ("small", small))}
    assert counts["lite"] < counts["small"] / 3


def test_lite_key_encoder_features_have_strides_16_8_4() -> None:
    encoder = LiteKeyEncoder().eval()
    with torch.no_grad():
        f16, f8, f4 = encoder(image(0, batch=2, size=(64, 96)))
    assert (f16.shape, f8.shape, f4.shape) == ((2, 112, 4, 6), (2, 40, 8, 12), (2, 24, 16, 24))
    assert len(encoder.stride16) == 6 and not encoder.stride16[0].residual and encoder.stride16[1].residual


@torch.no_grad()
def test_lite_network_runs_every_step(lite: XMemNetwork) -> None:
    assert not lite.training and lite.spec == NetworkSpec.lite()
    size = (80, 112)
    h, w = size[0] // 16, size[1] // 16
    frames = image(10, 2, size)
    key, shrinkage, selection, f16, f8, f4 = lite.encode_key(frames, need_shrinkage=True, need_selection=True)
    assert key.shape == selection.shape == (2, 64, h, w) and shrinkage.shape == (2, 1, h, w)
    assert (f16.shape, f8.shape, f4.shape) == (
        (2, 112, h, w), (2, 40, 2 * h, 2 * w), (2, 24, 4 * h, 4 * w))
    hidden = torch.zeros(2, 3, lite.spec.hidden_dim, h, w)
    value, hidden = lite.encode_value(frames, f16, hidden, box_masks(3, 2, size), deep_update=True)
    assert value.shape == (2, 3, 256, h, w) and hidden.shape == (2, 3, 32, h, w)
    new_hidden, logits, prob = lite.segment(f16, f8, f4, hidden, value, update_hidden=True)
    assert new_hidden.shape == hidden.shape and logits.shape == prob.shape == (2, 4, *size)
    assert torch.isfinite(logits).all() and torch.allclose(prob.sum(dim=1), torch.ones(2, *size), atol=1e-5)
    assert prob.std(dim=(2, 3)).min() > 0.01


@torch.no_grad()
def test_given_lite_key_encoder_is_kept_and_the_rest_calibrated(lite: XMemNetwork) -> None:
    given = {name: tensor.clone() for name, tensor in lite.key_encoder.state_dict().items()}
    for name, tensor in given.items():  # weights and statistics that no calibration of this seed gives
        if name.endswith("running_mean"):
            tensor.add_(0.05)
        elif name.endswith("running_var"):
            tensor.mul_(1.5)
        elif name.endswith("num_batches_tracked"):
            tensor.fill_(1234)
        elif name.endswith(".0.weight"):  # conv weights
            tensor.mul_(0.9)
    expected = {name: tensor.clone() for name, tensor in given.items()}
    network = make_random_network(NetworkSpec.lite(), seed=0, key_encoder_state=given)
    kept = network.key_encoder.state_dict()
    assert kept.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(kept[name], tensor), name
        assert torch.equal(given[name], tensor), name  # the caller's tensors are not modified
    # the rest is the seed's draw, calibrated: the value trunk's BatchNorm does not see the key encoder,
    # while the heads are rescaled to the given encoder's features
    state, plain = network.state_dict(), lite.state_dict()
    for name in state:
        if name.startswith("value_encoder.") and "running_" in name:
            assert torch.equal(state[name], plain[name]), name
    assert torch.equal(state["value_encoder.conv1.weight"], plain["value_encoder.conv1.weight"])
    for name in ("key_proj.key_proj.weight", "key_proj.e_proj.bias", "decoder.pred.weight"):
        assert not torch.equal(state[name], plain[name]), name
    key, shrinkage, _, f16, f8, f4 = network.encode_key(image(11), need_shrinkage=True, need_selection=False)
    assert 0.3 < key.std() < 3 and shrinkage.min() >= 1
    value, _ = network.encode_value(image(11), f16, None, box_masks(2), deep_update=False)
    hidden = torch.zeros(1, 2, network.spec.hidden_dim, H // 16, W // 16)
    _, _, prob = network.segment(f16, f8, f4, hidden, value, update_hidden=False)
    assert torch.isfinite(prob).all() and prob.std(dim=(2, 3)).min() > 0.01
