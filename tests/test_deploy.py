"""The deployment files stay in step with the code: their configs load and their commands exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from streamer.cli import app
from streamer.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_kubernetes_configmap_is_a_valid_vosd_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    documents = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/vosd.yaml").read_text()))
    configmap = next(d for d in documents if d["kind"] == "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    monkeypatch.delenv("VOSD_HTTP__TOKEN", raising=False)
    with pytest.raises(ConfigError, match="requires a token"):  # the API listens beyond loopback
        load_config(path)
    deployment = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "vosd")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["env"][0]["name"] == "VOSD_HTTP__TOKEN"
    monkeypatch.setenv("VOSD_HTTP__TOKEN", "from-the-secret")
    config = load_config(path)
    assert config.redis.url == "redis://vosd-redis:6379/0"
    assert config.workers.devices == ["cuda:0"]
    port = int(config.http.listen.rpartition(":")[2])
    assert container["ports"][0]["containerPort"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_docker_healthcheck_probes_the_port_the_image_listens_on() -> None:
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    listen = re.search(r"VOSD_HTTP__LISTEN=(\S+)", dockerfile).group(1)
    port = listen.rpartition(":")[2]
    assert f"EXPOSE {port}" in dockerfile
    assert f"http://127.0.0.1:{port}/healthz" in re.search(r"HEALTHCHECK (?:.*\\\n)*.*", dockerfile).group(0)


def test_deployed_commands_are_real_vosd_commands() -> None:
    unit = (ROOT / "deploy/systemd/vosd.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.MULTILINE).group(1)
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", dockerfile, re.MULTILINE).group(1))
    for argv in (shlex.split(exec_start)[1:], cmd):
        assert argv[0] == "serve"
        result = CliRunner().invoke(app, [argv[0], "--help"])
        assert result.exit_code == 0, result.output
        assert "--config" in result.output


def test_shipped_configs_load() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)
