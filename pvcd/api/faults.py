"""`/faults` (extensions.md §8.2): list the faults the primary raised, acknowledge and delete
them. Reads come from the cache; every write is a compare-and-set against the version read, so
an acknowledgement never overwrites a round of the fault monitor it did not see (a lost race is
a 510: try again).
"""

from __future__ import annotations

from pvcd.api.base import BaseHandler
from pvcd.api.routing import route
from pvcd.api.values import accepts, value
from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.domain.faults import DEFAULT_SORT_KEY, FAULT_SORT_KEYS, acknowledged, sort_faults
from pvcd.domain.health import FAULT_ID, fault_id
from pvcd.state.health import StoredFault, read_faults
from pvcd.state.store import Op

BATCH = 500  # faults per transaction (each well under a kilobyte: far below ZooKeeper's 1 MiB)


def parse_sort_key(raw: str) -> str:
    if raw not in FAULT_SORT_KEYS:
        raise InvalidValue(f"invalid sort_key '{raw[:40]}'; valid values are: "
                           f"{', '.join(FAULT_SORT_KEYS)}")
    return raw


SORT_KEY = value("sort_key", "The order of the list: first_reported, last_reported, "
                 "acknowledged_at (newest first), status, health_delta or message.",
                 parse_sort_key, default=DEFAULT_SORT_KEY,
                 schema={"type": "string", "enum": list(FAULT_SORT_KEYS)})


class FaultBase(BaseHandler):
    def stored(self, raw_id: str) -> StoredFault:
        """The fault named in the path (case and separators as the id rule makes them)."""
        ident = fault_id(raw_id) if len(raw_id) <= 128 else ""
        found = read_faults(self.ctx.view).get(ident) if FAULT_ID.match(ident) else None
        if found is None:
            raise NotFound(f"fault '{raw_id[:128]}' not found; GET /faults lists the faults")
        return found

    async def acknowledge(self, faults: list[StoredFault]) -> int:
        now, paths = self.ctx.clock(), self.ctx.view.paths
        ops = [Op.set(paths.fault(s.fault.id), ack.to_doc(), s.version) for s in faults
               if (ack := acknowledged(s.fault, now)) is not None]
        await self.commit_batches(ops, "acknowledged")
        return len(ops)

    async def remove(self, faults: list[StoredFault]) -> int:
        paths = self.ctx.view.paths
        ops = [Op.delete(paths.fault(s.fault.id), s.version) for s in faults]
        await self.commit_batches(ops, "deleted")
        return len(ops)

    async def commit_batches(self, ops: list[Op], done: str) -> None:
        for start in range(0, len(ops), BATCH):
            try:
                await self.commit(ops[start:start + BATCH])
            except Conflict:
                raise Conflict(f"a fault changed while it was {done} (the primary's round of "
                               f"checks); {start} of {len(ops)} were {done}; try again") from None


class FaultListHandler(FaultBase):
    @accepts(SORT_KEY)
    def get(self) -> None:
        faults = [s.fault for s in read_faults(self.ctx.view).values()]
        self.reply([f.to_api() for f in sort_faults(
            faults, self.values[SORT_KEY] or DEFAULT_SORT_KEY)])

    async def put(self) -> None:
        count = await self.acknowledge(list(read_faults(self.ctx.view).values()))
        self.message(f"Acknowledged {count} fault(s)")

    async def delete(self) -> None:
        count = await self.remove(list(read_faults(self.ctx.view).values()))
        self.message(f"Deleted {count} fault(s)")


class FaultHandler(FaultBase):
    def get(self, raw_id: str) -> None:
        self.reply([self.stored(raw_id).fault.to_api()])

    async def put(self, raw_id: str) -> None:
        stored = self.stored(raw_id)
        await self.acknowledge([stored])
        self.message(f"Acknowledged fault {stored.fault.id}")

    async def delete(self, raw_id: str) -> None:
        stored = self.stored(raw_id)
        await self.remove([stored])
        self.message(f"Deleted fault {stored.fault.id}")


ROUTES = [
    route("/faults", FaultListHandler),
    route("/faults/<fault_id>", FaultHandler),
]
