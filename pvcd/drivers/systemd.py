"""systemd's notification protocol (`sd_notify`), for `Type=notify` units.

`pvcd.service` is `Type=notify`: systemd counts the daemon as started only once it is registered
in ZooKeeper (`READY=1`), so units ordered after it (`pvcd-flush.service`, which marks the node
ready on boot) run against a live node. Without `$NOTIFY_SOCKET` (the lab, a terminal) every call
does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to systemd; False when not run by systemd or it failed."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("event=sd-notify-failed state=%s error=%r", state.replace("\n", ","), exc)
        return False
