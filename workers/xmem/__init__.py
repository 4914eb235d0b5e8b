"""The XMem engine: checkpoint-compatible network and bounded-memory inference core."""

from workers.xmem.checkpoint import load_network
from workers.xmem.config import InferenceConfig
from workers.xmem.inference_core import InferenceCore

__all__ = ["InferenceConfig", "InferenceCore", "load_network"]
