"""Upload throughput through the API next to `rbd import` of the same file, and the API
process's memory during the uploads (extensions.md §2.1; issue 14: >= 80 % of `rbd import`,
RSS growth < 100 MB for a 10 GiB upload).

A 1-node lab with a throwaway Ceph (`Lab.up(ceph=True)`); each round times `rbd import` of a
random file into a new volume and an upload of the same file through the API (`curl -T`, which
streams it) into a new volume of its size, alternately, so both see the same machine load; each
volume is removed after its round. The node daemon's RSS (`/proc/<pid>/status`, the process
that serves the API) is sampled every 50 ms during the uploads; its growth is the peak over the
value before the first upload.

Why the timed file is small: the lab's memstore OSDs keep every byte in RAM, on a machine
shared with other work. The large round (`--large-gib`, default 10) streams a file of zeros
instead: every byte still goes through the API process, but the writer turns whole blocks of
zeros into write-zeroes, which Ceph stores as nothing. What bounds the API's memory does not
depend on the length: the body is queued to the job at most 8 MiB ahead
(`pvcd.upload_pipe.DEFAULT_CAPACITY`; Tornado reads no further meanwhile), and the writer holds
at most 17 MiB (`pvcd.drivers.ceph.rbd_stream`: 16 writes of 1 MiB in flight plus one being
filled). `--rounds` streams the total through one process, so a leak per byte would show as
growth from round to round. Run as:
    .venv/bin/python -m bench.upload [--size-mib 256] [--rounds 3] [--large-gib 10]
Measured: docs/storage.md, "Uploading an image".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient

MIB = 1 << 20


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """The peak RSS of `pid` while running (sampled every 50 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self._stop.wait(0.05)


def curl_upload(token: str, url: str, volume: str, image: Path,
                timeout: float) -> subprocess.CompletedProcess[str]:
    """`image` streamed by curl (`-T`) as a raw upload into volume `bench/<volume>`."""
    return subprocess.run(
        ["curl", "-sS", "-f", "-X", "POST", "-T", str(image), "-H", f"X-Api-Key: {token}",
         "-H", "Content-Type: application/octet-stream",
         f"{url}/storage/ceph/volume/bench/{volume}/upload?image_format=raw"],
        capture_output=True, text=True, timeout=timeout, check=False)


def small_upload(api: LabClient) -> float:
    """Seconds of a 4 KiB upload: what every upload costs besides its bytes (the task, the undo
    snapshot taken and removed: three storage requests)."""
    answer = api.post("/storage/ceph/volume", timeout=60,
                      params={"pool": "bench", "volume": "small", "size": MIB})
    assert answer.status_code == 200, answer.text
    started = time.perf_counter()
    answer = api.post("/storage/ceph/volume/bench/small/upload", data=bytes(4096), timeout=60,
                      params={"image_format": "raw"})
    seconds = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    api.call("DELETE", "/storage/ceph/volume/bench/small", timeout=60)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--large-gib", type=int, default=10,
                        help="then one upload of a file of zeros this large (0: none)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    folder = Path(tempfile.mkdtemp(prefix="pvcd-bench-upload-"))
    image = folder / "image.raw"
    with image.open("wb") as out:
        for _ in range(args.size_mib):
            out.write(os.urandom(MIB))
    lab = Lab(folder / "lab")
    # the OSDs' capacity is a number until data is written: room for the large volume, whose
    # zeros are written as write-zeroes and take none
    info = lab.up(nodes=1, ceph=True, ceph_memstore_gib=max(1, 2 * args.large_gib + 2))
    try:
        api = LabClient(info)
        assert info.ceph is not None
        rbd = ["rbd", "--conf", info.ceph["conf"], "--keyring", info.ceph["keyring"]]
        pid = info.nodes[0].pid
        api.post("/storage/ceph/pool", params={"pool": "bench", "pgs": 32}, timeout=60)
        small_upload(api)  # librbd loaded, the connection open: not counted in the RSS
        fixed = statistics.median(small_upload(api) for _ in range(3))
        baseline = rss_kib(pid)
        api_seconds: list[float] = []
        import_seconds: list[float] = []
        peaks: list[int] = []
        growths: list[int] = []
        for round_ in range(args.rounds):
            started = time.perf_counter()
            subprocess.run([*rbd, "import", "--no-progress", str(image), "bench/imported"],
                           check=True, timeout=600)
            import_seconds.append(time.perf_counter() - started)
            subprocess.run([*rbd, "rm", "--no-progress", "bench/imported"], check=True,
                           capture_output=True, timeout=600)
            answer = api.post("/storage/ceph/volume", timeout=60,
                              params={"pool": "bench", "volume": "uploaded", "size": size})
            assert answer.status_code == 200, answer.text
            before = rss_kib(pid)
            with RssSampler(pid) as sampler:
                started = time.perf_counter()
                done = curl_upload(info.token, info.api, "uploaded", image, 600)
                api_seconds.append(time.perf_counter() - started)
            assert done.returncode == 0, done.stderr
            peaks.append(sampler.peak)
            growths.append(sampler.peak - before)
            answer = api.call("DELETE", "/storage/ceph/volume/bench/uploaded", timeout=60)
            assert answer.status_code == 200, answer.text
            print(f"round {round_ + 1}: rbd import {args.size_mib / import_seconds[-1]:.0f} "
                  f"MiB/s, API {args.size_mib / api_seconds[-1]:.0f} MiB/s, API process RSS "
                  f"{before / 1024:.0f} MiB before, +{growths[-1] / 1024:.0f} MiB at its peak",
                  flush=True)
        bare = args.size_mib / statistics.median(import_seconds)
        through_api = args.size_mib / statistics.median(api_seconds)
        print(f"\n{args.rounds} rounds of {args.size_mib} MiB (medians)")
        print(f"rbd import:      {bare:.0f} MiB/s")
        print(f"API upload:      {through_api:.0f} MiB/s  ({100 * through_api / bare:.0f} % of "
              "rbd import; target >= 80 %)")
        streaming = args.size_mib / (statistics.median(api_seconds) - fixed)
        print(f"                 fixed cost of an upload (4 KiB: task, undo snapshot taken and "
              f"removed) {fixed * 1000:.0f} ms; without it {streaming:.0f} MiB/s "
              f"({100 * streaming / bare:.0f} %)")
        print(f"API process RSS: growth during an upload at most "
              f"{max(growths) / 1024:.0f} MiB (target < 100 MB); "
              f"{baseline / 1024:.0f} MiB after a warm-up upload, "
              f"{max(peaks) / 1024:.0f} MiB at the peak of "
              f"{args.rounds * args.size_mib} MiB streamed")
        if args.large_gib:
            large_upload(api, info.token, info.api, pid, folder, args.large_gib)
    finally:
        lab.down()
        shutil.rmtree(folder, ignore_errors=True)


def large_upload(api: LabClient, token: str, url: str, pid: int, folder: Path,
                 gib: int) -> None:
    """One upload of `gib` GiB (a sparse file: zeros, which the writer turns into
    write-zeroes, so the lab's in-memory OSDs can hold it): the API process's RSS growth
    while every byte of it streams through (issue 14: < 100 MB for 10 GiB)."""
    size = gib << 30
    image = folder / "large.raw"
    with image.open("wb") as out:
        out.truncate(size)
    answer = api.post("/storage/ceph/volume", timeout=60,
                      params={"pool": "bench", "volume": "large", "size": size})
    assert answer.status_code == 200, answer.text
    before = rss_kib(pid)
    with RssSampler(pid) as sampler:
        started = time.perf_counter()
        done = curl_upload(token, url, "large", image, 3600)
        seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    api.call("DELETE", "/storage/ceph/volume/bench/large", timeout=120)
    print(f"{gib} GiB upload (zeros): {seconds:.1f} s ({(size >> 20) / seconds:.0f} MiB/s); "
          f"API process RSS {before / 1024:.0f} MiB before, +{(sampler.peak - before) / 1024:.0f}"
          " MiB at its peak (target < 100 MB)")


if __name__ == "__main__":
    main()
