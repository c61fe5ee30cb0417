"""The QEMU lab's building blocks on the real thing: per-node libvirtd instances in their own
mount namespaces, the tiny TCG guest, live migration between the instances, and a stop that
leaves no process, mount or socket behind. libvirt-python is used directly (no ZooKeeper).

Measured times are printed (also without `-s`); docs/lab-qemu.md records typical values.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.domain.errors import BackendError
from pvcd.drivers.libvirt import LibvirtDriver
from pvcd.lab.libvirtd import (
    LibvirtdError,
    LibvirtdInstance,
    LibvirtdLab,
    processes_in_namespace,
)
from pvcd.lab.qemu_guest import (
    GUEST_SERIAL_UP,
    build_guest_kernel,
    qemu_guest_xml,
    read_boot_stamp,
)
from pvcd.lab.zookeeper import free_port

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.needs_root]

MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("the QEMU lab mounts and starts libvirtd: run as root")
    for tool in ("libvirtd", "qemu-system-x86_64", "tini", "unshare", "as", "ld"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/setup"


@pytest.fixture(scope="module")
def report(pytestconfig: pytest.Config) -> Callable[[str, float], None]:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def emit(what: str, seconds: float) -> None:
        with capture.global_and_fixture_disabled():
            print(f"\n  [qemu lab] {what}: {seconds * 1000:.0f} ms", end="")

    return emit


@pytest.fixture(scope="module")
def module_dir() -> Iterator[Path]:
    # Short and world-traversable: unix socket paths are limited to 107 bytes.
    path = Path(f"/tmp/pvcd-qemu-test-{uuid.uuid4().hex[:6]}")
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def kernel(module_dir: Path) -> Path:
    return build_guest_kernel(module_dir / "kernel")


@pytest.fixture(scope="module", params=["unix", "tcp"])
def lab(
    request: pytest.FixtureRequest, module_dir: Path, report: Callable[[str, float], None]
) -> Iterator[LibvirtdLab]:
    """Two instances; peers reach each other over unix sockets or qemu+tcp on loopback."""
    lab = LibvirtdLab(module_dir / request.param, 2, transport=request.param)
    started = time.monotonic()
    lab.start()
    report(f"2 instances started ({request.param}, QEMU probed)", time.monotonic() - started)
    yield lab
    lab.stop()


@pytest.fixture
def guest_name() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def names(conn: Any) -> set[str]:
    """Every domain the instance knows, running or only defined."""
    return {domain.name() for domain in conn.listAllDomains()}


def start_guest(conn: Any, name: str, kernel: Path, serial_log: Path) -> Any:
    domain = conn.defineXML(qemu_guest_xml(name, kernel=kernel, serial_log=serial_log))
    domain.create()
    return domain


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def serial_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def migrate(source: Any, dest: LibvirtdInstance, name: str, mode: str) -> None:
    domain = source.lookupByName(name)
    params = dest.migration_params()
    if mode == "p2p":
        domain.migrateToURI3(dest.peer_uri, params, MIGRATE_FLAGS | libvirt.VIR_MIGRATE_PEER2PEER)
    else:
        dconn = dest.connect()
        try:
            domain.migrate3(dconn, params, MIGRATE_FLAGS)
        finally:
            dconn.close()


def test_instances_are_distinct_hosts(lab: LibvirtdLab) -> None:
    a, b = lab[0], lab[1]
    uuids = set()
    for instance in (a, b):
        conn = instance.connect()
        try:
            caps = ET.fromstring(conn.getCapabilities())
            uuids.add(caps.findtext("host/uuid"))
        finally:
            conn.close()
    assert uuids == {a.host_uuid, b.host_uuid} and len(uuids) == 2
    assert len({*a.namespaces(), *b.namespaces(), os.readlink("/proc/self/ns/mnt")}) == 3
    assert a.pid and b.pid and a.pid != b.pid


def test_guest_boots_quickly_and_shuts_down_gracefully(
    lab: LibvirtdLab, kernel: Path, guest_name: str, report: Callable[[str, float], None]
) -> None:
    conn = lab[0].connect()
    serial = lab.workdir / f"{guest_name}.serial"
    try:
        domain = conn.defineXML(qemu_guest_xml(guest_name, kernel=kernel, serial_log=serial))
        started = time.monotonic()
        domain.create()
        created = time.monotonic() - started
        assert wait_for(lambda: GUEST_SERIAL_UP in serial_text(serial), 5)
        booted = time.monotonic() - started
        report("guest create() returned", created)
        report("guest printed on serial", booted)
        assert domain.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED]
        assert created < 2.0
        assert read_boot_stamp(domain) is not None

        started = time.monotonic()
        domain.shutdown()  # ACPI power button: the guest powers itself off
        assert wait_for(lambda: not domain.isActive(), 5)
        report("graceful shutdown", time.monotonic() - started)
        assert domain.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]
        domain.undefine()
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["p2p", "client"])
def test_live_migration_there_and_back(
    lab: LibvirtdLab,
    kernel: Path,
    guest_name: str,
    mode: str,
    report: Callable[[str, float], None],
) -> None:
    a, b = lab[0], lab[1]
    conn_a, conn_b = a.connect(), b.connect()
    try:
        domain = start_guest(conn_a, guest_name, kernel, lab.workdir / f"{guest_name}.serial")
        assert wait_for(lambda: read_boot_stamp(domain) is not None)
        stamp = read_boot_stamp(domain)
        for source, source_conn, dest, dest_conn in ((a, conn_a, b, conn_b),
                                                     (b, conn_b, a, conn_a)):
            started = time.monotonic()
            migrate(source_conn, dest, guest_name, mode)
            report(f"live migration {source.name}->{dest.name} ({mode}, {lab.transport})",
                   time.monotonic() - started)
            moved = dest_conn.lookupByName(guest_name)
            assert moved.state() == [libvirt.VIR_DOMAIN_RUNNING,
                                     libvirt.VIR_DOMAIN_RUNNING_MIGRATED]
            assert moved.isPersistent()
            assert guest_name not in names(source_conn)
            assert read_boot_stamp(moved) == stamp  # the same memory: not booted again
        conn_a.lookupByName(guest_name).destroy()
        conn_a.lookupByName(guest_name).undefine()
    finally:
        conn_a.close()
        conn_b.close()


def gone_instance(lab: LibvirtdLab, name: str, port_offset: int) -> LibvirtdInstance:
    """A libvirtd that was started and stopped: migrations to it fail. Its 8 migration ports
    start `port_offset` past the second instance's range."""
    low = lab[1].migration_ports[1] + port_offset
    gone = LibvirtdInstance(name, lab.workdir, (low, low + 7),
                            tcp_port=free_port() if lab.transport == "tcp" else None)
    gone.start()
    gone.stop()
    return gone


@pytest.mark.parametrize("mode", ["p2p", "client"])
def test_failed_migration_leaves_guest_running_on_source(
    lab: LibvirtdLab,
    kernel: Path,
    guest_name: str,
    mode: str,
    report: Callable[[str, float], None],
) -> None:
    gone = gone_instance(lab, f"gone-{mode}", 1)
    conn = lab[0].connect()
    try:
        domain = start_guest(conn, guest_name, kernel, lab.workdir / f"{guest_name}.serial")
        assert wait_for(lambda: read_boot_stamp(domain) is not None)
        stamp = read_boot_stamp(domain)
        started = time.monotonic()
        with pytest.raises(libvirt.libvirtError):
            migrate(conn, gone, guest_name, mode)
        report(f"failed migration ({mode}, {lab.transport}) raised", time.monotonic() - started)
        assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert domain.isPersistent()
        assert read_boot_stamp(domain) == stamp
        domain.destroy()
        domain.undefine()
    finally:
        conn.close()


def test_the_driver_hands_the_max_downtime_to_libvirt_before_migrating(
    lab: LibvirtdLab, kernel: Path, guest_name: str
) -> None:
    """`LibvirtDriver.migrate(max_downtime=...)` (a VM's `migration_max_downtime`,
    extensions.md §6.2) sets QEMU's downtime limit on the source before the migration starts:
    a migration to a libvirtd that is gone fails, and the guest, still here, has the limit."""
    gone = gone_instance(lab, "gone-downtime", 9)
    conn = lab[0].connect()
    try:
        domain = start_guest(conn, guest_name, kernel, lab.workdir / f"{guest_name}.serial")
        assert wait_for(lambda: read_boot_stamp(domain) is not None)
        assert domain.migrateGetMaxDowntime(0) != 1234
        driver = LibvirtDriver(lab[0].uri)
        with pytest.raises(BackendError):
            driver.migrate(domain.UUIDString(), gone.peer_uri,
                           gone.migration_params().get(libvirt.VIR_MIGRATE_PARAM_URI),
                           timeout=30.0, max_downtime=1234)
        assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert domain.migrateGetMaxDowntime(0) == 1234
        domain.destroy()
        domain.undefine()
    finally:
        conn.close()


def test_migration_fails_cleanly_when_the_destination_has_the_guest(
    lab: LibvirtdLab, kernel: Path, guest_name: str
) -> None:
    """A guest already running on the target (the "never two copies" case) is refused."""
    conn_a, conn_b = lab[0].connect(), lab[1].connect()
    try:
        xml = qemu_guest_xml(guest_name, kernel=kernel)
        on_a = conn_a.defineXML(xml)
        on_a.create()
        on_b = conn_b.defineXML(xml)
        on_b.create()
        with pytest.raises(libvirt.libvirtError):
            migrate(conn_a, lab[1], guest_name, "p2p")
        assert on_a.isActive() and on_b.isActive()
        for domain in (on_a, on_b):
            domain.destroy()
            domain.undefine()
    finally:
        conn_a.close()
        conn_b.close()


def pgrep(pattern: str) -> list[int]:
    result = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True,
                            timeout=10, check=False)
    return [int(pid) for pid in result.stdout.split() if int(pid) != os.getpid()]


def describe(pids: list[int]) -> str:
    """What a leftover process is, for the assertion message."""
    lines = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()[:7]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError as exc:
            lines.append(f"{pid}: {exc}")
            continue
        lines.append(f"{pid}: {ns} {cmdline!r} {status}")
    return "\n".join(lines)


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for the machine's PID 1 to reap it is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def qemu_pids(guest_tag: str) -> list[int]:
    """QEMU sees the namespace's paths, not the lab folder's: find it by the guest's name."""
    return pgrep(f"qemu-system.*guest={guest_tag}")


def test_stop_leaves_nothing_behind(kernel: Path, report: Callable[[str, float], None]) -> None:
    workdir = Path(f"/tmp/pvcd-qemu-stop-{uuid.uuid4().hex[:6]}")
    tag = f"left{uuid.uuid4().hex[:6]}"
    lab = LibvirtdLab(workdir, 2)
    try:
        lab.start()
        conns = [instance.connect() for instance in lab.instances]
        for i, conn in enumerate(conns):
            start_guest(conn, f"{tag}-{i}", kernel, workdir / f"{tag}-{i}.serial")
        migrate(conns[0], lab[1], f"{tag}-0", "p2p")
        for conn in conns:
            conn.close()
        namespaces = {ns for instance in lab.instances for ns in instance.namespaces()}
        in_namespaces = {pid for ns in namespaces for pid in processes_in_namespace(ns)}
        qemus = qemu_pids(tag)
        assert len(qemus) == 2 and len(namespaces) == 2
        assert set(qemus) <= in_namespaces
        assert set(pgrep(str(workdir))) <= in_namespaces  # libvirtd (its pid file), tini

        started = time.monotonic()
        lab.stop()
        report("lab stop (2 instances, 2 running guests)", time.monotonic() - started)

        left = pgrep(str(workdir)) + qemu_pids(tag)
        assert left == [], describe(left)
        for ns in namespaces:
            assert processes_in_namespace(ns) == []
        assert not any(alive(pid) for pid in in_namespaces)
        assert str(workdir) not in Path("/proc/self/mounts").read_text()
        assert list(workdir.glob("*/sock/*")) == []
        assert list(workdir.glob("*/run/*")) == []
        # the definitions persist, like a node's /etc/libvirt across a reboot
        assert (workdir / "node2" / "etc" / "qemu" / f"{tag}-0.xml").exists()
        assert not (workdir / "node1" / "etc" / "qemu" / f"{tag}-0.xml").exists()
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_libvirtd_crash_keeps_guest_and_stop_still_cleans_up(kernel: Path) -> None:
    """libvirtd SIGKILLed: its QEMU lives on (as with a real libvirtd); a new start reconnects to
    it; stop() removes everything, also the QEMU orphaned in the old namespace."""
    workdir = Path(f"/tmp/pvcd-qemu-crash-{uuid.uuid4().hex[:6]}")
    instance = LibvirtdInstance("node1", workdir, (49400, 49407))
    try:
        instance.start()
        conn = instance.connect()
        domain = start_guest(conn, "survivor", kernel, workdir / "survivor.serial")
        assert wait_for(lambda: read_boot_stamp(domain) is not None)
        stamp = read_boot_stamp(domain)
        conn.close()
        qemu = qemu_pids("survivor")
        assert len(qemu) == 1

        os.kill(instance.pid, signal.SIGKILL)
        assert wait_for(lambda: not instance.running())
        assert alive(qemu[0])

        instance.start()  # a libvirtd restart: finds its guest running
        assert len(instance.namespaces()) == 2
        conn = instance.connect()
        domain = conn.lookupByName("survivor")
        assert domain.isActive() and read_boot_stamp(domain) == stamp
        conn.close()

        os.kill(instance.pid, signal.SIGKILL)  # and once more, then stop without a libvirtd
        assert wait_for(lambda: not instance.running())
        instance.stop()
        assert pgrep(str(workdir)) == [] and qemu_pids("survivor") == []
        assert not alive(qemu[0])
    finally:
        instance.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_lab_started_by_one_process_is_used_and_stopped_by_another(kernel: Path) -> None:
    """`pvcd lab up` and `pvcd lab down` are different processes."""
    workdir = Path(f"/tmp/pvcd-qemu-adopt-{uuid.uuid4().hex[:6]}")
    script = ("import sys; from pathlib import Path; from pvcd.lab.libvirtd import LibvirtdLab; "
              "LibvirtdLab(Path(sys.argv[1]), 2, transport='tcp').start()")
    try:
        subprocess.run([sys.executable, "-c", script, str(workdir)], check=True, timeout=60)
        lab = LibvirtdLab(workdir, 2, transport="tcp")
        assert all(instance.running() and instance.pid for instance in lab.instances)
        conn = lab[0].connect()
        try:
            start_guest(conn, "adopted", kernel, workdir / "adopted.serial")
            migrate(conn, lab[1], "adopted", "p2p")  # over the tcp port the first process chose
        finally:
            conn.close()
        namespaces = {ns for instance in lab.instances for ns in instance.namespaces()}
        lab.stop()
        assert pgrep(str(workdir)) == [] and qemu_pids("adopted") == []
        assert all(processes_in_namespace(ns) == [] for ns in namespaces)
        assert not LibvirtdLab(workdir, 2)[0].running()
    finally:
        LibvirtdLab(workdir, 2).stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_start_failure_is_reported_and_cleaned_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        workdir = Path(f"/tmp/pvcd-qemu-bad-{uuid.uuid4().hex[:6]}")
        instance = LibvirtdInstance("bad", workdir, (49500, 49507), tcp_port=port)
        try:
            with pytest.raises(LibvirtdError, match=r"exited during start.*Address already in use"):
                instance.start(timeout=20)
            assert not instance.running()
            assert pgrep(str(workdir)) == []
        finally:
            instance.stop()
            shutil.rmtree(workdir, ignore_errors=True)
