"""VM convergence on a test-driver lab (3 nodes): how fast does libvirt follow the API?

1. `POST /vm/<vm>/state state=start` → the domain runs in the node's libvirt (seen through the
   lab agent, i.e. the daemon's own libvirt connection): p50/p99 over --samples runs.
2. 1,000 VMs (--burst) started in one burst: time from the first POST to all running.

Run as: .venv/bin/python -m bench.vm_converge [--samples 50] [--burst 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.harness import wait
from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab

NODES = ("node1", "node2", "node3")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--burst", type=int, default=1000)
    args = parser.parse_args()
    lab = Lab(Path(tempfile.mkdtemp(prefix="pvcd-bench-lab-")) / "lab")
    info = lab.up(nodes=3)
    session = requests.Session()
    session.headers["X-Api-Key"] = info.token
    try:
        single(lab, session, info.api, args.samples)
        burst(lab, session, info.api, args.burst)
    finally:
        lab.down()


def single(lab: Lab, session: requests.Session, api: str, samples: int) -> None:
    session.post(f"{api}/vm", data={"xml": tiny_guest_xml("probe"), "node": "node1"})
    uuid = session.get(f"{api}/vm/probe").json()[0]["uuid"]
    latencies = []
    for _ in range(samples):
        session.post(f"{api}/vm/probe/state", data={"state": "stop"})
        wait(lambda: lab.domains("node1").get(uuid, {}).get("state") == "shutoff")
        start = time.perf_counter()
        session.post(f"{api}/vm/probe/state", data={"state": "start"})
        wait(lambda: lab.domains("node1").get(uuid, {}).get("state") == "running")
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    print(f"POST state=start -> running in libvirt: p50_ms={statistics.median(latencies)*1000:.1f}"
          f"  p99_ms={latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f}  n={samples}")


def burst(lab: Lab, session: requests.Session, api: str, count: int) -> None:
    names = [f"b{i:05d}" for i in range(count)]

    def post(name: str) -> None:
        response = session.post(f"{api}/vm", data={"xml": tiny_guest_xml(name)})
        response.raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(post, names))
    defined = time.perf_counter() - start
    uuids = {v["uuid"] for v in session.get(f"{api}/vm", params={"limit": "^b"}).json()}

    def all_running() -> bool:
        running = set()
        for node in NODES:
            running |= {u for u, d in lab.domains(node).items() if d["state"] == "running"}
        return uuids <= running

    wait(all_running, timeout=120, interval=0.05)
    total = time.perf_counter() - start
    print(f"{count} VMs defined+started in one burst on 3 nodes: all running after "
          f"{total:.2f} s (POSTs done after {defined:.2f} s)")

    def set_state(state: str) -> None:
        def post(name: str) -> None:
            session.post(f"{api}/vm/{name}/state", data={"state": state}).raise_for_status()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(post, names))

    def none_running() -> bool:
        return not any(u in uuids and d["state"] == "running"
                       for node in NODES for u, d in lab.domains(node).items())

    set_state("stop")
    wait(none_running, timeout=120, interval=0.05)
    start = time.perf_counter()
    set_state("start")
    posted = time.perf_counter() - start
    wait(all_running, timeout=120, interval=0.05)
    print(f"{count} defined VMs started in one burst (POST state=start): all running after "
          f"{time.perf_counter() - start:.2f} s (POSTs done after {posted:.2f} s)")




if __name__ == "__main__":
    main()
