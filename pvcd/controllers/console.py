"""VM consoles in the cluster: the node running a VM keeps the tail of its serial console log in
`vms/<uuid>/console` (extensions.md §7, `GET /vm/<vm>/console`).

Once a second (the `console` controller's one key, resynced every second) the node looks at the
domains running in its libvirt that are VMs of the cluster. For each it follows the file named
by the domain's `<serial>`/`<console>` `<log file=...>`, only inside
`drivers.libvirt.console_log_directory` (`pvcd.drivers.console_log` checks and opens it), reads
what was appended (at most READ_LIMIT bytes a round: a flooding guest loses its oldest output,
marked in the buffer, never the daemon's memory or time), splits it into lines
(`pvcd.domain.console_lines`) and appends them to the buffer, at most one write per VM a second.

Where to start reading a file: the buffer records, per node, the file it followed (`dev:ino`)
and how far (`follow`). A node that follows a VM again (its daemon restarted, or the VM came
back to it: with `append='on'` the file still holds the earlier runs) continues after what it
took; a file it never followed is read from its start. After a migration the new node appends
to the same buffer, so the console's history survives; old and new node may both append for a
moment (each appends with compare-and-set on what the other wrote, `pvcd.state.log_buffer`).

A VM that stops running here is read one last time (its unfinished line included) and let go.
While ZooKeeper is unreachable nothing is read: the file keeps what the guest writes meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from pvcd.controllers.base import DONE, Controller, Result, Wiring
from pvcd.domain.console_lines import ConsoleLines
from pvcd.domain.errors import BackendError, Conflict, NotFound
from pvcd.domain.log_tail import LogTail
from pvcd.drivers.console_log import ConsoleLogFile, ConsoleLogRefused, console_log_path
from pvcd.drivers.libvirt import LibvirtDriver
from pvcd.state.log_buffer import append_to_buffer
from pvcd.state.store import Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

KEY = "consoles"
INTERVAL = 1.0          # seconds between rounds: at most one write per VM a second
READ_LIMIT = 256 * 1024  # bytes read per VM a round; beyond, the oldest are skipped
QUIET = 3.0             # seconds without output after which an unfinished line is given out
MAX_FOLLOW_ENTRIES = 32  # nodes remembered in a buffer's `follow` record


@dataclass
class _Followed:
    """One VM's console as this node follows it."""

    file: ConsoleLogFile | None
    lines: ConsoleLines = field(default_factory=ConsoleLines)
    waiting: list[str] = field(default_factory=list)  # lines not yet written
    last_output: float = 0.0
    missing: str | None = None  # a log file named but not there yet: look again


class ConsoleFollower:
    def __init__(self, node: str, view: ClusterView, libvirt: LibvirtDriver, store: Store,
                 directory: str, max_lines: int, can_act: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic,
                 running: Callable[[], Collection[str]] | None = None) -> None:
        """`running`: the UUIDs active in libvirt now (default: ask libvirt each round; the
        daemon passes the node's event-fed `RunningDomains`)."""
        self.node = node
        self.view = view
        self.libvirt = libvirt
        self.running = running or libvirt.running_uuids
        self.store = store
        self.directory = directory
        self.max_lines = max_lines
        self.can_act = can_act
        self.clock = clock
        self._followed: dict[str, _Followed] = {}
        # those with a file to follow (or one to look for) or lines not yet written
        self._busy: set[str] = set()

    def keys(self) -> list[str]:
        return [KEY]

    def reconcile(self, key: str) -> Result:
        if not self.can_act():
            return DONE
        try:
            uuids = self.running()
        except BackendError as exc:
            log.info("event=console-list-failed node=%s error=%s", self.node, exc)
            return DONE
        running = uuids if isinstance(uuids, (set, frozenset)) else set(uuids)
        exists, vm = self.view.cache.exists, self.view.paths.vm
        # a round costs nothing for a VM without a console log: only the changes of the
        # running set (set operations) and the VMs with a file to read or lines to write
        for uuid in sorted(self._followed.keys() - running):
            self._let_go(uuid)
        for uuid in sorted(running - self._followed.keys()):
            if exists(vm(uuid)):
                self._follow(uuid)
        for uuid in sorted(self._busy):
            if not exists(vm(uuid)):
                self._let_go(uuid)
            else:
                self._follow(uuid)
        return DONE

    def close(self) -> None:
        """Close every file (the daemon stops; the next one continues from `follow`)."""
        for followed in self._followed.values():
            if followed.file is not None:
                followed.file.close()
        self._followed.clear()
        self._busy.clear()

    # one VM
    def _follow(self, uuid: str) -> None:
        followed = self._followed.get(uuid)
        if followed is None or (followed.file is None and followed.missing):
            started = self._start(uuid, followed)
            if followed is not None:  # lines of a file rotated away, not yet written
                started.waiting = followed.waiting + started.waiting
            followed = self._followed[uuid] = started
        if followed.file is not None:
            self._read(uuid, followed)
        self._write(uuid, followed)
        if followed.file is not None or followed.missing or followed.waiting:
            self._busy.add(uuid)
        else:
            self._busy.discard(uuid)

    def _start(self, uuid: str, previous: _Followed | None) -> _Followed:
        path = previous.missing if previous is not None else None
        if path is None:
            try:
                path = console_log_path(self.libvirt.xml(uuid))
            except (NotFound, BackendError):
                return _Followed(None)
        if path is None:
            return _Followed(None)  # no console log: the API answers data ""
        try:
            file = ConsoleLogFile(path, self.directory)
        except ConsoleLogRefused as exc:
            log.warning("event=console-log-refused node=%s vm=%s reason=%s", self.node, uuid, exc)
            return _Followed(None)
        except FileNotFoundError:
            return _Followed(None, missing=path)
        except OSError as exc:
            log.warning("event=console-log-unreadable node=%s vm=%s path=%s error=%s",
                        self.node, uuid, path, exc)
            return _Followed(None)
        file.seek(self._resume_at(uuid, file))
        log.info("event=console-follow node=%s vm=%s path=%s from=%d", self.node, uuid, path,
                 file.position)
        return _Followed(file, last_output=self.clock())

    def _resume_at(self, uuid: str, file: ConsoleLogFile) -> int:
        tail = LogTail.from_doc(self.view.cache.get(self.view.paths.vm_console(uuid)))
        follow = tail.extra.get("follow")
        mine = follow.get(self.node) if isinstance(follow, dict) else None
        if isinstance(mine, dict) and mine.get("file") == file.identity:
            offset = mine.get("offset")
            if isinstance(offset, int) and 0 <= offset <= file.size():
                return offset
        return 0

    def _read(self, uuid: str, followed: _Followed, final: bool = False) -> None:
        file = followed.file
        assert file is not None
        try:
            data, skipped = file.read(READ_LIMIT)
            if not data and not skipped and file.replaced():  # rotated: on to the new file
                followed.waiting += followed.lines.flush_partial()
                file.close()
                followed.file = ConsoleLogFile(file.path, self.directory)
                file = followed.file
                data, skipped = file.read(READ_LIMIT)
        except FileNotFoundError:  # rotated, the new file not there yet: look again
            followed.file, followed.missing = None, file.path
            return
        except (OSError, ConsoleLogRefused) as exc:
            log.warning("event=console-read-failed node=%s vm=%s error=%s", self.node, uuid, exc)
            file.close()
            followed.file = None
            return
        now = self.clock()
        if skipped:
            followed.lines.skip()
            followed.waiting.append(f"[pvcd: {skipped} bytes of console output skipped]")
        if data:
            followed.waiting += followed.lines.feed(data)
            followed.last_output = now
        if final or (followed.lines.pending and now - followed.last_output >= QUIET):
            followed.waiting += followed.lines.flush_partial()

    def _write(self, uuid: str, followed: _Followed) -> None:
        if not followed.waiting:
            return
        lines, file = followed.waiting, followed.file
        dropped = max(0, len(lines) - self.max_lines)
        lines = lines[dropped:]

        def follow(extra: dict[str, Any]) -> dict[str, Any]:
            if file is None:
                return extra
            record = extra.get("follow")
            record = dict(record) if isinstance(record, dict) else {}
            record.pop(self.node, None)
            record[self.node] = {"file": file.identity, "offset": file.position}
            extra["follow"] = dict(list(record.items())[-MAX_FOLLOW_ENTRIES:])
            return extra

        try:
            append_to_buffer(self.store, self.view.paths.vm_console(uuid), lines,
                             self.max_lines, dropped=dropped, extra=follow)
        except NotFound as exc:  # the VM is gone: nothing to keep
            log.info("event=console-write-refused node=%s vm=%s reason=%s", self.node, uuid, exc)
            followed.waiting = []
            return
        except (BackendError, Conflict) as exc:  # keep the lines (bounded) for next round
            log.info("event=console-write-failed node=%s vm=%s error=%s", self.node, uuid, exc)
            followed.waiting = lines
            return
        followed.waiting = []

    def _let_go(self, uuid: str) -> None:
        self._busy.discard(uuid)
        followed = self._followed.pop(uuid)
        if followed.file is not None:
            self._read(uuid, followed, final=True)
        self._write(uuid, followed)
        if followed.file is not None:
            followed.file.close()
        log.info("event=console-let-go node=%s vm=%s", self.node, uuid)


def build_console(node: str, view: ClusterView, store: Store, libvirt: LibvirtDriver,
                  directory: str, max_lines: int, can_act: Callable[[], bool],
                  running: Callable[[], Collection[str]] | None = None
                  ) -> tuple[Wiring, ConsoleFollower]:
    """The `console` controller: one round a second (its resync), fed by no watch."""
    follower = ConsoleFollower(node, view, libvirt, store, directory, max_lines, can_act,
                               running=running)
    wiring = Wiring()
    wiring.add(Controller("console", follower.reconcile, follower.keys,
                          resync_interval=INTERVAL))
    return wiring, follower
