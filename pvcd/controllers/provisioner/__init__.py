"""The provisioner's tasks (extensions.md §3): creating a VM from a profile.

Modules, one concept each:
  storage_steps  a task's storage requests, written and waited for from its worker thread
  create         the `provisioner.create` task kind: plan, disks, VM record, hand-over, undo

`provisioner_task_kinds` builds them from the node's config for the daemon's task registry.
"""

from __future__ import annotations

import os
from pathlib import Path

from pvcd.config import Config
from pvcd.controllers.provisioner.create import ProvisionerCreate
from pvcd.controllers.tasks import TaskKind
from pvcd.domain.errors import BackendError, InvalidValue
from pvcd.domain.pool_space import PoolSpace
from pvcd.drivers.ceph.driver import CephDriver
from pvcd.drivers.disk_images import DiskImages
from pvcd.provisioner_xml import monitors_from_conf
from pvcd.state.store import Store
from pvcd.state.view import ClusterView


def provisioner_task_kinds(view: ClusterView, store: Store, config: Config) -> list[TaskKind]:
    ceph_config = config.drivers.ceph
    ceph = CephDriver(ceph_config.conf_file, ceph_config.keyring, ceph_config.command_timeout)

    def pool_space(pool: str) -> PoolSpace:
        if not ceph_config.enabled:
            raise InvalidValue("Ceph storage is not configured on the primary "
                               "(drivers.ceph.enabled); a profile with disks needs it")
        return ceph.pool_space(pool)

    def monitors() -> tuple[tuple[str, int], ...]:
        try:
            return monitors_from_conf(Path(ceph_config.conf_file).read_text())
        except OSError as exc:
            raise BackendError(f"cannot read {ceph_config.conf_file} for the monitors of the "
                               f"generated XML: {exc}") from exc

    images = DiskImages(ceph_config.conf_file, ceph_config.keyring, ceph_config.command_timeout)
    create = ProvisionerCreate(view, store, pool_space, images, config.drivers.libvirt,
                               ceph_config, monitors, os.uname().machine)
    return [create.kind()]


__all__ = ["ProvisionerCreate", "provisioner_task_kinds"]
