"""`send_all` (pvcd/api/bulk_send.py): a whole body through a non-blocking socket, and a clear
error for a client that left or stopped reading."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from pvcd.api.bulk_send import send_all


def pair() -> tuple[socket.socket, socket.socket]:
    """A non-blocking sender and a receiver with small buffers (the sender waits often)."""
    sender, receiver = socket.socketpair()
    for sock in (sender, receiver):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sender.setblocking(False)
    return sender, receiver


def test_the_whole_body_arrives() -> None:
    sender, receiver = pair()
    body = os.urandom(1 << 20)
    received = bytearray()

    def read() -> None:
        while chunk := receiver.recv(65536):
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        send_all(sender, body, 5.0)
    finally:
        sender.close()
        reader.join(5)
        receiver.close()
    assert bytes(received) == body


def test_a_client_that_stops_reading_is_given_up() -> None:
    sender, receiver = pair()
    try:
        with pytest.raises(TimeoutError, match=r"read nothing for 0\.2 s"):
            send_all(sender, b"x" * (1 << 20), 0.2)
    finally:
        sender.close()
        receiver.close()


def test_a_client_that_left_is_an_error() -> None:
    sender, receiver = pair()
    receiver.close()
    try:
        with pytest.raises(OSError):
            send_all(sender, b"x" * (1 << 20), 5.0)
    finally:
        sender.close()
