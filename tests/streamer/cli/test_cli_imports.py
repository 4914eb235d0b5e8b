"""Commands that only talk to Redis must start fast: importing them must not import torch (seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from repo_paths import REPO

pytestmark = pytest.mark.timeout(120)

CHECK = (
    "import sys; assert 'torch' not in sys.modules, "
    "sorted(m for m in sys.modules if m.startswith('work'))"
)


@pytest.mark.parametrize(
    "statement",
    [
        "import streamer.cli.daemon_commands, streamer.config, streamer.queue.jobs",
        "import streamer.cli.app",
        "from streamer.config import load_config; load_config(None).xmem.inference_config()",
    ],
    ids=["redis-commands", "cli-module", "config-to-inference-options"],
)
def test_redis_only_paths_do_not_import_torch(statement: str) -> None:
    """A fresh interpreter: anything imported earlier in this test session would hide the import."""
    command = [sys.executable, "-c", f"{statement}; {CHECK}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_help_of_a_redis_command_does_not_import_torch() -> None:
    code = (
        "import sys; from streamer.cli.app import app; sys.argv = ['vosd', 'status', '--help']\n"
        "try:\n    app()\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n" + CHECK
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "status" in done.stdout
