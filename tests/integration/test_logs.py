"""Log buffers against a real ZooKeeper (extensions.md §7): concurrent appends, the node log
writer (bounded while ZooKeeper is away, flushed on stop), and the console follower on real
files (resume without repeats, a second node appending after a migration, refused paths)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from pvcd.controllers.console import ConsoleFollower
from pvcd.controllers.node_log import NodeLogHandler, NodeLogWriter
from pvcd.domain.log_tail import LogTail, read_tail
from pvcd.domain.records import VmRemoval, VmSpec
from pvcd.state.cache import StateCache
from pvcd.state.log_buffer import append_to_buffer, read_buffer
from pvcd.state.schema import Paths, ensure_schema
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.state.vm_removal import forget_vm_ops

UUID = "0b6e3f4a-1c2d-4e5f-8a9b-000000000001"


@pytest.fixture
def state(zk: KazooClient, zk_root: str) -> Iterator[tuple[ClusterView, Store]]:
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, zk_root)
    cache.start()
    yield ClusterView(cache, paths), Store(zk, cache)
    cache.close()


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_concurrent_appends_lose_nothing(state: tuple[ClusterView, Store]) -> None:
    view, store = state
    path = view.paths.node_log("n1")

    def writer(name: str) -> None:
        for batch in range(20):
            append_to_buffer(store, path, [f"{name}-{batch}-{n}" for n in range(3)], 1000)

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tail = read_buffer(store, path)
    assert tail.last_line == 120
    assert sorted(tail.lines) == sorted(f"{w}-{b}-{n}" for w in "ab" for b in range(20)
                                        for n in range(3))


def test_the_node_log_writer_writes_queued_lines_and_counts_what_it_dropped(
        state: tuple[ClusterView, Store]) -> None:
    view, store = state
    path = view.paths.node_log("n1")
    handler = NodeLogHandler(capacity=5)
    connected = threading.Event()
    writer = NodeLogWriter(handler, store, path, max_lines=5, connected=connected.is_set,
                           interval=0.05)
    logger = logging.getLogger("pvcd.test.nodelog")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    writer.start()
    try:
        for n in range(12):  # ZooKeeper "away": queued, the oldest dropped and counted
            logger.info("event=line n=%d", n)
        time.sleep(0.2)
        assert read_buffer(store, path).last_line == 0  # nothing written while away
        connected.set()
        wait_for(lambda: read_buffer(store, path).last_line > 0)
        tail = read_buffer(store, path)
        assert tail.last_line == 13  # 7 dropped, 5 kept, and the line saying so
        assert [line.split(": ", 1)[1] for line in tail.lines[:4]] == [
            f"event=line n={n}" for n in range(8, 12)]
        assert "event=node-log-lines-dropped count=7" in tail.lines[-1]
        assert read_tail(tail, 10, after=2).truncated
        logger.warning("event=last")
    finally:
        assert writer.stop(timeout=5)
        logger.removeHandler(handler)
    tail = read_buffer(store, path)  # written on stop
    assert tail.lines[-1].endswith("WARNING pvcd.test.nodelog: event=last")
    assert tail.last_line == 14


class FakeLibvirt:
    """The part of the libvirt driver the console follower uses: running domains, their XML."""

    def __init__(self) -> None:
        self.domains: dict[str, str] = {}

    def running_uuids(self) -> list[str]:
        return list(self.domains)

    def xml(self, uuid: str) -> str:
        return self.domains[uuid]


def domain_xml(log: Path | None) -> str:
    serial = f"<log file='{log}' append='on'/>" if log else ""
    return (f"<domain><devices><serial type='pty'>{serial}<target port='0'/></serial>"
            "</devices></domain>")


@pytest.fixture
def vm(state: tuple[ClusterView, Store]) -> VmSpec:
    view, store = state
    spec = VmSpec(uuid=UUID, name="web1", node="n1", xml=domain_xml(None))
    store.commit([Op.create(view.paths.vm(UUID), spec.to_doc())])
    return spec


def follower(node: str, state: tuple[ClusterView, Store], libvirt: FakeLibvirt,
             directory: Path, max_lines: int = 100) -> ConsoleFollower:
    view, store = state
    return ConsoleFollower(node, view, libvirt, store, str(directory),  # type: ignore[arg-type]
                           max_lines, can_act=lambda: True)


def console(state: tuple[ClusterView, Store]) -> LogTail:
    view, store = state
    return read_buffer(store, view.paths.vm_console(UUID))


def test_the_console_is_followed_resumed_and_continued_on_another_node(
        state: tuple[ClusterView, Store], vm: VmSpec, tmp_path: Path) -> None:
    n1_dir, n2_dir = tmp_path / "n1", tmp_path / "n2"
    n1_dir.mkdir()
    n2_dir.mkdir()
    log1 = n1_dir / "web1.log"
    log1.write_bytes(b"boot 1\nboot 2\npartial")
    libvirt1 = FakeLibvirt()
    libvirt1.domains[UUID] = domain_xml(log1)
    first = follower("n1", state, libvirt1, n1_dir)
    first.reconcile("consoles")
    assert console(state).lines == ["boot 1", "boot 2"]
    first.close()
    # the daemon restarts: it continues after what it took (the unfinished line included)
    with log1.open("ab") as out:
        out.write(b" done\nboot 3\n")
    again = follower("n1", state, libvirt1, n1_dir)
    again.reconcile("consoles")
    wait_for(lambda: console(state).last_line == 4)
    assert console(state).lines == ["boot 1", "boot 2", " done", "boot 3"]
    # migrated: n2's own file, read from its start, appended to the same buffer
    log2 = n2_dir / "web1.log"
    log2.write_bytes(b"on n2\n")
    libvirt2 = FakeLibvirt()
    libvirt2.domains[UUID] = domain_xml(log2)
    with log1.open("ab") as out:
        out.write(b"last on n1")  # an unfinished line: given out when the VM leaves n1
    del libvirt1.domains[UUID]
    second = follower("n2", state, libvirt2, n2_dir)
    second.reconcile("consoles")
    again.reconcile("consoles")
    tail = console(state)
    assert tail.lines[:4] == ["boot 1", "boot 2", " done", "boot 3"]
    assert sorted(tail.lines[4:]) == ["last on n1", "on n2"]
    assert tail.last_line == 6
    assert set(tail.extra["follow"]) == {"n1", "n2"}
    # nothing new: nothing written again
    version = state[1].read(state[0].paths.vm_console(UUID))[1]
    second.reconcile("consoles")
    assert state[1].read(state[0].paths.vm_console(UUID))[1] == version
    second.close()
    again.close()


def test_a_flood_without_newlines_keeps_memory_and_buffer_bounded(
        state: tuple[ClusterView, Store], vm: VmSpec, tmp_path: Path) -> None:
    log = tmp_path / "web1.log"
    log.write_bytes(b"\xff" * (3 * 1024 * 1024) + b"\nend\n")
    libvirt = FakeLibvirt()
    libvirt.domains[UUID] = domain_xml(log)
    one = follower("n1", state, libvirt, tmp_path, max_lines=10)
    one.reconcile("consoles")
    tail = console(state)
    assert tail.lines[0].startswith("[pvcd: ")
    assert "bytes of console output skipped" in tail.lines[0]
    assert tail.lines[-1] == "end"
    assert all(len(line) <= 4096 for line in tail.lines)
    one.close()


def test_a_log_outside_the_directory_is_never_read(
        state: tuple[ClusterView, Store], vm: VmSpec, tmp_path: Path) -> None:
    consoles = tmp_path / "consoles"
    consoles.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("password\n")
    (consoles / "web1.log").symlink_to(secret)
    libvirt = FakeLibvirt()
    for path in (secret, consoles / "web1.log", consoles / ".." / "secret"):
        libvirt.domains[UUID] = domain_xml(path)
        one = follower("n1", state, libvirt, consoles)
        one.reconcile("consoles")
        one.close()
    assert state[1].read_optional(state[0].paths.vm_console(UUID)) is None


def test_a_removed_vm_takes_its_console_with_it(
        state: tuple[ClusterView, Store], vm: VmSpec, tmp_path: Path) -> None:
    view, store = state
    log = tmp_path / "web1.log"
    log.write_bytes(b"hello\n")
    libvirt = FakeLibvirt()
    libvirt.domains[UUID] = domain_xml(log)
    one = follower("n1", state, libvirt, tmp_path)
    one.reconcile("consoles")
    wait_for(lambda: view.cache.exists(view.paths.vm_console(UUID)))
    entry = view.cache.entry(view.paths.vm(UUID))
    assert entry is not None
    store.commit(forget_vm_ops(view, vm, entry.version, VmRemoval(), time.time()))
    assert store.read_optional(view.paths.vm(UUID)) is None
    one.close()
