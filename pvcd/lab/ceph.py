"""A throwaway Ceph cluster on this machine: 1 mon, 1 mgr and N memstore OSDs on 127.0.0.1.

`ThrowawayCeph(workdir).start()` writes its own `ceph.conf` and keyrings into `workdir`, starts
every daemon as our child in the foreground (`ceph-mon -f`, ...), and returns once the cluster is
HEALTH_OK with every PG active+clean. `stop()` stops them all (OSDs first, cleanly) and reaps
them. Nothing is written outside `workdir`; no systemd, no /var/lib/ceph.

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
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pvcd.drivers.host import pid_alive, signal_pid

log = logging.getLogger(__name__)

STATE_FILE = "ceph-lab.json"
CREATED_DIRS = ("mon", "mgr", "osd", "run", "log", "crash")
CREATED_FILES = ("ceph.conf", "ceph.client.admin.keyring", "mon.keyring", "monmap",
                 STATE_FILE + ".tmp")
TOOL_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
PORTS_PER_OSD = 8  # 4 messengers (public, cluster, heartbeat front/back) x (v2, v1)
PORTS_FOR_MGR = 2
_PR_SET_PDEATHSIG = 1
_UNSAFE_PATH_CHARS = set("\n\r#;$=[]")


class CephLabError(RuntimeError):
    """The throwaway cluster could not be started or stopped; the message says what and why."""


@dataclass
class Daemon:
    """One daemon we started: `name` is Ceph's (`mon.a`, `mgr.x`, `osd.0`)."""

    name: str
    pid: int = 0
    log: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)


@dataclass
class CephPorts:
    mon_v2: int
    mon_v1: int
    range_min: int
    range_max: int


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
    ) -> None:
        self.workdir = Path(workdir).resolve()
        if _UNSAFE_PATH_CHARS & set(str(self.workdir)):
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
        self._requested = (mon_port, mon_v1_port, port_range)
        self.ports: CephPorts | None = None
        self.fsid = ""
        self.mon: Daemon | None = None
        self.mgr: Daemon | None = None
        self.osds: dict[int, Daemon] = {}

    # -- what clients need ------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.workdir / "ceph.conf"

    @property
    def keyring_path(self) -> Path:
        return self.workdir / "ceph.client.admin.keyring"

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
        _require_tools()
        self.ports = self._choose_ports()
        self.fsid = str(uuid.uuid4())
        for sub in CREATED_DIRS:
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            self._write_conf()
            self._write_keyrings()
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

    def _write_conf(self) -> None:
        assert self.ports is not None
        wd = self.workdir
        mon_addr = f"[v2:127.0.0.1:{self.ports.mon_v2},v1:127.0.0.1:{self.ports.mon_v1}]"
        settings = {
            "global": {
                "fsid": self.fsid,
                "mon host": mon_addr,
                "mon initial members": "a",
                "public addr": "127.0.0.1",
                "public network": "127.0.0.0/8",
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
                "ms bind port min": str(self.ports.range_min),
                "ms bind port max": str(self.ports.range_max),
                "run dir": f"{wd}/run",
                "log file": f"{wd}/log/$name.log",
                "mon cluster log file": f"{wd}/log/cluster.log",
                "crash dir": f"{wd}/crash",
                "paxos propose interval": "0.05",
                "osd pool default size": str(self.pool_size),
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
                "memstore device bytes": str(self.memstore_bytes),
                "osd fast shutdown": "false",
                # memstore reports itself rotational: no sleeping between recovery ops
                "osd recovery sleep hdd": "0",
                "osd recovery sleep hybrid": "0",
            },
            "client.admin": {"keyring": str(self.keyring_path)},
        }
        lines = []
        for section, values in settings.items():
            lines.append(f"[{section}]")
            lines += [f"    {key} = {value}" for key, value in values.items()]
            lines.append("")
        self.conf_path.write_text("\n".join(lines))

    def _write_keyrings(self) -> None:
        admin = _keyring_section("client.admin", _gen_key(), {
            "mds": "allow *", "mgr": "allow *", "mon": "allow *", "osd": "allow *"})
        mgr = _keyring_section("mgr.x", _gen_key(), {
            "mds": "allow *", "mon": "allow profile mgr", "osd": "allow *"})
        mon = _keyring_section("mon.", _gen_key(), {"mon": "allow *"})
        _write_secret(self.keyring_path, admin)
        (self.workdir / "mgr" / "x").mkdir(parents=True, exist_ok=True)
        _write_secret(self.workdir / "mgr" / "x" / "keyring", mgr)
        # the mon learns every key it must know from the keyring given to its mkfs
        _write_secret(self.workdir / "mon.keyring", mon + admin + mgr)

    def _mkfs_mon(self) -> None:
        assert self.ports is not None
        monmap = self.workdir / "monmap"
        addrs = f"[v2:127.0.0.1:{self.ports.mon_v2},v1:127.0.0.1:{self.ports.mon_v1}]"
        _tool(["monmaptool", "--create", "--clobber", "--fsid", self.fsid, "--addv", "a", addrs,
               str(monmap)])
        _tool(["ceph-mon", "--conf", str(self.conf_path), "--mkfs", "-i", "a",
               "--monmap", str(monmap), "--keyring", str(self.workdir / "mon.keyring")])

    def add_memstore_osd(self, wait: bool = True, timeout: float = 60.0) -> int:
        """Create, register and start one more memstore OSD; return its id.

        With `wait`, return once it is up and in and the cluster is healthy again (PGs that move
        to the new OSD are backfilled first).
        """
        osd_uuid = str(uuid.uuid4())
        key = _gen_key()
        secrets_file = self.workdir / "run" / f"osd-{osd_uuid}.json"
        _write_secret(secrets_file, json.dumps({"cephx_secret": key}))
        try:
            out = self.ceph(["osd", "new", osd_uuid, "-i", str(secrets_file)])
        finally:
            secrets_file.unlink(missing_ok=True)
        osd_id = int(out.strip())
        folder = self.workdir / "osd" / str(osd_id)
        folder.mkdir(parents=True, exist_ok=True)
        _write_secret(folder / "keyring", _keyring_section(f"osd.{osd_id}", key, {}))
        _tool(["ceph-osd", "--conf", str(self.conf_path), "-i", str(osd_id), "--mkfs",
               "--osd-uuid", osd_uuid])
        self.osds[osd_id] = self._spawn(f"osd.{osd_id}", ["ceph-osd", "-f", "-i", str(osd_id)])
        self._save()
        log.info("ceph lab osd added osd=%d uuid=%s", osd_id, osd_uuid)
        if wait:
            self.wait_healthy(timeout)
        return osd_id

    def _spawn(self, name: str, argv: list[str]) -> Daemon:
        out = self.workdir / "log" / f"{name}.out"
        preexec = _die_with_parent if self.die_with_parent else None
        with open(out, "ab") as stream:
            process = subprocess.Popen(
                [*argv, "--conf", str(self.conf_path)],
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
        problems = _stop_all([daemon], timeout)
        self._save()
        if problems:
            raise CephLabError("; ".join(problems))
        log.info("ceph lab osd stopped osd=%d", osd_id)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every daemon we started (OSDs first, while the mon can still hear their
        shutdown), reap them and forget the state file. Raise if one needed SIGKILL."""
        problems = _stop_all(list(self.osds.values()), timeout)
        problems += _stop_all([d for d in (self.mgr, self.mon) if d is not None], timeout)
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
        return _tool(["ceph", *self.cluster_args, "--connect-timeout", connect, *args],
                     timeout=timeout)


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


def _stop_all(daemons: list[Daemon], timeout: float) -> list[str]:
    """SIGTERM every daemon (a clean shutdown), wait, SIGKILL stragglers, reap our children;
    return a line for each daemon that did not stop cleanly."""
    for daemon in daemons:
        signal_pid(daemon.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    problems = []
    for daemon in daemons:
        while _running(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = _running(daemon)
        if killed:
            signal_pid(daemon.pid, signal.SIGKILL)
            problems.append(f"{daemon.name} (pid {daemon.pid}) did not stop within "
                            f"{timeout:.0f} s and was killed (a memstore OSD lost its data); "
                            f"see {daemon.log}")
        if daemon.process is None:
            continue  # not our child (`load`ed from the state file): PID 1 reaps it
        try:
            code = daemon.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            problems.append(f"{daemon.name} (pid {daemon.pid}) could not be reaped")
            continue
        if not killed and code not in (0, -signal.SIGTERM):
            problems.append(f"{daemon.name} exited with {code} on SIGTERM; see {daemon.log}")
    return problems


def _running(daemon: Daemon) -> bool:
    if daemon.process is not None:
        return daemon.process.poll() is None
    return pid_alive(daemon.pid)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the process that started us dies, so a
    crashed test run leaves no daemons behind."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _tool(argv: list[str], timeout: float = TOOL_TIMEOUT) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise CephLabError(f"`{' '.join(argv)}` timed out after {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise CephLabError(f"{argv[0]} is not installed") from exc
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise CephLabError(f"`{' '.join(argv)}` failed ({result.returncode}): {detail}")
    return result.stdout


def _gen_key() -> str:
    return _tool(["ceph-authtool", "--gen-print-key"]).strip()


def _keyring_section(entity: str, key: str, caps: dict[str, str]) -> str:
    lines = [f"[{entity}]", f"    key = {key}"]
    lines += [f'    caps {service} = "{cap}"' for service, cap in sorted(caps.items())]
    return "\n".join(lines) + "\n"


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


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


def _require_tools() -> None:
    missing = [tool for tool in ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "monmaptool",
                                 "ceph-authtool") if shutil.which(tool) is None]
    if missing:
        raise CephLabError(f"missing {', '.join(missing)}: apt-get install --no-install-recommends "
                           "ceph-mon ceph-mgr ceph-osd ceph-common")


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
