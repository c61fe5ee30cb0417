"""An incremental VM backup's cost follows the change, not the volume (issue 15): the time of
an incremental backup of a 4 GiB volume with 64 MiB changed, next to a full backup of a VM
whose one volume holds 64 MiB (goal: at most 2x).

A 1-node lab with a throwaway Ceph (`Lab.up(ceph=True)`; the memstore OSD holds every byte in
RAM, so it is sized for the filled volume). VM `big` has one volume of `--volume-gib` filled
with data (`rbd bench` writes, sequential 4 MiB), VM `small` one of `--change-mib` filled the
same way. Each round: `--change-mib` of `big` is rewritten (behind pvcd's back, as a guest would),
then `POST /vm/big/backup` incremental from a retained full backup and `POST /vm/small/backup`
full are timed from the request to the task's end (`wait`): both include the snapshot, the
export through `rbd`, the SHA-256 and the manifest. `rbd export-diff` and `rbd export` of the
same amounts are timed alone as well, to show what the task adds. Medians over `--rounds`.
Run as root:
    .venv/bin/python -m bench.backup [--volume-gib 4] [--change-mib 64] [--rounds 3]
Measured: docs/backups.md, "How long a backup takes".
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient

MIB = 1 << 20
POOL = "vms"


class BackupBench:
    def __init__(self, lab: Lab, volume_gib: int, change_mib: int) -> None:
        self.lab = lab
        self.info = lab.up(nodes=1, ceph=True, ceph_memstore_gib=volume_gib + 2)
        self.api = LabClient(self.info)
        assert self.info.ceph is not None and self.info.backup_path is not None
        self.rbd_args = ["--conf", self.info.ceph["conf"], "--keyring", self.info.ceph["keyring"]]
        self.root = self.info.backup_path
        Path(self.root).mkdir(parents=True, exist_ok=True)
        self.change = change_mib * MIB
        self.ok("POST", "/storage/ceph/pool", pool=POOL, pgs=32)
        self.vm("big", volume_gib << 30)
        self.vm("small", self.change)

    def call(self, method: str, path: str, **values: Any) -> Any:
        return self.api.call(method, path, params=values, timeout=3600)

    def ok(self, method: str, path: str, **values: Any) -> Any:
        answer = self.call(method, path, **values)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def rbd(self, *args: str) -> float:
        began = time.monotonic()
        subprocess.run(["rbd", *self.rbd_args, *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=3600)
        return time.monotonic() - began

    def fill(self, volume: str, amount: int) -> None:
        self.rbd("bench", "--io-type", "write", "--io-size", "4M", "--io-threads", "8",
                 "--io-total", str(amount), "--io-pattern", "seq", f"{POOL}/{volume}")

    def vm(self, name: str, size: int) -> None:
        self.ok("POST", "/storage/ceph/volume", pool=POOL, volume=name, size=size)
        self.fill(name, size)
        disk = (f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
                f"<source protocol='rbd' name='{POOL}/{name}'/>"
                f"<target dev='vda' bus='virtio'/></disk>")
        xml = tiny_guest_xml(name, str(uuid.uuid4())).replace("<devices>", "<devices>" + disk)
        self.ok("POST", "/vm", xml=xml)
        self.ok("POST", f"/vm/{name}/state", state="stop", wait=1)

    def backup(self, name: str, **values: Any) -> tuple[float, dict[str, Any]]:
        # a backup is named by its second: never two in one second
        second = time.strftime("%Y%m%d%H%M%S")
        while time.strftime("%Y%m%d%H%M%S") == second:
            time.sleep(0.05)
        began = time.monotonic()
        answer = self.ok("POST", f"/vm/{name}/backup", backup_path=self.root, wait=1, **values)
        return time.monotonic() - began, dict(answer["result"])

    def round(self, parent: str) -> dict[str, float]:
        self.fill("big", self.change)  # the first change-mib rewritten
        incremental, result = self.backup("big", incremental_parent=parent)
        assert result["type"] == "incremental"
        full_small, _ = self.backup("small")
        self.rbd("snap", "create", f"{POOL}/big@raw")
        diff = self.rbd("export-diff", "--from-snap", f"backup_{parent}", "--no-progress",
                        f"{POOL}/big@raw", "-")
        self.rbd("snap", "rm", f"{POOL}/big@raw")
        export = self.rbd("export", "--export-format", "2", "--no-progress", f"{POOL}/small", "-")
        return {"incremental": incremental, "full_small": full_small, "raw_diff": diff,
                "raw_export": export, "diff_bytes": float(result["export_size_bytes"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volume-gib", type=int, default=4)
    parser.add_argument("--change-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pvcd-bench-backup-"))
    lab = Lab(workdir / "lab")
    try:
        began = time.monotonic()
        bench = BackupBench(lab, args.volume_gib, args.change_mib)
        print(f"lab up, volumes filled in {time.monotonic() - began:.1f} s")
        full_big, result = bench.backup("big", retain_snapshot=1)
        print(f"full backup of {args.volume_gib} GiB: {full_big:.2f} s "
              f"({result['export_size_bytes'] / full_big / MIB:.0f} MiB/s)")
        rounds = []
        for number in range(1, args.rounds + 1):
            rounds.append(bench.round(result["datestring"]))
            print(f"round {number}: " + ", ".join(f"{key} {value:.2f}"
                                                 for key, value in rounds[-1].items()))
        median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        ratio = median["incremental"] / median["full_small"]
        print(f"incremental backup, {args.volume_gib} GiB volume, {args.change_mib} MiB "
              f"changed ({median['diff_bytes'] / MIB:.1f} MiB diff): "
              f"{median['incremental']:.2f} s (median of {args.rounds})")
        print(f"full backup of a {args.change_mib} MiB volume: {median['full_small']:.2f} s")
        print(f"ratio: {ratio:.2f}x (goal <= 2x) -> {'OK' if ratio <= 2 else 'MISSED'}")
        print(f"rbd alone: export-diff {median['raw_diff']:.2f} s, export of "
              f"{args.change_mib} MiB {median['raw_export']:.2f} s")
    finally:
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
