"""A lab node daemon: `python -m pvcd.lab.node --config <node folder>/pvcd.yaml`.

The same `NodeDaemon` as `pvcd run`, built with the lab's plug-ins from the node's launch
record (`launch.json` beside the config, written by the lab): the lab fence drivers (which read
the other nodes' launch records in the same `nodes/` folder), the agent on the node's
`test:///` libvirt connection, the memstore OSDs of the lab's throwaway Ceph, the lab's
fake watchdog (when the config names a watchdog device) and the lab's task kind `lab.files`
(`pvcd.lab.tasks`, for end-to-end tests of tasks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pvcd.config import Config
from pvcd.daemon import NodeDaemon
from pvcd.drivers.libvirt import LibvirtDriver
from pvcd.lab.agent import LabAgent
from pvcd.lab.fence import lab_fence_drivers
from pvcd.lab.launch import NodeLaunch, load_launch
from pvcd.lab.osds import LabOsdProvisioner
from pvcd.lab.tasks import lab_task_kinds
from pvcd.lab.watchdog import LabWatchdog
from pvcd.main import run_node
from pvcd.plugins import NodeService, Plugins


def lab_daemon(config: Config, record: NodeLaunch, nodes_dir: Path) -> NodeDaemon:
    libvirt = LibvirtDriver(config.drivers.libvirt.uri)
    services: list[NodeService] = []
    if record.agent_socket:
        services.append(LabAgent(record.agent_socket, libvirt))
    extra_osds = None
    if record.ceph_workdir:
        extra_osds = LabOsdProvisioner(record.ceph_workdir, config.node.name)
    plugins = Plugins(fence_drivers=lab_fence_drivers(nodes_dir), services=services,
                      extra_osds=extra_osds, watchdog=LabWatchdog,
                      task_kinds=lab_task_kinds())
    return NodeDaemon(config, plugins=plugins, libvirt=libvirt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvcd.lab.node",
                                     description="a lab node daemon")
    parser.add_argument("--config", required=True, help="the node's pvcd.yaml in its folder")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    folder = Path(args.config).resolve().parent
    record = load_launch(folder)
    return run_node(args.config, args.log_level,
                    lambda config: lab_daemon(config, record, folder.parent))


if __name__ == "__main__":
    raise SystemExit(main())
