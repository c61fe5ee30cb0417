"""The failure budget per client address (`pvcd.api.ratelimit`): a burst, then a steady
rate; IPv6 addresses counted per /64; a bounded table."""

from __future__ import annotations

from pvcd.api.ratelimit import FailureLimiter, client_key, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_one_attempt_per_window_share() -> None:
    clock = Clock()
    limiter = FailureLimiter(max_failures=5, window=10.0, clock=clock)
    for _ in range(5):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.record_failure("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 2.0  # one failure leaks every 10 / 5 s
    assert limiter.retry_after("10.0.0.2") is None
    clock.now += 2.0
    assert limiter.retry_after("10.0.0.1") is None
    limiter.record_failure("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 2.0
    clock.now += 10.0
    assert limiter.retry_after("10.0.0.1") is None


def test_ipv6_clients_are_counted_per_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") \
        == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") == "192.0.2.7"
    clock = Clock()
    limiter = FailureLimiter(max_failures=1, window=60.0, clock=clock)
    limiter.record_failure("2001:db8:1:2::1")
    assert limiter.retry_after("2001:db8:1:2::99") is not None


def test_the_table_is_bounded() -> None:
    clock = Clock()
    limiter = FailureLimiter(max_failures=1, window=60.0, clock=clock, max_clients=100)
    for i in range(1000):
        limiter.record_failure(f"10.0.{i // 250}.{i % 250}")
    assert len(limiter._buckets) <= 100
    assert limiter.retry_after("10.0.3.249") is not None  # the most recent are kept


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after_header(s) for s in (0.0, 0.2, 1.0, 2.01)] == ["1", "1", "1", "3"]
