"""The issue's reproduction of finding 8, shared by the fast and e2e tiers: concurrent large
uploads by a client without a token, and how much the API's process grew meanwhile."""

from __future__ import annotations

import concurrent.futures
import resource
import threading
import time
from collections.abc import Iterator

import requests

MIB = 1024 * 1024


class Upload:
    """A body of `size` bytes from one reused chunk, with a length (so requests sends a
    Content-Length rather than chunks)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        chunk = b"x" * MIB
        for _ in range(self.size // MIB):
            yield chunk


def rss(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def upload_storm(url: str, pid: int | str = "self", count: int = 10,
                 size: int = 90 * MIB) -> tuple[list[int | str], int]:
    """`count` concurrent POSTs of `size` bytes to `url` without a token: each one's status
    ("reset" if the API closed the connection before the client could read an answer), and
    how much process `pid` (the API's) grew at its peak meanwhile, in bytes."""
    before = rss(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.01)

    def upload() -> int | str:
        try:
            return requests.post(url, data=Upload(size), timeout=60,
                                 headers={"Content-Type": "application/octet-stream"},
                                 verify=False).status_code
        except requests.ConnectionError:
            return "reset"

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(lambda _: upload(), range(count)))
    finally:
        done.set()
        sampler.join()
    return outcomes, peak[0] - before
