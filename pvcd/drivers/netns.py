"""Running a piece of work inside a network namespace, from a daemon that lives outside it.

`setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only, so the work runs on a
short-lived thread that enters the namespace first. Sockets keep the namespace they were created
in: a listening socket made this way serves inside the namespace from any thread afterwards.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000


def run_in_netns(netns: str | None, work: Callable[[], T], timeout: float = 10.0) -> T:
    """`work()` in network namespace `netns` (None: right here); its result or its exception."""
    if netns is None:
        return work()
    results: list[T] = []
    errors: list[BaseException] = []

    def enter_and_work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
            finally:
                os.close(fd)
            results.append(work())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=enter_and_work, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if errors:
        raise errors[0]
    if not results:
        raise TimeoutError(f"work in network namespace {netns} did not finish in {timeout}s")
    return results[0]
