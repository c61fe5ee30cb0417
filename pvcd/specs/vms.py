"""The rules of a VM document (`vms/<uuid>`): what the API writes and the node defines.

`parse_domain_xml` (`pvcd.vmxml`) holds the XML rules. The rest is the VM's identity: the XML
names the VM the document names, with the UUID the document is stored under, since libvirt
keeps one name per UUID and a node defines exactly what the XML says. The API applies the same
two checks to `PUT /vm/<vm>` (`check_uuid_kept`, `check_name_kept`); a node applies all of them
to the whole document it reads (`check_vm_document`).
"""

from __future__ import annotations

from pvcd.domain.errors import InvalidValue
from pvcd.domain.records import VmSpec
from pvcd.domain.states import PROVISION_VM_STATE
from pvcd.domain.vm_meta import check_vm_meta
from pvcd.vmxml import DomainDefinition, parse_domain_xml

# the desired states the API writes (a restart request is stored as `start` and a counter)
STORED_VM_STATES = ("start", "shutdown", "stop", "disable", PROVISION_VM_STATE)


def check_uuid_kept(definition: DomainDefinition, uuid: str) -> None:
    if definition.uuid != uuid:
        raise InvalidValue(f"the XML's UUID {definition.uuid} is not the VM's UUID {uuid}; the "
                           "UUID of a VM cannot change")


def check_name_kept(definition: DomainDefinition, name: str) -> None:
    # libvirt keeps one name per UUID: a new name needs the domain redefined, which the rename
    # does (with the disks named after the VM)
    if definition.name != name:
        raise InvalidValue(f"the XML names the VM '{definition.name}', not '{name}': rename the "
                           f"VM with POST /vm/{name}/rename (new_name={definition.name}) first")


def check_vm_document(uuid: str, spec: VmSpec) -> DomainDefinition:
    """The whole VM document stored at `vms/<uuid>` as a node reads it; InvalidValue says what
    is wrong. Returns the validated definition, whose `xml` is the only form a node hands to
    libvirt."""
    if spec.uuid != uuid:
        raise InvalidValue(f"the document at vms/{uuid} names the UUID {spec.uuid!r}")
    if not isinstance(spec.name, str):
        raise InvalidValue("the VM document's name must be a text")
    definition = parse_domain_xml(spec.xml, default_uuid=spec.uuid)
    check_uuid_kept(definition, spec.uuid)
    check_name_kept(definition, spec.name)
    check_vm_fields(spec)
    return definition


def check_vm_fields(spec: VmSpec) -> None:
    """The rules of a VM document beyond its identity and XML (`check_vm_document` applies
    them too): its desired state, request counters and metadata."""
    if spec.state not in STORED_VM_STATES:
        raise InvalidValue(f"invalid desired state {spec.state!r}; valid states are: "
                           f"{', '.join(STORED_VM_STATES)}")
    for counter in ("restart_request", "state_request"):
        value = getattr(spec, counter)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidValue(f"{counter} {value!r} is invalid: a whole number from 0")
    check_vm_meta(spec)
