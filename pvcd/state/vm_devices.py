"""What a device attach or detach (extensions.md §11.2) is judged against, and the VM document
it leads to: one rule for the API (before anything changes) and for the `vm.device_*` task on
the VM's node (again, against the document as it is when the task runs).

Refused (nothing changes): a VM being removed, provisioned or migrated; a device libvirt would
see as one the VM already has (a disk target dev taken, a MAC already on this VM, an equal
device); an RBD disk whose volume pvcd does not know; an interface that is not a bridge of a
client network (`vmbr<vni>`), or whose MAC another VM uses; a detach that matches no device.
The VM XML with the change must pass `pvcd.vmxml.parse_domain_xml` as a whole, like any VM XML
the API stores. An interface given without a MAC gets a free one here, so the live guest, the
stored XML and every later definition agree on it.
"""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.domain.provisioning import random_mac
from pvcd.domain.records import VmSpec
from pvcd.domain.states import PROVISION_VM_STATE
from pvcd.specs.vms import check_name_kept, check_uuid_kept
from pvcd.state.provisioning import vm_macs
from pvcd.state.request_size import check_request_size
from pvcd.state.store import Op
from pvcd.state.view import ClusterView
from pvcd.vmdevices import (
    Device,
    added_device_xml,
    devices_of,
    find_device,
    parse_device_xml,
    removed_device_xml,
    with_mac,
)
from pvcd.vmxml import parse_domain_xml

ATTACH, DETACH = "attach", "detach"
# the task that makes each change on a running VM's node (extensions.md §1.4)
TASK_NAMES = {ATTACH: "vm.device_attach", DETACH: "vm.device_detach"}
_BRIDGE = re.compile(r"vmbr([0-9]{1,8})")


@dataclass(frozen=True)
class DeviceChange:
    """A checked change: the device handed to libvirt (for a detach: the stored one) and the
    VM document with the change made."""

    action: str  # ATTACH or DETACH
    device: Device
    old: VmSpec
    new: VmSpec

    def ops(self, view: ClusterView, version: int) -> list[Op]:
        """The compare-and-set write of the new document (`version`: the one it was read at)."""
        ops = [Op.set(view.paths.vm(self.new.uuid), self.new.to_doc(), version)]
        check_request_size(ops, f"VM '{self.new.name}' (its XML and the fields taken from it)")
        return ops

    def restore(self, current: VmSpec) -> VmSpec | None:
        """`current` (re-read) with the change undone, or None when someone changed the XML
        since (then it is theirs, and left as it is)."""
        if current.xml != self.new.xml:
            return None
        restored = copy.deepcopy(current)
        restored.xml, restored.memory, restored.vcpu = self.old.xml, self.old.memory, \
            self.old.vcpu
        restored.info = copy.deepcopy(self.old.info)
        return restored


def new_device_mac() -> str:
    """A random MAC of libvirt's prefix (52:54:00) for an interface given without one."""
    return random_mac(secrets.token_bytes)


def check_device_change_allowed(view: ClusterView, spec: VmSpec) -> None:
    """Conflict while the VM is removed, provisioned or migrated."""
    if spec.removing:
        raise Conflict(f"VM '{spec.name}' is being removed; nothing was changed")
    if spec.state == PROVISION_VM_STATE:
        raise Conflict(f"VM '{spec.name}' is being provisioned; its devices can change once its "
                       "provisioner.create task has finished; nothing was changed")
    status = view.vm_status(spec.uuid)
    pending = spec.migration is not None and (
        status is None or status.migration_done < spec.migration.request)
    if pending or (status is not None and status.state == "migrating"):
        raise Conflict(f"VM '{spec.name}' is migrating; change its devices once it has arrived "
                       f"on {spec.node}; nothing was changed")


def running_node(view: ClusterView, spec: VmSpec) -> str | None:
    """The node whose libvirt runs the VM as its status says (its assigned node), or None when
    it does not run: then a change is only a change of its XML. Conflict while it is being
    started: its node may be booting it from the XML it read before the change, and the guest
    would miss the device until its next restart."""
    status = view.vm_status(spec.uuid)
    if status is not None and status.state == "running" and status.node == spec.node:
        return spec.node
    if spec.state == "start" and (status is None or status.state != "failed"):
        raise Conflict(f"VM '{spec.name}' is starting on {spec.node}; change its devices once "
                       "it runs (or stop it first); nothing was changed")
    return None


def plan_attach(view: ClusterView, spec: VmSpec, text: str,
                new_mac: Callable[[], str]) -> DeviceChange:
    """The checked attach of the device `text` to `spec`'s VM (see the module docstring)."""
    check_device_change_allowed(view, spec)
    device = parse_device_xml(text)
    present = find_device(spec.xml, device)
    if device.tag == "disk":
        if present is not None:
            raise Conflict(f"VM '{spec.name}' already has a disk {device.target}; detach it "
                           "first or choose another target dev; nothing was changed")
        if device.rbd is not None:
            _check_volume(view, device.rbd)
    elif device.tag == "interface":
        _check_bridge(view, device)
        device = _check_mac(view, spec, device, new_mac)
    elif present is not None:
        raise Conflict(f"VM '{spec.name}' already has this {device.label}; nothing was changed")
    return _change(ATTACH, spec, device, added_device_xml(spec.xml, device))


def plan_detach(view: ClusterView, spec: VmSpec, text: str) -> DeviceChange:
    """The checked detach of the device `text` identifies from `spec`'s VM."""
    check_device_change_allowed(view, spec)
    device = parse_device_xml(text)
    if device.tag == "interface" and device.mac is None:
        raise InvalidValue("give the interface's <mac address='...'/>: an interface is "
                           "detached by its MAC; nothing was changed")
    stored = find_device(spec.xml, device)
    if stored is None:
        same_kind = [d.label for d in devices_of(spec.xml) if d.tag == device.tag]
        has = f"its {device.tag} devices: {', '.join(same_kind)}" if same_kind else \
            f"it has no {device.tag} device"
        raise NotFound(f"VM '{spec.name}' has no {device.label} to detach ({has}); nothing "
                       "was changed")
    return _change(DETACH, spec, stored, removed_device_xml(spec.xml, stored))


def _change(action: str, spec: VmSpec, device: Device, xml: str) -> DeviceChange:
    definition = parse_domain_xml(xml, default_uuid=spec.uuid)
    check_uuid_kept(definition, spec.uuid)
    check_name_kept(definition, spec.name)
    new = copy.deepcopy(spec)
    new.xml, new.memory, new.vcpu = definition.xml, definition.memory, definition.vcpu
    new.info = definition.to_api_fields()
    return DeviceChange(action=action, device=device, old=spec, new=new)


def _check_volume(view: ClusterView, rbd: tuple[str, str]) -> None:
    pool, volume = rbd
    if not view.cache.exists(view.paths.storage_volume(pool, volume)):
        raise NotFound(f"RBD volume {pool}/{volume} not found: create it first (POST "
                       "/storage/ceph/volume); nothing was changed")


def _check_bridge(view: ClusterView, device: Device) -> None:
    bridges = ", ".join(f"vmbr{vni}" for vni in sorted(view.network_vnis())) or "none yet"
    allowed = f"the bridges of the client networks are: {bridges}"
    if device.interface_type != "bridge":
        raise InvalidValue(f"an interface must be <interface type='bridge'> on a client "
                           f"network's bridge, not type {device.interface_type!r} ({allowed}); "
                           "nothing was changed")
    match = _BRIDGE.fullmatch(device.bridge or "")
    if match is None or int(match.group(1)) not in view.network_vnis():
        raise InvalidValue(f"the interface's bridge {device.bridge!r} is not a client network's "
                           f"vmbr<vni> ({allowed}); nothing was changed")


def _check_mac(view: ClusterView, spec: VmSpec, device: Device,
               new_mac: Callable[[], str]) -> Device:
    """The interface with a MAC no VM uses (a new one if it had none)."""
    taken = vm_macs(view)
    own = {d.mac for d in devices_of(spec.xml) if d.tag == "interface" and d.mac}
    if device.mac is None:
        mac = new_mac()
        while mac in taken or mac in own:
            mac = new_mac()
        return with_mac(device, mac)
    if device.mac in own:
        raise Conflict(f"VM '{spec.name}' already has an interface with MAC {device.mac}; "
                       "nothing was changed")
    user = taken.get(device.mac)
    if user is not None and user != spec.name:
        raise Conflict(f"MAC {device.mac} is already used by VM '{user}'; choose another (or "
                       "leave <mac> out to get a free one); nothing was changed")
    return device
