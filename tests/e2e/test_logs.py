"""Logs and consoles on a QEMU lab (extensions.md §7), through the API and the `pvc` CLI.

A real guest's serial output (the lab kernel's boot line, logged by libvirt into the node's
console log directory) appears in `GET /vm/<vm>/console` and in `pvc vm log --follow`, and
after a live migration the new node appends to the same buffer. A real daemon's log lines
appear in `GET /node/<node>/log` and in `pvc node log --follow` with no line repeated or
missed across several writes, and stay readable after that daemon stopped. Needs root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.lab.lab import Lab
from pvcd.lab.qemu_guest import GUEST_SERIAL_UP
from tests.e2e.labclient import LabClient, ok, wait_until

pytest.importorskip("libvirt")

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.needs_root]
ROOT = str(Path(__file__).resolve().parents[2])


def _interruptible() -> None:
    """In the child before exec: SIGINT as a terminal gives it. An ignored signal stays ignored
    across exec, and Python then installs no Ctrl-C handler: a test process that ignores SIGINT
    (as a long pytest session may, after its earlier tests) would hand that on, and `stop`
    could never interrupt the follower."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Follower:
    """`pvc ... --follow` running in the background, its output collected line by line."""

    def __init__(self, lab: Lab, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PVC_")}
        env.update({"PYTHONPATH": ROOT, "PVC_CONFIG": "/nonexistent/pvc/connections.yaml"})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pvcd.cli.main", "--lab", str(lab.workdir), *args,
             "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            preexec_fn=_interruptible)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:  # bytes: a console's \r stays as it is
            line = raw.decode()
            self.lines.append(line[:-1] if line.endswith("\n") else line)

    def stop(self) -> str:
        """Interrupt it (as Ctrl-C does); its stderr."""
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        self._reader.join(5)
        assert self.process.returncode == 0, err
        return bytes(err).decode()


@pytest.fixture(scope="module")
def qlab() -> Iterator[tuple[Lab, LabClient]]:
    if os.geteuid() != 0:
        pytest.skip("the QEMU lab mounts and starts libvirtd: run as root")
    for tool in ("libvirtd", "qemu-system-x86_64", "tini", "unshare", "as", "ld"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/setup"
    workdir = Path(f"/tmp/pvcd-e2e-logs-{uuidlib.uuid4().hex[:6]}")  # short: socket paths
    lab = Lab(workdir)
    info = lab.up(nodes=2, libvirt="qemu", fencing="none")
    try:
        yield lab, LabClient(info)
    finally:
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)


def nodes_by_role(api: LabClient) -> tuple[str, str]:
    """(the primary, the other node)."""
    nodes = ok(api.get("/node"))
    primary = next(n["name"] for n in nodes if n["coordinator_state"] == "primary")
    return primary, next(n["name"] for n in nodes if n["name"] != primary)


def console(api: LabClient, **values: Any) -> dict[str, Any]:
    return dict(ok(api.get("/vm/guest/console", params=values)))


def test_a_guests_serial_output_through_the_api_and_pvc_vm_log_follow(
        qlab: tuple[Lab, LabClient]) -> None:
    lab, api = qlab
    primary, other = nodes_by_role(api)
    info = lab._info()
    assert info.qemu is not None
    xml = Path(info.qemu["guest_xml"]).read_text()
    assert '<log file="/var/log/libvirt/pvcd/guest.log"' in xml
    ok(api.post("/vm", data={"xml": xml, "node": primary}))
    # the kernel's boot line, kept by the node running it
    wait_until(lambda: console(api)["data"], timeout=15)
    answer = console(api)
    assert answer["name"] == "guest" and answer["last_line"] == 1
    assert answer["data"].rstrip("\r") == GUEST_SERIAL_UP
    assert "truncated" not in answer
    follower = Follower(lab, "vm", "log", "guest")
    try:
        wait_until(lambda: len(follower.lines) >= 1, timeout=15)
        # live-migrated: nothing new; then restarted on the new node (the power button, a new
        # boot), which appends to the same buffer: the history survives the move
        wait_until(lambda: ok(api.get("/vm/guest"))[0]["running_on"] == primary, timeout=10)
        ok(api.post("/vm/guest/node", data={"action": "migrate", "node": other}))
        wait_until(lambda: ok(api.get("/vm/guest"))[0]["running_on"] == other, timeout=20)
        assert console(api)["last_line"] == 1
        ok(api.post("/vm/guest/state", data={"state": "restart"}))
        wait_until(lambda: console(api)["last_line"] == 3, timeout=20)
        wait_until(lambda: len(follower.lines) >= 3, timeout=10)
    finally:
        err = follower.stop()
    expected = [GUEST_SERIAL_UP, "pvcd-guest: power button, powering off", GUEST_SERIAL_UP]
    assert [line.rstrip("\r") for line in follower.lines] == expected, err
    full = console(api, lines=100)
    assert [line.rstrip("\r") for line in full["data"].split("\n")] == expected
    assert console(api, after=3)["data"] == ""
    assert console(api, after=1, lines=1) == {"name": "guest", "last_line": 2,
                                              "data": full["data"].split("\n")[1]}
    # bad values and unknown names are refused
    for values in ({"lines": "0"}, {"lines": "x"}, {"after": "-1"}):
        assert api.get("/vm/guest/console", params=values).status_code == 510
    assert api.get("/vm/nosuchvm/console").status_code == 510
    assert api.get("/node/nosuchnode/log").status_code == 510


def test_a_node_log_through_the_api_and_pvc_node_log_follow_even_after_it_stopped(
        qlab: tuple[Lab, LabClient]) -> None:
    lab, api = qlab
    _, node = nodes_by_role(api)
    start = ok(api.get(f"/node/{node}/log", params={"lines": 2000}))
    assert start["name"] == node
    assert f"INFO pvcd.daemon: event=node-registered node={node}" in start["data"]
    first = start["data"].split("\n")[0]
    assert first[:4].isdigit() and first[10] == " " and first[19] == "."  # the stated form
    follower = Follower(lab, "node", "log", node, "--lines", "1")
    try:
        wait_until(lambda: len(follower.lines) >= 1, timeout=15)
        # several rounds of work on that node, each logged there, across several writes
        for state in ("flush", "ready", "flush", "ready"):
            ok(api.post(f"/node/{node}/domain-state", data={"domain-state": state, "wait": "1"}))
        lab.signal_node(node, signal.SIGTERM)
        assert lab.wait_node_exit(node, timeout=30)
        stopped = ok(api.get(f"/node/{node}/log", params={"lines": 100000}))
        assert f"event=daemon-shutdown node={node}" in stopped["data"]  # flushed on stop
        wait_until(lambda: any("event=daemon-shutdown" in line for line in follower.lines),
                   timeout=10)
    finally:
        err = follower.stop()
    # what the follower showed is the buffer's tail line for line: no repeat, no gap
    kept = stopped["data"].split("\n")
    assert len(follower.lines) > 5, err
    assert len({line[:19] for line in follower.lines}) >= 3  # lines of several seconds
    assert follower.lines == kept[-len(follower.lines):], err
    assert "left the buffer" not in err
    lab.start_node(node)  # (the module's lab stays whole)
    lab.wait_ready(60)
