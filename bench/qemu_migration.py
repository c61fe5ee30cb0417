"""Live migration of the lab's tiny QEMU guest between two real libvirtd instances (no ZooKeeper).

Migrates one running guest back and forth `--runs` times per variant (peer-to-peer or
client-managed `migrate3`; peers over unix sockets or qemu+tcp on loopback) and prints p50, min
and max of the time the libvirt call takes. Needs root. Run as:
    .venv/bin/python -m bench.qemu_migration [--runs 10] [--modes p2p,client]
        [--transports unix,tcp]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import libvirt

from bench.harness import print_row
from pvcd.lab.libvirtd import LibvirtdInstance, LibvirtdLab
from pvcd.lab.qemu_guest import build_guest_kernel, qemu_guest_xml

FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


def migrate(source: libvirt.virConnect, dest: LibvirtdInstance, name: str, mode: str) -> None:
    domain = source.lookupByName(name)
    if mode == "p2p":
        domain.migrateToURI3(dest.peer_uri, dest.migration_params(),
                             FLAGS | libvirt.VIR_MIGRATE_PEER2PEER)
        return
    dconn = dest.connect()
    try:
        domain.migrate3(dconn, dest.migration_params(), FLAGS)
    finally:
        dconn.close()


def measure(workdir: Path, kernel: Path, transport: str, mode: str, runs: int) -> list[float]:
    lab = LibvirtdLab(workdir / f"{transport}-{mode}", 2, transport=transport)
    lab.start()
    conns = [instance.connect() for instance in lab.instances]
    try:
        conns[0].defineXML(qemu_guest_xml("bench", kernel=kernel)).create()
        times = []
        for run in range(runs):
            source, dest = run % 2, (run + 1) % 2
            started = time.monotonic()
            migrate(conns[source], lab[dest], "bench", mode)
            times.append(time.monotonic() - started)
            state, reason = conns[dest].lookupByName("bench").state()
            assert (state, reason) == (libvirt.VIR_DOMAIN_RUNNING,
                                       libvirt.VIR_DOMAIN_RUNNING_MIGRATED), (state, reason)
        return times
    finally:
        for conn in conns:
            conn.close()
        lab.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--modes", default="p2p,client")
    parser.add_argument("--transports", default="unix,tcp")
    args = parser.parse_args()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    workdir = Path(tempfile.mkdtemp(prefix="pvcd-bench-qemu-", dir="/tmp"))
    try:
        kernel = build_guest_kernel(workdir / "kernel")
        for transport in args.transports.split(","):
            for mode in args.modes.split(","):
                times = measure(workdir, kernel, transport, mode, args.runs)
                print_row(f"live migration {mode}/{transport}", {
                    "runs": len(times),
                    "p50_ms": statistics.median(times) * 1000,
                    "min_ms": min(times) * 1000,
                    "max_ms": max(times) * 1000,
                })
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
