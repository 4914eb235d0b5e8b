"""The deployment files stay in step with the code: their configs load and their commands exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from repo_paths import REPO
from streamer.cli.app import app
from streamer.config import ConfigError, load_config


def test_kubernetes_configmap_is_a_valid_vosd_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    documents = list(yaml.safe_load_all((REPO / "deploy/kubernetes/vosd.yaml").read_text()))
    configmap = next(d for d in documents if d["kind"] == "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    monkeypatch.delenv("VOSD_HTTP__TOKEN", raising=False)
    with pytest.raises(ConfigError, match="requires a token"):  # the API listens beyond loopback
        load_config(path)
    deployment = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "vosd")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = [item["name"] for item in container["env"]]
    assert env == ["VOSD_HTTP__TOKEN", "REDIS_PASSWORD", "VOSD_REDIS__URL"]  # $(VAR) needs VAR defined first
    url = container["env"][2]["value"]
    assert url == "redis://:$(REDIS_PASSWORD)@vosd-redis:6379/0"
    monkeypatch.setenv("VOSD_HTTP__TOKEN", "from-the-secret")
    monkeypatch.setenv("VOSD_REDIS__URL", url.replace("$(REDIS_PASSWORD)", "from-the-secret"))
    config = load_config(path)
    assert config.redis.url == "redis://:from-the-secret@vosd-redis:6379/0"
    assert config.workers.devices == ["cuda:0"]
    port = int(config.http.listen.rpartition(":")[2])
    assert container["ports"][0]["containerPort"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_kubernetes_redis_is_a_stateful_set_with_a_volume_and_a_password() -> None:
    documents = list(yaml.safe_load_all((REPO / "deploy/kubernetes/vosd.yaml").read_text()))
    redis_set = next(d for d in documents if d["kind"] == "StatefulSet")
    service = next(d for d in documents if d["kind"] == "Service" and d["metadata"]["name"] == "vosd-redis")
    assert redis_set["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == redis_set["spec"]["template"]["metadata"]["labels"]
    container = redis_set["spec"]["template"]["spec"]["containers"][0]
    claims = [t["metadata"]["name"] for t in redis_set["spec"]["volumeClaimTemplates"]]
    assert [m["name"] for m in container["volumeMounts"]] == claims
    assert container["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "vosd-redis", "key": "password"}
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert not [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "vosd-redis"]


def test_compose_services_volumes_ports_and_secrets_fit_together(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = REPO / "deploy/compose"
    compose = yaml.safe_load((folder / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "vosd-1", "vosd-2", "prometheus"}
    example = dict(
        line.split("=", 1) for line in (folder / "example.env").read_text().splitlines() if "=" in line
    )
    assert set(example) == {"REDIS_PASSWORD", "VOSD_HTTP__TOKEN"}
    redis = services["redis"]
    assert redis["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert redis["command"][-2] == "--requirepass" and redis["command"][-1].startswith("${REDIS_PASSWORD:?")
    assert "redis-data:/data" in redis["volumes"]

    prometheus = yaml.safe_load((folder / "prometheus.yml").read_text())["scrape_configs"][0]
    secret = prometheus["authorization"]["credentials_file"].removeprefix("/run/secrets/")
    assert secret in services["prometheus"]["secrets"]
    assert compose["secrets"][secret] == {"environment": "VOSD_HTTP__TOKEN"}
    targets, host_ports, data_volumes = set(), set(), set()
    for name in ("vosd-1", "vosd-2"):
        service = services[name]
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
        env = service["environment"]
        assert env["VOSD_HTTP__TOKEN"].startswith("${VOSD_HTTP__TOKEN:?")
        url = env["VOSD_REDIS__URL"]
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379/0", url)
        mounts = dict(reversed(volume.split(":")[:2]) for volume in service["volumes"])
        config_file = folder / mounts[service["command"][service["command"].index("--config") + 1]]
        monkeypatch.setenv("VOSD_HTTP__TOKEN", example["VOSD_HTTP__TOKEN"])
        monkeypatch.setenv("VOSD_REDIS__URL", f"redis://:{example['REDIS_PASSWORD']}@redis:6379/0")
        config = load_config(config_file)
        data_volumes.add(mounts[str(config.data_dir)])
        for shared in ("outputs", "uploads"):  # an upload or output of one daemon is any daemon's
            assert mounts[f"{config.data_dir}/{shared}"] == shared
        port = config.http.listen.rpartition(":")[2]
        host, _, container_port = service["ports"][0].partition(":")
        assert container_port == port
        host_ports.add(host)
        targets.add(f"{name}:{port}")
    assert len(data_volumes) == len(host_ports) == 2, "each daemon needs its own data_dir and host port"
    assert set(prometheus["static_configs"][0]["targets"]) == targets
    volumes = [volume.split(":")[0] for service in services.values() for volume in service.get("volumes", [])]
    assert {volume for volume in volumes if not volume.startswith(".")} == set(compose["volumes"])


def test_docker_healthcheck_probes_the_port_the_image_listens_on() -> None:
    dockerfile = (REPO / "deploy/docker/Dockerfile").read_text()
    listen = re.search(r"VOSD_HTTP__LISTEN=(\S+)", dockerfile).group(1)
    port = listen.rpartition(":")[2]
    assert f"EXPOSE {port}" in dockerfile
    assert f"http://127.0.0.1:{port}/healthz" in re.search(r"HEALTHCHECK (?:.*\\\n)*.*", dockerfile).group(0)


def test_deployed_commands_are_real_vosd_commands() -> None:
    unit = (REPO / "deploy/systemd/vosd.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.MULTILINE).group(1)
    dockerfile = (REPO / "deploy/docker/Dockerfile").read_text()
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", dockerfile, re.MULTILINE).group(1))
    for argv in (shlex.split(exec_start)[1:], cmd):
        assert argv[0] == "serve"
        result = CliRunner().invoke(app, [argv[0], "--help"])
        assert result.exit_code == 0, result.output
        assert "--config" in result.output


def test_shipped_configs_load() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)
