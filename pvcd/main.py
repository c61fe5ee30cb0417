"""The `pvcd` command: `pvcd run` (the node daemon) and `pvcd lab up|down|status`.

`pvcd run` builds the daemon from its config file alone; nothing of the lab is imported on that
path (the lab starts its nodes through `python -m pvcd.lab.node`, which adds its plug-ins, and
`pvcd lab` imports the lab only when it runs).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from pvcd.config import DEFAULT_CONFIG_PATH, Config, load_config
from pvcd.domain.errors import ConfigError

if TYPE_CHECKING:
    from pvcd.daemon import NodeDaemon


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pvcd", description="pvcd node daemon and lab")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the node daemon")
    run.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="node configuration file")
    run.add_argument("--log-level", default="INFO")
    lab = sub.add_parser("lab", help="a real cluster on this machine")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    up = lab_sub.add_parser("up", help="start ZooKeeper and node daemons")
    up.add_argument("--workdir", default="./lab")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--zk-ensemble", type=int, choices=(1, 3), default=1)
    up.add_argument("--coordinators", type=int, default=None)
    up.add_argument("--netns", "--network", dest="network", action="store_true",
                    help="run each node daemon in its own network namespace on an underlay "
                         "bridge (VXLAN client networks, floating IP, partitions)")
    up.add_argument("--fencing", default=None, choices=("none", "lab", "lab-fail"),
                    help="how dead nodes are fenced (default: lab, which kills the node's "
                         "processes and restarts them; none with --libvirt qemu, whose guests "
                         "the lab fence cannot kill)")
    up.add_argument("--libvirt", default="test", choices=("test", "qemu"),
                    help="test: a test:/// libvirt inside each node daemon (fast, no real "
                         "guests); qemu: a real libvirtd per node, tiny QEMU guests that boot "
                         "and live-migrate (root)")
    up.add_argument("--ceph", action="store_true",
                    help="start a throwaway Ceph (memstore OSDs) and let the nodes manage it")
    up.add_argument("--ceph-memstore-gib", type=int, default=1, metavar="GIB",
                    help="each of the 2 OSDs' capacity, held in memory (default 1; a guest "
                         "image and its clones need 3: docs/provisioning.md)")
    for name in ("down", "status", "add-node"):
        cmd = lab_sub.add_parser(name)
        cmd.add_argument("--workdir", default="./lab")
    args = parser.parse_args(argv)
    if args.command == "lab" and args.lab_command == "up" and args.libvirt == "qemu" and \
            args.fencing == "lab":
        parser.error("--fencing lab cannot be used with --libvirt qemu: the lab fence kills "
                     "only the node daemon, its QEMU guests would survive it")
    if args.command == "run":
        return run_node(args.config, args.log_level, _production_daemon)
    return _lab(args)


def _production_daemon(config: Config) -> NodeDaemon:
    from pvcd.daemon import NodeDaemon  # after config: a bad config fails fast and clearly

    return NodeDaemon(config)


def run_node(config_path: str, log_level: str, build: Callable[[Config], NodeDaemon]) -> int:
    """Load the config, `build` the daemon from it, run it until SIGTERM/SIGINT."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    try:
        config = load_config(config_path)
        daemon = build(config)
    except ConfigError as exc:
        print(f"pvcd: configuration error: {exc}", file=sys.stderr)
        return 2
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # operators: dump thread stacks
    # this process runs this one daemon: every record of it is the node's (GET /node/<n>/log)
    logging.getLogger().addHandler(daemon.log_handler)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.run()
    return 0


def _lab(args: argparse.Namespace) -> int:
    from pvcd.lab.lab import Lab  # the one import of the lab outside it: `pvcd lab` only

    lab = Lab(args.workdir)
    if args.lab_command == "up":
        info = lab.up(nodes=args.nodes, zk_ensemble=args.zk_ensemble,
                      coordinators=args.coordinators, network=args.network,
                      ceph=args.ceph, fencing=args.fencing, libvirt=args.libvirt,
                      ceph_memstore_gib=args.ceph_memstore_gib)
        print(f"lab is up: {len(info.nodes)} nodes, ZooKeeper {info.zookeeper}")
        print(f"API:   {info.api}")
        print(f"web:   {info.dashboard} (the dashboard: log in with the token)")
        print(f"token: {info.token}")
        print(f"try:   curl -H 'X-Api-Key: {info.token}' {info.api}/node")
        if info.qemu:
            guest = info.qemu["guest_xml"]
            print(f"guest: {guest} (a tiny QEMU guest; define and start it with")
            print(f"       curl -H 'X-Api-Key: {info.token}' --data-urlencode xml@{guest} "
                  f"{info.api}/vm )")
        print(f"stop:  pvcd lab down --workdir {args.workdir}")
        return 0
    if args.lab_command == "add-node":
        print(f"added {lab.add_node()}")
        return 0
    if args.lab_command == "down":
        lab.down()
        print("lab is down")
        return 0
    print(json.dumps(lab.status(), indent=2))
    return 0
