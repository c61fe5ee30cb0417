"""kazoo's threading handler with a cheaper `select`: one `poll()` call, no selector to build.

kazoo's connection thread calls `handler.select` once per loop iteration (every request sent,
every response read, every ping). `SequentialThreadingHandler.select` is
`kazoo.handlers.utils.selector_select`, which builds a new epoll selector each time:
`epoll_create`, one `epoll_ctl` per socket, `epoll_wait`, `close`, plus the `selectors`
bookkeeping around them. Profiles of the lab daemons during a mass define put a large share
of each daemon's time in it. `select.poll()` handles any fd number too (the reason kazoo left
`select.select`), and a poll object is a plain Python object: registering costs no system
call, the one call is `poll()` itself.

`PollingHandler.select` keeps `selector_select`'s contract exactly, because kazoo's
connection code depends on it:
- a timeout that is not a number is a TypeError, a negative one a ValueError; None blocks;
- a file object without a valid descriptor (a closed socket's is -1) is a TypeError;
- a descriptor that is not open is a ValueError ("Invalid event mask or fd"), as epoll's
  refusal to register it is (poll reports it as POLLNVAL instead);
- hang-up and error conditions make a descriptor both readable and writable, each reported
  only where it was asked for (the `selectors` rule), and a descriptor ready for both is
  reported as readable only (kazoo's `elif`);
- the third list (exceptional conditions) is never filled, as in kazoo.
"""

from __future__ import annotations

import math
import select
from collections.abc import Sequence
from typing import Any

from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.handlers.utils import fileobj_to_fd

_READ = select.POLLIN
_WRITE = select.POLLOUT


def poll_select(rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any],
                timeout: float | None = None) -> tuple[list[Any], list[Any], list[Any]]:
    """`kazoo.handlers.utils.selector_select` with one `poll()` (see the module docstring)."""
    if timeout is not None:
        if not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number")
        if timeout < 0:
            raise ValueError("timeout must be non-negative")
    wanted: dict[int, int] = {}
    objects: dict[int, list[Any]] = {}
    for mask, fileobjs in ((_READ, rlist), (_WRITE, wlist)):
        for fileobj in fileobjs:
            fd = fileobj_to_fd(fileobj)
            wanted[fd] = wanted.get(fd, 0) | mask
            objects.setdefault(fd, []).append(fileobj)
    poller = select.poll()
    for fd, mask in wanted.items():
        poller.register(fd, mask)
    # whole milliseconds, rounded up: never wake before the deadline and spin
    ready = poller.poll(None if timeout is None else math.ceil(timeout * 1000))
    readable: list[Any] = []
    writable: list[Any] = []
    for fd, revents in ready:
        if revents & select.POLLNVAL:
            raise ValueError("Invalid event mask or fd")
        # the selectors rule: anything but "readable" counts as writable and vice versa, so
        # that a hang-up or an error wakes whoever waits on the descriptor
        events = 0
        if revents & ~_READ:
            events |= _WRITE
        if revents & ~_WRITE:
            events |= _READ
        events &= wanted[fd]
        if events & _READ:
            readable.extend(objects[fd])
        elif events & _WRITE:
            writable.extend(objects[fd])
    return readable, writable, []


class PollingHandler(SequentialThreadingHandler):
    """kazoo's sequential threading handler, whose `select` is `poll_select`."""

    def select(self, *args: Any, **kwargs: Any) -> tuple[list[Any], list[Any], list[Any]]:
        return poll_select(*args, **kwargs)
