"""What an embedding of the node daemon may plug into it beyond what its config selects.

A production node runs what `pvcd run` builds from its config file alone: `Plugins()` is empty.
The lab (`pvcd.lab.node`) starts its node daemons with its own fence drivers, the agent that
lets tests look into a `test:///` libvirt, and the memstore OSD provisioner of its throwaway
Ceph. They reach the daemon only through these typed slots, so no production module imports the
lab, and a node's ZooKeeper record cannot make a production daemon use a lab driver: a fence
driver name that no daemon was given is a fence that fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pvcd.drivers.fence import FenceDriver
from pvcd.drivers.watchdog import Watchdog

if TYPE_CHECKING:
    from pvcd.controllers.storage import OsdProvisioner
    from pvcd.controllers.tasks import TaskKind


class NodeService(Protocol):
    """Something that runs alongside the daemon: started just before the node registers (so it
    is up by the time others see the node run), stopped before the daemon lets go of its
    drivers."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Plugins:
    # fence drivers by the name a node publishes (`fencing.driver`), beside the production ones
    fence_drivers: Mapping[str, FenceDriver] = field(default_factory=dict)
    services: Sequence[NodeService] = ()
    # OSDs this node makes beside those on block devices (the lab's memstore OSDs)
    extra_osds: OsdProvisioner | None = None
    # how to open `fencing.watchdog_device` instead of the kernel's device API (the lab's
    # fake watchdog, which a process of the lab watches like a board would)
    watchdog: Callable[[str], Watchdog] | None = None
    # task kinds beside the production ones (the lab's test-only kinds, for its tests)
    task_kinds: Sequence[TaskKind] = ()
