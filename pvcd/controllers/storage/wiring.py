"""`build_storage`: Ceph storage for one node daemon, from explicit dependencies.

Every node carries out the OSD requests addressed to it and keeps its device OSDs running
(`osds`); a coordinator also gets the primary's request and sync controllers, whose work starts
and stops with the primary role (`primary`, a `PrimaryService`). Where OSDs come from is decided
here for block devices (the `osd_launcher` of the config); anything else (the lab's memstore
OSDs) is an `extra_osds` provisioner passed in by whoever builds the node.
"""

from __future__ import annotations

from collections.abc import Callable

from pvcd.config import CephDriverSection
from pvcd.controllers.base import Controller, PrimaryService, Watch, Wiring
from pvcd.controllers.storage.osds import (
    GuestDisks,
    NodeOsdProvisioner,
    NodeStorage,
    OsdProvisioner,
)
from pvcd.controllers.storage.primary import PrimaryStorage
from pvcd.drivers.ceph.bluestore import DeviceOsdProvisioner
from pvcd.drivers.ceph.driver import CephDriver
from pvcd.drivers.ceph.launchers import make_launcher
from pvcd.state.store import Store
from pvcd.state.view import ClusterView


def build_storage(node: str, view: ClusterView, store: Store, config: CephDriverSection,
                  resync_interval: float, clock: Callable[[], float], coordinator: bool,
                  extra_osds: OsdProvisioner | None = None,
                  guests: GuestDisks | None = None) -> Wiring:
    """The storage controllers of node `node` (none when `config.enabled` is off); `guests`:
    this node's hypervisor, told when a volume its running VMs use grows."""
    wiring = Wiring()
    if not config.enabled:
        return wiring
    ceph = CephDriver(config.conf_file, config.keyring, timeout=config.command_timeout)
    devices = DeviceOsdProvisioner(
        node, make_launcher(config.osd_launcher, config.osd_run_dir),
        configure=ceph.osd_configure, unconfigure=ceph.osd_unconfigure, purge=ceph.osd_purge)
    node_storage = NodeStorage(node, view, store, ceph,
                               NodeOsdProvisioner(node, devices, extra_osds), config, clock,
                               guests)
    requests_prefix = view.paths.storage_requests + "/"
    wiring.add(Controller("storage-node", node_storage.requests.reconcile,
                          node_storage.requests.keys, workers=2,
                          resync_interval=resync_interval),
               Watch(requests_prefix, node_storage.requests.key_of_path))
    wiring.add(Controller("storage-osd", node_storage.reconcile_osd, node_storage.osd_keys,
                          resync_interval=resync_interval),
               Watch(view.paths.storage_osds + "/", node_storage.key_of_osd_path))
    if not coordinator:
        return wiring
    primary = PrimaryStorage(node, view, store, ceph, config, clock, resync_interval)
    wiring.add(primary.request_controller, Watch(requests_prefix, primary.requests.key_of_path))
    wiring.add(primary.sync_controller)
    wiring.services.append(PrimaryService("storage", primary.start, primary.stop))
    return wiring
