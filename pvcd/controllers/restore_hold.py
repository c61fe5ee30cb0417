"""Nodes hold VM and network changes while a cluster state restore is unfinished
(extensions.md §9).

A restore deletes and creates again the objects that differ from the backup, in many
transactions. A controller acting on the state half-way would tear down what the restore puts
back a moment later (a network's bridge, DHCP service and ACL chains, a VM's definition), or
act on an object whose neighbours are not written yet. So while the `cluster/restore` marker
is present, the VM, network, gateway and firewall controllers act on nothing and look at their
keys again every `HOLD_RECHECK` seconds; the first look after the marker is gone acts on the
restored state. An interrupted restore keeps them holding until it is run again or its marker
is removed (`DELETE /restore`), which the fault `RESTORE_INCOMPLETE` tells the operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pvcd.controllers.base import Result
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

HOLD_RECHECK = 1.0  # seconds between two looks at a held key

Reconcile = Callable[[str], Result | None]


def hold_during_restore(view: ClusterView, reconcile: Reconcile,
                        recheck: float = HOLD_RECHECK) -> Reconcile:
    """`reconcile`, which does nothing while the restore marker is present (module
    docstring)."""
    marker = view.paths.restore_marker

    def held(key: str) -> Result | None:
        if view.cache.exists(marker):
            log.debug("event=held-for-restore key=%s", key)
            return Result(requeue_after=recheck)
        return reconcile(key)

    return held
