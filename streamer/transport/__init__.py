"""Between processes: every message and who sends it to whom (`messages`, the protocol's one home), and the
ZeroMQ sockets that carry them with per-job routing, credits and the live drop policy (`sockets`)."""
