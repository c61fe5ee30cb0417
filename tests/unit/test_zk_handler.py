"""pvcd.state.zk_handler: `poll_select` keeps kazoo's `selector_select` contract exactly.

Each case runs both functions on the same sockets and expects the same answer (or the same
exception type), so a difference from kazoo's semantics fails here, not in a reconnect.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.utils import selector_select

from pvcd.state.client import zookeeper_client
from pvcd.state.zk_handler import PollingHandler, poll_select

Select = Callable[..., tuple[list[Any], list[Any], list[Any]]]
BOTH = pytest.mark.parametrize("choose", [poll_select, selector_select],
                               ids=["poll", "kazoo"])


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


@BOTH
def test_nothing_ready_times_out_empty(choose: Select,
                                       pair: tuple[socket.socket, socket.socket]) -> None:
    left, _ = pair
    start = time.monotonic()
    assert choose([left], [], [], 0.05) == ([], [], [])
    assert time.monotonic() - start >= 0.045  # not woken early (rounded up to whole ms)


@BOTH
def test_readable_socket_reported_once_per_listing(
        choose: Select, pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    right.send(b"x")
    readable, writable, exceptional = choose([left, left.fileno()], [], [], 1.0)
    assert readable == [left, left.fileno()] and writable == [] and exceptional == []


@BOTH
def test_writable_socket(choose: Select, pair: tuple[socket.socket, socket.socket]) -> None:
    left, _ = pair
    assert choose([], [left], [], 1.0) == ([], [left], [])


@BOTH
def test_ready_both_ways_is_reported_readable_only(
        choose: Select, pair: tuple[socket.socket, socket.socket]) -> None:
    """(once per listing: kazoo's quirk, kept)"""
    left, right = pair
    right.send(b"x")
    assert choose([left], [left], [], 1.0) == ([left, left], [], [])


@BOTH
def test_hang_up_wakes_a_reader(choose: Select,
                                pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    right.close()
    assert choose([left], [], [], 1.0)[0] == [left]


@BOTH
def test_zero_timeout_polls_and_none_blocks_until_ready(
        choose: Select, pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    assert choose([left], [], [], 0) == ([], [], [])
    right.send(b"x")
    assert choose([left], [], [], None)[0] == [left]


@BOTH
@pytest.mark.parametrize(("timeout", "error"), [("1", TypeError), (-1, ValueError)])
def test_bad_timeouts(choose: Select, pair: tuple[socket.socket, socket.socket],
                      timeout: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        choose([pair[0]], [], [], timeout)


@BOTH
def test_closed_socket_object_is_a_type_error(choose: Select) -> None:
    sock = socket.socket()
    sock.close()  # fileno() is -1 now
    with pytest.raises(TypeError):
        choose([sock], [], [], 0.1)
    with pytest.raises(TypeError):
        choose([object()], [], [], 0.1)


@BOTH
def test_descriptor_not_open_is_a_value_error(choose: Select) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(ValueError):
        choose([read_end], [], [], 0.1)


def test_descriptor_numbers_above_select_limit(pair: tuple[socket.socket, socket.socket]) -> None:
    """The reason kazoo left `select.select`: descriptors >= FD_SETSIZE (1024)."""
    left, right = pair
    try:
        high = os.dup2(left.fileno(), 1500)
    except OSError:
        pytest.skip("the descriptor limit is below 1501")
    try:
        right.send(b"x")
        assert poll_select([high], [], [], 1.0)[0] == [high]
    finally:
        os.close(high)


def test_pvcd_clients_use_the_polling_handler() -> None:
    client: KazooClient = zookeeper_client(["127.0.0.1:1"], 1.0)
    assert isinstance(client.handler, PollingHandler)
