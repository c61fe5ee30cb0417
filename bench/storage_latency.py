"""API latency of volume / snapshot / pool creation next to the bare `rbd` / `ceph` commands.

A 1-node lab with a throwaway Ceph (`Lab.up(ceph=True)`); each round times one bare command
(`rbd create`, `rbd snap create`, `ceph osd pool create` + `rbd pool init`) and then the API call
doing the same, alternately, so both see the same machine load. The target (issue 5): API p50 ≤
1.2 x bare p50 + 20 ms. Run as:
    .venv/bin/python -m bench.storage_latency [--rounds 30] [--pool-rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient


def timed(action: Callable[..., None], *argv: str, **values: str) -> float:
    started = time.perf_counter()
    action(*argv, **values)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--pool-rounds", type=int, default=8)
    parser.add_argument("--stats-interval", type=float, default=5.0,
                        help="drivers.ceph.stats_interval of the node (default 5 s, the "
                             "production default; the lab's own is 2 s)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pvcd-bench-storage-"))
    lab = Lab(folder / "lab")
    info = lab.up(nodes=1, ceph=True, ceph_stats_interval=args.stats_interval)
    print(f"stats refresh every {args.stats_interval:g} s")
    try:
        assert info.ceph is not None
        cluster = ["--conf", info.ceph["conf"], "--keyring", info.ceph["keyring"]]
        api = LabClient(info)

        def tool(*argv: str) -> None:
            subprocess.run([argv[0], *cluster, *argv[1:]], check=True, capture_output=True,
                           timeout=60)

        def post(path: str, **values: str) -> None:
            response = api.call("POST", path, params=values, timeout=60)
            assert response.status_code == 200, response.text

        def bare_pool(name: str) -> None:
            tool("ceph", "osd", "pool", "create", name, "8", "8", "replicated",
                 "--autoscale-mode", "off")
            tool("rbd", "pool", "init", "--pool", name)

        post("/storage/ceph/pool", pool="bench", pgs="32")
        tool("rbd", "create", "--pool", "bench", "--image", "base", "--size", "1G")
        post("/storage/ceph/volume", pool="bench", volume="apibase", size="1G")
        cases: dict[str, tuple[list[float], list[float]]] = {
            "volume create": ([], []), "snapshot create": ([], []), "pool create": ([], [])}
        for i in range(args.rounds):
            bare, through_api = cases["volume create"]
            bare.append(timed(tool, "rbd", "create", "--pool", "bench", "--image", f"b{i}",
                              "--size", "1073741824B"))
            through_api.append(timed(post, "/storage/ceph/volume", pool="bench",
                                     volume=f"a{i}", size="1G"))
            bare, through_api = cases["snapshot create"]
            bare.append(timed(tool, "rbd", "snap", "create", "--pool", "bench", "--image",
                              "base", "--snap", f"s{i}", "--no-progress"))
            through_api.append(timed(post, "/storage/ceph/volume/snapshot", pool="bench",
                                     volume="apibase", snapshot=f"s{i}"))
        for i in range(args.pool_rounds):
            bare, through_api = cases["pool create"]
            bare.append(timed(bare_pool, f"bp{i}"))
            through_api.append(timed(post, "/storage/ceph/pool", pool=f"ap{i}", pgs="8"))
        print(f"{'operation':<16} {'bare p50':>9} {'API p50':>9} {'API p90':>9} {'ratio':>6} "
              f"{'target':>9}  ok")
        for name, (bare, through_api) in cases.items():
            bare_p50 = statistics.median(bare)
            api_p50 = statistics.median(through_api)
            api_p90 = statistics.quantiles(through_api, n=10)[-1]
            target = 1.2 * bare_p50 + 0.020
            print(f"{name:<16} {bare_p50 * 1000:>7.1f}ms {api_p50 * 1000:>7.1f}ms "
                  f"{api_p90 * 1000:>7.1f}ms {api_p50 / bare_p50:>6.2f} {target * 1000:>7.1f}ms"
                  f"  {'yes' if api_p50 <= target else 'NO'}")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
