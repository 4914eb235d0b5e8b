"""The protocol is written once, as the `ROUTES` of each message class; this checks that the document
shows exactly that table and that the code builds messages only on declared routes, and builds every
declared route that is not a forward."""

from __future__ import annotations

import ast
from typing import get_args

from repo_paths import REPO
from streamer.transport import messages
from streamer.transport.messages import Process, protocol_table

BUILDERS: dict[tuple[str, str], Process] = {
    ("streamer/ingest/decoder.py", "DecoderLoop"): Process.DECODER,
    ("streamer/transport/sockets.py", "FrameSender"): Process.DECODER,
    ("workers/worker.py", "Worker"): Process.WORKER,
    ("streamer/transport/sockets.py", "FrameInbox"): Process.WORKER,
    ("streamer/output/writer_process.py", "WriterLoop"): Process.WRITER,
    ("streamer/daemon/supervisor.py", "Daemon"): Process.DAEMON,
    ("streamer/transport/sockets.py", "release_job"): Process.DAEMON,
}
"""Where each process builds the messages it sends: a module and a class (or function) in it."""

MESSAGE_CLASSES = {cls.__name__: cls for cls in get_args(messages.Message)}


def _built_in(path: str, scope: str) -> set[str]:
    """Message classes constructed inside `scope` (a top-level class or function) of a module."""
    tree = ast.parse((REPO / path).read_text())
    owner = next(
        node
        for node in tree.body
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == scope
    )
    return {
        node.func.id
        for node in ast.walk(owner)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in MESSAGE_CLASSES
    }


def test_the_architecture_document_shows_the_protocol_table() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("<!-- protocol:start -->", 1)[1].split("<!-- protocol:end -->", 1)[0]
    assert block.strip().strip("`").strip() == protocol_table()


def test_every_message_each_process_builds_is_on_a_declared_route_and_every_route_is_built() -> None:
    built: dict[Process, set[str]] = {process: set() for process in Process}
    for (path, scope), process in BUILDERS.items():
        built[process] |= _built_in(path, scope)
    declared: dict[Process, set[str]] = {process: set() for process in Process}
    for name, cls in MESSAGE_CLASSES.items():
        for route in cls.ROUTES:
            if not route.forwarded:  # passed on as received: the sender does not build it
                declared[route.sender].add(name)
    for process in Process:
        undeclared = built[process] - declared[process]
        assert not undeclared, f"{process.value} builds {sorted(undeclared)} on no declared route"
        unbuilt = declared[process] - built[process]
        assert not unbuilt, f"{process.value} is declared to send {sorted(unbuilt)} but never builds them"


def test_every_message_kind_has_a_route() -> None:
    assert all(cls.ROUTES for cls in MESSAGE_CLASSES.values())
