"""The chaos test, long form (issue 12): repeated runs of N clients of mixed VM operations for
T seconds on M VMs against a fresh 3-node lab each, with daemon SIGKILLs every K seconds, the
primary killed once and ZooKeeper restarted once; prints each run's figures and the problems it
found, then the totals. Exit status 1 when any run found a problem.

Run as: .venv/bin/python -m bench.chaos --clients 16 --seconds 60 --vms 50 --kill-every 10 \
        --kill-primary --restart-zookeeper --runs 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.chaos.faults import FaultPlan
from tests.chaos.harness import ChaosConfig, ChaosResult, chaos_lab, run_chaos

TOTALLED = ("requests", "acked_writes", "sweeps", "suspects", "double_runs", "ghosts",
            "orphans", "lost", "mismatch", "stuck", "5xx")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--kill-every", type=float, default=None,
                        help="SIGKILL a random node daemon every this many seconds")
    parser.add_argument("--kill-primary", action="store_true")
    parser.add_argument("--restart-zookeeper", action="store_true")
    parser.add_argument("--fencing", choices=("lab", "none"), default="lab",
                        help="the lab's fence driver (lab: a dead node is power-cycled)")
    parser.add_argument("--no-systemd", action="store_true",
                        help="no restart of a killed daemon 2 s later (as systemd does)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    results: list[ChaosResult] = []
    for run in range(1, args.runs + 1):
        config = ChaosConfig(
            clients=args.clients, seconds=args.seconds, vms=args.vms, seed=args.seed + run,
            faults=FaultPlan(kill_every=args.kill_every, kill_primary=args.kill_primary,
                             restart_zookeeper=args.restart_zookeeper, fencing=args.fencing,
                             restart_after=None if args.no_systemd else 2.0))
        lab = chaos_lab(Path(tempfile.mkdtemp(prefix="pvcd-chaos-")) / "lab", args.fencing)
        began = time.monotonic()
        try:
            result = run_chaos(lab, config)
        finally:
            lab.down()
        results.append(result)
        print(f"run {run}/{args.runs} ({time.monotonic() - began:.0f} s): {result.summary()}",
              flush=True)
    totals: Counter[str] = Counter()
    for result in results:
        figures = result.figures()
        totals.update({k: int(figures[k]) for k in TOTALLED})
    converged = [r.converged for r in results]
    worst = max((c for c in converged if c is not None), default=None)
    passed = sum(1 for r in results if not r.problems())
    print(f"total: runs={len(results)} passed={passed} "
          + "  ".join(f"{k}={totals[k]}" for k in TOTALLED)
          + f"  not_converged={converged.count(None)}  worst_converged_s="
          + ("-" if worst is None else f"{worst:.2f}"))
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
