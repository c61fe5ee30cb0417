"""The domains active in this node's libvirt, kept from libvirt's lifecycle events.

The node record's domain counts (every keepalive and every VM change) and the console follower
(every second) both need "what runs here". Listing every domain each time costs six libvirt
calls per domain: at a few thousand guests per node that alone was several per cent of a core
at idle, and during a mass define each start event re-listed them all. Instead:

- a lifecycle event only notes its domain (`note`, on libvirt's event thread: no call);
- the next read (`current`) asks libvirt about the noted domains alone;
- a full listing happens at the first read and after `relist()` (the node controller's resync,
  every `timing.resync_interval`), so an event libvirt never delivered (a connection replaced
  while a domain changed) delays the counts by at most one resync, as it would any reconcile.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from pvcd.domain.states import domain_active


class DomainStates(Protocol):
    """What this needs of `pvcd.drivers.libvirt.LibvirtDriver`."""

    def list_domains(self) -> list[Any]: ...
    def domain_state(self, uuid: str) -> Any: ...


class RunningDomains:
    def __init__(self, driver: DomainStates) -> None:
        self._driver = driver
        self._lock = threading.Lock()
        self._running: frozenset[str] | None = None  # None: list in full at the next read
        self._noted: set[str] = set()

    def note(self, uuid: str) -> None:
        """Domain `uuid` changed (a lifecycle event): asked about at the next read."""
        with self._lock:
            self._noted.add(uuid)

    def relist(self) -> None:
        """List every domain at the next read (the resync's safety net)."""
        with self._lock:
            self._running = None

    def current(self) -> frozenset[str]:
        """UUIDs of the active domains now (the same object while nothing changed).
        BackendError when libvirt does not answer."""
        with self._lock:
            if self._running is None:
                self._noted.clear()  # (the listing sees them as they are now)
                self._running = frozenset(
                    domain.uuid for domain in self._driver.list_domains()
                    if domain_active(domain))
                return self._running
            if not self._noted:
                return self._running
            noted, self._noted = self._noted, set()
            running = set(self._running)
            try:
                for uuid in noted:
                    domain = self._driver.domain_state(uuid)
                    if domain is not None and domain_active(domain):
                        running.add(uuid)
                    else:
                        running.discard(uuid)
            except Exception:
                self._noted |= noted  # asked again at the next read
                raise
            if running != self._running:
                self._running = frozenset(running)
            return self._running
