"""The values that set a VM's metadata (extensions.md §6.1), declared once for the two
endpoints that take them: `POST /vm/<vm>/meta` (changes those given) and `POST /vm` (a define
starts from the defaults).

Each value has PVC's name and the field's name as an alias (`limit` / `node_limit`,
`selector` / `node_selector`, `autostart` / `node_autostart`); giving both with different
values is refused. `read_meta` checks them all against the cluster (known nodes, an existing
profile) before anything is written.
"""

from __future__ import annotations

from typing import Any

from pvcd.api.values import Value, Values, boolean, choice, integer, text
from pvcd.domain.errors import InvalidValue
from pvcd.domain.states import MIGRATION_METHODS, NODE_SELECTORS
from pvcd.domain.vm_meta import MAX_DOWNTIME_RANGE, check_node_limit, parse_node_limit
from pvcd.state.view import ClusterView

_LIMIT_HELP = ("The nodes the VM may run on, comma-separated (every one a known node); empty "
               "clears the limit. Placement (define, migrate, flush, recovery) chooses only "
               "among them; a running VM is not moved when it changes.")
_SELECTOR_HELP = ("How placement ranks the nodes for this VM: mem (least memory assigned), "
                  "memprov (the same as mem in pvcd), vcpus, load, vms, or none (the cluster "
                  "default, mem).")
_AUTOSTART_HELP = ("Start the VM when its node becomes ready (then reset: it acts once). A "
                   "flush with nowhere to move the VM sets it.")

NODE_LIMIT = text("limit", _LIMIT_HELP)
NODE_LIMIT_ALIAS = text("node_limit", "Alias of `limit`.")
NODE_SELECTOR = choice("selector", NODE_SELECTORS, _SELECTOR_HELP)
NODE_SELECTOR_ALIAS = choice("node_selector", NODE_SELECTORS, "Alias of `selector`.")
NODE_AUTOSTART = boolean("autostart", _AUTOSTART_HELP)
NODE_AUTOSTART_ALIAS = boolean("node_autostart", "Alias of `autostart`.")
MIGRATION_METHOD = choice("migration_method", MIGRATION_METHODS,
                          "How the VM moves: live (never falls back; a failed live migration "
                          "leaves it running where it was), shutdown (always shut down and "
                          "started on the target), none (live, else shutdown).")
MIGRATION_MAX_DOWNTIME = integer("migration_max_downtime",
                                 "The longest (ms) a live migration may pause the VM at its "
                                 "end, handed to libvirt.", minimum=MAX_DOWNTIME_RANGE[0],
                                 maximum=MAX_DOWNTIME_RANGE[1])
PROFILE = text("profile", "The provisioner profile the VM belongs to (must exist); empty "
               "clears it.")

META_VALUES: tuple[Value[Any], ...] = (
    NODE_LIMIT, NODE_LIMIT_ALIAS, NODE_SELECTOR, NODE_SELECTOR_ALIAS, NODE_AUTOSTART,
    NODE_AUTOSTART_ALIAS, MIGRATION_METHOD, MIGRATION_MAX_DOWNTIME, PROFILE)


def read_meta(values: Values, view: ClusterView) -> dict[str, Any]:
    """The metadata fields the request gives (field name → new value), checked against the
    cluster; InvalidValue names the first bad one."""
    changes: dict[str, Any] = {}
    given = _either(values, NODE_LIMIT, NODE_LIMIT_ALIAS)
    if given is not None:
        changes["node_limit"] = check_node_limit(parse_node_limit(given[1] or ""),
                                                 set(view.node_names()))
    given = _either(values, NODE_SELECTOR, NODE_SELECTOR_ALIAS)
    if given is not None and given[1] is not None:
        changes["node_selector"] = given[1]
    given = _either(values, NODE_AUTOSTART, NODE_AUTOSTART_ALIAS)
    if given is not None:
        changes["node_autostart"] = bool(given[1])
    if values.given(MIGRATION_METHOD) and values[MIGRATION_METHOD] is not None:
        changes["migration_method"] = values[MIGRATION_METHOD]
    if values.given(MIGRATION_MAX_DOWNTIME) and values[MIGRATION_MAX_DOWNTIME] is not None:
        changes["migration_max_downtime"] = values[MIGRATION_MAX_DOWNTIME]
    if values.given(PROFILE):
        profile = values[PROFILE]
        if profile is not None and not view.cache.exists(
                view.paths.provisioner_object("profile", profile)):
            raise InvalidValue(f"profile '{profile}' does not exist")
        changes["profile"] = profile
    return changes


def _either(values: Values, name: Value[Any], alias: Value[Any]) -> tuple[str, Any] | None:
    """(the name given, its value) of a value given by its name or its alias; None if by
    neither. Both with different values: InvalidValue."""
    given = [(v.name, values[v]) for v in (name, alias) if values.given(v)]
    if len(given) == 2 and given[0][1] != given[1][1]:
        raise InvalidValue(f"'{name.name}' and its alias '{alias.name}' give different "
                           "values; give one of them")
    return given[0] if given else None
