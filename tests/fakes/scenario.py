"""Replays a scenario file (tests/scenarios/*.yaml) against simulated nodes, in the manner of
Proxmox's pve-ha-manager simulator: an operator-readable description of a cluster, a timeline of
events and the outcome expected at given moments.

File format (YAML):

    description: what happens and what must follow, in a sentence or two
    xfail: reason            # optional: the expected outcome is right, today's code is not
    nodes:                   # in order; every node is a coordinator unless `coordinator: false`
      node1: {}
      node2: {memory: 1024}  # physical memory in MiB (placement capacity); default 16384
    settings: {on_fence_failure: none}
    vms:                     # defined and started before the timeline begins (t = 0)
      web: {node: node2, memory: 256}   # and any VmSpec field: {node_limit: [node2, node3]}
    invariants: [flushed-means-empty]   # optional, checked on every change (see below)
    timeline:                # `at`: simulated seconds after t = 0
      - {at: 1, do: hang node2}
      - at: 30
        expect:
          primary: node1
          vms: {web: node1 | node3}   # runs exactly once, on one of these; or `nowhere`
          nodes: {node2: {daemon_state: fenced}}
          fence: {node2: {state: fenced, recovered: true}}   # or `none`
          specs: {web: {last_node: node2}}

Events (`do`): `hang <node>` (keepalive and controllers stop, the session lives),
`resume <node>`, `power-off <node>` (guests and session gone), `boot <node>` (registers again),
`fence-fails <node>`, `flush <node>`, `ready <node>`, `migrate <vm> <node>`,
`handover <node>`, `maintenance on|off`.

Invariants: after every step, no VM runs on two nodes (always checked). `flushed-means-empty`:
whenever a node's record says `flushed`, its `running_domains` in the same write is empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pvcd.domain.records import FenceRecord, from_dict
from tests.fakes.nodes import SimCluster


@dataclass(frozen=True)
class Scenario:
    path: Path
    doc: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Scenario:
        doc = yaml.safe_load(path.read_text())
        unknown = set(doc) - {"description", "xfail", "nodes", "settings", "vms", "invariants",
                              "timeline"}
        assert not unknown, f"{path.name}: unknown keys {sorted(unknown)}"
        return cls(path, doc)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def xfail(self) -> str | None:
        return self.doc.get("xfail")


def replay(scenario: Scenario, sim: SimCluster) -> None:
    """Build the cluster, start its VMs, then play the timeline; AssertionError names the
    first expectation that does not hold, with the moment and the scenario."""
    settings = scenario.doc.get("settings") or {}
    for name, node in (scenario.doc.get("nodes") or {}).items():
        node = node or {}
        sim.add_node(name, coordinator=node.get("coordinator", True),
                     memory_total=node.get("memory", 16384),
                     on_fence_failure=settings.get("on_fence_failure", "none"))
    sim.step()  # the first coordinator takes the primary role
    uuids = {}
    for name, vm in (scenario.doc.get("vms") or {}).items():
        meta = {k: v for k, v in vm.items() if k not in ("node", "memory")}  # VmSpec fields
        uuids[name] = sim.state.define_vm(name, vm["node"], memory=vm.get("memory", 64), **meta)
    sim.run_until(lambda: all(sim.where_running(uuids[n]) == [vm["node"]]
                              for n, vm in (scenario.doc.get("vms") or {}).items()),
                  seconds=10)
    violations: list[str] = []
    if "flushed-means-empty" in (scenario.doc.get("invariants") or []):
        sim.state.cache.subscribe(_flushed_means_empty(sim, violations))
    start = sim.clock()
    for entry in sorted(scenario.doc.get("timeline") or [], key=lambda e: e["at"]):
        while sim.clock() - start < entry["at"]:
            sim.step()
            violations += [f"VM {name} runs on {where}" for name, uuid in uuids.items()
                           if len(where := sim.where_running(uuid)) > 1]
        if "do" in entry:
            _do(sim, entry["do"])
        moment = f"{scenario.name} at t={entry['at']}"
        assert not violations, f"{moment}: " + "; ".join(violations)
        if "expect" in entry:
            _expect(sim, uuids, entry["expect"], moment)


def _flushed_means_empty(sim: SimCluster, violations: list[str]) -> Callable[[str], None]:
    """A cache listener: a node record that says `flushed` must show nothing running."""
    paths = sim.state.paths

    def check(path: str) -> None:
        for name in sim.nodes:
            if path == paths.node_status(name):
                doc = sim.state.doc(path) or {}
                running = (doc.get("stats") or {}).get("running_domains")
                if doc.get("domain_state") == "flushed" and running:
                    violations.append(f"node {name} said flushed with {running} running")

    return check


def _do(sim: SimCluster, event: str) -> None:
    verb, *args = event.split()
    if verb == "hang":
        sim.nodes[args[0]].hung = True
    elif verb == "resume":
        sim.nodes[args[0]].hung = False
    elif verb == "power-off":
        sim.nodes[args[0]].power_off()
    elif verb == "boot":
        sim.nodes[args[0]].register()
    elif verb == "fence-fails":
        sim.fence.failing.add(args[0])
    elif verb in ("flush", "ready"):
        sim.domain_state(args[0], verb)
    elif verb == "migrate":
        sim.migrate(args[0], args[1])
    elif verb == "handover":
        sim.handover(args[0])
    elif verb == "maintenance":
        sim.maintenance(args[0] == "on")
    else:
        raise AssertionError(f"unknown event {event!r}")


def _expect(sim: SimCluster, uuids: dict[str, str], expect: dict[str, Any], where: str) -> None:
    problems = []
    if "primary" in expect and sim.primary() != expect["primary"]:
        problems.append(f"primary is {sim.primary()}, expected {expect['primary']}")
    for vm, wanted in (expect.get("vms") or {}).items():
        running = sim.where_running(uuids[vm])
        if wanted == "nowhere":
            ok = running == []
        else:
            ok = len(running) == 1 and running[0] in [n.strip() for n in wanted.split("|")]
        if not ok:
            problems.append(f"VM {vm} runs on {running or 'no node'}, expected {wanted}")
    for node, fields in (expect.get("nodes") or {}).items():
        status = sim.state.view.node_status(node)
        for field, value in fields.items():
            have = _field(status, field)
            if have != value:
                problems.append(f"node {node} {field} is {have!r}, expected {value!r}")
    for node, fields in (expect.get("fence") or {}).items():
        doc = sim.state.doc(sim.state.paths.fence_record(node))
        if fields == "none":
            if doc is not None:
                problems.append(f"node {node} has a fence record {doc}, expected none")
            continue
        record = from_dict(FenceRecord, doc) if doc is not None else None
        for field, value in fields.items():
            have = getattr(record, field, None)
            if have != value:
                problems.append(f"fence record of {node}: {field} is {have!r}, expected "
                                f"{value!r}")
    for vm, fields in (expect.get("specs") or {}).items():
        spec = sim.state.vm_spec(vm)
        for field, value in fields.items():
            if getattr(spec, field) != value:
                problems.append(f"VM {vm} {field} is {getattr(spec, field)!r}, expected "
                                f"{value!r}")
    assert not problems, f"{where}: " + "; ".join(problems)


def _field(status: Any, field: str) -> Any:
    value = status
    for part in field.split("."):
        value = getattr(value, part, None)
    return value
