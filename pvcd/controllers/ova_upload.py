"""The `ova.upload` task (spec extensions.md §3.7): an OVA archive, read as it arrives, becomes
volumes `ova_<name>_sd<x>`, an OVA record, a system template and a profile.

The task runs on the node whose API received the request and reads the body from its
`UploadPipe` (`pvcd.upload_pipe`) as a tar stream (`tarfile` mode `r|`: no seeking, nothing
kept whole). The first member must be the `.ovf` (`pvcd.domain.ovf` parses it without DTDs or
entities); it says which members are disk images. Each disk image goes byte for byte into a new
volume of exactly its size (created by a storage request, then written through librbd), hashed
on the way (SHA-1 and SHA-256: a manifest may come before or after the disks). A `.mf`
manifest, if any, must name every file with a matching digest. Members are untrusted: their
names are checked and only ever compared with the `.ovf`'s file names (no path is built from
them), their count is bounded, and the body as a whole is bounded by `ova_size` (the API's body
limit).

On success one transaction writes the OVA record, system template `<name>`, profile `<name>`
and the task record with its artifact list emptied, so a crash right after it cannot make the
primary remove volumes that the OVA now owns. On failure the runner removes the volumes made so
far (`undo`: a `volume-remove` storage request; a volume already gone counts as removed) and
nothing is recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tarfile
import time
from collections.abc import Callable
from typing import IO

from pvcd.controllers.tasks.context import TaskContext
from pvcd.controllers.tasks.registry import TaskKind, TaskOutcome
from pvcd.controllers.tasks.storage_steps import run_storage_request
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound
from pvcd.domain.ovf import (
    MAX_MANIFEST_BYTES,
    MAX_OVF_BYTES,
    OvfSystem,
    check_member_name,
    parse_manifest,
    parse_ovf,
)
from pvcd.domain.provisioner import Ova, OvaVolume, Profile, SystemTemplate
from pvcd.domain.tasks import Artifact
from pvcd.drivers.ceph.rbd_stream import RbdConnection
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.upload_pipe import PipeReader, UploadBroken, UploadPipe, UploadPipes

log = logging.getLogger(__name__)

OVA_UPLOAD = "ova.upload"
VOLUME_ARTIFACT = "volume"  # ref `<pool>/<volume>`
MAX_MEMBERS = 40  # the .ovf, a .mf, a .cert and up to 26 disks fit well within
READ_BLOCK = 1 << 20
CERT_LIMIT = 1 << 20
PROGRESS_EVERY = 4 << 20  # bytes between two progress reports
GIB = 1 << 30
WATCHER_WAIT = 90.0  # seconds an undo waits for a dead writer's RBD watch to expire
RETRY_PAUSE = 2.0
MAX_EXTENDED_HEADER = 64 << 10
_EXTENDED_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                     tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
VCPU_RANGE, VRAM_RANGE = (1, 256), (64, 4194304)  # §3.2


class _BoundedTarInfo(tarfile.TarInfo):
    """`tarfile` reads a pax or GNU long-name header's data whole into memory, whatever size
    the header claims: refuse one larger than MAX_EXTENDED_HEADER before it does."""

    def _proc_member(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in _EXTENDED_HEADERS and self.size > MAX_EXTENDED_HEADER:
            raise InvalidValue(f"the archive has an extended tar header of {self.size} bytes; "
                               f"at most {MAX_EXTENDED_HEADER} are accepted")
        return super()._proc_member(tarfile)  # type: ignore[misc, no-any-return]


def ova_volume_name(ova: str, index: int) -> str:
    """`ova_<name>_sd<x>`, x = a, b, ... in OVF order."""
    return f"ova_{ova}_sd{chr(ord('a') + index)}"


@dataclasses.dataclass
class CephAccess:
    """How the task reaches Ceph: the client's files, and how long a storage request may take."""

    conf_file: str
    keyring: str
    request_timeout: float
    command_timeout: float = 30.0


@dataclasses.dataclass
class _Received:
    digests: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    manifest: dict[str, tuple[str, str]] | None = None
    volumes: dict[str, OvaVolume] = dataclasses.field(default_factory=dict)  # by member


class OvaImporter:
    """The `ova.upload` task kind's work and undo (module docstring)."""

    def __init__(self, view: ClusterView, store: Store, pipes: UploadPipes, ceph: CephAccess,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.view = view
        self.store = store
        self.pipes = pipes
        self.ceph = ceph
        # one librados connection for the daemon's OVA disks, opened on the first one
        self.rbd = RbdConnection(ceph.conf_file, ceph.keyring, ceph.command_timeout)
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep  # between removals of a volume a dead writer still watches

    def kind(self) -> TaskKind:
        return TaskKind(OVA_UPLOAD, self.run, self.undo)

    # the task
    def run(self, ctx: TaskContext) -> TaskOutcome:
        pipe = self.pipes.take(ctx.task_id)
        if pipe is None:
            raise Conflict("the upload's body is not on this node any more (its daemon "
                           "restarted, or the request ended before the task started); "
                           "upload the OVA again")
        ended = "the archive has ended"  # bytes after it are dropped
        try:
            return self._import(ctx, pipe)
        except UploadBroken as exc:
            ended = str(exc)
            raise InvalidValue(f"upload interrupted: {exc}") from None
        except BaseException as exc:
            ended = str(exc)
            raise
        finally:
            pipe.close_reader(ended)
            self.pipes.discard(ctx.task_id)

    def _import(self, ctx: TaskContext, pipe: UploadPipe) -> TaskOutcome:
        name, pool, total = ctx.args["name"], ctx.args["pool"], int(ctx.args["ova_size"])
        reader = PipeReader(pipe, ctx.stopped.is_set)
        ctx.progress(0, total, "receiving the .ovf")
        try:
            with tarfile.open(fileobj=reader, mode="r|",  # type: ignore[call-overload]
                              tarinfo=_BoundedTarInfo) as archive:
                system, received = self._read_archive(ctx, archive, name, pool, pipe, total)
        except tarfile.TarError as exc:
            raise InvalidValue(f"the body is not a valid tar archive (an .ova): {exc}") from None
        ctx.progress(pipe.consumed, total, "recording the OVA")
        return self._record(ctx, name, pool, system, received)

    def _read_archive(self, ctx: TaskContext, archive: tarfile.TarFile, name: str, pool: str,
                      pipe: UploadPipe, total: int) -> tuple[OvfSystem, _Received]:
        first = archive.next()
        if first is None or not first.name.lower().endswith(".ovf"):
            shown = "nothing" if first is None else f"'{first.name[:80]}'"
            raise InvalidValue(f"the .ovf must come first in the archive (the OVF standard's "
                               f"order); the first member is {shown}")
        received = _Received()
        ovf = self._small_member(archive, first, MAX_OVF_BYTES, received)
        system = parse_ovf(ovf)
        ctx.log(f"OVF: {system.vcpus} vCPUs, {system.memory_mb} MiB, {len(system.disks)} disks "
                f"({', '.join(d.file for d in system.disks)})")
        disks = {disk.file: (index, disk) for index, disk in enumerate(system.disks)}
        count = 1
        while (member := archive.next()) is not None:
            count += 1
            if count > MAX_MEMBERS:
                raise InvalidValue(f"the archive has more than {MAX_MEMBERS} members")
            file_name = self._check_member(member, received)
            lower = file_name.lower()
            if file_name in disks:
                index, disk = disks[file_name]
                volume = ova_volume_name(name, index)
                ctx.progress(pipe.consumed, total, f"writing {file_name} into {pool}/{volume}")
                self._write_disk(ctx, archive, member, pool, volume, received, pipe, total)
                received.volumes[file_name] = OvaVolume(
                    disk_id=f"sd{chr(ord('a') + index)}",
                    disk_size_gb=max(1, -(-disk.capacity // GIB)), pool=pool,
                    volume_name=volume, volume_format=disk.image_format)
            elif lower.endswith(".mf"):
                if received.manifest is not None:
                    raise InvalidValue("the archive has two .mf manifests")
                data = self._small_member(archive, member, MAX_MANIFEST_BYTES, None)
                received.manifest = parse_manifest(data)
            elif lower.endswith(".cert"):
                self._small_member(archive, member, CERT_LIMIT, received)
            else:
                raise InvalidValue(f"archive member '{file_name}' is no disk file the .ovf "
                                   "references (nor a .mf or .cert)")
        missing = [d.file for d in system.disks if d.file not in received.volumes]
        if missing:
            raise InvalidValue(f"the archive lacks the disk files {', '.join(missing)} that "
                               "the .ovf references")
        self._check_manifest(received)
        return system, received

    def _check_member(self, member: tarfile.TarInfo, received: _Received) -> str:
        file_name = check_member_name(member.name)
        if not member.isreg() or member.issparse():
            raise InvalidValue(f"archive member '{file_name}' is not a regular file (links, "
                               "devices, directories and sparse files are refused)")
        if file_name in received.digests or file_name in received.volumes:
            raise InvalidValue(f"archive member '{file_name}' comes twice")
        return file_name

    def _small_member(self, archive: tarfile.TarFile, member: tarfile.TarInfo, limit: int,
                      received: _Received | None) -> bytes:
        """A member read whole (the .ovf, .mf, .cert), at most `limit` bytes; hashed into
        `received` unless None (the manifest does not name itself)."""
        file_name = self._check_member(member, received or _Received())
        if member.size > limit:
            raise InvalidValue(f"archive member '{file_name}' is {member.size} bytes; at most "
                               f"{limit} are accepted")
        handle = archive.extractfile(member)
        data = handle.read() if handle is not None else b""
        if len(data) != member.size:
            raise InvalidValue(f"archive member '{file_name}' ends early")
        if received is not None:
            received.digests[file_name] = {"sha1": hashlib.sha1(data).hexdigest(),
                                           "sha256": hashlib.sha256(data).hexdigest()}
        return data

    def _write_disk(self, ctx: TaskContext, archive: tarfile.TarFile, member: tarfile.TarInfo,
                    pool: str, volume: str, received: _Received, pipe: UploadPipe,
                    total: int) -> None:
        if member.size <= 0:
            raise InvalidValue(f"disk file '{member.name}' is empty")
        run_storage_request(self.view, self.store, "volume-add",
                            {"pool": pool, "volume": volume, "size": member.size},
                            self.ceph.request_timeout, self.clock)
        ctx.artifact(VOLUME_ARTIFACT, f"{pool}/{volume}")
        ctx.log(f"created volume {pool}/{volume} of {member.size} bytes for {member.name}")
        source: IO[bytes] | None = archive.extractfile(member)
        if source is None:
            raise InvalidValue(f"disk file '{member.name}' cannot be read")
        sha1, sha256 = hashlib.sha1(), hashlib.sha256()
        written, reported = 0, 0
        with self.rbd.writer(pool, volume) as writer:
            while data := source.read(READ_BLOCK):
                sha1.update(data)
                sha256.update(data)
                writer.write(data)
                written += len(data)
                if written - reported >= PROGRESS_EVERY:
                    reported = written
                    ctx.progress(pipe.consumed, total, f"writing {member.name} into "
                                 f"{pool}/{volume}")
            writer.finish()
        if written != member.size:
            raise InvalidValue(f"disk file '{member.name}' ends after {written} of "
                               f"{member.size} bytes")
        received.digests[member.name] = {"sha1": sha1.hexdigest(), "sha256": sha256.hexdigest()}

    @staticmethod
    def _check_manifest(received: _Received) -> None:
        manifest = received.manifest
        if manifest is None:
            return
        for file_name, digests in received.digests.items():
            entry = manifest.get(file_name)
            if entry is None:
                raise InvalidValue(f"the .mf manifest does not name '{file_name}'")
            algorithm, digest = entry
            if digests[algorithm] != digest:
                raise InvalidValue(f"digest mismatch for '{file_name}': the .mf says "
                                   f"{algorithm.upper()} {digest}, the file has "
                                   f"{digests[algorithm]}")
        absent = sorted(set(manifest) - set(received.digests))
        if absent:
            raise InvalidValue(f"the .mf names files the archive lacks: {', '.join(absent)}")

    def _record(self, ctx: TaskContext, name: str, pool: str, system: OvfSystem,
                received: _Received) -> TaskOutcome:
        for what, number, (low, high) in (("vCPU count", system.vcpus, VCPU_RANGE),
                                          ("memory (MiB)", system.memory_mb, VRAM_RANGE)):
            if not low <= number <= high:
                raise InvalidValue(f"the .ovf's {what} {number} is out of range {low}-{high}")
        volumes = [received.volumes[disk.file] for disk in system.disks]
        ova = Ova(name=name, pool=pool, volumes=volumes, system_template=name, profile=name)
        template = SystemTemplate(name=name, vcpu_count=system.vcpus, vram_mb=system.memory_mb,
                                  serial=True, vnc=system.graphics, ova=name)
        profile = Profile(name=name, profile_type="ova", system_template=name, script="ova",
                          ova=name)
        paths = self.view.paths
        ops = [Op.create(paths.provisioner_object("ova", name), ova.to_doc()),
               Op.create(paths.provisioner_object("system", name), template.to_doc()),
               Op.create(paths.provisioner_object("profile", name), profile.to_doc())]
        if not ctx.hand_over(ops):  # the volumes are the OVA's from this transaction on
            ctx.check()
            raise Conflict(f"could not record OVA {name}: an OVA, system template or profile "
                           f"named {name} was created meanwhile")
        ctx.log(f"recorded OVA {name}, system template {name} and profile {name}")
        result = {"name": name, "pool": pool, "volumes": [dataclasses.asdict(v) for v in volumes],
                  "system_template": name, "profile": name}
        return TaskOutcome(f"Imported OVA {name} into pool {pool}: {len(volumes)} volumes, "
                           f"system template {name}, profile {name}", result)

    # undo
    def undo(self, artifact: Artifact) -> None:
        """Remove a volume the task made. A daemon that died while writing leaves its librbd
        watch on the image until Ceph expires it (`osd_client_watch_timeout`, 30 s), and
        `rbd rm` refuses an image with watchers (a Conflict): tried again until
        WATCHER_WAIT is over."""
        if artifact.kind != VOLUME_ARTIFACT or "/" not in artifact.ref:
            raise BackendError(f"unknown artifact {artifact.kind} {artifact.ref}")
        pool, volume = artifact.ref.split("/", 1)
        deadline = self.monotonic() + WATCHER_WAIT
        while True:
            try:
                run_storage_request(self.view, self.store, "volume-remove",
                                    {"pool": pool, "volume": volume, "with_snapshots": True},
                                    self.ceph.request_timeout, self.clock)
                return
            except NotFound:
                return  # gone already
            except Conflict as exc:
                if self.monotonic() >= deadline:
                    raise
                log.info("event=ova-volume-busy volume=%s/%s error=%s", pool, volume, exc)
                self.sleep(RETRY_PAUSE)
