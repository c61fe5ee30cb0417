"""Clients that abuse the API, as in the issue's finding 8, shared by the fast and e2e tiers and
bench/api_idle_connections.py: concurrent large uploads without a token (and how much the API's
process grew meanwhile), and many idle connections held by other processes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import resource
import subprocess
import sys
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


def cpu_seconds(pid: int | str = "self") -> float:
    """The CPU time process `pid` has used (user and system), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


# the idle clients: non-blocking connects (a full backlog must not stall the loop), then wait
_HOLDER = r"""
import resource, socket, sys
port, count, first, addresses = (int(a) for a in sys.argv[1:5])
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
held = []
for i in range(count):
    sock = socket.socket()
    sock.setblocking(False)
    address = (first + i) % addresses
    sock.bind((f"127.0.{10 + address // 250}.{address % 250 + 1}", 0))
    sock.connect_ex(("127.0.0.1", port))
    held.append(sock)
print(len(held), flush=True)
sys.stdin.read()
"""
PER_PROCESS = 15000  # below this machine's hard limit of open files per process


@contextlib.contextmanager
def idle_connections(port: int, count: int, addresses: int) -> Iterator[int]:
    """`count` connections to 127.0.0.1:`port` that send nothing, from `addresses` loopback
    addresses (127.0.10.1 on), held by child processes (file tables of their own) until the
    block ends; yields how many were opened."""
    children = []
    try:
        for first in range(0, count, PER_PROCESS):
            children.append(subprocess.Popen(
                [sys.executable, "-c", _HOLDER, str(port), str(min(PER_PROCESS, count - first)),
                 str(first), str(addresses)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        yield sum(int(child.stdout.readline()) for child in children  # type: ignore[union-attr]
                  if child.stdout is not None)
    finally:
        for child in children:
            child.kill()
            child.wait()
