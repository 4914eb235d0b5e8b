"""Weights management: resumable verified downloads from a real local HTTP server, registry, default model."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from workers.training import weights
from workers.training.cli import weights_app
from workers.training.weights import (
    DownloadInterrupted,
    WeightsError,
    add,
    default_model_path,
    download,
    install,
    list_weights,
    read_registry,
)
from workers.xmem.network import NetworkSpec
from workers.xmem.random_init import write_random_checkpoint


@dataclass
class Served:
    """What the test server sends, and what it saw."""

    payload: bytes = b""
    ranges: bool = True
    cut_next: bool = False
    range_headers: list[str | None] = field(default_factory=list)


class RangeHandler(BaseHTTPRequestHandler):
    """GET with optional ``Range: bytes=N-``; can cut one response short to simulate a dropped connection."""

    served: Served

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # http.server's naming
        served = self.served
        payload = served.payload
        header = self.headers.get("Range")
        served.range_headers.append(header)
        start = 0
        if header and served.ranges:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if served.cut_next:
            served.cut_next = False
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[tuple[Served, str]]:
    served = Served()
    handler = type("Handler", (RangeHandler,), {"served": served})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VOSD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VOSD_MODEL", raising=False)
    return tmp_path / "home" / "weights"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pth", NetworkSpec.small(), seed=3)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PAYLOAD = bytes(range(256)) * 1500  # 384,000 bytes


def test_download_verifies_the_hash(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    served.payload = PAYLOAD
    seen: list[int] = []
    digest = download(f"{base}/f.pth", tmp_path / "f.pth", expected_sha256=sha(PAYLOAD),
                      progress=lambda done, total: seen.append(done))
    assert digest == sha(PAYLOAD)
    assert (tmp_path / "f.pth").read_bytes() == PAYLOAD
    assert not (tmp_path / "f.pth.part").exists()
    assert seen[-1] == len(PAYLOAD)
    assert served.range_headers == [None]


def test_interrupted_download_resumes_with_a_range_request(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, base = server
    served.payload = PAYLOAD
    served.cut_next = True
    dest = tmp_path / "f.pth"
    with pytest.raises(DownloadInterrupted):
        download(f"{base}/f.pth", dest, expected_sha256=sha(PAYLOAD))
    part = tmp_path / "f.pth.part"
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD) and not dest.exists()
    assert download(f"{base}/f.pth", dest, expected_sha256=sha(PAYLOAD)) == sha(PAYLOAD)
    assert served.range_headers == [None, f"bytes={kept}-"]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_complete_partial_file_gets_416_and_is_kept(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    served.payload = PAYLOAD
    (tmp_path / "f.pth.part").write_bytes(PAYLOAD)
    assert download(f"{base}/f.pth", tmp_path / "f.pth") == sha(PAYLOAD)
    assert served.range_headers == [f"bytes={len(PAYLOAD)}-"]


def test_server_without_ranges_restarts_from_zero(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    served.payload = PAYLOAD
    served.ranges = False
    (tmp_path / "f.pth.part").write_bytes(b"stale bytes from another file")
    assert download(f"{base}/f.pth", tmp_path / "f.pth") == sha(PAYLOAD)
    assert (tmp_path / "f.pth").read_bytes() == PAYLOAD


def test_hash_mismatch_is_rejected_and_nothing_is_kept(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    served.payload = PAYLOAD
    with pytest.raises(WeightsError, match="SHA-256 mismatch"):
        download(f"{base}/f.pth", tmp_path / "f.pth", expected_sha256=sha(b"something else"))
    assert not (tmp_path / "f.pth").exists() and not (tmp_path / "f.pth.part").exists()


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="cannot reach"):
        download("http://127.0.0.1:9/none.pth", tmp_path / "none.pth", timeout=2)


def test_install_pins_the_first_hash_and_rejects_a_changed_file(
    server: tuple[Served, str], home: Path, checkpoint: Path
) -> None:
    served, base = server
    served.payload = checkpoint.read_bytes()
    path = install("XMem", url=f"{base}/XMem.pth", set_default=True)
    assert path == home / "XMem.pth" and path.read_bytes() == served.payload
    registry = read_registry(home)
    assert registry["models"]["XMem"]["sha256"] == sha(served.payload)
    assert registry["default"] == "XMem"
    assert default_model_path() == path

    served.payload = served.payload[:-1] + bytes([served.payload[-1] ^ 1])  # the "release" changed
    with pytest.raises(WeightsError, match="SHA-256 mismatch"):
        install("XMem", url=f"{base}/XMem.pth", force=True)
    with pytest.raises(WeightsError, match="differs from the hash pinned"):
        install("XMem", url=f"{base}/XMem.pth", sha256=sha(b"x"))
    with pytest.raises(WeightsError, match="unknown weights"):
        install("XMem-huge")


def test_install_rejects_a_file_that_is_not_a_checkpoint(server: tuple[Served, str], home: Path) -> None:
    served, base = server
    served.payload = PAYLOAD
    with pytest.raises(WeightsError, match="not a usable XMem checkpoint"):
        install("XMem-s012", url=f"{base}/XMem-s012.pth")
    assert not (home / "XMem-s012.pth").exists()
    assert "XMem-s012" not in read_registry(home)["models"]


def test_add_list_and_default_model(home: Path, checkpoint: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "BUNDLED_MODEL", tmp_path / "missing" / "vosd-small.pth")
    with pytest.raises(WeightsError, match=r"bundled model .* is missing"):
        default_model_path()
    bundled = tmp_path / "bundled.pth"
    bundled.write_bytes(b"stand-in")
    monkeypatch.setattr(weights, "BUNDLED_MODEL", bundled)
    assert default_model_path() == bundled

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError):
        add("junk", junk)
    with pytest.raises(WeightsError, match="official release"):
        add("XMem", checkpoint)
    path = add("mine", checkpoint)
    assert path.read_bytes() == checkpoint.read_bytes()
    entries = {entry.name: entry for entry in list_weights()}
    assert set(entries) == {"XMem", "XMem-s012", "mine"}
    assert entries["XMem"].path is None and entries["XMem"].source.endswith("/v1.0/XMem.pth")
    assert entries["mine"].path == path and entries["mine"].sha256 == sha(checkpoint.read_bytes())
    assert default_model_path() == bundled  # adding does not change the default

    monkeypatch.setenv("VOSD_MODEL", "mine")
    assert default_model_path() == path
    monkeypatch.setenv("VOSD_MODEL", str(checkpoint))
    assert default_model_path() == checkpoint
    monkeypatch.setenv("VOSD_MODEL", "XMem")
    with pytest.raises(WeightsError, match="vosd weights install XMem"):
        default_model_path()


def test_weights_cli(home: Path, checkpoint: Path) -> None:
    app = typer.Typer()
    app.add_typer(weights_app, name="weights")
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "add", "mine", str(checkpoint), "--set-default"])
    assert result.exit_code == 0, result.output
    assert json.loads((home / "registry.json").read_text())["default"] == "mine"
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0 and "mine" in result.output and "XMem-s012" in result.output
    result = runner.invoke(app, ["weights", "use", "XMem"])
    assert result.exit_code == 1 and "not installed" in result.output
    result = runner.invoke(app, ["weights", "add", "bad", str(home / "nothing.pth")])
    assert result.exit_code == 1
