"""The production task kinds of a node daemon: the one place a new kind is registered.

Every node gets the same kinds (the primary undoes the artifacts of tasks any node ran);
the lab adds its test-only kinds through `Plugins.task_kinds`. Each kind is built from explicit
dependencies here, so `pvcd.daemon` only passes what it has.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from pvcd.config import Config
from pvcd.controllers.autobackup import AutobackupRun
from pvcd.controllers.cluster_restore import ClusterRestore
from pvcd.controllers.ova_upload import CephAccess, OvaImporter
from pvcd.controllers.provisioner import provisioner_task_kinds
from pvcd.controllers.tasks import TaskKind
from pvcd.controllers.tasks.storage_steps import StorageSteps, run_storage_request
from pvcd.controllers.uploads import upload_task_kind
from pvcd.controllers.vm_devices import DeviceDriver, DeviceTasks
from pvcd.controllers.vm_exports import VmExportSteps
from pvcd.controllers.vm_imports import VmImportSteps
from pvcd.controllers.vm_snapshots import VmSnapshotSteps
from pvcd.drivers.ceph.rbd_files import RbdExporter
from pvcd.drivers.nft_rules import validate_rule
from pvcd.state.store import Store
from pvcd.state.view import ClusterView
from pvcd.upload_pipe import UploadPipes


def production_task_kinds(view: ClusterView, store: Store, config: Config,
                          uploads: UploadPipes, clock: Callable[[], float] = time.time,
                          guests: DeviceDriver | None = None) -> list[TaskKind]:
    """The task kinds every node can run (spec extensions.md §1.4). `guests`: this node's
    libvirt, for the device hot-plug tasks (left out where no VM runs: tests of other kinds)."""
    ceph = config.drivers.ceph
    access = CephAccess(str(ceph.conf_file), str(ceph.keyring), float(ceph.request_timeout),
                        float(ceph.command_timeout))
    calls = functools.partial(run_storage_request, view, store, clock=clock)
    storage = StorageSteps(view, store, clock)
    snapshots = VmSnapshotSteps(view, store, storage, config.snapshot.freeze_timeout, clock)
    allowed = config.backup.allowed_paths
    exports = VmExportSteps(view, snapshots, RbdExporter(str(ceph.conf_file), str(ceph.keyring)),
                            allowed, clock)
    return [OvaImporter(view, store, uploads, access, clock).kind(),
            upload_task_kind(calls, ceph.request_timeout),
            *provisioner_task_kinds(view, store, config),
            ClusterRestore(view, store, uploads, config.backup.allowed_paths, validate_rule,
                           clock).kind(),
            *snapshots.kinds(),
            *exports.kinds(),
            AutobackupRun(view, store, snapshots, exports, allowed, clock).kind(),
            *VmImportSteps(view, store, storage, allowed, clock).kinds(),
            *(DeviceTasks(config.node.name, view, store, guests).kinds() if guests else [])]
