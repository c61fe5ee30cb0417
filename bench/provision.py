"""Creating a VM from a profile with a 2 GiB source image, next to a bare `rbd copy` of it.

A 1-node lab with a throwaway Ceph. The source is a 2 GiB volume holding `--data-mib` MiB of
random data (the rest reads as zeros, as in a real image; the default keeps the memstore OSDs'
RAM within a shared machine, `--data-mib 2048` fills it). Each round times, alternately so
both see the same load: a bare `rbd copy` of the image (then `rbd rm`), and
`POST /provisioner/create ... wait` of a profile that clones it, defines the VM and starts it
(to the task's success; then `DELETE /vm/<vm>?delete_disks`). Target (issue 14): the create's
median ≤ the copy's median + 1 s. Run as:
    .venv/bin/python -m bench.provision [--rounds 3] [--data-mib 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pvcd.domain.provisioner import (
    Profile,
    StorageTemplate,
    SystemTemplate,
    TemplateDisk,
)
from pvcd.lab.lab import Lab
from pvcd.state.codec import encode
from pvcd.state.schema import Paths
from tests.e2e.labclient import LabClient, zookeeper_client

MIB = 1 << 20
POOL = "bench"


def request_seconds(api: LabClient, task_id: str) -> float:
    """How long the copy's storage request of task `task_id` ran (its started/finished)."""
    task = api.get(f"/tasks/{task_id}").json()
    clones = [t for t in api.get("/tasks", params={"limit": "^storage.volume-clone$"}).json()
              if t["args"].get("new_volume") == f"{task['args']['name']}_sda"]
    return float(clones[0]["finished"] - clones[0]["started"]) if clones else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-mib", type=int, default=512,
                        help="MiB of random data in the 2 GiB image (default 512)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pvcd-bench-provision-"))
    lab = Lab(folder / "lab")
    # each memstore OSD holds both copies of the source and of one clone
    memstore_gib = max(4, (4 * args.data_mib) // 1024 + 2)
    info = lab.up(nodes=1, ceph=True, ceph_memstore_gib=memstore_gib)
    try:
        assert info.ceph is not None
        conf, keyring = info.ceph["conf"], info.ceph["keyring"]
        api = LabClient(info)

        def rbd(*argv: str) -> None:
            subprocess.run(["rbd", "--conf", conf, "--keyring", keyring, *argv], check=True,
                           capture_output=True, timeout=600)

        def ok(response: object) -> None:
            assert getattr(response, "status_code", None) == 200, getattr(response, "text", "")

        ok(api.post("/storage/ceph/pool", data={"pool": POOL, "pgs": "32"}, timeout=120))
        ok(api.post("/storage/ceph/volume", data={"pool": POOL, "volume": "image",
                                                  "size": "2G"}, timeout=120))
        data = folder / "data.raw"
        data.write_bytes(os.urandom(args.data_mib * MIB))
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(data),
                        f"rbd:{POOL}/image:id=admin:conf={conf}:keyring={keyring}"],
                       check=True, timeout=600)
        data.unlink()
        paths = Paths(info.zk_root)
        with zookeeper_client(lab) as client:
            for kind, record in (
                    ("system", SystemTemplate("bench", 1, 64)),
                    ("storage", StorageTemplate("bench", [
                        TemplateDisk("sda", POOL, source_volume="image")])),
                    ("profile", Profile("bench", system_template="bench",
                                        storage_template="bench"))):
                client.create(paths.provisioner_object(kind, record.name),
                              encode(record.to_doc()))
        time.sleep(1.0)  # written past the daemon: let its cache catch up
        copies, clones, creates, own = [], [], [], []
        for round_ in range(args.rounds):
            started = time.perf_counter()
            rbd("copy", "--no-progress", f"{POOL}/image", f"{POOL}/bare")
            copies.append(time.perf_counter() - started)
            rbd("rm", "--no-progress", f"{POOL}/bare")
            started = time.perf_counter()  # the same copy as a storage request (§2.2)
            ok(api.post(f"/storage/ceph/volume/{POOL}/image/clone",
                        data={"new_volume": "cloned", "wait": "1"}, timeout=600))
            clones.append(time.perf_counter() - started)
            ok(api.call("DELETE", f"/storage/ceph/volume/{POOL}/cloned", timeout=600))
            name = f"bench{round_}"
            started = time.perf_counter()
            answer = api.post("/provisioner/create", data={"name": name, "profile": "bench",
                                                           "wait": "1"}, timeout=600)
            creates.append(time.perf_counter() - started)
            ok(answer)
            own.append(creates[-1] - request_seconds(api, answer.json()["task_id"]))
            ok(api.call("DELETE", f"/vm/{name}", params={"delete_disks": "1"}, timeout=600))
            print(f"round {round_ + 1}: rbd copy {copies[-1]:.2f} s, API clone "
                  f"{clones[-1]:.2f} s, provisioner.create {creates[-1]:.2f} s (of which "
                  f"outside its copy request {own[-1]:.2f} s)")
        copy, create = statistics.median(copies), statistics.median(creates)
        print(f"2 GiB image with {args.data_mib} MiB of data, {args.rounds} rounds, medians:")
        print(f"bare rbd copy:            {copy:.2f} s")
        print(f"clone storage request:    {statistics.median(clones):.2f} s "
              "(POST .../clone?wait: the same copy through the primary)")
        print(f"create from profile:      {create:.2f} s (to task success: copy, define, "
              "start requested); outside its copy request "
              f"{statistics.median(own):.2f} s")
        print(f"difference:               {create - copy:+.2f} s (target: <= +1.00 s) "
              f"{'OK' if create <= copy + 1.0 else 'MISSED'}")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
