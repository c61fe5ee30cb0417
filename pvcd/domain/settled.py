"""When has a change *settled*: one rule per object kind, judged from desired and observed state.

The API records a change as desired state and a node carries it out; whoever waits for it (the
API's `wait` flag, the tests) asks these functions whether the observed state now matches. They
are pure: they take the typed records as the cache holds them and answer a `Verdict`: settled or
not, a failure that ends the wait (with its reason), and the current state in words (for
progress lines and timeout messages).

Request counters make the answers safe against stale reports: a node's report counts only once
it has handled the latest request (`state_request_done`, `restart_done`, `migration_done`,
`domain_request_done` have caught up with the desired record's counters), so a wait never ends
on the state the object had *before* the change.
"""

from __future__ import annotations

from typing import NamedTuple

from pvcd.domain.records import NodeSpec, NodeStatus, VmSpec, VmStatus

_STOPPED_STATES = ("shutdown", "stop", "disable")


class Verdict(NamedTuple):
    settled: bool
    failed_reason: str | None  # set: the change cannot settle (the wait ends, as a failure)
    seen: str  # the current state in words


# --- VMs ---------------------------------------------------------------------------------------

def vm_goal(spec: VmSpec) -> str:
    """What settling means for this VM, in words ("VM 'web1' to run on node2")."""
    if spec.state in _STOPPED_STATES:
        return f"VM '{spec.name}' to be stopped (on {spec.node})"
    return f"VM '{spec.name}' to run on {spec.node}"


def vm_settled(spec: VmSpec | None, status: VmStatus | None) -> Verdict:
    """A VM has settled when no migration or restart is pending, its node has handled the latest
    state request, and it is observed on its assigned node running (desired `start`) or stopped
    (desired `shutdown`/`stop`/`disable`). A failure reported for the latest request, on its
    assigned node, is final; so is the VM's removal."""
    if spec is None:
        return Verdict(False, "the VM was removed", "removed")
    if status is None:
        return Verdict(False, None, f"assigned to {spec.node}, no report from it yet")
    migration = spec.migration
    if migration is not None and status.migration_done < migration.request:
        return Verdict(False, None, f"{migration.action} from {migration.source} to {spec.node} "
                                    f"in progress ({status.state} on {status.node or '-'})")
    seen = f"{status.state} on {status.node or '-'}"
    if spec.restart_request > status.restart_done:
        return Verdict(False, None, f"restart pending ({seen})")
    if status.state_request_done < spec.state_request:
        return Verdict(False, None, f"{seen}, {spec.node} has not handled the request yet")
    if status.node != spec.node:
        return Verdict(False, None, f"{seen}, assigned to {spec.node}")
    if status.state == "failed":
        reason = status.failed_reason or "no reason given"
        return Verdict(False, f"VM '{spec.name}' failed on {status.node}: {reason}",
                       f"failed on {status.node}: {reason}")
    wanted = "stopped" if spec.state in _STOPPED_STATES else "running"
    return Verdict(status.state == wanted, None, seen)


# --- nodes -------------------------------------------------------------------------------------

def node_domain_goal(spec: NodeSpec) -> str:
    return f"node {spec.name} to be {_settled_domain_state(spec.domain_state)}"


def node_domain_settled(spec: NodeSpec | None, status: NodeStatus | None) -> Verdict:
    """A flush (ready) has settled when the node reports `flushed` (`ready`) for the latest
    domain request (`domain_request_done` ≥ `domain_request`)."""
    if spec is None:
        return Verdict(False, "the node was removed", "removed")
    if status is None:
        return Verdict(False, None, "no report from the node yet")
    running = len(status.stats.running_domains)
    seen = f"domain state {status.domain_state}, {running} VMs running there"
    if status.domain_request_done < spec.domain_request:
        return Verdict(False, None, f"{seen}, request {spec.domain_request} not done yet")
    return Verdict(status.domain_state == _settled_domain_state(spec.domain_state), None, seen)


def _settled_domain_state(requested: str) -> str:
    return "flushed" if requested == "flush" else "ready"


# --- the coordinator role ----------------------------------------------------------------------

def coordinator_goal(name: str, wanted: str) -> str:
    return f"node {name} to be {wanted}"


def coordinator_settled(name: str, wanted: str, primary: str | None,
                        status: NodeStatus | None) -> Verdict:
    """`primary`: the node holds the primary lock and reports itself primary (its services
    are up). `secondary`: another node holds the lock and this one reports secondary.
    `primary` is the holder of the lock as the cache sees it, or None between holders."""
    state = status.coordinator_state if status is not None else "unknown"
    seen = f"coordinator state {state}, primary {primary or 'none yet'}"
    if wanted == "primary":
        return Verdict(primary == name and state == "primary", None, seen)
    return Verdict(primary is not None and primary != name and state == "secondary", None,
                   seen)
