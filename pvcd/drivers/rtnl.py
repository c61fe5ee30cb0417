"""pyroute2, imported at first use: about 22 MiB of a daemon's memory (it loads its NDB, IPDB,
ethtool and mock modules with the package) that a node without client networks, floating IPs
or metadata service never needs. The netlink drivers (`netlink`, `neighbours`) get their
`IPRoute` and `NetlinkError` here; the first call imports the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError


def open_iproute(netns: str | None) -> IPRoute:
    """An rtnetlink socket in `netns` (None: the caller's own namespace)."""
    from pyroute2 import IPRoute

    # flags=0: never let pyroute2 create a missing namespace behind our back
    return IPRoute(netns=netns, flags=0) if netns else IPRoute()


def netlink_error() -> type[NetlinkError]:
    """pyroute2's NetlinkError, for `except netlink_error() as exc` (an except clause's
    expression is evaluated only when an exception is on its way)."""
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError
