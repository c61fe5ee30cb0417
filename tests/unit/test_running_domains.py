"""What runs in this node's libvirt, kept from lifecycle events (`RunningDomains`): a read asks
libvirt only about the domains an event named, lists everything only when told to, and never
loses a noted domain to a failed call."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pvcd.controllers.running_domains import RunningDomains
from pvcd.domain.errors import BackendError


@dataclass
class Domain:
    uuid: str
    state: str


class FakeLibvirt:
    """Domains by UUID and their states; counts what it is asked."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.listings = 0
        self.asked: list[str] = []
        self.failing = False

    def list_domains(self) -> list[Domain]:
        self.listings += 1
        return [Domain(uuid, state) for uuid, state in self.states.items()]

    def domain_state(self, uuid: str) -> Domain | None:
        if self.failing:
            raise BackendError("libvirt does not answer")
        self.asked.append(uuid)
        return Domain(uuid, self.states[uuid]) if uuid in self.states else None


def test_reads_cost_nothing_until_an_event_names_a_domain() -> None:
    libvirt = FakeLibvirt()
    libvirt.states = {f"vm{i}": "running" for i in range(1000)} | {"off": "shutoff"}
    running = RunningDomains(libvirt)
    first = running.current()
    assert first == {f"vm{i}" for i in range(1000)}
    assert running.current() is first and running.current() is first
    assert (libvirt.listings, libvirt.asked) == (1, [])

    libvirt.states["vm7"] = "shutoff"
    libvirt.states["off"] = "paused"  # (paused is active: it holds the guest)
    libvirt.states["new"] = "running"
    for uuid in ("vm7", "off", "new"):
        running.note(uuid)
    assert running.current() == (first - {"vm7"}) | {"off", "new"}
    assert sorted(libvirt.asked) == ["new", "off", "vm7"] and libvirt.listings == 1

    del libvirt.states["new"]  # undefined
    running.note("new")
    assert "new" not in running.current()


def test_relist_catches_what_no_event_said() -> None:
    libvirt = FakeLibvirt()
    libvirt.states = {"a": "running"}
    running = RunningDomains(libvirt)
    assert running.current() == {"a"}
    libvirt.states["b"] = "running"  # started, its event lost
    assert running.current() == {"a"}
    running.relist()
    assert running.current() == {"a", "b"} and libvirt.listings == 2


def test_a_noted_domain_is_asked_again_after_libvirt_failed() -> None:
    libvirt = FakeLibvirt()
    libvirt.states = {"a": "running"}
    running = RunningDomains(libvirt)
    running.current()
    libvirt.states["a"] = "shutoff"
    running.note("a")
    libvirt.failing = True
    with pytest.raises(BackendError):
        running.current()
    libvirt.failing = False
    assert running.current() == frozenset()
