"""A VM's metadata and tags (extensions.md §6): the rules for changing them, in one place.

The metadata (`node_limit`, `node_selector`, `node_autostart`, `migration_method`,
`migration_max_downtime`, `profile`) lives in the VM's spec (`VmSpec`), so every writer of the
spec (the API's define and meta, the provisioner, flush and ready, fencing recovery) keeps it in
the same compare-and-set write as the rest. Placement (`pvcd.domain.placement`) honours
`node_limit` and `node_selector`; flush and ready (`pvcd.controllers.flush`) and recovery
(`pvcd.controllers.fencing`) `node_autostart`; the VM's node `migration_method` and
`migration_max_downtime` (`pvcd.controllers.vm`).

Tags only label a VM: they select VMs for listing and backups and never affect placement.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

from pvcd.domain.errors import InvalidValue
from pvcd.domain.records import VmSpec, VmTag
from pvcd.domain.states import MIGRATION_METHODS, NODE_SELECTORS, VM_TAG_TYPES

MAX_DOWNTIME_RANGE = (1, 60000)  # ms
DEFAULT_MAX_DOWNTIME = 300
TAG_NAME = re.compile(r"[A-Za-z0-9_.:@+-]{1,64}")


def check_node_limit(names: Iterable[str], known: Collection[str]) -> list[str]:
    """A node limit as given (comma-separated names, blanks ignored): every name a known
    node; empty clears the limit."""
    limit: list[str] = []
    for name in (n.strip() for n in names):
        if name and name not in limit:
            limit.append(name)
    unknown = [name for name in limit if name not in known]
    if unknown:
        raise InvalidValue(f"node limit names unknown nodes: {', '.join(unknown)}; known "
                           f"nodes are: {', '.join(sorted(known)) or 'none'}")
    return limit


def parse_node_limit(text: str) -> list[str]:
    """`a,b,c` → the names (`""` → none: no limit)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def check_tag_name(name: str) -> str:
    if not TAG_NAME.fullmatch(name):
        shown = name if len(name) <= 70 else f"{name[:64]}... ({len(name)} characters)"
        raise InvalidValue(f"invalid tag '{shown}': 1 to 64 characters of letters, digits and "
                           "_ . : @ + -")
    return name


def user_tags(user: list[str], protected: list[str]) -> list[VmTag]:
    """The tags a define names: user tags, and protected ones (a tag in both is protected)."""
    tags: dict[str, VmTag] = {}
    for name in user:
        tags[check_tag_name(name)] = VmTag(name=name)
    for name in protected:
        tags[check_tag_name(name)] = VmTag(name=name, protected=True)
    return list(tags.values())


def add_tag(tags: list[VmTag], name: str, protected: bool) -> list[VmTag]:
    """`tags` with user tag `name` added; an existing user tag gets the new `protected`."""
    check_tag_name(name)
    found = _find(tags, name)
    if found is not None and found.type != "user":
        raise InvalidValue(f"tag '{name}' is a {found.type} tag: only user tags can be changed")
    if found is None:
        return [*tags, VmTag(name=name, protected=protected)]
    return [VmTag(t.name, t.type, protected) if t.name == name else t for t in tags]


def remove_tag(tags: list[VmTag], name: str) -> list[VmTag]:
    """`tags` without user tag `name`; a protected tag stays (add it unprotected first)."""
    check_tag_name(name)
    found = _find(tags, name)
    if found is None:
        raise InvalidValue(f"the VM has no tag '{name}'; its tags are: "
                           f"{', '.join(t.name for t in tags) or 'none'}")
    if found.type != "user":
        raise InvalidValue(f"tag '{name}' is a {found.type} tag: only user tags can be removed")
    if found.protected:
        raise InvalidValue(f"tag '{name}' is protected: add it again without protected first, "
                           "then remove it")
    return [t for t in tags if t.name != name]


def check_vm_meta(spec: VmSpec) -> None:
    """The metadata and tags of a stored VM document by the API's rules (a node re-validates
    what it reads: docs/security.md, "Daemons re-validate"); InvalidValue says what is
    wrong. Node names are not checked against the cluster: a node may have left since."""
    limit = spec.node_limit
    if not isinstance(limit, list) or not all(isinstance(n, str) and n for n in limit):
        raise InvalidValue(f"node_limit {limit!r} is invalid: a list of node names")
    if spec.node_selector not in NODE_SELECTORS:
        raise InvalidValue(f"node_selector {spec.node_selector!r} is invalid; valid values "
                           f"are: {', '.join(NODE_SELECTORS)}")
    if not isinstance(spec.node_autostart, bool):
        raise InvalidValue(f"node_autostart {spec.node_autostart!r} is invalid: true or false")
    if spec.migration_method not in MIGRATION_METHODS:
        raise InvalidValue(f"migration_method {spec.migration_method!r} is invalid; valid "
                           f"values are: {', '.join(MIGRATION_METHODS)}")
    low, high = MAX_DOWNTIME_RANGE
    downtime = spec.migration_max_downtime
    if type(downtime) is not int or not low <= downtime <= high:
        raise InvalidValue(f"migration_max_downtime {downtime!r} is invalid: an integer from "
                           f"{low} up to {high} (ms)")
    if spec.profile is not None and not isinstance(spec.profile, str):
        raise InvalidValue(f"profile {spec.profile!r} is invalid: a profile name or none")
    if not isinstance(spec.tags, list):
        raise InvalidValue(f"tags {spec.tags!r} are invalid: a list of tags")
    for tag in spec.tags:
        if not isinstance(tag, VmTag) or not isinstance(tag.name, str) or \
                tag.type not in VM_TAG_TYPES or not isinstance(tag.protected, bool):
            raise InvalidValue(f"tag {tag!r} is invalid: {{name, type (user|system), "
                               "protected}")
        check_tag_name(tag.name)


def node_limit_of(spec: VmSpec) -> list[str]:
    """The limit placement honours. One that breaks the rules (a document written past the
    API, which the VM's node refuses to act on) limits nothing rather than stopping a flush or
    a recovery of the other VMs."""
    limit = spec.node_limit
    return limit if isinstance(limit, list) and all(isinstance(n, str) for n in limit) else []


def _find(tags: list[VmTag], name: str) -> VmTag | None:
    return next((t for t in tags if t.name == name), None)
