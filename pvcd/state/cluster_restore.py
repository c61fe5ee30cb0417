"""Writing a checked cluster backup into ZooKeeper (extensions.md §9), and the rules for when a
restore may run.

The desired state is split into *groups*, each an object with everything that belongs to it:
a VM (its spec, its snapshots, its `vm-names` entry), a network (its spec, folders, leases,
ACLs, its `network-names` entry), one provisioner object, the autobackup configuration. A
group that is the same in the cluster and in the backup is left alone (its VM keeps its status
and its node's claim). Every other group of the cluster is deleted, and every other group of
the backup is created: first all deletions, then all creations, so a name that moves from one
object to another is free when it is taken again.

Consistency while it runs. Each group's root document and its name index entry are written in
the same transaction (created first, deleted last), so at every instant each index entry names
an object that exists and each object its own entry: a daemon killed between two transactions
leaves no duplicate name and no orphaned entry, only some groups still to delete or create.
Every write is a compare-and-set: a document a node changes meanwhile (a VM's status, a
network's active lease) makes the transaction fail, and the writer plans again from the cache.
The writes are packed into transactions of up to `batch_bytes` (ZooKeeper takes about 1 MiB
per request; one transaction per object would make a restore of a thousand VMs take seconds),
so a transaction carries many small groups, and a group larger than that is written in several
(leaves deleted first, parents created first); only its root and index entry are bound to go
together.

The same plan run again on a half-restored cluster finishes the work (the groups already
written are equal and left alone): that is how an interrupted restore converges
(docs/backups.md). The `cluster/restore` marker, written and removed by the restore task, says
that one is unfinished.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pvcd.domain.errors import Conflict, InvalidValue, PvcError
from pvcd.domain.placement import choose_node
from pvcd.domain.records import VmSpec, from_dict
from pvcd.domain.tasks import TaskRecord
from pvcd.domain.vm_meta import node_limit_of
from pvcd.state.cluster_backup import desired_state
from pvcd.state.request_size import MAX_REQUEST_BYTES, request_bytes
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

TASK_NAME = "cluster.restore"  # the task that restores (pvcd.controllers.cluster_restore)
ATTEMPTS = 10  # plans tried before a restore gives up on concurrent changes
INDEXES = {"vm-names": ("vm", "uuid"), "network-names": ("network", "vni")}
Progress = Callable[[int, int, str], None]


def group_of(relative: str, doc: Any) -> str:
    """The group (module docstring) the document at `relative` belongs to."""
    parts = relative.split("/")
    if parts[0] == "vms":
        return f"vm:{parts[1]}"
    if parts[0] == "networks":
        return f"network:{parts[1]}"
    if parts[0] in INDEXES:
        kind, key = INDEXES[parts[0]]
        ident = doc.get(key) if isinstance(doc, dict) else None
        # an entry naming no object of its kind is a group of its own, deleted as such
        return f"{kind}:{ident}" if isinstance(ident, (str, int)) and \
            not isinstance(ident, bool) else f"{parts[0]}:{parts[1]}"
    return relative


def groups(znodes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    grouped: dict[str, dict[str, Any]] = {}
    for path, doc in znodes.items():
        if path != "schema/version":  # checked equal, never written
            grouped.setdefault(group_of(path, doc), {})[path] = doc
    return grouped


# --- when a restore may run (extensions.md §9, safety rules 2 and 5) -------------------------

def cluster_is_empty(view: ClusterView) -> bool:
    """No VM, network or provisioner object."""
    paths, cache = view.paths, view.cache
    return not cache.children(paths.vms) and not cache.children(paths.networks) and \
        not any(cache.children(paths.provisioner_kind(kind))
                for kind in cache.children(paths.provisioner))


def check_restore_allowed(view: ClusterView, tasks: Iterable[TaskRecord],
                          own_task: str | None = None) -> None:
    """InvalidValue or Conflict unless a restore may run now: maintenance mode is on, the
    cluster is empty, or an earlier restore left its marker (it is run again to finish); no
    VM runs or migrates; no task other than `own_task` is unfinished."""
    if not (view.maintenance() or cluster_is_empty(view) or
            view.cache.exists(view.paths.restore_marker)):
        raise InvalidValue("the cluster is not in maintenance mode and not empty: turn "
                           "maintenance mode on first (POST /maintenance?state=on), then "
                           "restore; nothing was changed")
    running = []
    for uuid in view.vm_uuids():
        spec, status = view.cache.get(view.paths.vm(uuid)), view.vm_status(uuid)
        migration = spec.get("migration") if isinstance(spec, dict) else None
        moving = isinstance(migration, dict) and status is not None and \
            status.migration_done < int(migration.get("request", 0))
        if (status is not None and status.state == "running") or moving:
            name = spec.get("name") if isinstance(spec, dict) else uuid
            running.append(str(name))
    if running:
        shown = ", ".join(sorted(running)[:10]) + (" ..." if len(running) > 10 else "")
        raise Conflict(f"VMs still run or migrate: {shown}; stop every VM (e.g. pvc vm stop) "
                       "before a restore replaces the cluster's state; nothing was changed")
    for task in tasks:
        if task.id != own_task and task.state in ("pending", "running"):
            raise Conflict(f"task {task.id} ({task.name}) is {task.state}: a restore runs "
                           f"alone; wait for it (GET /api/v1/tasks/{task.id}); nothing was "
                           "changed")


def pre_restore_folder(allowed_paths: Sequence[str]) -> str:
    """The folder the pre-restore copy goes to (rule 6 of §9), or InvalidValue."""
    if not allowed_paths:
        raise InvalidValue("backup.allowed_paths is not set on this node: a restore first "
                           "saves the state it replaces there; set it in the configuration "
                           "(docs/configuration.md), then restore; nothing was changed")
    folder = os.path.realpath(allowed_paths[0])
    if not os.path.isdir(folder):
        raise InvalidValue(f"backup.allowed_paths' first folder {allowed_paths[0]} does not "
                           "exist on this node: the pre-restore copy is saved there; nothing "
                           "was changed")
    return folder


# --- placement -----------------------------------------------------------------------------

def place_vms(view: ClusterView, znodes: Mapping[str, Any]) -> dict[str, Any]:
    """The documents with each VM whose `node` this cluster lacks (or is not ready) placed
    again by its own selector and limit (extensions.md §9); a VM no node can take keeps its
    node and waits for it."""
    loads = view.node_loads()
    ready = {load.name for load in loads if load.available}
    placed = dict(znodes)
    for path, doc in znodes.items():
        parts = path.split("/")
        if parts[0] != "vms" or len(parts) != 2 or doc.get("node") in ready:
            continue
        spec = from_dict(VmSpec, doc)
        try:
            node = choose_node(loads, None, spec.node_selector, memory=spec.memory,
                               limit=node_limit_of(spec))
        except PvcError as exc:
            log.info("event=restore-vm-unplaced vm=%s node=%s reason=%s", spec.uuid,
                     spec.node, exc)
            continue
        placed[path] = {**doc, "node": node, "last_node": None}
    return placed


# --- writing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RestoreCounts:
    removed: int  # groups deleted
    created: int  # groups created
    kept: int  # groups equal in the cluster and the backup


class RestoreWriter:
    """Makes the cluster's desired state equal a checked backup (module docstring)."""

    def __init__(self, view: ClusterView, store: Store,
                 batch_bytes: int = MAX_REQUEST_BYTES // 2) -> None:
        self.view = view
        self.store = store
        self.batch_bytes = batch_bytes

    def restore(self, target: Mapping[str, Any], progress: Progress) -> RestoreCounts:
        wanted = groups(target)
        for attempt in range(ATTEMPTS):
            current = groups(desired_state(self.view))
            changed = sorted(key for key in current.keys() | wanted.keys()
                             if current.get(key) != wanted.get(key))
            removals = [key for key in changed if key in current]
            creations = [key for key in changed if key in wanted]
            units = [unit for key in removals for unit in self._removal(current[key])]
            units += [unit for key in creations for unit in self._creation(wanted[key])]
            batches = self._pack(units)
            counts = RestoreCounts(len(removals), len(creations),
                                   len(wanted.keys() - set(changed)))
            try:
                for done, batch in enumerate(batches, 1):
                    self.store.commit(batch)
                    progress(done, len(batches), f"wrote {done} of {len(batches)} "
                             "transactions")
            except Conflict as exc:
                log.info("event=restore-replan attempt=%d reason=%s", attempt + 1, exc)
                time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))  # back off, then re-read
                continue
            return counts
        raise Conflict(f"the cluster's state kept changing while it was restored ({ATTEMPTS} "
                       "tries); the restore marker stays: run the restore again")

    def _removal(self, group: Mapping[str, Any]) -> list[list[Op]]:
        """The deletes of everything of a group, what lies below its documents too (a VM's
        status, owner and console), leaves first; its roots and index entries last, in one
        unit (units are never split across transactions)."""
        absolute = self.view.paths.root.rstrip("/") + "/"
        roots = [absolute + path for path in group if _is_root(path)]
        below = self.view.cache.subtrees(roots)
        units = [[Op.delete(path, entry.version)] for path, entry in
                 sorted(below.items(), key=lambda item: (-item[0].count("/"), item[0]))]
        last = []
        for path in sorted(group, key=lambda p: (not _is_root(p), p)):
            if (absolute + path) in below:
                continue
            entry = self.view.cache.entry(absolute + path)
            if entry is not None:
                last.append(Op.delete(absolute + path, entry.version))
        return [*units, last] if last else units

    def _creation(self, group: Mapping[str, Any]) -> list[list[Op]]:
        """The creates of a group's documents, parents first (a missing folder made as `{}`);
        its roots and index entries in the first unit."""
        absolute = self.view.paths.root.rstrip("/") + "/"
        docs = dict(group)
        for path in group:
            parts = path.split("/")
            for depth in range(3, len(parts)):  # folders between a root and its document
                docs.setdefault("/".join(parts[:depth]), {})
        ordered = sorted(docs, key=lambda p: (p.count("/"), p))
        first = [Op.create(absolute + p, docs[p]) for p in ordered if p.count("/") == 1]
        rest = [[Op.create(absolute + p, docs[p])] for p in ordered if p.count("/") > 1]
        return [first, *rest] if first else rest

    def _pack(self, units: Sequence[list[Op]]) -> list[list[Op]]:
        """Consecutive units packed into transactions of at most `batch_bytes` (a larger
        unit is a transaction of its own), in order: parents stay before children."""
        batches: list[list[Op]] = []
        current: list[Op] = []
        size = 0
        for unit in units:
            weight = request_bytes(unit)
            if current and size + weight > self.batch_bytes:
                batches.append(current)
                current, size = [], 0
            current += unit
            size += weight
        if current:
            batches.append(current)
        return batches


def _is_root(relative: str) -> bool:
    return relative.count("/") == 1 and relative.split("/")[0] in ("vms", "networks")


# --- the marker ----------------------------------------------------------------------------

def write_marker(view: ClusterView, store: Store, doc: dict[str, Any]) -> None:
    """Create (or, left by an interrupted restore, replace) the `cluster/restore` marker."""
    path = view.paths.restore_marker
    if view.cache.exists(path):
        store.update(path, lambda _: doc)
    else:
        store.commit([Op.create(path, doc)])


def remove_marker(view: ClusterView, store: Store) -> bool:
    """Delete the marker; False if there was none."""
    entry = view.cache.entry(view.paths.restore_marker)
    if entry is None:
        return False
    store.commit([Op.delete(view.paths.restore_marker, entry.version)])
    return True


def check_not_oversized(znodes: Mapping[str, Any]) -> None:
    """InvalidValue for a document larger than one ZooKeeper request can carry."""
    absolute = "/"
    for path, doc in znodes.items():
        if request_bytes([Op.create(absolute + path, doc)]) > MAX_REQUEST_BYTES:
            raise InvalidValue(f"{path[:80]} is larger than one ZooKeeper write may carry "
                               f"({MAX_REQUEST_BYTES} bytes); nothing was changed")
