"""What every provisioner endpoint shares (extensions.md §3.1): reading objects from the cache,
and writing them with one compare-and-set transaction each.

A create is `Op.create` (two clients creating the same name: one wins, the other gets 510
"already exists"); a change is `Op.set` at the version the request was checked against; a delete
is `Op.delete` at the version read. A profile write touches the objects it names and a delete
checks no profile names the object, both in the same transaction, so neither can slip past the
other (the race and its handling: `pvcd.state.provisioner`).

The touches make writes collide that are both right: two profiles created at once naming one
template, or a template changed while a profile naming it is written. A handler method that
writes is therefore run again from the start when its transaction lost a race
(`retry_lost_races`): it reads the cache again (which holds the winner's write already when
the winner was this API, and a moment later otherwise), checks again, and writes again. Only
after `WRITE_ATTEMPTS` lost races does the client get a 510 saying so; nothing was changed.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pvcd.api.base import BaseHandler
from pvcd.api.values import limit
from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.state.provisioner import (
    PROFILE_FIELDS,
    object_entry,
    profiles_naming,
    read_object,
    read_objects,
)
from pvcd.state.store import Op
from pvcd.state.view import ClusterView

# how a message names an object of each kind, and where its list is
WHAT = {"system": "system template", "network": "network template",
        "storage": "storage template", "userdata": "userdata", "ova": "OVA",
        "profile": "profile"}
NAME_LIMIT = limit("names")
WRITE_ATTEMPTS = 8  # each lost race means another write won: n writers colliding need n tries
Method = TypeVar("Method", bound=Callable[..., Awaitable[None]])


def retry_lost_races(method: Method) -> Method:
    """Run a writing handler method again when its transaction lost a race (`Conflict`); see
    the module docstring. Put it below `accepts`."""
    @functools.wraps(method)
    async def retried(*args: Any, **kwargs: Any) -> None:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                await method(*args, **kwargs)
                return
            except Conflict:
                if attempt + 1 == WRITE_ATTEMPTS:
                    raise
                # the winner's write reaches the cache by its watch event when another
                # process made it; spread the attempts of clients that collided
                await asyncio.sleep(random.uniform(0.001, 0.005 * 2 ** attempt))

    return retried  # type: ignore[return-value]


class ProvisionerHandler(BaseHandler):
    """Cache reads and CAS writes of provisioner objects."""

    @property
    def view(self) -> ClusterView:
        return self.ctx.view

    def path(self, kind: str, name: str) -> str:
        return self.view.paths.provisioner_object(kind, name)

    def exists(self, kind: str, name: str) -> bool:
        return object_entry(self.view, kind, name) is not None

    def version(self, kind: str, name: str) -> int:
        """The cached version of an object; NotFound when it does not exist."""
        entry = object_entry(self.view, kind, name)
        if entry is None:
            raise NotFound(f"{WHAT[kind]} '{name[:100]}' not found")
        return entry.version

    def record(self, kind: str, name: str) -> tuple[Any, int]:
        """The record (`pvcd.domain.provisioner.RECORDS[kind]`) of an object and the version
        it was read at; NotFound when it does not exist."""
        version = self.version(kind, name)
        return read_object(self.view, kind, name), version

    def listed(self, kind: str) -> list[dict[str, Any]]:
        """The objects of a kind as GET answers them, filtered by `limit` (declared by the
        handler method as NAME_LIMIT)."""
        pattern = self.values[NAME_LIMIT]
        return [record.to_doc() for record in read_objects(self.view, kind)
                if pattern is None or pattern.search(record.name)]

    async def create(self, kind: str, name: str, doc: dict[str, Any],
                     extra: Sequence[Op] = ()) -> None:
        """Create the object (with `extra` ops in the same transaction)."""
        if self.exists(kind, name):
            raise InvalidValue(f"{WHAT[kind]} '{name}' already exists")
        path = self.path(kind, name)
        try:
            await self.commit([Op.create(path, doc), *extra])
        except Conflict as exc:
            if str(exc).startswith(f"create {path}:"):
                raise InvalidValue(f"{WHAT[kind]} '{name}' already exists") from None
            raise lost_race(kind, name) from None

    async def replace(self, kind: str, name: str, doc: dict[str, Any], version: int,
                      extra: Sequence[Op] = ()) -> None:
        """Write the object's new document at the version the request checked."""
        try:
            await self.commit([Op.set(self.path(kind, name), doc, version), *extra])
        except Conflict:
            raise lost_race(kind, name) from None

    async def remove(self, kind: str, name: str) -> None:
        """Delete an object; a template, userdata or OVA only while no profile names it
        (§3.1)."""
        version = self.version(kind, name)
        users = profiles_naming(self.view, kind, name) if kind in PROFILE_FIELDS else []
        if users:
            raise InvalidValue(f"{WHAT[kind]} '{name}' is used by profile "
                               f"{', '.join(p.name for p in users)}; change or remove "
                               f"{'that profile' if len(users) == 1 else 'those profiles'} "
                               "first; nothing was changed")
        try:
            await self.commit([Op.delete(self.path(kind, name), version)])
        except Conflict:
            raise lost_race(kind, name) from None


def lost_race(kind: str, name: str) -> Conflict:
    return Conflict(f"{WHAT[kind]} '{name}', or an object the request checked, was changed by "
                    "another request at the same time; nothing was changed: try again")
