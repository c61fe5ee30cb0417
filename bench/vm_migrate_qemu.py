"""Live migration through the API on a QEMU lab (`pvcd lab up --libvirt qemu`, 2 nodes).

One tiny guest is moved back and forth (`action=migrate`, then `action=unmigrate`) `--runs`
times. Per run, from just before the POST:
- `running`: until the target node's libvirtd reports the guest running with reason
  "migrated" (polled every 2 ms on a connection of our own),
- `recorded`: until the API shows the migration done (state `start`, running on the target).
Prints p50/min/max of each. Needs root. Run as:
    .venv/bin/python -m bench.vm_migrate_qemu [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import requests
import yaml

from bench.harness import print_row
from pvcd.lab.lab import Lab
from pvcd.lab.qemu_guest import qemu_guest_xml

POLL = 0.002


def wait(predicate: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(POLL)


def runs_on(conn: libvirt.virConnect, uuid: str, reason: int) -> bool:
    try:
        state = conn.lookupByUUIDString(uuid).state()
    except libvirt.libvirtError:
        return False
    return bool(state == [libvirt.VIR_DOMAIN_RUNNING, reason])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    workdir = Path(f"/tmp/pvcd-bench-qemu-{uuidlib.uuid4().hex[:6]}")  # short: socket paths
    lab = Lab(workdir)
    info = lab.up(nodes=2, libvirt="qemu")
    assert info.qemu is not None
    session = requests.Session()
    session.headers["X-Api-Key"] = info.token
    conns = {}
    for node in info.nodes:
        config = yaml.safe_load(Path(node.config).read_text())
        conns[node.name] = libvirt.open(config["drivers"]["libvirt"]["uri"])
    try:
        uuid = str(uuidlib.uuid4())
        xml = qemu_guest_xml("bench", uuid, kernel=Path(info.qemu["kernel"]))
        session.post(f"{info.api}/vm", data={"xml": xml, "node": "node1"}).raise_for_status()
        wait(lambda: runs_on(conns["node1"], uuid, libvirt.VIR_DOMAIN_RUNNING_BOOTED))
        # and recorded as running: the API live-migrates only a VM its status shows running
        wait(lambda: session.get(f"{info.api}/vm/bench").json()[0]["running_on"] == "node1")
        running, recorded = [], []
        for run in range(args.runs):
            target = "node2" if run % 2 == 0 else "node1"
            values = {"action": "migrate", "node": target} if target == "node2" else \
                {"action": "unmigrate"}
            started = time.perf_counter()
            session.post(f"{info.api}/vm/bench/node", data=values).raise_for_status()
            wait(lambda t=target: runs_on(conns[t], uuid, libvirt.VIR_DOMAIN_RUNNING_MIGRATED))
            running.append(time.perf_counter() - started)

            def done(t: str = target) -> bool:
                vm = session.get(f"{info.api}/vm/bench").json()[0]
                return bool(vm["state"] == "start" and vm["running_on"] == t)

            wait(done)
            recorded.append(time.perf_counter() - started)
        for label, times in (("POST migrate -> running (libvirt)", running),
                             ("POST migrate -> recorded (API)", recorded)):
            print_row(label, {"runs": len(times),
                              "p50_ms": statistics.median(times) * 1000,
                              "min_ms": min(times) * 1000, "max_ms": max(times) * 1000})
    finally:
        for conn in conns.values():
            conn.close()
        lab.down()
        if not os.environ.get("PVCD_LAB_KEEP_LOGS"):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
