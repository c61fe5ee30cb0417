"""The libvirt driver: one connection = one node's hypervisor. Knows nothing of ZooKeeper.

Thread-safe for use from the VM controller's workers (one lock around the connection: libvirt
connections may be shared, but reconnecting must not race). Lifecycle events are delivered by
libvirt's default event loop, run on one daemon thread for the whole process.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

from pvcd.errors import BackendError, NotFound

log = logging.getLogger(__name__)

_event_loop_started = False
_event_loop_lock = threading.Lock()


def _quiet(_ctx: Any, _err: Any) -> None:
    """Swallow libvirt's default stderr error printer; errors surface as exceptions."""


libvirt.registerErrorHandler(_quiet, None)


def _ensure_event_loop() -> None:
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class DomainState(enum.Enum):
    NOSTATE = "nostate"
    RUNNING = "running"
    BLOCKED = "blocked"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # shutting down
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"


_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: DomainState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PMSUSPENDED,
}

_RUNNING_REASONS = {libvirt.VIR_DOMAIN_RUNNING_BOOTED: "booted",
                    libvirt.VIR_DOMAIN_RUNNING_MIGRATED: "migrated",
                    libvirt.VIR_DOMAIN_RUNNING_RESTORED: "restored",
                    libvirt.VIR_DOMAIN_RUNNING_UNPAUSED: "unpaused"}
_SHUTOFF_REASONS = {libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
                    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
                    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
                    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
                    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed"}
_EVENTS = {libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
           libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
           libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
           libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
           libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
           libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
           libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
           libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed"}


@dataclass(frozen=True)
class DomainStatus:
    uuid: str
    name: str
    state: DomainState
    reason: str
    active: bool
    persistent: bool


@dataclass(frozen=True)
class HostInfo:
    cpu_count: int
    memory_mib: int


LifecycleListener = Callable[[str, str, str], None]


class LibvirtDriver:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._lock = threading.RLock()
        self._conn: libvirt.virConnect | None = None
        self._listeners: list[LifecycleListener] = []
        self._callback_ids: list[int] = []

    # connection
    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                log.warning("event=libvirt-reconnect uri=%s", self.uri)
                self._conn = None
            _ensure_event_loop()
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise BackendError(f"cannot connect to libvirt at {self.uri}: "
                                   f"{exc.get_error_message()}") from exc
            self._conn = conn
            self._callback_ids = []
            if self._listeners:
                self._register_events(conn)
            return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                for callback_id in self._callback_ids:
                    try:
                        self._conn.domainEventDeregisterAny(callback_id)
                    except libvirt.libvirtError:
                        pass
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None

    def add_lifecycle_listener(self, listener: LifecycleListener) -> None:
        with self._lock:
            self._listeners.append(listener)
            if self._conn is not None and len(self._listeners) == 1:
                self._register_events(self._conn)

    def _register_events(self, conn: libvirt.virConnect) -> None:
        def on_event(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            uuid = dom.UUIDString()
            for listener in list(self._listeners):
                try:
                    listener(uuid, _EVENTS.get(event, str(event)), str(detail))
                except Exception:
                    log.exception("event=libvirt-listener-error vm=%s", uuid)

        self._callback_ids.append(conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None))

    def connect(self) -> None:
        """Open the connection now (events start flowing); errors are BackendError."""
        self._connection()

    # domains
    def _domain(self, uuid: str) -> Any:
        try:
            return self._connection().lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"domain {uuid} is not defined on {self.uri}") from exc
            raise _backend(exc, f"looking up domain {uuid}") from exc

    def define(self, xml: str) -> None:
        try:
            self._connection().defineXML(xml)
        except libvirt.libvirtError as exc:
            raise _backend(exc, "defining the domain") from exc

    def undefine(self, uuid: str) -> None:
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                 | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                 | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        test_driver = self.uri.startswith("test:")
        self._call(uuid, "undefining",
                   lambda d: d.undefine() if test_driver else d.undefineFlags(flags))

    def start(self, uuid: str) -> None:
        self._call(uuid, "starting", lambda d: d.create())

    def shutdown(self, uuid: str) -> None:
        self._call(uuid, "shutting down", lambda d: d.shutdown())

    def destroy(self, uuid: str) -> None:
        def destroy(d: Any) -> None:
            if d.isActive():
                d.destroy()

        self._call(uuid, "stopping", destroy)

    def _call(self, uuid: str, what: str, action: Callable[[Any], Any]) -> None:
        domain = self._domain(uuid)
        try:
            action(domain)
        except libvirt.libvirtError as exc:
            raise _backend(exc, f"{what} domain {uuid}") from exc

    def domain_state(self, uuid: str) -> DomainStatus | None:
        try:
            return _status(self._domain(uuid))
        except NotFound:
            return None
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise _backend(exc, f"reading domain {uuid}") from exc

    def list_domains(self) -> list[DomainStatus]:
        try:
            domains = self._connection().listAllDomains()
        except libvirt.libvirtError as exc:
            raise _backend(exc, "listing domains") from exc
        result = []
        for domain in domains:
            try:
                result.append(_status(domain))
            except libvirt.libvirtError:
                continue  # vanished while we looked
        return result

    def xml(self, uuid: str) -> str:
        domain = self._domain(uuid)
        try:
            return str(domain.XMLDesc(0))
        except libvirt.libvirtError as exc:
            raise _backend(exc, f"reading the XML of domain {uuid}") from exc

    def migrate(self, uuid: str, dest_uri: str, migration_uri: str | None,
                timeout: float) -> None:
        """Live-migrate to the libvirt at `dest_uri` (peer-to-peer), persistent there."""
        domain = self._domain(uuid)
        params: dict[str, Any] = {}
        if migration_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = migration_uri
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                 | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        try:
            domain.migrateToURI3(dest_uri, params, flags)
        except libvirt.libvirtError as exc:
            raise _backend(exc, f"migrating domain {uuid} to {dest_uri}") from exc

    def host_info(self) -> HostInfo:
        try:
            info = self._connection().getInfo()
        except libvirt.libvirtError as exc:
            raise _backend(exc, "reading host information") from exc
        return HostInfo(cpu_count=int(info[2]), memory_mib=int(info[1]))


def _status(domain: Any) -> DomainStatus:
    state, reason = domain.state()
    kind = _STATES.get(state, DomainState.NOSTATE)
    if kind == DomainState.RUNNING:
        why = _RUNNING_REASONS.get(reason, str(reason))
    elif kind == DomainState.SHUTOFF:
        why = _SHUTOFF_REASONS.get(reason, str(reason))
    else:
        why = str(reason)
    return DomainStatus(uuid=domain.UUIDString(), name=domain.name(), state=kind, reason=why,
                        active=bool(domain.isActive()), persistent=bool(domain.isPersistent()))


def _backend(exc: Any, what: str) -> BackendError:
    return BackendError(f"libvirt failed {what}: {exc.get_error_message()}")
