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
from pvcd.domain.records import VmTag

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


def _find(tags: list[VmTag], name: str) -> VmTag | None:
    return next((t for t in tags if t.name == name), None)
