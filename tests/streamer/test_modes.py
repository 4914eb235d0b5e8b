"""choose_mode: the default follows the mask, and a request that cannot run says why."""

from __future__ import annotations

import pytest

from streamer.modes import Mode, ModeError, choose_mode


def test_default_follows_the_mask() -> None:
    assert choose_mode(True) is Mode.XMEM
    assert choose_mode(False) is Mode.AUTO


def test_requests_are_checked_against_the_mask() -> None:
    assert choose_mode(True, "xmem") is Mode.XMEM
    assert choose_mode(False, Mode.TMO) is Mode.TMO
    assert choose_mode(False, "auto") is Mode.AUTO
    with pytest.raises(ModeError, match="needs a first-frame mask"):
        choose_mode(False, "xmem")
    with pytest.raises(ModeError, match="takes no mask"):
        choose_mode(True, "auto")
    with pytest.raises(ModeError, match="unknown mode"):
        choose_mode(False, "sam")
