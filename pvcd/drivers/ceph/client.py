"""Running Ceph's tools as client.admin: the one place where pvcd starts `ceph`, `rbd`, `rados`
and `osdmaptool`, and talks to the monitors through librados.

Every call is an argument list with a timeout (`command_timeout`), with `--format json` wherever
Ceph offers it; a failure becomes a domain error in Ceph's own words (`parsers.ceph_error`).

The `ceph` CLI is a Python program that costs ~0.3 s of CPU per run; the periodic sync runs a
handful of read-only commands every few seconds. Those (`_FAST_COMMANDS`) are answered through
one persistent librados connection (~1 ms each) when Debian's python3-rados is installed; pool
creation sends its mon command the same way. Without the binding, or when librados fails, the
CLI runs (and reports any error in Ceph's words). `PVCD_CEPH_CLI_ONLY=1` forces the CLI.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pvcd.domain.errors import BackendError
from pvcd.drivers.ceph.parsers import ceph_error

log = logging.getLogger(__name__)


class CephClient:
    """Runs Ceph's tools as client.admin of the cluster described by `conf_path`."""

    def __init__(self, conf_path: Path | str, keyring_path: Path | str, timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.conf_path = str(conf_path)
        self.keyring_path = str(keyring_path)
        self.timeout = timeout
        self.clock = clock  # the removal's drain timing (tests pass their own)
        self.sleep = sleep
        self._rados: Any = None
        # PVCD_CEPH_CLI_ONLY=1: every command through the CLI (for comparisons and debugging)
        self._rados_failed = os.environ.get("PVCD_CEPH_CLI_ONLY") == "1"
        self._rados_lock = threading.Lock()

    def run_json(self, tool: str, args: Sequence[str], accept_codes: Sequence[int] = (0,)) -> Any:
        text = self.run(tool, [*args, "--format", "json"], accept_codes=accept_codes)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise BackendError(f"`{tool} {' '.join(args)}` returned no valid JSON: "
                               f"{text[:200]!r}") from exc

    def run(self, tool: str, args: Sequence[str], want_stderr: bool = False,
             accept_codes: Sequence[int] = (0,), timeout: float | None = None) -> str:
        """Run `tool` as client.admin; stdout (plus stderr with `want_stderr`). `timeout`:
        seconds for a command whose time grows with the data (a copy), else `self.timeout`."""
        if tool == "ceph" and not want_stderr:
            answer = self._fast_command(args)
            if answer is not None:
                return answer
        argv = [tool, "--conf", self.conf_path, "--keyring", self.keyring_path]
        if tool == "ceph":
            argv += ["--connect-timeout", str(max(1, int(self.timeout)))]
        return self.run_tool([*argv, *args], want_stderr, accept_codes, shown=[tool, *args],
                             timeout=timeout)

    def _fast_command(self, args: Sequence[str]) -> str | None:
        """A read-only `ceph` command answered through the persistent librados connection, or
        None (then the CLI runs, and reports any error in Ceph's words)."""
        words = list(args)
        json_format = words[-2:] == ["--format", "json"]
        if json_format:
            words = words[:-2]
        known = _FAST_COMMANDS.get(tuple(words))
        if known is None:
            return None
        cluster = self._rados_cluster()
        if cluster is None:
            return None
        target, command = known
        command = {**command, **({"format": "json"} if json_format else {})}
        call = cluster.mon_command if target == "mon" else cluster.mgr_command
        try:
            code, out, _ = call(json.dumps(command), b"", timeout=int(self.timeout))
        except Exception as exc:  # librados' own errors: let the CLI try and report
            log.info("event=ceph-fast-command-failed command=%s error=%r", words, exc)
            return None
        return out.decode() if code == 0 else None

    def mon_write(self, command: dict[str, Any]) -> str | None:
        """A state-changing mon command through librados (the JSON command the CLI would send,
        without starting a process): its status text, an error in Ceph's words, or None when
        librados is not available (the caller runs the CLI)."""
        cluster = self._rados_cluster()
        if cluster is None:
            return None
        code, out, status = cluster.mon_command(json.dumps(command), b"",
                                                timeout=int(self.timeout))
        if code != 0:
            name = errno.errorcode.get(-code, str(code))
            raise ceph_error(command["prefix"], -code, f"Error {name}: {status}")
        return str(status) + out.decode()

    def _rados_cluster(self) -> Any:
        with self._rados_lock:
            if self._rados is None and not self._rados_failed:
                try:
                    module = load_rados()
                    cluster = module.Rados(conffile=self.conf_path,
                                           conf={"keyring": self.keyring_path})
                    cluster.connect(timeout=int(self.timeout))
                    self._rados = cluster
                except Exception as exc:  # no binding, or no cluster yet: the CLI path works
                    log.info("event=ceph-librados-unavailable error=%r", exc)
                    self._rados_failed = True
            return self._rados

    def close(self) -> None:
        with self._rados_lock:
            if self._rados is not None:
                self._rados.shutdown()
                self._rados = None

    def run_tool(self, argv: list[str], want_stderr: bool = False,
                  accept_codes: Sequence[int] = (0,), shown: list[str] | None = None,
                  timeout: float | None = None) -> str:
        command = " ".join(shown or argv)
        seconds = self.timeout if timeout is None else timeout
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds,
                                    check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"`{command}` timed out after {seconds:.0f} s "
                               "(is the Ceph cluster reachable, with a mgr?)") from exc
        except FileNotFoundError as exc:
            raise BackendError(f"{argv[0]} is not installed (package ceph-common)") from exc
        if result.returncode not in accept_codes:
            raise ceph_error(command, result.returncode, result.stderr or result.stdout)
        return result.stdout + (result.stderr if want_stderr else "")


# Read-only commands of the periodic sync answered in-process through librados (the `ceph` CLI
# is a Python program that costs ~0.3 s of CPU per run; a librados call costs ~1 ms): the CLI
# words -> (mon or mgr, the JSON command).
_FAST_COMMANDS: dict[tuple[str, ...], tuple[str, dict[str, Any]]] = {
    ("status",): ("mon", {"prefix": "status"}),
    ("df",): ("mon", {"prefix": "df"}),
    ("health",): ("mon", {"prefix": "health"}),
    ("osd", "dump"): ("mon", {"prefix": "osd dump"}),
    ("osd", "tree"): ("mon", {"prefix": "osd tree"}),
    ("osd", "pool", "ls", "detail"): ("mon", {"prefix": "osd pool ls", "detail": "detail"}),
    ("osd", "df"): ("mgr", {"prefix": "osd df"}),
    ("osd", "status"): ("mgr", {"prefix": "osd status"}),
    ("pg", "dump", "pgs"): ("mgr", {"prefix": "pg dump", "dumpcontents": ["pgs"]}),
}
_RADOS_MODULE = "/usr/lib/python3/dist-packages/rados.cpython-311-x86_64-linux-gnu.so"


def load_rados() -> Any:
    """Debian's python3-rados (librados)."""
    return load_debian_binding("rados", _RADOS_MODULE)


def load_debian_binding(name: str, path: str) -> Any:
    """Debian's python3-rados or python3-rbd, loaded from its file (there is no PyPI package);
    importing the whole dist-packages folder into our environment would shadow our pinned
    packages."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no {name} binding at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module

