"""Writing a stream of bytes into an existing RBD volume through librbd (Debian's python3-rbd).

An upload's body arrives in chunks and must land in a volume as it comes, never whole on the
primary's disk or in its memory. `RbdWriter` opens the image once and writes the chunks at
increasing offsets, gathered into `WRITE_SIZE` blocks (one librbd call per 4 MiB, the default
object size, instead of one per network chunk). Its own librados connection is opened per
writer and closed with it: an upload runs long enough that the ~10 ms of a connect do not
matter, and the driver's shared connection stays free for the sync's commands.

Like `pvcd.drivers.ceph.client` this loads the binding from its file: there is no PyPI package,
and putting all of dist-packages on our path would shadow our pinned packages.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any

from pvcd.domain.errors import BackendError
from pvcd.drivers.ceph.client import load_debian_binding, load_rados

WRITE_SIZE = 4 << 20
_RBD_MODULE = "/usr/lib/python3/dist-packages/rbd.cpython-311-x86_64-linux-gnu.so"


def _load_rbd() -> Any:
    load_rados()  # the rbd binding imports rados
    try:
        return load_debian_binding("rbd", _RBD_MODULE)
    except (ImportError, OSError) as exc:
        raise BackendError(f"no librbd binding at {_RBD_MODULE} (Debian package python3-rbd): "
                           f"{exc}") from exc


class RbdWriter:
    """Sequential writes into `pool/volume` (which must exist and be large enough)."""

    def __init__(self, conf_path: str, keyring_path: str, pool: str, volume: str,
                 timeout: float = 30.0) -> None:
        self.where = f"{pool}/{volume}"
        self.offset = 0
        self._pending: list[bytes] = []
        self._pending_size = 0
        try:
            rados, rbd = load_rados(), _load_rbd()
            self._cluster = rados.Rados(conffile=conf_path, conf={"keyring": keyring_path})
            self._cluster.connect(timeout=int(timeout))
            self._ioctx = self._cluster.open_ioctx(pool)
            self._image = rbd.Image(self._ioctx, volume)
        except BackendError:
            raise
        except Exception as exc:
            self._close_quietly()
            raise BackendError(f"cannot open RBD volume {self.where} for writing: {exc}") from exc

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= WRITE_SIZE:
            self._flush()

    def close(self) -> None:
        """Write what is held back and close the image (raises if the last write fails)."""
        try:
            self._flush()
            self._image.flush()
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"writing into RBD volume {self.where} failed: {exc}") from exc
        finally:
            self._close_quietly()

    def _flush(self) -> None:
        if not self._pending:
            return
        block = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        try:
            written = self._image.write(block, self.offset)
        except Exception as exc:
            raise BackendError(f"writing into RBD volume {self.where} at offset {self.offset} "
                               f"failed: {exc}") from exc
        if written != len(block):
            raise BackendError(f"librbd wrote {written} of {len(block)} bytes into "
                               f"{self.where} at offset {self.offset}")
        self.offset += len(block)

    def _close_quietly(self) -> None:
        # closing after a failure: the failure is what the caller reports
        for name in ("_image", "_ioctx"):
            handle = getattr(self, name, None)
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()
                setattr(self, name, None)
        cluster = getattr(self, "_cluster", None)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()
            self._cluster = None

    def __enter__(self) -> RbdWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
        else:
            self._close_quietly()
