"""The lab's fake watchdog: what a watchdog device does, for nodes that are processes.

A FAKE, named as one: this machine has no watchdog device (no softdog module either), and a
real one would reset the machine the tests run on. It keeps the device's contract:
- `LabWatchdog` is the node daemon's side (`Plugins.watchdog`): `arm` starts the timer,
  `pet` restarts its count, `disarm` is the magic close. Its state is a small JSON file, the
  "device" path of the node's config (`fencing.watchdog_device`), written atomically.
- `WatchdogBoard` (`python -m pvcd.lab.watchdog --nodes-dir <lab>/nodes`, started by the lab
  beside the nodes, like a board's timer beside its CPU) resets a node whose armed timer ran
  out: power off and on exactly as the lab fence does (`pvcd.lab.fence.power_cycle`). A daemon
  that died or hangs does not pet, so its node is reset; one that stopped with the magic close
  is not. A reset disarms the timer (a machine boots with it off) and is appended to
  `watchdog-resets.jsonl` in the node's folder, with its wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pvcd.domain.errors import BackendError
from pvcd.lab.fence import power_cycle
from pvcd.lab.launch import going_down

log = logging.getLogger(__name__)

RESETS_FILE = "watchdog-resets.jsonl"
POLL = 0.05


class LabWatchdog:
    def __init__(self, device: str) -> None:
        self.path = Path(device)
        self.timeout = 0

    def arm(self, timeout: int) -> int:
        self.timeout = timeout
        self._write(armed=True)
        return timeout

    def pet(self) -> None:
        self._write(armed=True)

    def disarm(self) -> None:
        self._write(armed=False)

    def _write(self, armed: bool) -> None:
        doc = {"armed": armed, "timeout": self.timeout, "petted": time.monotonic(),
               "pid": os.getpid()}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.path)


def read_state(device: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(device.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def resets(folder: Path) -> list[dict[str, Any]]:
    """The resets of the node whose folder is `folder`, oldest first."""
    try:
        lines = (folder / RESETS_FILE).read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


class WatchdogBoard:
    def __init__(self, nodes_dir: Path, device_name: str = "watchdog") -> None:
        self.nodes_dir = nodes_dir
        self.device_name = device_name

    def check(self) -> None:
        for folder in sorted(p for p in self.nodes_dir.iterdir() if p.is_dir()):
            device = folder / self.device_name
            state = read_state(device)
            if not state or not state.get("armed"):
                continue
            overdue = time.monotonic() - float(state["petted"]) - float(state["timeout"])
            if overdue < 0:
                continue
            self._reset(folder, device, state, overdue)

    def _reset(self, folder: Path, device: Path, state: dict[str, Any], overdue: float) -> None:
        node = folder.name
        log.warning("event=watchdog-reset node=%s timeout=%s overdue=%.3f", node,
                    state["timeout"], overdue)
        # a machine boots with its watchdog off: disarmed before the node is powered on
        device.write_text(json.dumps({**state, "armed": False}))
        at = time.time()
        try:
            power_cycle(self.nodes_dir, node, 15.0, "watchdog")
        except BackendError as exc:
            log.error("event=watchdog-reset-failed node=%s reason=%s", node, exc)
        with open(folder / RESETS_FILE, "a") as out:
            out.write(json.dumps({"at": at, "timeout": state["timeout"],
                                  "overdue": round(overdue, 3)}) + "\n")

    def run(self) -> None:
        while not going_down(self.nodes_dir):
            self.check()
            time.sleep(POLL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvcd.lab.watchdog",
                                     description="the lab's watchdog board")
    parser.add_argument("--nodes-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    WatchdogBoard(Path(args.nodes_dir)).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
