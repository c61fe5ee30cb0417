"""Health and faults (extensions.md §8): the records and the arithmetic, shared by their writers
and readers.

A node writes one `NodeHealth` per round of checks to `nodes/<node>/health`; the primary raises
`Fault`s in `faults/<id>`; the API, `/metrics` and the CLI read both. Whatever reads them from
ZooKeeper goes through `NodeHealth.from_doc` / `Fault.from_doc`, which re-validate the
documents (anything that can reach ZooKeeper may have written them): a malformed field is
refused with `InvalidValue`, never passed on.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pvcd.domain.errors import InvalidValue

FULL_HEALTH = 100
FAULT_NEW = "new"
FAULT_ACK = "ack"
FAULT_STATUSES = (FAULT_NEW, FAULT_ACK)
CHECK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
FAULT_ID = re.compile(r"^[A-Z0-9_]{1,128}$")
MESSAGE_LIMIT = 1024  # characters of a check's or a fault's message that are kept


def health_value(deltas: list[int]) -> int:
    """100 minus the deltas, never below 0 (node health; cluster health over unacknowledged
    faults)."""
    return max(0, FULL_HEALTH - sum(deltas))


def fault_id(*parts: str | int) -> str:
    """A fault id from its parts: upper case, characters outside A-Z0-9_ turned into `_`
    (`fault_id("DEAD_NODE", "hv-1")` → `DEAD_NODE_HV_1`)."""
    text = "_".join(str(part) for part in parts).upper()
    return re.sub(r"[^A-Z0-9_]", "_", text)[:128]


def _int(doc: dict[str, Any], name: str, low: int = 0, high: int = FULL_HEALTH) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidValue(f"'{name}' must be an integer from {low} to {high}, not {value!r}")
    return value


def _time(doc: dict[str, Any], name: str, optional: bool = False) -> float | None:
    value = doc.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidValue(f"'{name}' must be a Unix time, not {value!r}")
    return float(value)


def _text(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name, "")
    if not isinstance(value, str):
        raise InvalidValue(f"'{name}' must be a string")
    return value[:MESSAGE_LIMIT]


@dataclasses.dataclass
class HealthCheck:
    """One check's latest result on one node (§8.3)."""
    name: str
    last_run: float
    health_delta: int
    message: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: Any) -> HealthCheck:
        if not isinstance(doc, dict):
            raise InvalidValue("a health check must be an object")
        name = doc.get("name")
        if not isinstance(name, str) or not CHECK_NAME.match(name):
            raise InvalidValue(f"invalid health check name {name!r}")
        data = doc.get("data", {})
        if not isinstance(data, dict):
            raise InvalidValue("a health check's 'data' must be an object")
        last_run = _time(doc, "last_run")
        assert last_run is not None
        return cls(name, last_run, _int(doc, "health_delta"), _text(doc, "message"), data)


@dataclasses.dataclass
class NodeHealth:
    """`nodes/<node>/health`: the node's latest round. `health` is None before the first
    round and while the node is not running."""
    health: int | None
    checks: list[HealthCheck] = dataclasses.field(default_factory=list)

    def to_doc(self) -> dict[str, Any]:
        return {"health": self.health, "checks": [check.to_doc() for check in self.checks]}

    @classmethod
    def from_doc(cls, doc: Any) -> NodeHealth:
        if not isinstance(doc, dict):
            raise InvalidValue("a node health document must be an object")
        health = None if doc.get("health") is None else _int(doc, "health")
        checks = doc.get("checks", [])
        if not isinstance(checks, list):
            raise InvalidValue("'checks' must be a list")
        return cls(health, [HealthCheck.from_doc(check) for check in checks])

    @classmethod
    def of(cls, checks: list[HealthCheck]) -> NodeHealth:
        return cls(health_value([check.health_delta for check in checks]), checks)


@dataclasses.dataclass
class Fault:
    """`faults/<id>` (§8.2). `health_delta` reads 0 once acknowledged (as in PVC); `delta`
    keeps the condition's own delta so that a fault that returns to `new` gets it back."""
    id: str
    first_reported: float
    last_reported: float
    health_delta: int
    message: str
    status: str = FAULT_NEW
    acknowledged_at: float | None = None
    active: bool = True
    delta: int = 0

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_api(self) -> dict[str, Any]:
        doc = self.to_doc()
        doc.pop("delta")
        return doc

    @classmethod
    def from_doc(cls, doc: Any) -> Fault:
        if not isinstance(doc, dict):
            raise InvalidValue("a fault must be an object")
        ident = doc.get("id")
        if not isinstance(ident, str) or not FAULT_ID.match(ident):
            raise InvalidValue(f"invalid fault id {ident!r}")
        status = doc.get("status", FAULT_NEW)
        if status not in FAULT_STATUSES:
            raise InvalidValue(f"invalid fault status {status!r}; valid values are: new, ack")
        active = doc.get("active", True)
        if not isinstance(active, bool):
            raise InvalidValue("'active' must be a boolean")
        first, last = _time(doc, "first_reported"), _time(doc, "last_reported")
        assert first is not None and last is not None
        return cls(ident, first, last, _int(doc, "health_delta"), _text(doc, "message"),
                   status, _time(doc, "acknowledged_at", optional=True), active,
                   _int({"delta": doc.get("delta", doc.get("health_delta"))}, "delta"))
