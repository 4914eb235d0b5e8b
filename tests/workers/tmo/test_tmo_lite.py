"""The lite TMO variant: EfficientNet-Lite0 encoders to stride 32, a narrower decoder, recognised by
load_network from its keys in every prefix layout, any decoder width, a smaller input size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.tmo import load_network
from workers.tmo.checkpoint import CheckpointError, save_checkpoint
from workers.tmo.layouts import Layout
from workers.tmo.network import LITE_DECODER_WIDTH, LITE_INPUT_SIZE, TMONetwork
from workers.tmo.session import TMOSession
from workers.training import weights
from workers.training.weights import BUNDLED_TMO_MODEL, default_tmo_model_path
from workers.xmem.backbones import LiteKeyEncoder


def lite(width: int | None = None) -> TMONetwork:
    torch.manual_seed(3)
    return TMONetwork("lite", input_size=64, decoder_width=width).eval()


def test_encoders_return_four_strides_with_lite0_channels() -> None:
    network = lite()
    features = network.app_encoder(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(24, 16, 24), (40, 8, 12), (112, 4, 6), (320, 2, 3)]
    assert network.decoder.predictor.conv.in_channels == LITE_DECODER_WIDTH
    assert TMONetwork("lite").input_size == LITE_INPUT_SIZE


def test_xmem_lite_key_encoder_keys_are_unchanged() -> None:
    plain, deep = LiteKeyEncoder().state_dict(), LiteKeyEncoder(stride32=True).state_dict()
    assert not any(key.startswith("stride32.") for key in plain)
    assert set(deep) - set(plain) == {key for key in deep if key.startswith("stride32.")}


@pytest.mark.parametrize("layout", [Layout(), Layout("wacv", data_parallel=True)])
def test_load_network_recognises_lite_and_its_decoder_width(tmp_path: Path, layout: Layout) -> None:
    network = lite(width=32)
    path = save_checkpoint(network, tmp_path / "lite.pth", layout)
    loaded = load_network(path, input_size=64)
    assert loaded.variant == "lite" and loaded.input_size == 64 and not loaded.training
    assert loaded.decoder.predictor.conv.in_channels == 32
    image, motion = torch.rand(1, 3, 40, 72), torch.rand(1, 3, 40, 72)
    with torch.no_grad():
        assert torch.equal(loaded.segment(image, motion), network.segment(image, motion))


def test_half_precision_checkpoint_loads_as_float32(tmp_path: Path) -> None:
    network = lite()
    path = save_checkpoint(network, tmp_path / "lite.pth")
    state = torch.load(path, weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "half.pth")
    loaded = load_network(tmp_path / "half.pth", input_size=64)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    image = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(loaded.segment(image, image), network.segment(image, image), atol=0.05)


def test_a_lite_checkpoint_missing_a_decoder_key_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(lite(), tmp_path / "lite.pth")
    state = torch.load(path, weights_only=True)
    del state["vos.decoder.cbam2.conv1.conv.weight"]
    with pytest.raises(CheckpointError, match="cbam2"):
        load_network(state)


def test_session_segments_a_stream_with_the_lite_network() -> None:
    session = TMOSession(lite())
    frame = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    result = session.step(frame)
    assert result.index_mask.shape == (50, 70) and result.index_mask.dtype == np.uint8
    assert set(np.unique(result.index_mask)) <= {0, 1}
    assert result.foreground.shape == (50, 70) and np.isfinite(result.foreground).all()


def test_bundled_tmo_model_is_a_small_half_precision_lite_network() -> None:
    path = default_tmo_model_path()
    assert path == BUNDLED_TMO_MODEL and path.stat().st_size <= 40 * 2**20
    state = torch.load(path, weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    network = load_network(path)
    assert network.variant == "lite" and network.input_size == LITE_INPUT_SIZE
    # a brown, animal-sized blob on a plain grey gradient is the salient object (the model was trained on
    # horses and DAVIS objects; a flat synthetic square is not something it learnt to pick)
    rows, columns = np.mgrid[:240, :320]
    blob = ((rows - 120) / 60) ** 2 + ((columns - 160) / 80) ** 2 < 1
    gradient = np.linspace(60, 120, 320)[None, :, None]
    frame = np.repeat(gradient, 240, axis=0).repeat(3, axis=2).astype(np.uint8)
    frame[blob] = (140, 90, 40)
    result = TMOSession(network).step(frame)
    assert result.foreground[100:140, 140:180].mean() > 0.5 > result.foreground[:40].mean()
    iou = (result.index_mask.astype(bool) & blob).sum() / (result.index_mask.astype(bool) | blob).sum()
    assert iou > 0.5


def test_bundled_tmo_model_missing_says_to_pass_a_model(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setattr(weights, "BUNDLED_TMO_MODEL", tmp_path / "none.pth")
    with pytest.raises(weights.WeightsError, match="--model"):
        weights.default_tmo_model_path()
