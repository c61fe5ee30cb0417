"""The VM move rule: the one place that reassigns a VM to another node.

Every move — migrate, move and unmigrate from the API, flush and ready of a node, recovery after
a fence — is `reassign(spec, status, target, why)`, a pure function from the current desired and
observed state to the new desired state. It decides three things:

- **who hands the VM over** (`holder`): the source of a migration still in flight (it has not
  confirmed the hand-over yet), else the node holding the VM's claim (the one node allowed to
  run it, `pvcd.controllers.vm_claim`), else the node observed running it, else — for a VM
  that should run — its assigned node, which may be about to start it. The new
  node never starts the VM before that holder reports the migration done (see
  `pvcd.controllers.vm`), so a move never makes two copies.
- **whether there is a migration at all**: none when nothing may run (a stopped VM just moves);
  a dead, fenced holder hands over nothing; a move to the holder itself needs none (a node is
  never asked to migrate to itself: `Migration.source != spec.node` always holds after
  `reassign`). A VM whose migration is still in flight is not moved again (`Conflict`): its
  source may be migrating it right now, and only recovery from a fenced source may override.
- **a failed live migration** (`migration_method: live`, which never falls back to a shutdown,
  extensions.md §6.2) is undone by `keep_at_source`: the VM stays on the source that still
  runs it, which becomes its node again.
- **`last_node`**, the node an `unmigrate` or a `ready` brings the VM back to: a temporary
  migration remembers the first node it left (a forced second migration keeps it), a permanent
  move and a return forget it, a flush remembers the flushed node, a recovery remembers the dead
  node unless the VM had already left another one.
"""

from __future__ import annotations

import dataclasses
from enum import Enum

from pvcd.domain.errors import Conflict, InvalidValue
from pvcd.domain.records import Migration, VmSpec, VmStatus

# observed VM states in which its node holds (runs) it
HOLDING_STATES = ("running", "migrating", "shutting-down")


class Move(Enum):
    MIGRATE = "migrate"  # temporary: `unmigrate` brings it back
    MOVE = "move"  # permanent: forget where it came from
    UNMIGRATE = "unmigrate"  # back to `last_node`
    FLUSH = "flush"  # off a node being flushed; `ready` brings it back
    RESTORE = "restore"  # back to a node that became ready again
    RECOVER = "recover"  # off a dead node that has been fenced


def migration_pending(spec: VmSpec, status: VmStatus | None) -> bool:
    done = status.migration_done if status is not None else 0
    return spec.migration is not None and done < spec.migration.request


def holder(spec: VmSpec, status: VmStatus | None, owner: str | None = None) -> str | None:
    """The node that runs the VM or may be about to: the one a move hands it over from. `owner`:
    the node holding the VM's claim (`vms/<uuid>/owner`), which nodes confirm themselves."""
    if migration_pending(spec, status):
        assert spec.migration is not None
        return spec.migration.source
    if owner:
        return owner
    if status is not None and status.state in HOLDING_STATES and status.node:
        return status.node
    return spec.node if spec.state == "start" else None


def reassign(spec: VmSpec, status: VmStatus | None, target: str, why: Move,
             dead: str | None = None, owner: str | None = None) -> VmSpec:
    """The VM's new desired state once it is moved to `target` (a new record; `spec` is
    untouched). `dead`: a fenced node, which hands nothing over (recovery); `owner`: the node
    holding the VM's claim."""
    if not target:
        raise InvalidValue("a VM must be moved to a node")
    if dead is None and migration_pending(spec, status):
        assert spec.migration is not None
        # its source may be migrating it right now: a second move would race that one
        raise Conflict(f"VM '{spec.name}' is being migrated from {spec.migration.source} to "
                       f"{spec.node}; wait until that is done, then move it again")
    new = dataclasses.replace(spec)
    source = spec.node
    if why is Move.MIGRATE:
        if new.last_node is None:
            new.last_node = source  # a forced second migration keeps the original
    elif why is Move.FLUSH:
        new.last_node = source
    elif why is Move.RECOVER:
        if new.last_node is None and dead is not None:
            new.last_node = dead
    else:  # MOVE, UNMIGRATE, RESTORE
        new.last_node = None
    if new.last_node == target:
        new.last_node = None  # back where it came from: nothing to return to
    new.node = target
    from_node = holder(spec, status, owner)
    if from_node is None or from_node in (dead, target):
        # nothing runs it, its node is off, or the node holding it keeps it: no hand-over
        new.migration = None
    else:
        done = status.migration_done if status is not None else 0
        previous = spec.migration.request if spec.migration is not None else 0
        action = "unmigrate" if why in (Move.UNMIGRATE, Move.RESTORE) else "migrate"
        new.migration = Migration(source=from_node, request=max(previous, done) + 1,
                                  action=action)
    return new


def keep_at_source(spec: VmSpec) -> VmSpec:
    """The VM's desired state once its source gave up a live migration and keeps running it
    (a new record): assigned to the source again, no migration in flight, and `last_node` as
    if it had never left (a migration that named the source as `last_node` is forgotten)."""
    if spec.migration is None:
        raise InvalidValue(f"VM '{spec.name}' is not being migrated")
    new = dataclasses.replace(spec, node=spec.migration.source, migration=None)
    if new.last_node == new.node:
        new.last_node = None
    return new


def check_migrate(spec: VmSpec, force: bool, permanent: bool) -> None:
    """A VM migrated once goes back with `unmigrate` first, unless forced or made permanent."""
    if spec.last_node is not None and not force and not permanent:
        raise InvalidValue(f"VM '{spec.name}' has already been migrated from "
                           f"{spec.last_node}; unmigrate it first, or use force")


def check_unmigrate(spec: VmSpec) -> str:
    """The node `unmigrate` returns the VM to."""
    if spec.last_node is None:
        raise InvalidValue(f"VM '{spec.name}' has not been migrated; nothing to undo")
    if spec.last_node == spec.node:
        raise InvalidValue(f"VM '{spec.name}' is already on {spec.node}")
    return spec.last_node
