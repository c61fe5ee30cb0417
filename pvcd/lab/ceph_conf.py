"""The throwaway Ceph's files: its `ceph.conf`, its keyrings, and the secrets in them.

Why a module of its own: the configuration is a table of settings, each measured for a reason,
and the keyrings a fixed set of identities; neither depends on how the daemons are started or
stopped (`pvcd.lab.ceph_daemons`) or on the cluster's lifecycle (`pvcd.lab.ceph`). Everything is
written into the cluster's workdir, secrets with mode 0600.

Why the configuration looks the way it does (measured on Debian's 16.2.15; see the platform
notes):
  osd objectstore = memstore       no disk; memstore keeps its data across a clean stop only with
  osd fast shutdown = false        a full shutdown (it dumps its store on umount); SIGKILL loses it
  paxos propose interval = 0.05    ≈ 1 s per map change becomes 20-300 ms
  osd pool default size = 1        one host: the data placement rule picks OSDs, not hosts
  osd crush chooseleaf type = 0    (`pool_size` sets another default; the lab uses 2, see
                                   `pvcd.lab.lab`: a PG with one copy can stay "laggy" forever)
  mgr stats period = 1, mon mgr digest period = 1
                                   usage numbers lag less (they still lag: poll in tests)
  the mgr                          required: without it `rados df` lists no pools and
                                   `ceph osd df` hangs
  auth allow insecure global id reclaim = false, mon warn on pool no redundancy = false,
  osd pool default pg autoscale mode = off
                                   each would keep the cluster out of HEALTH_OK (or change
                                   pg_num behind a test's back)
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from pvcd.lab.ceph_daemons import run_tool

CONF_FILE = "ceph.conf"
ADMIN_KEYRING_FILE = "ceph.client.admin.keyring"
UNSAFE_PATH_CHARS = set("\n\r#;$=[]")  # what a ceph.conf value cannot hold


@dataclass
class CephPorts:
    """The mon's two fixed ports and the range the mgr and OSDs bind in."""

    mon_v2: int
    mon_v1: int
    range_min: int
    range_max: int


def mon_addrs(address: str, ports: CephPorts) -> str:
    """The mon's address vector (`mon host`, the monmap)."""
    return f"[v2:{address}:{ports.mon_v2},v1:{address}:{ports.mon_v1}]"


def write_conf(
    workdir: Path, fsid: str, ports: CephPorts, pool_size: int, memstore_bytes: int,
    address: str = "127.0.0.1",
) -> None:
    """Write `workdir`'s `ceph.conf` for a cluster `fsid` on `address` with `ports`."""
    wd = workdir
    network = ipaddress.ip_network(f"{address}/{8 if address.startswith('127.') else 24}",
                                   strict=False)
    settings = {
        "global": {
            "fsid": fsid,
            "mon host": mon_addrs(address, ports),
            "mon initial members": "a",
            "public addr": address,
            "public network": str(network),
            "auth cluster required": "cephx",
            "auth service required": "cephx",
            "auth client required": "cephx",
            "auth allow insecure global id reclaim": "false",
            "mon warn on insecure global id reclaim allowed": "false",
            "mon warn on pool no redundancy": "false",
            # the host's disk is not the cluster's: warn (HEALTH_WARN) only when it is
            # nearly full, not below Ceph's default 30 % free (seen on CI-sized disks)
            "mon data avail warn": "3",
            "mon data avail crit": "1",
            "ms bind port min": str(ports.range_min),
            "ms bind port max": str(ports.range_max),
            "run dir": f"{wd}/run",
            "log file": f"{wd}/log/$name.log",
            "mon cluster log file": f"{wd}/log/cluster.log",
            "crash dir": f"{wd}/crash",
            "paxos propose interval": "0.05",
            "osd pool default size": str(pool_size),
            "osd pool default min size": "1",
            "osd pool default pg autoscale mode": "off",
            "osd crush chooseleaf type": "0",
            "mon allow pool delete": "true",
            "mgr stats period": "1",
            "mon mgr digest period": "1",
            "mgr initial modules": "",
        },
        # daemons only: clients run concurrently and must not fight over one socket path
        "mon": {"mon data": f"{wd}/mon/$id", "admin socket": f"{wd}/run/$name.asok"},
        "mgr": {"mgr data": f"{wd}/mgr/$id", "keyring": f"{wd}/mgr/$id/keyring",
                "admin socket": f"{wd}/run/$name.asok"},
        "osd": {
            "admin socket": f"{wd}/run/$name.asok",
            "osd data": f"{wd}/osd/$id",
            "keyring": f"{wd}/osd/$id/keyring",
            "osd objectstore": "memstore",
            "memstore device bytes": str(memstore_bytes),
            "osd fast shutdown": "false",
            # memstore reports itself rotational: no sleeping between recovery ops
            "osd recovery sleep hdd": "0",
            "osd recovery sleep hybrid": "0",
        },
        "client.admin": {"keyring": str(workdir / ADMIN_KEYRING_FILE)},
    }
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"    {key} = {value}" for key, value in values.items()]
        lines.append("")
    (workdir / CONF_FILE).write_text("\n".join(lines))


def write_keyrings(workdir: Path) -> None:
    """The admin's, the mgr's and the mon's keyrings; the mon's holds all three keys."""
    admin = keyring_section("client.admin", gen_key(), {
        "mds": "allow *", "mgr": "allow *", "mon": "allow *", "osd": "allow *"})
    mgr = keyring_section("mgr.x", gen_key(), {
        "mds": "allow *", "mon": "allow profile mgr", "osd": "allow *"})
    mon = keyring_section("mon.", gen_key(), {"mon": "allow *"})
    write_secret(workdir / ADMIN_KEYRING_FILE, admin)
    (workdir / "mgr" / "x").mkdir(parents=True, exist_ok=True)
    write_secret(workdir / "mgr" / "x" / "keyring", mgr)
    # the mon learns every key it must know from the keyring given to its mkfs
    write_secret(workdir / "mon.keyring", mon + admin + mgr)


def gen_key() -> str:
    return run_tool(["ceph-authtool", "--gen-print-key"]).strip()


def keyring_section(entity: str, key: str, caps: dict[str, str]) -> str:
    lines = [f"[{entity}]", f"    key = {key}"]
    lines += [f'    caps {service} = "{cap}"' for service, cap in sorted(caps.items())]
    return "\n".join(lines) + "\n"


def write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
