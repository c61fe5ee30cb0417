"""The documents a node refuses to act on, reported in its own status.

Every daemon checks a desired-state document with the API's rules (`pvcd.specs`) before it acts
on it: anything that reaches ZooKeeper can write one (docs/security.md, "Daemons re-validate").
An object with a status of its own says there why it was refused (a VM's status, a storage
request's result). Client networks, their ACLs and static leases have none, and every node acts
on them, so each node reports what it refuses in its status: `NodeStatus.refused`, a key
(`network/<vni>`, `acl/<vni>/<direction>/<description>`, `static-lease/<vni>/<mac>`) → the
reason. A reconcile replaces the entries of its scope with what it finds now, so an entry goes
once its document is valid again, or gone.
"""

from __future__ import annotations

import logging

from pvcd.controllers.node import NodeStatusWriter
from pvcd.domain.records import NodeStatus

log = logging.getLogger(__name__)


class Refusals:
    def __init__(self, node: str, writer: NodeStatusWriter) -> None:
        self.node = node
        self.writer = writer

    def report(self, scope: str, found: dict[str, str]) -> None:
        """Make the entries of `scope` (the key `scope` and the keys below `scope/`) exactly
        `found`; written (and logged) only when that changes them."""
        if _entries(self.writer.status, scope) == found:
            return
        before: dict[str, str] = {}

        def change(status: NodeStatus) -> None:
            before.clear()
            before.update(_entries(status, scope))
            kept = {key: why for key, why in status.refused.items() if key not in before}
            status.refused = {**kept, **found}

        self.writer.update(change)
        for key, why in sorted(found.items()):
            if before.get(key) != why:
                log.warning("event=document-refused node=%s key=%s reason=%s", self.node, key,
                            why)
        for key in sorted(set(before) - set(found)):
            log.info("event=document-accepted node=%s key=%s", self.node, key)


def _entries(status: NodeStatus, scope: str) -> dict[str, str]:
    return {key: why for key, why in status.refused.items()
            if key == scope or key.startswith(scope + "/")}
