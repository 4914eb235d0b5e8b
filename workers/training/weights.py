"""Model weights: the known official XMem releases, a local weights folder, resumable verified downloads.

The weights folder is ``$VOSD_HOME/weights`` (or ``~/.cache/vosd/weights``) and holds the files plus
``registry.json``: for each name its file, SHA-256, source and date, and which one is the default model.
XMem's releases publish no checksums, so the first successful download pins the file's SHA-256 in the registry
and every later install of that name must match it (``--sha256`` gives a hash to check against up front).
Every file that enters the registry is loaded once with ``load_network`` so a wrong file fails at install
time, not when a stream starts.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "vosd-lite.pth"
"""The model shipped inside the package (lite variant; workers/weights/README.md says how it was trained)."""
BUNDLED_TMO_MODEL = BUNDLED_MODEL.with_name("vosd-tmo-lite.pth")
"""The TMO model shipped inside the package (lite variant, trained here; README.md beside it)."""
CHUNK_SIZE = 1 << 20


class WeightsError(RuntimeError):
    """A weights operation failed; the message says what to do."""


class DownloadInterrupted(WeightsError):
    """The connection ended early; the partial file is kept and the next attempt resumes it."""


@dataclass(frozen=True)
class KnownWeights:
    """A published checkpoint vosd knows how to fetch.

    Attributes:
        name: the name used on the command line.
        filename: file name in the weights folder.
        url: the release download address.
        sha256: published checksum, or None when the publisher gives none (then the first download is pinned).
        description: what the checkpoint is.
    """

    name: str
    filename: str
    url: str
    sha256: str | None
    description: str


XMEM_RELEASE = "https://github.com/hkchengrex/XMem/releases/download/v1.0"
KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    "XMem": KnownWeights("XMem", "XMem.pth", f"{XMEM_RELEASE}/XMem.pth", None,
                         "official XMem, stages 0+3 (static images, DAVIS + YouTube-VOS); the default"),
    "XMem-s012": KnownWeights("XMem-s012", "XMem-s012.pth", f"{XMEM_RELEASE}/XMem-s012.pth", None,
                              "official XMem with BL30K pre-training, stages 0+1+2"),
}
"""The files fetched by XMem's scripts/download_models.sh (GitHub release v1.0); no hashes are published."""


@dataclass(frozen=True)
class WeightsEntry:
    """One line of `vosd weights list`.

    Attributes:
        name: registered or known name.
        path: the file in the weights folder, or None when not installed.
        sha256: pinned checksum, or None when not installed.
        source: URL or local file it came from.
        description: what it is.
        is_default: whether default_model_path() resolves to it.
    """

    name: str
    path: Path | None
    sha256: str | None
    source: str
    description: str
    is_default: bool


def weights_dir() -> Path:
    """``$VOSD_HOME/weights`` when VOSD_HOME is set, else ``~/.cache/vosd/weights``."""
    home = os.environ.get("VOSD_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "vosd") / "weights"


def read_registry(folder: Path | None = None) -> dict:
    """The registry (``{"models": {name: record}, "default": name | None}``); empty when none exists yet."""
    path = (folder or weights_dir()) / REGISTRY_FILE
    if not path.is_file():
        return {"models": {}, "default": None}
    try:
        registry = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path} is not valid JSON ({error}); fix or delete it") from error
    registry.setdefault("models", {})
    registry.setdefault("default", None)
    return registry


def write_registry(registry: dict, folder: Path | None = None) -> None:
    """Atomically replace the registry file."""
    folder = folder or weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / (REGISTRY_FILE + ".partial")
    partial.write_text(json.dumps(registry, indent=2, sort_keys=True) + "\n")
    os.replace(partial, folder / REGISTRY_FILE)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str, dest: Path, *, expected_sha256: str | None = None, timeout: float = 30.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> str:
    """Fetch ``url`` to ``dest`` through ``dest.part``, resuming a previous partial file; returns the SHA-256.

    A partial file is continued with an HTTP Range request; a server that ignores ranges (200 instead of 206)
    restarts it from zero. A short transfer raises DownloadInterrupted and keeps the partial file. A finished
    file whose hash differs from ``expected_sha256`` is deleted and rejected. ``progress(done, total)`` is
    called after each chunk.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:  # 416: the partial file already holds every byte
            raise WeightsError(f"download of {url} failed: HTTP {error.code} {error.reason}") from error
        log.info("%s: partial file is already complete", dest.name)
    except (urllib.error.URLError, OSError) as error:
        raise WeightsError(f"cannot reach {url}: {error}") from error
    else:
        with response:
            receive(response, part, offset, url, progress)
    digest = file_sha256(part)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        part.unlink()
        raise WeightsError(f"SHA-256 mismatch for {url}: expected {expected_sha256}, got {digest}; the file "
                           f"was deleted (a changed release, or a corrupted transfer)")
    os.replace(part, dest)
    return digest


def receive(response: object, part: Path, offset: int, url: str,
            progress: Callable[[int, int | None], None] | None) -> None:
    """Write a response body to the partial file: appended after a 206, from scratch after a 200."""
    status = response.status  # type: ignore[attr-defined]
    length = response.headers.get("Content-Length")  # type: ignore[attr-defined]
    if status == 206:
        content_range = response.headers.get("Content-Range", "")  # type: ignore[attr-defined]
        if not content_range.startswith(f"bytes {offset}-"):
            raise WeightsError(f"{url}: server resumed at the wrong offset ({content_range!r}, not {offset})")
        mode, done = "ab", offset
    else:
        if offset:
            log.info("%s does not support resuming; downloading from the start", url)
        mode, done = "wb", 0
    expected = None if length is None else done + int(length)
    with part.open(mode) as handle:
        for block in iter(lambda: response.read(CHUNK_SIZE), b""):  # type: ignore[attr-defined]
            handle.write(block)
            done += len(block)
            if progress is not None:
                progress(done, expected)
    if expected is not None and done < expected:
        raise DownloadInterrupted(f"{url}: connection closed after {done} of {expected} bytes; run the "
                                  f"install again to resume from {part}")


def validate_checkpoint(path: Path) -> str:
    """Load the file as an XMem network (strict); returns a one-line description of its layout."""
    from workers.xmem.checkpoint import CheckpointError, load_network

    try:
        network = load_network(path, fast=False)
    except CheckpointError as error:
        raise WeightsError(f"{path} is not a usable XMem checkpoint: {error}") from error
    return f"{network.spec.variant} (key {network.spec.key_dim}, value {network.spec.value_dim}, " \
           f"hidden {network.spec.hidden_dim})"


def record(registry: dict, name: str, path: Path, digest: str, source: str) -> None:
    registry["models"][name] = {
        "file": path.name, "sha256": digest, "source": source,
        "added": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def install(
    name: str, *, sha256: str | None = None, url: str | None = None, force: bool = False,
    set_default: bool = False, progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download a known checkpoint into the weights folder (resumed, verified, validated); returns its path.

    The expected hash is ``sha256`` if given, else the one pinned by an earlier install, else the published
    one. ``url`` overrides the download address (a mirror). An installed file that still matches is not
    fetched again unless ``force``.
    """
    known = KNOWN_WEIGHTS.get(name)
    if known is None:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(KNOWN_WEIGHTS)} "
                           f"(register a local file with `vosd weights add`)")
    folder = weights_dir()
    registry = read_registry(folder)
    pinned = registry["models"].get(name, {}).get("sha256")
    if sha256 is not None and pinned is not None and sha256.lower() != pinned:
        raise WeightsError(f"--sha256 {sha256} differs from the hash pinned for {name} ({pinned}); "
                           f"delete {folder / REGISTRY_FILE}'s entry to re-pin")
    expected = sha256 or pinned or known.sha256
    dest = folder / known.filename
    if dest.is_file() and not force:
        digest = file_sha256(dest)
        if expected is None or digest == expected.lower():
            log.info("%s is already installed at %s", name, dest)
            record(registry, name, dest, digest, url or known.url)
            registry["default"] = name if set_default else registry["default"]
            write_registry(registry, folder)
            return dest
        log.warning("%s at %s does not match its hash; downloading again", name, dest)
    digest = download(url or known.url, dest, expected_sha256=expected, progress=progress)
    try:
        layout = validate_checkpoint(dest)
    except WeightsError:
        dest.unlink()
        raise
    if expected is None:
        log.info("no published SHA-256 for %s: pinned %s from this download", name, digest)
    log.info("installed %s (%s) at %s", name, layout, dest)
    record(registry, name, dest, digest, url or known.url)
    if set_default:
        registry["default"] = name
    write_registry(registry, folder)
    return dest


def add(name: str, file: Path, *, set_default: bool = False) -> Path:
    """Register a local checkpoint under ``name`` (validated with load_network, then copied in)."""
    if not name or "/" in name or name.startswith("."):
        raise WeightsError(f"invalid weights name {name!r}")
    if name in KNOWN_WEIGHTS:
        raise WeightsError(f"{name!r} is the name of an official release; pick another name")
    layout = validate_checkpoint(file)
    folder = weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{name}.pth"
    partial = dest.with_name(dest.name + ".partial")
    shutil.copyfile(file, partial)
    os.replace(partial, dest)
    registry = read_registry(folder)
    record(registry, name, dest, file_sha256(dest), str(file.resolve()))
    if set_default:
        registry["default"] = name
    write_registry(registry, folder)
    log.info("added %s (%s) as %s", file, layout, dest)
    return dest


def set_default_model(name: str) -> None:
    """Make an installed / added checkpoint the default model."""
    registry = read_registry()
    if name not in registry["models"]:
        raise WeightsError(f"{name!r} is not installed; see `vosd weights list`")
    registry["default"] = name
    write_registry(registry)


def resolve(name: str) -> Path:
    """The file of an installed / added checkpoint."""
    folder = weights_dir()
    entry = read_registry(folder)["models"].get(name)
    if entry is None:
        hint = f"`vosd weights install {name}`" if name in KNOWN_WEIGHTS else "`vosd weights add NAME FILE`"
        raise WeightsError(f"weights {name!r} are not installed; run {hint}")
    path = folder / entry["file"]
    if not path.is_file():
        raise WeightsError(f"weights {name!r} are registered but {path} is missing; install them again")
    return path


def list_weights() -> list[WeightsEntry]:
    """Known releases (installed or not) and locally added checkpoints."""
    folder = weights_dir()
    registry = read_registry(folder)
    entries = []
    names = list(KNOWN_WEIGHTS) + sorted(set(registry["models"]) - set(KNOWN_WEIGHTS))
    for name in names:
        entry = registry["models"].get(name)
        known = KNOWN_WEIGHTS.get(name)
        path = folder / entry["file"] if entry else None
        entries.append(WeightsEntry(
            name=name, path=path if path is not None and path.is_file() else None,
            sha256=entry["sha256"] if entry else known.sha256 if known else None,
            source=entry["source"] if entry else known.url if known else "",
            description=known.description if known else "added locally",
            is_default=registry["default"] == name,
        ))
    return entries


def default_model_path() -> Path:
    """The checkpoint vosd runs when none is named.

    In order: ``$VOSD_MODEL`` (a registered name or a file path), the registry's default (set with
    ``--set-default``), else the small model bundled in the package.
    """
    chosen = os.environ.get("VOSD_MODEL")
    if chosen:
        return model_path(chosen)
    default = read_registry()["default"]
    if default:
        return resolve(default)
    if not BUNDLED_MODEL.is_file():
        raise WeightsError(
            f"the bundled model {BUNDLED_MODEL} is missing (it has not been trained yet). Use official "
            f"weights: `vosd weights install XMem --set-default`, or set VOSD_MODEL to a checkpoint file")
    return BUNDLED_MODEL


def default_tmo_model_path() -> Path:
    """The TMO checkpoint `--method tmo` runs when no --model is given: the bundled lite model."""
    if not BUNDLED_TMO_MODEL.is_file():
        raise WeightsError(f"the bundled TMO model {BUNDLED_TMO_MODEL} is missing; pass --model PATH "
                           f"(a TMO checkpoint)")
    return BUNDLED_TMO_MODEL


def model_path(name: str | Path | None) -> Path:
    """What a ``--model`` / ``model_path`` setting names: a checkpoint file, a registered weights name, or
    (empty) the default model."""
    if not name:
        return default_model_path()
    candidate = Path(name).expanduser()
    return candidate if candidate.is_file() else resolve(str(name))
