"""streamer/config.py and configs/*.yaml: loading, environment overrides, errors, documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from repo_paths import REPO
from streamer.config import ConfigError, VosdConfig, load_config
from streamer.transport.sockets import LiveDropPolicy, QueueSettings

CONFIGS = REPO / "configs"
YAML_FILES = sorted(CONFIGS.glob("*.yaml"))


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the VOSD_* variables they need; none leak in from the shell."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("VOSD_"):
            monkeypatch.delenv(name)


def _field_paths(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Dotted path -> FieldInfo for every leaf field of the config model."""
    paths: dict[str, object] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.update(_field_paths(annotation, f"{prefix}{name}."))
        else:
            paths[f"{prefix}{name}"] = info
    return paths


def _documented_keys(path: Path) -> tuple[set[str], set[str]]:
    """All dotted keys in a YAML file, and those with a comment line directly above them."""
    keys, documented, stack = set(), set(), []
    previous = ""
    for line in path.read_text().splitlines():
        match = re.match(r"^( *)([a-z_0-9]+):", line)
        if match:
            depth = len(match.group(1)) // 2
            stack = [*stack[:depth], match.group(2)]
            key = ".".join(stack)
            keys.add(key)
            if previous.lstrip().startswith("#"):
                documented.add(key)
        if line.strip():
            previous = line
    return keys, documented


def test_every_field_has_a_description() -> None:
    undocumented = [path for path, info in _field_paths(VosdConfig).items() if not info.description]
    assert undocumented == []


def test_default_yaml_lists_every_field_with_its_default() -> None:
    keys, _ = _documented_keys(CONFIGS / "default.yaml")
    leaves = set(_field_paths(VosdConfig))
    assert leaves <= keys, f"missing from default.yaml: {sorted(leaves - keys)}"
    assert load_config(CONFIGS / "default.yaml") == VosdConfig()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_every_key_in_every_yaml_is_commented(path: Path) -> None:
    keys, documented = _documented_keys(path)
    fields = keys & set(_field_paths(VosdConfig))
    assert fields, f"{path.name} sets nothing"
    assert sorted(fields - documented) == []


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_yaml_files_load(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config.transport.queues(), QueueSettings)


def test_profiles_set_what_they_promise() -> None:
    live = load_config(CONFIGS / "live-camera.yaml")
    assert live.transport.live_queue_frames == 1
    assert live.transport.live_drop_policy is LiveDropPolicy.DROP_OLDEST
    assert 160 <= live.workers.size < 480 and 5 <= live.xmem.mem_every <= 10
    long = load_config(CONFIGS / "long-video.yaml")
    assert (long.xmem.mem_every, long.xmem.max_mid_term_frames, long.xmem.min_mid_term_frames) == (10, 6, 3)
    assert long.xmem.top_k == 30, "fields the profile does not set keep their defaults"
    camera = load_config(CONFIGS / "auto-camera.yaml")
    assert camera.transport.live_queue_frames == 1 and camera.writer.masks is False
    auto = camera.auto.auto_config()
    assert (auto.stable_frames, auto.check_every, auto.drift_checks, auto.reseed) == (5, 10, 3, "reset")


def test_auto_defaults_come_from_auto_config() -> None:
    from workers.auto.config import AutoConfig

    section = VosdConfig().auto
    assert section.auto_config() == AutoConfig()
    assert section.auto_config(objects=3).objects == 3
    with pytest.raises(ValueError, match="min_area must be below max_area"):
        section.auto_config(min_area=0.9)


def test_official_xmem_defaults() -> None:
    xmem = VosdConfig().xmem
    assert xmem.model_dump() == {
        "mem_every": 5,
        "top_k": 30,
        "deep_update_every": -1,
        "enable_long_term": True,
        "enable_long_term_count_usage": True,
        "max_mid_term_frames": 10,
        "min_mid_term_frames": 5,
        "num_prototypes": 128,
        "max_long_term_elements": 10000,
    }


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOSD_XMEM__MEM_EVERY", "7")
    monkeypatch.setenv("VOSD_REDIS__URL", "redis://user:secret@db:6379/2")
    monkeypatch.setenv("VOSD_WORKERS__DEVICES", '["cuda:0", "cuda:1"]')
    monkeypatch.setenv("VOSD_DATA_DIR", "/srv/vosd")
    config = load_config(CONFIGS / "long-video.yaml")
    assert config.xmem.mem_every == 7, "environment wins over the file"
    assert config.xmem.max_mid_term_frames == 6, "other fields of the same section keep the file's values"
    assert config.workers.devices == ["cuda:0", "cuda:1"]
    assert config.data_dir == Path("/srv/vosd")
    assert config.summary()["redis"]["url"] == "redis://user:***@db:6379/2"


def test_unknown_keys_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("xmem:\n  mem_evry: 10\nwriters:\n  crf: 20\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "xmem.mem_evry: unknown key" in message and "writers: unknown key" in message

    monkeypatch.setenv("VOSD_XMEM__TOPK", "5")
    with pytest.raises(ConfigError, match=r"xmem\.topk: unknown key"):
        load_config(None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "xmem:\n  min_mid_term_frames: 10\n",
            "min_mid_term_frames (10) must be smaller than max_mid_term_frames (10)",
        ),
        ("workers:\n  devices: [gpu0]\n", "unknown device 'gpu0'"),
        ("transport:\n  live_drop_policy: newest\n", "transport.live_drop_policy"),
        ("redis:\n  lease_renewal_s: 10\n", "at most a third"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("xmem: [unclosed\n", "cannot read configuration"),
    ],
)
def test_bad_values_are_explained(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path)


def test_endpoints_are_formatted_and_checked(tmp_path: Path) -> None:
    config = VosdConfig(data_dir=tmp_path)
    assert config.worker_endpoint(1) == f"ipc://{tmp_path}/run/worker-1.sock"
    assert config.writer_endpoint() == f"ipc://{tmp_path}/run/writer.sock"
    tcp = VosdConfig(transport={"worker_endpoint": "tcp://127.0.0.1:560{index}"})
    assert tcp.worker_endpoint(3) == "tcp://127.0.0.1:5603"
    with pytest.raises(ConfigError, match="too long"):
        VosdConfig(data_dir=tmp_path / ("x" * 120)).worker_endpoint(0)


def test_config_is_frozen() -> None:
    config = VosdConfig()
    with pytest.raises(Exception, match="frozen"):
        config.xmem.mem_every = 3  # type: ignore[misc]
