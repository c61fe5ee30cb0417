"""The lab's Ceph: a throwaway cluster (`pvcd.lab.ceph`) set up for the lab's nodes.

Its OSDs belong to the lab nodes (each placed under its node's CRUSH host), and each node gets
the /etc/ceph and /var/lib/ceph of a Ceph client machine in its own folder (bind-mounted in the
node daemon's mount namespace), so that `ceph-volume` on a node works as on a machine of its own.
`stop_lab_ceph` stops every daemon, those the nodes added too.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from pvcd.drivers.ceph.launchers import ProcessOsdLauncher
from pvcd.lab.ceph import ThrowawayCeph
from pvcd.lab.ceph_conf import mon_addrs
from pvcd.lab.ceph_daemons import CephLabError, Daemon


def start_lab_ceph(workdir: Path, nodes: int, address: str = "127.0.0.1",
                   netns: str | None = None,
                   memstore_bytes: int = 1 << 30) -> tuple[ThrowawayCeph, dict[str, Any]]:
    """A throwaway Ceph in `workdir` (1 mon, 1 mgr, 2 memstore OSDs) whose OSDs belong to
    node1, node2, ...: each is placed under its node's CRUSH host, and OSDs no longer move
    themselves to the machine's host name when they start. Returns it and its lab.json entry.
    `address`, `netns`: where the daemons listen (a lab with network namespaces: the underlay,
    which every node namespace reaches). `memstore_bytes`: each OSD's capacity (in memory)."""
    # the daemons outlive this process (`pvcd lab up` exits); `down()` stops them
    # Two copies, as a cluster that holds VM disks has (at least). With one copy (size 1),
    # Ceph 16.2's read leases can leave a PG whose primary moved to a freshly added OSD
    # "laggy" for good: reads to it wait "for readable" forever, because only a replica's
    # lease ack makes the primary look at its lease again (seen here: `rbd create` hung
    # after an OSD add; with a replica the same op completes at once).
    ceph = ThrowawayCeph(workdir, osds=2, die_with_parent=False, pool_size=2, address=address,
                         netns=netns, memstore_bytes=memstore_bytes)
    ceph.start()
    ceph.ceph(["config", "set", "osd", "osd_crush_update_on_start", "false"])
    tree = json.loads(ceph.ceph(["osd", "tree", "--format", "json"]))
    for item in tree["nodes"]:
        if item["type"] == "osd":
            owner = f"node{item['id'] % nodes + 1}"
            ceph.ceph(["osd", "crush", "set", item["name"], f"{item['crush_weight']:g}",
                       "root=default", f"host={owner}"])
    for item in tree["nodes"]:
        if item["type"] == "host":  # the machine's own host bucket, now empty
            ceph.ceph(["osd", "crush", "rm", item["name"]])
    ceph.wait_healthy()
    # what `ceph-volume` on a node registers new OSDs with (node_ceph_root)
    bootstrap = ceph.workdir / "bootstrap-osd.keyring"
    bootstrap.write_text(ceph.ceph(["auth", "get-or-create", "client.bootstrap-osd", "mon",
                                    "allow profile bootstrap-osd"]))
    bootstrap.chmod(0o600)
    return ceph, {"workdir": str(ceph.workdir), "conf": str(ceph.conf_path),
                  "keyring": str(ceph.keyring_path), "bootstrap_keyring": str(bootstrap),
                  "address": address, "netns": netns}


def stop_lab_ceph(workdir: Path, started: ThrowawayCeph | None) -> None:
    """Stop every daemon of the lab's Ceph in `workdir`, those the nodes started too (the state
    file lists them all); `started`: the cluster as this process started it (its children are
    reaped)."""
    try:
        cluster = ThrowawayCeph.load(workdir)
    except CephLabError:
        return  # never started, or already stopped
    if started is not None:
        ours = {(d.name, d.pid): d.process for d in _ceph_daemons(started)}
        for loaded in _ceph_daemons(cluster):
            loaded.process = ours.get((loaded.name, loaded.pid))
    try:
        cluster.stop()
    except CephLabError as exc:
        print(f"pvcd lab: stopping Ceph: {exc}", file=sys.stderr)
    cluster.remove()


def node_ceph_root(folder: Path, ceph: dict[str, Any],
                   node_address: str = "127.0.0.1") -> list[list[str]]:
    """A lab node's own /etc/ceph and /var/lib/ceph (in `folder`), as a Ceph client machine
    has them: `ceph.conf` pointing at the lab's cluster and the bootstrap-osd keyring that
    `ceph-volume` registers OSDs with; the binds that put them in place. `node_address`: where
    the node's own OSDs listen (its cluster network address in a lab with namespaces)."""
    cluster = ThrowawayCeph.load(ceph["workdir"])
    assert cluster.ports is not None
    etc, var = folder / "ceph-etc", folder / "ceph-var"
    for sub in ("bootstrap-osd", "osd", "log", "run", "crash", "tmp"):
        (var / sub).mkdir(parents=True, exist_ok=True)
    etc.mkdir(parents=True, exist_ok=True)
    ports = cluster.ports
    settings = {
        "fsid": cluster.fsid,
        "mon host": mon_addrs(cluster.address, ports),
        "public addr": node_address, "cluster addr": node_address,
        "ms bind port min": str(ports.range_min), "ms bind port max": str(ports.range_max),
        # nothing outside the node's folder (and the mounts): logs, sockets, crashes
        "log file": "/var/lib/ceph/log/$cluster-$name.log",
        "run dir": "/var/lib/ceph/run", "crash dir": "/var/lib/ceph/crash",
        # a small bluestore on a sparse file: a small fixed cache
        "bluestore cache autotune": "false", "bluestore cache size": str(64 << 20),
    }
    (etc / "ceph.conf").write_text(
        "[global]\n" + "".join(f"    {key} = {value}\n" for key, value in settings.items()))
    keyring = var / "bootstrap-osd" / "ceph.keyring"
    keyring.write_text(Path(ceph["bootstrap_keyring"]).read_text())
    keyring.chmod(0o600)
    for path in (var / "osd", var / "log", var / "run", var / "crash", var / "tmp"):
        shutil.chown(path, "ceph", "ceph")  # the OSD daemons drop to user ceph
    return [[str(etc), "/etc/ceph"], [str(var), "/var/lib/ceph"]]


def stop_device_osds(run_dir: Path) -> None:
    """Stop the `ceph-osd` processes a lab node started on devices (pid files in `run_dir`)."""
    launcher = ProcessOsdLauncher(run_dir)
    for osd_id in launcher.pids():
        launcher.stop(osd_id)


def _ceph_daemons(cluster: ThrowawayCeph) -> list[Daemon]:
    return [d for d in (cluster.mon, cluster.mgr, *cluster.osds.values()) if d is not None]
