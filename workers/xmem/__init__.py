"""The XMem engine: checkpoint-compatible network and bounded-memory inference core.

The public names are resolved on first use: `streamer.config` needs only `workers.xmem.config`, and the
commands that just talk to Redis must not pay for importing torch (seconds) through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.xmem.checkpoint import load_network
    from workers.xmem.config import InferenceConfig
    from workers.xmem.inference_core import InferenceCore

_HOMES = {
    "InferenceConfig": "workers.xmem.config",
    "InferenceCore": "workers.xmem.inference_core",
    "load_network": "workers.xmem.checkpoint",
}

__all__ = ["InferenceConfig", "InferenceCore", "load_network"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
