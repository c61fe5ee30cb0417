"""LibvirtDriver against libvirt's real test driver (`test:///abs/path/node.xml`), no mocks.

Each test gets its own node file; every driver (connection) on it is a separate simulated node.
What a test did is checked by reading libvirt's state again through the driver, never by
trusting what a call returned. libvirt must be importable: without it these tests fail.

Measured latencies are printed (also without `-s`).
"""

from __future__ import annotations

import queue
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt  # not importorskip: a missing libvirt-python must fail CI, not skip
import pytest

from pvcd.domain.errors import BackendError, NotFound
from pvcd.drivers.libvirt import DomainState, DomainStatus, HostInfo, LibvirtDriver
from pvcd.lab.guest import tiny_guest_xml
from pvcd.vmxml import parse_domain_xml

EVENT_TIMEOUT = 1.0
Event = tuple[str, str, str]


@pytest.fixture(scope="module")
def report(pytestconfig: pytest.Config) -> Callable[[str, float], None]:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def emit(what: str, seconds: float) -> None:
        with capture.global_and_fixture_disabled():
            print(f"\n  [libvirt test driver] {what}: {seconds * 1000:.2f} ms", end="")

    return emit


def node_file(directory: Path, name: str, content: str = "<node/>") -> Path:
    """The smallest node document the test driver accepts is `<node/>` (an empty file is
    refused: "Document is empty")."""
    path = directory / f"{name}.xml"
    path.write_text(content)
    return path


@pytest.fixture
def open_driver(tmp_path: Path) -> Iterator[Callable[..., LibvirtDriver]]:
    drivers: list[LibvirtDriver] = []

    def make(name: str = "node1", content: str = "<node/>") -> LibvirtDriver:
        driver = LibvirtDriver(f"test://{node_file(tmp_path, name, content)}")
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.close()


@pytest.fixture
def driver(open_driver: Callable[..., LibvirtDriver]) -> LibvirtDriver:
    return open_driver()


class Events:
    """A lifecycle listener that queues what it hears."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[float, Event]] = queue.Queue()

    def __call__(self, uuid: str, event: str, detail: str) -> None:
        self.queue.put((time.monotonic(), (uuid, event, detail)))

    def next(self, timeout: float = EVENT_TIMEOUT) -> tuple[float, Event]:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no lifecycle event within {timeout} s") from None

    def expect(self, expected: Event, timeout: float = EVENT_TIMEOUT) -> float:
        """Wait for `expected` (skipping others); returns when it arrived."""
        deadline = time.monotonic() + timeout
        seen: list[Event] = []
        while True:
            try:
                at, event = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {expected} within {timeout} s; saw {seen}") from None
            if event == expected:
                return at
            seen.append(event)

    def empty_after(self, seconds: float) -> bool:
        time.sleep(seconds)
        return self.queue.empty()


def define_tiny(driver: LibvirtDriver, name: str = "tiny", **options: object) -> str:
    definition = parse_domain_xml(tiny_guest_xml(name, **options))  # type: ignore[arg-type]
    driver.define(definition.xml)
    return definition.uuid


def state(driver: LibvirtDriver, uuid: str) -> tuple[DomainState, str, bool, bool]:
    status = driver.domain_state(uuid)
    assert status is not None, f"domain {uuid} is not defined"
    return status.state, status.reason, status.active, status.persistent


# nodes
def test_a_minimal_node_file_is_an_empty_node_with_default_hardware(
        driver: LibvirtDriver) -> None:
    assert driver.list_domains() == []
    assert driver.host_info() == HostInfo(cpu_count=16, memory_mib=3072)


def test_the_node_file_sets_the_simulated_hardware(
        open_driver: Callable[..., LibvirtDriver]) -> None:
    driver = open_driver(content="<node><cpu><nodes>1</nodes><sockets>1</sockets>"
                                 "<cores>4</cores><threads>2</threads><active>8</active></cpu>"
                                 "<memory>8388608</memory></node>")  # KiB
    assert driver.host_info() == HostInfo(cpu_count=8, memory_mib=8192)


def test_two_node_files_are_two_independent_nodes(
        open_driver: Callable[..., LibvirtDriver]) -> None:
    node1, node2 = open_driver("node1"), open_driver("node2")
    uuid = define_tiny(node1)
    node1.start(uuid)
    assert [d.uuid for d in node1.list_domains()] == [uuid]
    assert node2.list_domains() == []
    stopped = define_tiny(node1, "stopped")  # defined, never started: listed too
    assert sorted(node1.domain_uuids()) == sorted([uuid, stopped])
    assert node1.running_uuids() == [uuid] and node2.domain_uuids() == []
    assert node2.domain_state(uuid) is None
    define_tiny(node2, "tiny")  # the same name is free on the other node
    assert len(node2.list_domains()) == 1


def test_two_drivers_on_the_same_file_are_two_nodes(
        open_driver: Callable[..., LibvirtDriver]) -> None:
    first, second = open_driver("same"), open_driver("same")
    define_tiny(first)
    assert second.list_domains() == []


def test_an_unusable_uri_is_a_backend_error_with_libvirts_text(tmp_path: Path) -> None:
    driver = LibvirtDriver(f"test://{tmp_path}/missing/node.xml")
    with pytest.raises(BackendError, match=r"cannot connect to libvirt at test://.*missing"):
        driver.host_info()
    empty = tmp_path / "empty.xml"
    empty.write_text("")
    with pytest.raises(BackendError, match="Document is empty"):
        LibvirtDriver(f"test://{empty}").list_domains()


# domain lifecycle
@pytest.mark.parametrize("domain_type", ["qemu", "kvm"])
def test_define_start_shutdown_destroy_undefine(driver: LibvirtDriver, domain_type: str,
                                                report: Callable[[str, float], None]) -> None:
    definition = parse_domain_xml(tiny_guest_xml("life", domain_type=domain_type))
    uuid = definition.uuid
    started = time.monotonic()
    driver.define(definition.xml)
    driver.start(uuid)
    report(f"define+start ({domain_type})", time.monotonic() - started)

    assert driver.list_domains() == [DomainStatus(uuid=uuid, name="life",
                                                  state=DomainState.RUNNING, reason="booted",
                                                  active=True, persistent=True)]
    driver.shutdown(uuid)  # the test driver's guests obey at once
    assert state(driver, uuid) == (DomainState.SHUTOFF, "shutdown", False, True)
    driver.start(uuid)
    assert state(driver, uuid) == (DomainState.RUNNING, "booted", True, True)
    driver.destroy(uuid)
    assert state(driver, uuid) == (DomainState.SHUTOFF, "destroyed", False, True)
    driver.destroy(uuid)  # a stopped domain is left as it is
    assert state(driver, uuid) == (DomainState.SHUTOFF, "destroyed", False, True)
    driver.undefine(uuid)
    assert driver.domain_state(uuid) is None
    assert driver.list_domains() == []


def test_a_defined_domain_is_shut_off_and_persistent(driver: LibvirtDriver) -> None:
    uuid = define_tiny(driver)
    assert state(driver, uuid) == (DomainState.SHUTOFF, "unknown", False, True)


def test_running_uuids_are_the_active_domains_only(driver: LibvirtDriver) -> None:
    """(what the console follower lists once a second: one call)"""
    idle, busy = define_tiny(driver, "idle"), define_tiny(driver, "busy")
    assert driver.running_uuids() == []
    driver.start(busy)
    assert driver.running_uuids() == [busy]
    driver.destroy(busy)
    assert driver.running_uuids() == [] and idle != busy


def test_xml_is_what_libvirt_holds_and_define_replaces_it(driver: LibvirtDriver) -> None:
    uuid = str(uuidlib.uuid4())
    define_tiny(driver, "grow", uuid=uuid, memory_mib=64)
    root = ET.fromstring(driver.xml(uuid))
    assert (root.findtext("name"), root.findtext("uuid")) == ("grow", uuid)
    assert parse_domain_xml(driver.xml(uuid)).memory == 64
    define_tiny(driver, "grow", uuid=uuid, memory_mib=128)
    assert parse_domain_xml(driver.xml(uuid)).memory == 128
    assert len(driver.list_domains()) == 1


def test_undefining_a_running_domain_leaves_it_running_but_transient(
        driver: LibvirtDriver) -> None:
    uuid = define_tiny(driver)
    driver.start(uuid)
    driver.undefine(uuid)
    assert state(driver, uuid) == (DomainState.RUNNING, "booted", True, False)
    driver.destroy(uuid)
    assert driver.domain_state(uuid) is None  # a stopped transient domain is gone


def test_paused_is_reported_with_its_reason(driver: LibvirtDriver) -> None:
    uuid = define_tiny(driver)
    driver.start(uuid)
    # pausing is not a driver operation: do it behind the driver's back, like an operator
    # would, on the driver's own connection (a second connection is another node)
    conn = driver._connection()
    conn.lookupByUUIDString(uuid).suspend()
    assert state(driver, uuid) == (DomainState.PAUSED, "user", True, True)


def test_concurrent_calls_from_worker_threads(driver: LibvirtDriver) -> None:
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for round_ in range(10):
                uuid = define_tiny(driver, f"w{index}-{round_}")
                driver.start(uuid)
                assert state(driver, uuid)[0] == DomainState.RUNNING
                driver.destroy(uuid)
                driver.undefine(uuid)
                driver.list_domains()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert driver.list_domains() == []


# lifecycle events
def test_lifecycle_events_arrive_within_a_second(driver: LibvirtDriver,
                                                 report: Callable[[str, float], None]) -> None:
    events = Events()
    driver.add_lifecycle_listener(events)
    uuid = str(uuidlib.uuid4())
    define_tiny(driver, uuid=uuid)
    events.expect((uuid, "defined", "added"))
    started = time.monotonic()
    driver.start(uuid)
    report("start -> started event", events.expect((uuid, "started", "booted")) - started)
    started = time.monotonic()
    driver.shutdown(uuid)
    report("shutdown -> stopped event",
           events.expect((uuid, "stopped", "shutdown")) - started)
    driver.start(uuid)
    events.expect((uuid, "started", "booted"))
    started = time.monotonic()
    driver.destroy(uuid)
    report("destroy -> stopped event", events.expect((uuid, "stopped", "destroyed")) - started)
    driver.undefine(uuid)
    events.expect((uuid, "undefined", "removed"))
    assert events.empty_after(0.1)


def test_a_listener_added_before_the_connection_opens_hears_events(
        open_driver: Callable[..., LibvirtDriver]) -> None:
    driver = open_driver()
    events = Events()
    driver.add_lifecycle_listener(events)  # nothing is connected yet
    uuid = define_tiny(driver)  # the first call connects and registers the listener
    driver.start(uuid)
    events.expect((uuid, "started", "booted"))


def test_events_of_one_node_do_not_reach_another(
        open_driver: Callable[..., LibvirtDriver]) -> None:
    node1, node2 = open_driver("node1"), open_driver("node2")
    heard1, heard2 = Events(), Events()
    node1.add_lifecycle_listener(heard1)
    node2.add_lifecycle_listener(heard2)
    node2.connect()
    uuid = define_tiny(node1)
    node1.start(uuid)
    heard1.expect((uuid, "started", "booted"))
    assert heard2.empty_after(0.1)


def test_a_failing_listener_does_not_stop_the_others(driver: LibvirtDriver) -> None:
    def broken(uuid: str, event: str, detail: str) -> None:
        raise RuntimeError("listener bug")

    events = Events()
    driver.add_lifecycle_listener(broken)
    driver.add_lifecycle_listener(events)
    uuid = define_tiny(driver)
    driver.start(uuid)
    events.expect((uuid, "started", "booted"))
    driver.destroy(uuid)
    events.expect((uuid, "stopped", "destroyed"))


def test_each_listener_hears_each_event_once(driver: LibvirtDriver) -> None:
    first, second = Events(), Events()
    driver.add_lifecycle_listener(first)
    driver.connect()
    driver.add_lifecycle_listener(second)
    uuid = define_tiny(driver)
    for events in (first, second):
        events.expect((uuid, "defined", "added"))
        assert events.empty_after(0.05)


# errors
UNKNOWN = "0e5d7a34-31d4-4b59-8e37-6d5a3b0f6c11"


@pytest.mark.parametrize("call", [
    lambda d, u: d.start(u),
    lambda d, u: d.shutdown(u),
    lambda d, u: d.destroy(u),
    lambda d, u: d.undefine(u),
    lambda d, u: d.xml(u),
    lambda d, u: d.migrate(u, "test:///default", None, timeout=5),
])
@pytest.mark.parametrize("uuid", [UNKNOWN, "not-a-uuid"])
def test_an_unknown_domain_is_not_found(driver: LibvirtDriver, uuid: str,
                                        call: Callable[[LibvirtDriver, str], object]) -> None:
    define_tiny(driver)  # another domain exists
    with pytest.raises(NotFound, match=uuid):
        call(driver, uuid)
    assert driver.domain_state(uuid) is None


def test_not_found_carries_libvirts_text(driver: LibvirtDriver) -> None:
    with pytest.raises(NotFound, match=f"no domain {UNKNOWN} on test://.*: Domain not found"):
        driver.start(UNKNOWN)


def test_xml_libvirt_refuses_is_a_backend_error_with_libvirts_text(
        driver: LibvirtDriver) -> None:
    no_os = "<domain type='qemu'><name>x</name><memory>65536</memory></domain>"
    with pytest.raises(BackendError, match="libvirt could not define the domain: XML error: "
                                           "an os <type> must be specified"):
        driver.define(no_os)
    bad_type = tiny_guest_xml("x", domain_type="bogus")
    with pytest.raises(BackendError, match="invalid domain type bogus"):
        driver.define(bad_type)
    assert driver.list_domains() == []


def test_a_second_domain_with_the_same_name_is_a_backend_error(driver: LibvirtDriver) -> None:
    uuid = define_tiny(driver, "twin")
    with pytest.raises(BackendError, match=f"domain 'twin' already exists with uuid {uuid}"):
        define_tiny(driver, "twin")
    assert [d.uuid for d in driver.list_domains()] == [uuid]


def test_operations_in_the_wrong_state_are_backend_errors(driver: LibvirtDriver) -> None:
    uuid = define_tiny(driver, "busy")
    with pytest.raises(BackendError, match=f"could not shut down domain {uuid}: "
                                           "internal error: domain 'busy' not running"):
        driver.shutdown(uuid)
    driver.start(uuid)
    with pytest.raises(BackendError, match=f"could not start domain {uuid}: "
                                           "internal error: Domain 'busy' is already running"):
        driver.start(uuid)
    assert state(driver, uuid)[:2] == (DomainState.RUNNING, "booted")


def test_migration_on_the_test_driver_fails_cleanly(
        open_driver: Callable[..., LibvirtDriver]) -> None:
    source, target = open_driver("source"), open_driver("target")
    uuid = define_tiny(source)
    source.start(uuid)
    with pytest.raises(BackendError, match=f"could not migrate domain {uuid} to test://.*: "
                                           "argument unsupported: p2p migration is not "
                                           "supported by the source host"):
        source.migrate(uuid, target.uri, "tcp://127.0.0.1", timeout=5)
    assert state(source, uuid) == (DomainState.RUNNING, "booted", True, True)
    assert target.list_domains() == []


def test_a_closed_driver_refuses_calls(driver: LibvirtDriver) -> None:
    define_tiny(driver)
    driver.close()
    with pytest.raises(BackendError, match="is closed"):
        driver.list_domains()
    driver.close()  # closing twice is fine


def test_libvirt_is_the_real_library() -> None:
    assert libvirt.getVersion() >= 9_000_000
