"""One dnsmasq child process, supervised: started in the foreground, ready when it says so,
restarted when it died, told to re-read its files (SIGHUP), stopped and reaped.

Shared by a network's DHCP/DNS server (`dnsmasq.DnsmasqInstance`) and the primary's names and
floating DNS servers (`dns_server.DnsServer`): all are dnsmasq with an argument
list built and validated by their owner (no shell). A process is recognised by a `marker`, an
argument only its command line has, so that one left by a crashed pvcd (an orphan holding the
sockets) is found and killed before the next start.

Races: a SIGHUP sent before dnsmasq has installed its handlers would kill it; `start()` returns
only once dnsmasq has logged "started", after its handlers are in place.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from pvcd.domain.errors import BackendError
from pvcd.drivers.host import pids_where

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class DnsmasqProcess:
    """A supervised dnsmasq child; `label` names it in logs and errors (e.g. its interface)."""

    def __init__(self, argv: list[str], log_path: Path, marker: str, label: str,
                 netns: str | None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.marker = marker
        self.label = label
        self.netns = netns
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self.running() else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def processes(self) -> list[int]:
        """PIDs of every live process whose command line has the marker: ours, its script
        helper, or an orphan left by a previous pvcd."""
        return pids_where(lambda argv: self.marker in argv)

    def kill_orphans(self) -> None:
        """Kill every process with the marker that is not our running child (one left by a
        crashed pvcd) and wait until they are gone."""
        ours = self.pid
        for pid in [p for p in self.processes() if p != ours]:
            log.warning("dnsmasq orphan killed interface=%s pid=%d", self.label, pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while [p for p in self.processes() if p != ours] and time.monotonic() < deadline:
            time.sleep(0.01)  # let the kernel release its sockets before we bind them again

    def start(self) -> None:
        """Start dnsmasq and wait until it serves; no-op if running. BackendError on failure.
        An orphan of the same marker is killed first: it would hold the sockets."""
        if self.running():
            return
        self.kill_orphans()
        started = time.monotonic()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log_file:
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    env={"PATH": SAFE_PATH, "LANG": "C"},
                    start_new_session=True,
                )
            except OSError as exc:
                raise BackendError(f"cannot run dnsmasq for {self.label}: {exc}") from exc
        deadline = started + START_TIMEOUT
        while time.monotonic() < deadline:
            output = self._log_since(log_offset)
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BackendError(
                    f"dnsmasq for {self.label} exited with {code} at start: "
                    f"{_last_lines(output)}"
                )
            if "started, version" in output:
                log.info(
                    "dnsmasq started interface=%s netns=%s pid=%d took_ms=%.0f",
                    self.label,
                    self.netns or "-",
                    self._proc.pid,
                    (time.monotonic() - started) * 1000,
                )
                return
            time.sleep(0.005)
        self.stop()
        raise BackendError(f"dnsmasq for {self.label} did not start within "
                           f"{START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """Terminate dnsmasq (SIGTERM, then SIGKILL) and reap it; no-op if not running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        log.info("dnsmasq stopped interface=%s netns=%s exit=%s", self.label,
                 self.netns or "-", proc.returncode)

    def supervise(self) -> bool:
        """Restart dnsmasq if it is not running; True when it had to (re)start it."""
        if self.running():
            return False
        if self._proc is not None:
            log.warning("dnsmasq died interface=%s netns=%s exit=%s restarting", self.label,
                        self.netns or "-", self._proc.returncode)
            self._proc = None
            self.restarts += 1
        self.start()
        return True

    def reload(self) -> None:
        """SIGHUP: dnsmasq re-reads its hosts and servers files and keeps its leases."""
        if self._proc is not None and self.running():
            self._proc.send_signal(signal.SIGHUP)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(offset)
                return log_file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line]
    return " | ".join(lines[-count:]) or "no output"
