"""`/vm/<vm>/meta` and `/vm/<vm>/tags` (extensions.md §6.1, §6.3): a VM's metadata and tags.

Both live in the VM's spec, so a change is one compare-and-set write of the spec, validated
completely first (a 510 changes nothing). The rules are `pvcd.domain.vm_meta`; what placement,
flush, ready and migration make of the metadata is described there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pvcd.api.routing import route
from pvcd.api.values import accepts, choice, flag, text
from pvcd.api.vm_meta_values import META_VALUES, read_meta
from pvcd.api.vms import VmBaseHandler
from pvcd.domain.errors import InvalidValue
from pvcd.domain.records import VmSpec
from pvcd.domain.states import VM_TAG_ACTIONS
from pvcd.domain.vm_meta import add_tag, remove_tag
from pvcd.state.store import Op


def meta_object(spec: VmSpec) -> dict[str, Any]:
    return {"name": spec.name, "node_limit": list(spec.node_limit),
            "node_selector": spec.node_selector, "node_autostart": spec.node_autostart,
            "migration_method": spec.migration_method,
            "migration_max_downtime": spec.migration_max_downtime, "profile": spec.profile}


def tags_object(spec: VmSpec) -> dict[str, Any]:
    return {"name": spec.name, "tags": [dataclasses.asdict(tag) for tag in spec.tags]}


class VmMetaHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        self.reply(meta_object(spec))

    @accepts(*META_VALUES)
    async def post(self, vm: str) -> None:
        spec, version = self.vm_spec(vm)
        self.refuse_if_removing(spec)
        changes = read_meta(self.values, self.ctx.view)
        if not changes:
            raise InvalidValue("no updates to apply: give at least one of "
                               + ", ".join(v.name for v in META_VALUES))
        new = dataclasses.replace(spec, **changes)
        await self.commit([Op.set(self.ctx.view.paths.vm(spec.uuid), new.to_doc(), version)])
        note = ""
        if new.node_limit and new.node not in new.node_limit:
            note = (f"; it stays on {new.node}, outside its new node limit, until it is next "
                    "placed (migrate, flush, recovery)")
        self.message(f"Set the metadata of VM '{spec.name}' "
                     f"({', '.join(sorted(changes))}){note}")


ACTION = choice("action", VM_TAG_ACTIONS, "add or remove the tag.", required=True)
TAG = text("tag", "The tag: 1 to 64 characters of letters, digits and _ . : @ + -.",
           required=True)
PROTECTED = flag("protected", "A protected tag cannot be removed until it is added again "
                 "without this flag.")


class VmTagsHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        self.reply(tags_object(spec))

    @accepts(ACTION, TAG, PROTECTED)
    async def post(self, vm: str) -> None:
        spec, version = self.vm_spec(vm)
        self.refuse_if_removing(spec)
        name, action = self.values[TAG], self.values[ACTION]
        if not isinstance(spec.tags, list):  # (written past the API: the node refuses it)
            raise InvalidValue(f"VM '{spec.name}' has a stored tag list that is not a list; "
                               "its node refuses the document until it is repaired")
        if action == "add":
            spec.tags = add_tag(spec.tags, name, self.values[PROTECTED])
        else:
            spec.tags = remove_tag(spec.tags, name)
        await self.commit([Op.set(self.ctx.view.paths.vm(spec.uuid), spec.to_doc(), version)])
        done = "Added" if action == "add" else "Removed"
        self.message(f"{done} tag '{name}' " + ("to" if action == "add" else "from")
                     + f" VM '{spec.name}'")


ROUTES = [
    route("/vm/<vm>/meta", VmMetaHandler),
    route("/vm/<vm>/tags", VmTagsHandler),
]
