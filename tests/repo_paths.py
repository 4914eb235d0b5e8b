"""Where the repository and the test helpers are, for tests at any depth of tests/."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
"""tests/: the helper modules (videos, tmo_helpers) that child processes import too."""
REPO = TESTS.parent
