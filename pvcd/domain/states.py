"""The words for every state and choice in the cluster, one definition each.

Desired states are what operators ask for; observed states are what nodes report. Every
other module names a state through these constants, never as a bare string it made up.
"""

from typing import Any

DAEMON_STATES = ("init", "run", "shutdown", "stop", "dead", "fenced")
COORDINATOR_STATES = ("primary", "secondary", "client", "takeover", "relinquish")
DOMAIN_STATES = ("ready", "flush", "flushed", "unflush")
VM_STATE_REQUESTS = ("start", "shutdown", "stop", "restart")
# desired VM states in which it should not run: its memory is not counted on its node
STOPPED_VM_STATES = ("stop", "shutdown", "disable")
# a VM whose `provisioner.create` task is still making its disks (extensions.md §3.9): no node
# acts on it, state and node requests are refused; its memory counts as assigned on its node
PROVISION_VM_STATE = "provision"
VM_STATES = ("start", "restart", "shutdown", "stop", "failed", "migrate", "unmigrate", "disable",
             PROVISION_VM_STATE)
SELECTORS = ("mem", "vcpus", "load", "vms")
# a VM's `node_selector` (extensions.md §6.1): PVC's words; `none` is the cluster default and
# `memprov` is `mem` (pvcd's `mem` already counts the memory assigned to VMs)
NODE_SELECTORS = ("mem", "memprov", "vcpus", "load", "vms", "none")
MIGRATION_METHODS = ("live", "shutdown", "none")  # none: live, falling back to shutdown
VM_TAG_TYPES = ("user", "system")  # user: set through the API; system: set by pvcd
VM_TAG_ACTIONS = ("add", "remove")
MIGRATE_ACTIONS = ("migrate", "unmigrate")
DOMAIN_STATE_REQUESTS = ("flush", "ready")
COORDINATOR_STATE_REQUESTS = ("primary", "secondary")
NETWORK_TYPES = ("managed", "bridged")
ACL_DIRECTIONS = ("in", "out")
STORAGE_REQUEST_STATES = ("pending", "running", "done", "failed")
# tasks (docs/tasks.md): their states, and the `error` of a failed one
TASK_STATES = ("pending", "running", "success", "failure")
TASK_FINISHED_STATES = ("success", "failure")
TASK_ERRORS = ("InvalidValue", "NotFound", "Conflict", "BackendError", "Interrupted", "Cancelled")
PRIMARY_TARGET = "primary"  # a storage request's target: the primary, or a node's name
# libvirt domain states in which a guest exists on its node (it holds memory and disks)
ACTIVE_DOMAIN_STATES = ("running", "paused", "shutdown", "pmsuspended", "blocked")


def domain_active(domain: object) -> bool:
    """Whether a hypervisor domain (anything with a `state`, an enum or a word) is active."""
    state = getattr(domain, "state", None)
    return str(getattr(state, "value", state)) in ACTIVE_DOMAIN_STATES


def vm_state(spec: dict[str, Any], status: dict[str, Any]) -> str:
    """The state word of objects.md, from a VM's desired and observed documents (the API's
    lists, the metrics and the fault checks read the cached documents directly)."""
    migration = spec.get("migration")
    if isinstance(migration, dict) and \
            int(status.get("migration_done", 0)) < int(migration.get("request", 0)):
        return str(migration.get("action", "migrate"))
    if int(spec.get("restart_request", 0)) > int(status.get("restart_done", 0)):
        return "restart"
    if status.get("state") == "failed" and \
            int(status.get("state_request_done", 0)) >= int(spec.get("state_request", 0)):
        return "failed"
    return str(spec.get("state", "start"))
