"""Real libvirtd daemons for the QEMU lab: one per lab node, all on one machine.

libvirtd insists on fixed paths (`/etc/libvirt/qemu.conf`, `/run/libvirt`, `/var/lib/libvirt`,
...), so two of them would share their state. Each instance therefore runs in a mount namespace of
its own (`unshare --mount --propagation private`) with those five folders bind-mounted from
`<workdir>/<name>/`. Nothing is mounted in the caller's namespace, and the namespace (with its
mounts) disappears with its last process.

The process tree of an instance, all in that namespace:

    unshare -> python -m pvcd.lab.mountns (bind mounts) -> tini -s -+- libvirtd
                                                                     +- qemu (daemonized)

`unshare` and the mount helper exec into `tini` (one pid: `tini_pid`). QEMU daemonizes, so tini,
a child subreaper, becomes its parent and reaps it at once; the machine's PID 1 reaps only every
~1.2 s, which makes every `destroy()` slow (docs/lab-qemu.md).

The sockets live in `<workdir>/<name>/sock`, a path that is the same in every namespace, so
clients and the *other* instances (peer-to-peer migration) reach an instance by path.

Settings and why (see docs/lab-qemu.md): a distinct `host_uuid` per instance (libvirt refuses a
migration to "the same host" otherwise); QEMU as root without a security driver, cgroups, private
/dev namespaces or virtlogd (none of them work or exist here); a distinct migration port range per
instance; the migration stream on 127.0.0.1 only (`migration_params`).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvcd.drivers.host import pid_alive, signal_pid
from pvcd.lab import mountns
from pvcd.lab.libvirtd_files import (
    BIND_TARGETS,
    MIGRATION_PORT_BASE,
    MIGRATION_PORTS_PER_NODE,
    UNIX_PATH_MAX,
    InstancePaths,
    libvirtd_conf,
    qemu_conf,
)
from pvcd.lab.proctree import (
    children,
    command_name,
    descendants,
    mount_namespace,
    processes_in_namespace,
)
from pvcd.lab.zookeeper import free_port

COMMAND_TIMEOUT = 10.0
DESTROY_TIMEOUT = 5.0


class LibvirtdError(RuntimeError):
    """A lab libvirtd did not start or did not stop cleanly."""


@dataclass
class LibvirtdInstance:
    """One lab node's libvirtd. `workdir` is the lab's folder; the instance uses
    `workdir/<name>/`. Peers reach it over its unix socket, or over `qemu+tcp` on 127.0.0.1 when
    `tcp_port` is given."""

    name: str
    workdir: Path
    migration_ports: tuple[int, int]
    tcp_port: int | None = None
    # None: the one this instance had before (kept in its folder), else a new one
    host_uuid: str | None = None
    # the network namespace it runs in (a lab node's, whose bridges its guests' NICs join);
    # None: the caller's
    netns: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _tini_pid: int = field(default=0, repr=False)
    # Every mount namespace this instance has run in since its last stop (a libvirtd that died
    # leaves its QEMU processes running in the old one).
    _namespaces: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.paths = InstancePaths(self.workdir.resolve() / self.name)
        if len(str(self.paths.socket)) > UNIX_PATH_MAX:
            raise LibvirtdError(
                f"socket path {self.paths.socket} is longer than {UNIX_PATH_MAX} bytes: "
                "use a shorter workdir"
            )
        if self.host_uuid is None:
            try:
                self.host_uuid = self.paths.host_uuid_file.read_text().strip()
            except OSError:
                self.host_uuid = str(uuid.uuid4())
        self._adopt()

    def _adopt(self) -> None:
        """Take over the instance described by its state file, if any: a lab started by one
        process is stopped by another (`pvcd lab down`)."""
        try:
            doc = json.loads(self.paths.state_file.read_text())
        except (OSError, ValueError):
            return
        self._namespaces = set(doc["namespaces"])
        self._tini_pid = int(doc["tini_pid"])
        if self.running():
            self.tcp_port = doc["tcp_port"]
            self.migration_ports = (doc["migration_ports"][0], doc["migration_ports"][1])
            self.host_uuid = doc["host_uuid"]

    def _save_state(self) -> None:
        self.paths.state_file.write_text(json.dumps({
            "tini_pid": self._tini_pid, "namespaces": sorted(self._namespaces),
            "host_uuid": self.host_uuid, "tcp_port": self.tcp_port,
            "migration_ports": list(self.migration_ports),
        }))

    @property
    def uri(self) -> str:
        """The client URI (from any mount namespace on this machine)."""
        return f"qemu:///system?socket={self.paths.socket}"

    @property
    def peer_uri(self) -> str:
        """The URI another instance's libvirtd uses to reach this one (peer-to-peer migration)."""
        if self.tcp_port is not None:
            return f"qemu+tcp://127.0.0.1:{self.tcp_port}/system"
        # `+unix` forces the remote driver: inside a libvirtd, plain qemu:///system would open
        # that daemon's own QEMU driver and "migrate to the same host".
        return f"qemu+unix:///system?socket={self.paths.socket}"

    def migration_params(self) -> dict[str, str]:
        """Parameters for `migrate3`/`migrateToURI3` with this instance as the destination: the
        incoming QEMU listens on loopback only, and the source connects there (by default it would
        listen on every address and be reached at the machine's hostname, which need not resolve
        to a local address). qemu.conf cannot say this: libvirt rejects local addresses in
        `migration_address`/`migration_host`."""
        libvirt = _libvirt()
        return {
            libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1",
            libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "127.0.0.1",
        }

    @property
    def tini_pid(self) -> int:
        return self._tini_pid

    @property
    def pid(self) -> int:
        """libvirtd's pid (0 when not running)."""
        if not self.running():
            return 0
        for child in children(self.tini_pid):  # libvirtd, and QEMU processes
            if command_name(child) == "libvirtd":
                return child
        return 0

    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        # adopted: the pid must still be tini in our namespace, not a reused pid
        return (pid_alive(self._tini_pid)
                and mount_namespace(self._tini_pid) in self._namespaces)

    # -- start ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start libvirtd; return once a client can connect and the QEMU driver is ready.

        Domains defined before survive a stop/start (like a node reboot: running guests do not).
        A start after libvirtd died without `stop()` finds guests still running and reconnects,
        as after a libvirtd restart."""
        if self.running():
            return
        _check_host()
        self._prepare()
        argv = mountns.wrap(
            [(self.paths.bind_source(key), target) for key, target in BIND_TARGETS.items()],
            ["tini", "-s", "--", "libvirtd", "--pid-file", str(self.paths.pid_file),
             *(["--listen"] if self.tcp_port is not None else [])])
        if self.netns is not None:  # nsenter execs: the pid stays the one we start
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        with open(self.paths.console_log, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=_child_env(),
            )
        self._tini_pid = self.process.pid
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _prepare(self) -> None:
        for key in BIND_TARGETS:
            self.paths.bind_source(key).mkdir(parents=True, exist_ok=True)
        self.paths.sock_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.paths.sock_dir.iterdir():
            stale.unlink()
        assert self.host_uuid is not None  # set in __post_init__
        self.paths.host_uuid_file.write_text(self.host_uuid + "\n")
        etc = self.paths.bind_source("etc")
        (etc / "libvirtd.conf").write_text(
            libvirtd_conf(self.paths, self.host_uuid, self.tcp_port))
        (etc / "qemu.conf").write_text(qemu_conf(self.migration_ports))
        # Mount points: empty folders, as libvirt-daemon-system would create them.
        for target in BIND_TARGETS.values():
            Path(target).mkdir(parents=True, exist_ok=True)

    def _wait_ready(self, timeout: float) -> None:
        libvirt = _libvirt()
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if not self.running():
                raise LibvirtdError(f"libvirtd {self.name} exited during start: "
                                    f"{self._log_tail()}")
            if self.paths.socket.exists():
                try:
                    conn = libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    last_error = str(exc)
                else:
                    try:
                        # The QEMU driver probes QEMU (~0.6 s, cached under /var/cache/libvirt)
                        # on first use: pay it here, not in the first define or migration.
                        conn.getDomainCapabilities(None, "x86_64", "pc", "qemu")
                    finally:
                        conn.close()
                    self._namespaces.add(mount_namespace(self.tini_pid))
                    self._save_state()
                    return
            time.sleep(0.02)
        raise LibvirtdError(f"libvirtd {self.name} not accepting connections after {timeout}s "
                            f"({last_error}): {self._log_tail()}")

    def _log_tail(self, lines: int = 3) -> str:
        """The last errors libvirtd logged (its start always logs a few harmless ones: no D-Bus,
        no DMI data)."""
        text = []
        for log in (self.paths.console_log, self.paths.daemon_log):
            try:
                text += log.read_text(errors="replace").splitlines()
            except OSError:
                pass
        errors = [line.split(" : ", 2)[-1] for line in text if " error : " in line]
        return " | ".join(errors[-lines:] or text[-lines:]) or "no log output"

    # -- stop -------------------------------------------------------------------------------

    def stop(self, timeout: float = 20.0) -> None:
        """Destroy the guests, stop libvirtd and every process it started (also QEMU processes
        orphaned by an earlier libvirtd crash), wait until they are dead and so the namespaces
        and their mounts are gone. Clears the instance's /run/libvirt, as a reboot would.
        Idempotent."""
        deadline = time.monotonic() + timeout
        killed: set[int] = set()
        if self.running():
            # A hung libvirtd must not hang the stop: its QEMU processes are killed below anyway.
            destroyer = threading.Thread(target=self._destroy_guests, daemon=True,
                                         name=f"libvirtd-{self.name}-destroy")
            destroyer.start()
            destroyer.join(timeout=min(DESTROY_TIMEOUT, max(0.1, deadline - time.monotonic())))
            daemon = self.pid
            # QEMU daemonizes: its parent is tini, not libvirtd, and libvirtd leaves it running
            # when it exits. Kill whatever survived the destroy before libvirtd goes.
            for pid in descendants(self.tini_pid):
                if pid != daemon:
                    signal_pid(pid, signal.SIGKILL)
                    killed.add(pid)
            if daemon:
                signal_pid(daemon, signal.SIGTERM)  # tini exits with its child
            if not self._wait_tini_exit(deadline):
                for pid in [*descendants(self.tini_pid), self.tini_pid]:
                    signal_pid(pid, signal.SIGKILL)
                    killed.add(pid)
                self._wait_tini_exit(time.monotonic() + COMMAND_TIMEOUT)
        for namespace in sorted(self._namespaces):
            killed |= self._sweep_namespace(namespace, deadline)
        self._wait_dead(killed, deadline)
        self._namespaces.clear()
        self.process = None
        self._tini_pid = 0
        for path in self.paths.sock_dir.glob("*"):
            path.unlink(missing_ok=True)
        self.paths.pid_file.unlink(missing_ok=True)
        self.paths.state_file.unlink(missing_ok=True)
        run = self.paths.bind_source("run")
        if run.exists():
            shutil.rmtree(run)

    def _wait_tini_exit(self, deadline: float) -> bool:
        if self.process is not None:  # our child: reap it
            try:
                self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
            return True
        while self.running():  # adopted: someone else reaps it
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _destroy_guests(self) -> None:
        libvirt = _libvirt()
        try:
            conn = libvirt.open(self.uri)
            try:
                for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    try:
                        domain.destroy()
                    except libvirt.libvirtError:
                        pass  # its QEMU is killed with libvirtd's other children
            finally:
                conn.close()
        except libvirt.libvirtError:
            pass  # libvirtd is gone or broken: the process sweep does the work

    def _sweep_namespace(self, namespace: str, deadline: float) -> set[int]:
        """Kill whatever is left in one of the instance's mount namespaces (QEMU orphaned by a
        libvirtd that died, re-parented to the machine's PID 1); return the pids killed."""
        killed: set[int] = set()
        if not namespace or namespace == mount_namespace(os.getpid()):
            return killed  # never sweep our own namespace
        while True:
            left = processes_in_namespace(namespace)
            if not left:
                return killed
            if time.monotonic() > deadline:
                raise LibvirtdError(f"libvirtd {self.name}: processes {left} survive in "
                                    f"{namespace}")
            for pid in left:
                signal_pid(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.02)

    def _wait_dead(self, pids: set[int], deadline: float) -> None:
        """Until each killed process has finished exiting. A zombie counts as dead: orphans are
        reaped by the machine's PID 1, on its own schedule."""
        while True:
            alive = sorted(pid for pid in pids if pid_alive(pid))
            if not alive:
                return
            if time.monotonic() > deadline:
                raise LibvirtdError(f"libvirtd {self.name}: processes {alive} do not exit")
            time.sleep(0.01)

    def namespaces(self) -> set[str]:
        """The mount namespaces (`mnt:[inode]`) this instance's processes run in."""
        return set(self._namespaces)

    def connect(self) -> Any:
        """A new `libvirt.virConnect` to this instance."""
        return _libvirt().open(self.uri)


@dataclass
class LibvirtdLab:
    """`size` libvirtd instances `node1..nodeN` under `workdir`, with distinct migration port
    ranges; peers migrate over unix sockets (`transport="unix"`) or qemu+tcp on loopback."""

    workdir: Path
    size: int
    transport: str = "unix"
    port_base: int = MIGRATION_PORT_BASE
    instances: list[LibvirtdInstance] = field(default_factory=list)
    # node name -> the network namespace its libvirtd runs in (a lab with namespaces)
    netns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.transport not in ("unix", "tcp"):
            raise ValueError(f"transport must be 'unix' or 'tcp', not {self.transport!r}")
        if not self.instances:
            for i in range(self.size):
                low = self.port_base + i * MIGRATION_PORTS_PER_NODE
                self.instances.append(LibvirtdInstance(
                    f"node{i + 1}", self.workdir, (low, low + MIGRATION_PORTS_PER_NODE - 1),
                    tcp_port=free_port() if self.transport == "tcp" else None,
                    netns=self.netns.get(f"node{i + 1}"),
                ))

    def start(self, timeout: float = 30.0) -> None:
        """Start all instances (in parallel: each probes QEMU once at start)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        errors: list[BaseException] = []

        def start_one(instance: LibvirtdInstance) -> None:
            try:
                instance.start(timeout)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start_one, args=(i,)) for i in self.instances]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]

    def stop(self) -> None:
        errors: list[BaseException] = []
        for instance in self.instances:
            try:
                instance.stop()
            except LibvirtdError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __getitem__(self, index: int) -> LibvirtdInstance:
        return self.instances[index]

    def __enter__(self) -> LibvirtdLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_host() -> None:
    # libvirt parses its built-in default user before qemu.conf's `user = "root"`: the account
    # must exist even though QEMU never runs as it (libvirt-daemon-system would create it).
    try:
        pwd.getpwnam("libvirt-qemu")
        grp.getgrnam("kvm")
    except KeyError as exc:
        raise LibvirtdError("the libvirt-qemu user or the kvm group is missing "
                            "(libvirtd cannot start without them): run scripts/setup") from exc
    for tool in ("unshare", "tini", "libvirtd", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            raise LibvirtdError(f"{tool} not found: run scripts/setup")


# -- processes ----------------------------------------------------------------------------------


def _libvirt() -> Any:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The mount helper (`python -m pvcd.lab.mountns`) must find the package.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env
