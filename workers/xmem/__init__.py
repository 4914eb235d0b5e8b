"""The XMem engine: checkpoint-compatible network and bounded-memory inference core."""
