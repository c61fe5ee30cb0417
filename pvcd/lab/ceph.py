"""A throwaway Ceph cluster on this machine: 1 mon, 1 mgr and N memstore OSDs on 127.0.0.1
(or on another address, inside a network namespace: `address`, `netns`).

`ThrowawayCeph(workdir).start()` writes its own `ceph.conf` and keyrings into `workdir`, starts
every daemon as our child in the foreground (`ceph-mon -f`, ...), and returns once the cluster is
HEALTH_OK with every PG active+clean. `stop()` stops them all (OSDs first, cleanly) and reaps
them. Nothing is written outside `workdir`; no systemd, no /var/lib/ceph.

The files it writes and why its configuration looks the way it does: `pvcd.lab.ceph_conf`;
running the tools and stopping the daemons: `pvcd.lab.ceph_daemons`. This module owns the
cluster's lifecycle (bootstrap, adding and stopping OSDs, readiness, the state file another
process stops it from) and the `python -m pvcd.lab.ceph up|down` command.

Ports: the mon listens on two fixed ports (v2 and v1, chosen free at random unless given); the
mgr and OSDs take free ports in `port_range` (Ceph skips ports in use, so several clusters can
share a range). A taken mon port, or a range without enough free ports, fails before anything
starts, with a message that says which.

Races: the OSD map, the PG stats (from the mgr) and `rados df` are updated at different times.
`wait_healthy` judges from `ceph status` alone (HEALTH_OK, a mgr, OSD counts, PG states), a
summary that can lag the map by a second: good enough to know the lab is up, not to decide that
data is safe (`CephDriver.remove_osd_safely` checks the map itself). A stopped OSD is marked down
once it told the mon on shutdown (clean stop) or after the heartbeat grace (crash).

Processes: every daemon is our child in its own session (a terminal's Ctrl-C does not reach it),
reaped by `stop()`; none forks helpers, so no `tini` is needed. With `die_with_parent` (the
default) each one gets SIGTERM when the *thread* that started it exits (PR_SET_PDEATHSIG), so a
killed test run leaves nothing behind: start the lab and add OSDs from a long-lived thread.
`python -m pvcd.lab.ceph up` turns that off so the cluster outlives the command.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pvcd.lab.ceph_conf import (
    ADMIN_KEYRING_FILE,
    CONF_FILE,
    UNSAFE_PATH_CHARS,
    CephPorts,
    gen_key,
    keyring_section,
    mon_addrs,
    write_conf,
    write_keyrings,
    write_secret,
)
from pvcd.lab.ceph_daemons import (
    STOP_TIMEOUT,
    TOOL_TIMEOUT,
    CephLabError,
    Daemon,
    die_with_parent,
    require_tools,
    run_tool,
    stop_all,
)

log = logging.getLogger(__name__)

STATE_FILE = "ceph-lab.json"
CREATED_DIRS = ("mon", "mgr", "osd", "run", "log", "crash")
CREATED_FILES = (CONF_FILE, ADMIN_KEYRING_FILE, "mon.keyring", "monmap", STATE_FILE + ".tmp")
PORTS_PER_OSD = 8  # 4 messengers (public, cluster, heartbeat front/back) x (v2, v1)
PORTS_FOR_MGR = 2


class ThrowawayCeph:
    """A Ceph cluster whose whole state lives in `workdir` (conf, keyrings, stores, logs)."""

    def __init__(
        self,
        workdir: Path | str,
        osds: int = 2,
        mon_port: int | None = None,
        mon_v1_port: int | None = None,
        port_range: tuple[int, int] = (6800, 7300),
        memstore_bytes: int = 1 << 30,
        die_with_parent: bool = True,
        pool_size: int = 1,
        address: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        if UNSAFE_PATH_CHARS & set(str(self.workdir)):
            raise CephLabError(f"workdir {self.workdir} contains a character ceph.conf cannot "
                               "hold (newline, #, ;, $, =, [ or ])")
        if osds < 1:
            raise CephLabError("a cluster needs at least one OSD")
        if not 1024 <= port_range[0] <= port_range[1] <= 65535:
            raise CephLabError(f"port range {port_range} is invalid: 1024 <= min <= max <= 65535")
        if not 1 <= pool_size <= osds:
            raise CephLabError(f"pool_size {pool_size} needs 1 to {osds} (the OSD count) copies")
        self.initial_osds = osds
        self.pool_size = pool_size
        self.memstore_bytes = memstore_bytes
        self.die_with_parent = die_with_parent
        # where every daemon binds, and the network namespace they (and the tools) run in:
        # a lab with network namespaces puts the cluster on its underlay, next to ZooKeeper,
        # where the node namespaces reach it (their 127.0.0.1 is their own)
        self.address = address
        self.netns = netns
        self._requested = (mon_port, mon_v1_port, port_range)
        self.ports: CephPorts | None = None
        self.fsid = ""
        self.mon: Daemon | None = None
        self.mgr: Daemon | None = None
        self.osds: dict[int, Daemon] = {}

    # -- what clients need ------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.workdir / CONF_FILE

    @property
    def keyring_path(self) -> Path:
        return self.workdir / ADMIN_KEYRING_FILE

    @property
    def cluster_args(self) -> list[str]:
        """Arguments that point `ceph`, `rbd` and `rados` at this cluster as client.admin."""
        return ["--conf", str(self.conf_path), "--keyring", str(self.keyring_path)]

    @property
    def env(self) -> dict[str, str]:
        """Environment additions with the same effect (`ceph.conf` names the admin keyring)."""
        return {"CEPH_CONF": str(self.conf_path)}

    @property
    def osd_ids(self) -> list[int]:
        return sorted(self.osds)

    # -- start --------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Bootstrap and start the cluster; return when HEALTH_OK with all PGs active+clean."""
        if (self.workdir / STATE_FILE).exists():
            raise CephLabError(f"a cluster is already described in {self.workdir / STATE_FILE}; "
                               "stop it first (`python -m pvcd.lab.ceph down`)")
        if self.conf_path.exists():
            raise CephLabError(f"{self.workdir} holds a stopped cluster (memstore data does not "
                               "survive a restart of the whole cluster): remove() it first")
        require_tools()
        self.ports = self._choose_ports()
        self.fsid = str(uuid.uuid4())
        for sub in CREATED_DIRS:
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            write_conf(self.workdir, self.fsid, self.ports, self.pool_size, self.memstore_bytes,
                       self.address)
            write_keyrings(self.workdir)
            self._mkfs_mon()
            self.mon = self._spawn("mon.a", ["ceph-mon", "-f", "-i", "a"])
            self.mgr = self._spawn("mgr.x", ["ceph-mgr", "-f", "-i", "x"])
            self._save()
            for _ in range(self.initial_osds):
                self.add_memstore_osd(wait=False)
            self.wait_healthy(max(1.0, timeout - (time.monotonic() - started)))
        except BaseException:
            try:
                self.stop()
            except CephLabError as exc:  # keep the start error as the one raised
                log.warning("ceph lab cleanup after a failed start: %s", exc)
            raise
        log.info("ceph lab up workdir=%s fsid=%s osds=%d seconds=%.1f", self.workdir,
                 self.fsid, len(self.osds), time.monotonic() - started)

    def _choose_ports(self) -> CephPorts:
        mon_port, mon_v1_port, (low, high) = self._requested
        v2 = mon_port if mon_port is not None else _free_port()
        v1 = mon_v1_port if mon_v1_port is not None else _free_port(avoid={v2})
        for port, what in ((v2, "mon (msgr2)"), (v1, "mon (msgr1)")):
            if low <= port <= high:
                raise CephLabError(f"{what} port {port} lies in the daemon port range "
                                   f"{low}-{high}; pick one outside it")
            if not _port_free(port):
                raise CephLabError(f"{what} port {port} on 127.0.0.1 is in use (another Ceph "
                                   "cluster?); pass a free one (mon_port=/mon_v1_port=)")
        needed = PORTS_FOR_MGR + PORTS_PER_OSD * (self.initial_osds + 2)
        free = sum(1 for port in range(low, high + 1) if _port_free(port))
        if free < needed:
            raise CephLabError(f"only {free} free ports in {low}-{high} on 127.0.0.1; the mgr and "
                               f"{self.initial_osds} OSDs need about {needed}: pass port_range=")
        return CephPorts(v2, v1, low, high)

    def _mkfs_mon(self) -> None:
        assert self.ports is not None
        monmap = self.workdir / "monmap"
        addrs = mon_addrs(self.address, self.ports)
        run_tool(["monmaptool", "--create", "--clobber", "--fsid", self.fsid, "--addv", "a", addrs,
                   str(monmap)])
        run_tool(["ceph-mon", "--conf", str(self.conf_path), "--mkfs", "-i", "a",
                   "--monmap", str(monmap), "--keyring", str(self.workdir / "mon.keyring")])

    def add_memstore_osd(self, wait: bool = True, timeout: float = 60.0) -> int:
        """Create, register and start one more memstore OSD; return its id.

        With `wait`, return once it is up and in and the cluster is healthy again (PGs that move
        to the new OSD are backfilled first).
        """
        osd_uuid = str(uuid.uuid4())
        key = gen_key()
        secrets_file = self.workdir / "run" / f"osd-{osd_uuid}.json"
        write_secret(secrets_file, json.dumps({"cephx_secret": key}))
        try:
            out = self.ceph(["osd", "new", osd_uuid, "-i", str(secrets_file)])
        finally:
            secrets_file.unlink(missing_ok=True)
        osd_id = int(out.strip())
        folder = self.workdir / "osd" / str(osd_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_secret(folder / "keyring", keyring_section(f"osd.{osd_id}", key, {}))
        run_tool(self.in_netns(["ceph-osd", "--conf", str(self.conf_path), "-i", str(osd_id),
                                "--mkfs", "--osd-uuid", osd_uuid]))
        self.osds[osd_id] = self._spawn(f"osd.{osd_id}", ["ceph-osd", "-f", "-i", str(osd_id)])
        self._save()
        log.info("ceph lab osd added osd=%d uuid=%s", osd_id, osd_uuid)
        if wait:
            self.wait_healthy(timeout)
        return osd_id

    def _spawn(self, name: str, argv: list[str]) -> Daemon:
        out = self.workdir / "log" / f"{name}.out"
        preexec = die_with_parent if self.die_with_parent else None
        with open(out, "ab") as stream:
            process = subprocess.Popen(
                self.in_netns([*argv, "--conf", str(self.conf_path)]),
                stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=preexec,
            )
        return Daemon(name, process.pid, str(self.workdir / "log" / f"{name}.log"), process)

    # -- readiness ----------------------------------------------------------------------------

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """`ceph status` as JSON."""
        text = self.ceph(["status", "--format", "json"], timeout=timeout)
        doc: dict[str, Any] = json.loads(text)
        return doc

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait for HEALTH_OK, a mgr, every OSD we run up and in, and all PGs active+clean."""
        deadline = time.monotonic() + timeout
        problems = ["no answer from the mon yet"]
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                status = self.status(timeout=max(1.0, min(10.0, deadline - time.monotonic())))
            except (CephLabError, ValueError) as exc:
                problems = [f"`ceph status` failed: {exc}"]
            else:
                problems = readiness_problems(status, expected_osds=len(self.osds))
                if not problems:
                    return
            time.sleep(0.2)
        raise CephLabError(f"Ceph in {self.workdir} not ready after {timeout:.0f} s: "
                           + "; ".join(problems) + f" (logs in {self.workdir / 'log'})")

    def _check_alive(self) -> None:
        for daemon in self._daemons():
            process = daemon.process
            if process is not None and process.poll() is not None:
                out = Path(daemon.log).with_suffix(".out")
                raise CephLabError(f"{daemon.name} exited with {process.returncode}; "
                                   f"see {daemon.log} and {out}")

    # -- stop -----------------------------------------------------------------------------------

    def stop_osd(self, osd_id: int, timeout: float = STOP_TIMEOUT) -> None:
        """Stop one OSD cleanly (SIGTERM: a full shutdown that keeps memstore's data)."""
        daemon = self.osds.pop(osd_id, None)
        if daemon is None:
            raise CephLabError(f"osd.{osd_id} is not one of this lab's OSDs ({self.osd_ids})")
        problems = stop_all([daemon], timeout)
        self._save()
        if problems:
            raise CephLabError("; ".join(problems))
        log.info("ceph lab osd stopped osd=%d", osd_id)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every daemon we started (OSDs first, while the mon can still hear their
        shutdown), reap them and forget the state file. Raise if one needed SIGKILL."""
        problems = stop_all(list(self.osds.values()), timeout)
        problems += stop_all([d for d in (self.mgr, self.mon) if d is not None], timeout)
        self.osds.clear()
        self.mon = self.mgr = None
        (self.workdir / STATE_FILE).unlink(missing_ok=True)
        if problems:
            raise CephLabError("; ".join(problems))
        log.info("ceph lab down workdir=%s", self.workdir)

    def remove(self) -> None:
        """Delete what `start` created in `workdir` (and `workdir` itself if left empty)."""
        if (self.workdir / STATE_FILE).exists():
            raise CephLabError(f"the cluster in {self.workdir} is still running: stop() it first")
        for name in CREATED_DIRS:
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        for name in CREATED_FILES:
            (self.workdir / name).unlink(missing_ok=True)
        if self.workdir.exists() and not any(self.workdir.iterdir()):
            self.workdir.rmdir()

    def _daemons(self) -> list[Daemon]:
        return [d for d in (self.mon, self.mgr) if d is not None] + list(self.osds.values())

    # -- persistence (for `python -m pvcd.lab.ceph down` from another process) -------------

    def _save(self) -> None:
        doc = {
            "fsid": self.fsid,
            "ports": asdict(self.ports) if self.ports else None,
            "conf": str(self.conf_path),
            "keyring": str(self.keyring_path),
            "address": self.address,
            "netns": self.netns,
            "daemons": [{"name": d.name, "pid": d.pid, "log": d.log} for d in self._daemons()],
        }
        tmp = self.workdir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(self.workdir / STATE_FILE)

    @classmethod
    def load(cls, workdir: Path | str) -> ThrowawayCeph:
        """The cluster described by `workdir`'s state file (its daemons not our children)."""
        lab = cls(workdir)
        path = lab.workdir / STATE_FILE
        if not path.exists():
            raise CephLabError(f"no throwaway Ceph in {lab.workdir} (no {STATE_FILE})")
        doc = json.loads(path.read_text())
        lab.fsid = doc["fsid"]
        lab.address = doc.get("address", "127.0.0.1")
        lab.netns = doc.get("netns")
        lab.ports = CephPorts(**doc["ports"]) if doc.get("ports") else None
        for entry in doc["daemons"]:
            daemon = Daemon(entry["name"], entry["pid"], entry["log"])
            kind, _, ident = daemon.name.partition(".")
            if kind == "mon":
                lab.mon = daemon
            elif kind == "mgr":
                lab.mgr = daemon
            else:
                lab.osds[int(ident)] = daemon
        return lab

    # -- running the tools ----------------------------------------------------------------------

    def ceph(self, args: Sequence[str], timeout: float = TOOL_TIMEOUT) -> str:
        """Run `ceph <args>` against this cluster; stdout, or CephLabError with stderr."""
        connect = str(max(1, int(timeout)))
        return run_tool(self.in_netns(["ceph", *self.cluster_args, "--connect-timeout", connect,
                                       *args]), timeout=timeout)

    def in_netns(self, argv: list[str]) -> list[str]:
        """`argv` run in the cluster's network namespace (as is without one): `rbd`, `rados`
        and `ceph` calls from outside it must go through this."""
        if self.netns is None:
            return argv
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]


def readiness_problems(status: dict[str, Any], expected_osds: int) -> list[str]:
    """What keeps a cluster from being ready, from `ceph status --format json` ([] if nothing)."""
    problems = []
    health = status.get("health", {})
    if health.get("status") != "HEALTH_OK":
        checks = ", ".join(
            f"{name}: {check.get('summary', {}).get('message', '')}"
            for name, check in sorted(health.get("checks", {}).items())
        )
        problems.append(f"health {health.get('status')} ({checks or 'no details'})")
    if not status.get("mgrmap", {}).get("available", False):
        problems.append("no mgr available")
    osdmap = status.get("osdmap", {})
    up, in_ = osdmap.get("num_up_osds", 0), osdmap.get("num_in_osds", 0)
    if up != expected_osds or in_ != expected_osds:
        problems.append(f"OSDs up {up}, in {in_}, expected {expected_osds}")
    pgmap = status.get("pgmap", {})
    unclean = {s["state_name"]: s["count"] for s in pgmap.get("pgs_by_state", [])
               if s["state_name"] != "active+clean"}
    if unclean:
        problems.append(f"PGs not active+clean: {unclean}")
    return problems


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port(avoid: set[int] | None = None) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in (avoid or set()):
            return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvcd.lab.ceph",
                                     description="a throwaway Ceph cluster in one folder")
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--osds", type=int, default=2)
    parser.add_argument("--mon-port", type=int, default=None)
    parser.add_argument("--mon-v1-port", type=int, default=None)
    parser.add_argument("--port-range", default="6800-7300",
                        help="ports the mgr and OSDs may bind (default 6800-7300)")
    parser.add_argument("--keep", action="store_true",
                        help="down: keep the folder's files (logs) instead of removing them")
    args = parser.parse_args(argv)
    low, _, high = args.port_range.partition("-")
    if not (low.isdigit() and high.isdigit()):
        parser.error(f"--port-range {args.port_range!r}: use MIN-MAX, e.g. 6800-7300")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "up":
            lab = ThrowawayCeph(args.workdir, osds=args.osds, mon_port=args.mon_port,
                                mon_v1_port=args.mon_v1_port, port_range=(int(low), int(high)),
                                die_with_parent=False)
            lab.start()
            print(f"export CEPH_CONF={lab.conf_path}")
        else:
            lab = ThrowawayCeph.load(args.workdir)
            lab.stop()
            if not args.keep:
                lab.remove()
    except CephLabError as exc:
        print(f"pvcd.lab.ceph: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
