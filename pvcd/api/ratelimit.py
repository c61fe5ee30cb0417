"""Failed authentication per client address: a leaky bucket, in the primary's memory.

Each bad token and failed login from a client adds one to its bucket; the bucket leaks
`max_failures` per `window` seconds. A full bucket (`max_failures` failures not yet leaked)
refuses the client's next credential check with 429 and a `Retry-After` of the time until one
more failure fits, so a client gets a burst of `max_failures` attempts and then one attempt
per `window / max_failures` seconds: with the defaults (20 per 60 s), about 29,000 guesses a
day, against tokens of at least 8 characters that operators should make long and random.

A refused client is refused *before* its token is checked (else a correct guess would still
show as a success). Clients behind one NAT share a bucket; so do the addresses of one IPv6 /64,
which one host can rotate through at will. The table is bounded (`max_clients`): empty buckets
are dropped first, then the least recently failed. It lives in memory only: a new primary starts
with empty buckets, which costs an attacker a handover per burst.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    level: float
    updated: float


class FailureLimiter:
    def __init__(self, max_failures: int, window: float, clock: Callable[[], float],
                 max_clients: int = 10000) -> None:
        self.max_failures = max_failures
        self.rate = max_failures / window  # failures leaked per second
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}  # in order of the last failure

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try a credential again, or None if it may now."""
        bucket = self._buckets.get(client_key(client))
        if bucket is None:
            return None
        level = self._level(bucket, self.clock())
        if level + 1 <= self.max_failures:
            return None
        return (level + 1 - self.max_failures) / self.rate

    def record_failure(self, client: str) -> None:
        key, now = client_key(client), self.clock()
        bucket = self._buckets.pop(key, None)
        level = 0.0 if bucket is None else self._level(bucket, now)
        self._buckets[key] = _Bucket(level + 1, now)
        if len(self._buckets) > self.max_clients:
            self._evict(now)

    def _level(self, bucket: _Bucket, now: float) -> float:
        return max(0.0, bucket.level - (now - bucket.updated) * self.rate)

    def _evict(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if self._level(b, now) == 0.0]:
            del self._buckets[key]
        while len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]


def client_key(address: str) -> str:
    """The bucket of a client address: the address itself, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def retry_after_header(seconds: float) -> str:
    """`Retry-After` in whole seconds, rounded up: a client that waits that long may try."""
    return str(max(1, math.ceil(seconds)))
