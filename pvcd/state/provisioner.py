"""The provisioner's objects in the cache (`provisioner/<kind>/<name>`, extensions.md §3.1), and
the writes that keep profiles' references whole.

Readers (the API, the `provisioner.create` and `ova.upload` tasks, the metadata service) get
records through `read_object` / `read_objects`; a document that is not a JSON object reads as
missing.

Referential integrity without a lock. A profile names templates, userdata and an OVA, and
deleting a named object is refused. Checking the profiles and then deleting is a race: a
profile naming the object could be written between the check and the delete. Two rules close
it, both compare-and-set in the same transaction:

- a write of a profile *touches* every object it names (`touch_ops`): it sets each one,
  unchanged, at the version the profile was validated against;
- a delete deletes at the version it read when it found no profile naming the object.

So whichever commits second fails: a profile write after the delete finds the object gone
(or at another version); a delete after a profile write finds a new version. The same holds
for a change of a named object that a profile's rules depend on (a storage template's disks
and a `blank` profile): the change is a set at the version it checked the profiles against.
Any writer that deletes an object profiles may name (the OVA delete of §3.7) must delete at
the version it read, after `profiles_naming` found nothing.
"""

from __future__ import annotations

from typing import Any

from pvcd.domain.provisioner import RECORDS, Profile
from pvcd.state.cache import Entry
from pvcd.state.store import Op
from pvcd.state.view import ClusterView

# the profile field that names an object of each kind
PROFILE_FIELDS = {"system": "system_template", "network": "network_template",
                  "storage": "storage_template", "userdata": "userdata", "ova": "ova"}


def object_entry(view: ClusterView, kind: str, name: str) -> Entry | None:
    """The cached document and version of one object; None if missing or not an object."""
    entry = view.cache.entry(view.paths.provisioner_object(kind, name))
    return entry if entry is not None and isinstance(entry.doc, dict) else None


def read_object(view: ClusterView, kind: str, name: str) -> Any:
    """The record (`pvcd.domain.provisioner.RECORDS[kind]`) of one object, or None."""
    entry = object_entry(view, kind, name)
    record: Any = RECORDS[kind]
    return None if entry is None else record.from_doc(entry.doc)


def object_names(view: ClusterView, kind: str) -> list[str]:
    return view.cache.children(view.paths.provisioner_kind(kind))


def read_objects(view: ClusterView, kind: str) -> list[Any]:
    """Every record of a kind, sorted by name."""
    records = (read_object(view, kind, name) for name in object_names(view, kind))
    return [record for record in records if record is not None]


def profiles_naming(view: ClusterView, kind: str, name: str) -> list[Profile]:
    """The profiles that name the object `kind`/`name`, sorted by name."""
    field = PROFILE_FIELDS[kind]
    return [p for p in read_objects(view, "profile") if getattr(p, field) == name]


def profile_references(profile: Profile) -> list[tuple[str, str]]:
    """(kind, name) of every object a profile names."""
    return [(kind, getattr(profile, field)) for kind, field in PROFILE_FIELDS.items()
            if getattr(profile, field) is not None]


def touch_ops(view: ClusterView, references: list[tuple[str, str]]) -> list[Op]:
    """Sets of each named object, unchanged, at its cached version (see the module docstring);
    objects missing from the cache are left out (the caller has refused them already)."""
    ops = []
    for kind, name in references:
        entry = object_entry(view, kind, name)
        if entry is not None:
            ops.append(Op.set(view.paths.provisioner_object(kind, name), entry.doc,
                              entry.version))
    return ops


def vms_naming_profile(view: ClusterView, profile: str) -> list[str]:
    """Names of the VMs made from `profile` (`VmSpec.profile`), sorted."""
    names = []
    for uuid in view.vm_uuids():
        try:
            spec = view.vm_spec(uuid)
        except (TypeError, ValueError):  # written past the API: not a VM of any profile
            continue
        if spec is not None and spec.profile == profile:
            names.append(spec.name)
    return sorted(names)
