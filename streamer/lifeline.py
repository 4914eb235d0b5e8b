"""Children of the daemon end with it, even when it is killed with SIGKILL and cannot stop them.

A worker, writer or decoder left running by a dead supervisor keeps segmenting a job that another
daemon re-takes after the visibility timeout, and keeps its half-written outputs. Linux delivers a
signal to a process whose parent dies (PR_SET_PDEATHSIG); SIGTERM makes each child take its normal
stop path (the writer discards unfinished outputs, the decoder cancels, the worker leaves its loop).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def exit_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `signum` to this process when its parent exits (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        logger.warning("cannot tie this process to its parent: errno %d", ctypes.get_errno())
        return
    if os.getppid() != parent or parent == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signum)
