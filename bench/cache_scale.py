"""The state cache at scale (issue 17): load time, memory, and CPU per change at N VMs.

A real ZooKeeper; a writer process makes N VMs (spec with ~2 KB of XML, status, claim, name
index: four znodes each, as the daemons do), then this process starts a `StateCache` over
them (its initial load: wall time, CPU, RSS it added), then the writer adds --more VMs and this
process's CPU until its cache has seen them all is divided by their number.

Run as: .venv/bin/python -m bench.cache_scale [--vms 10000] [--more 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kazoo.client import KazooClient

from bench.harness import wait
from pvcd.lab.zookeeper import ZooKeeperEnsemble
from pvcd.state.cache import StateCache
from pvcd.state.schema import Paths, ensure_schema

ROOT = "/pvc"
WRITER = r'''
import json, sys, uuid
from kazoo.client import KazooClient
client = KazooClient(sys.argv[1]); client.start()
root, first, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
xml = "<domain type='test'>" + "x" * 2000 + "</domain>"
pending = []
for i in range(first, first + count):
    vm = str(uuid.UUID(int=i))
    txn = client.transaction()
    txn.create(f"{root}/vms/{vm}", json.dumps(
        {"name": f"s{i:05d}", "node": "node1", "state": "start", "xml": xml}).encode())
    txn.create(f"{root}/vms/{vm}/status", json.dumps({"state": "running"}).encode())
    txn.create(f"{root}/vms/{vm}/owner", json.dumps({"node": "node1"}).encode())
    txn.create(f"{root}/vm-names/s{i:05d}", json.dumps({"uuid": vm}).encode())
    pending.append(txn.commit_async())
    if len(pending) >= 500:
        for result in pending: result.get()
        pending = []
for result in pending: result.get()
client.stop()
'''


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu() -> float:
    times = os.times()
    return times.user + times.system


def write(connect: str, first: int, count: int) -> None:
    subprocess.run([sys.executable, "-c", WRITER, connect, ROOT, str(first), str(count)],
                   check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--more", type=int, default=1000)
    args = parser.parse_args(argv)
    ensemble = ZooKeeperEnsemble(Path(tempfile.mkdtemp(prefix="pvcd-bench-cache-")), 1)
    ensemble.start()
    client = KazooClient(ensemble.connect_string)
    client.start()
    try:
        ensure_schema(client, Paths(ROOT))
        write(ensemble.connect_string, 0, args.vms)
        before, start, used = rss_mib(), time.perf_counter(), cpu()
        cache = StateCache(client, ROOT)
        cache.start(timeout=600)
        print(f"initial load of {args.vms} VMs: {time.perf_counter() - start:.1f} s, "
              f"CPU {cpu() - used:.1f} s, cache +{rss_mib() - before:.0f} MiB RSS", flush=True)
        used = cpu()
        write(ensemble.connect_string, args.vms, args.more)
        last = f"{ROOT}/vm-names/s{args.vms + args.more - 1:05d}"
        wait(lambda: cache.exists(last) and not cache._overlay, timeout=300, interval=0.01)
        spent = cpu() - used
        print(f"{args.more} more VMs seen by the cache: CPU {spent:.2f} s, "
              f"{spent / args.more * 1000:.2f} ms per VM (four znodes)", flush=True)
        cache.close()
    finally:
        client.stop()
        client.close()
        ensemble.stop()


if __name__ == "__main__":
    main()
