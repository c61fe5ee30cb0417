"""A state-changing POST (node domain-state) end to end: one ZooKeeper transaction.

Prints p50/p99 latency and the ZooKeeper requests per POST (the target is one). Run as:
    .venv/bin/python -m bench.api_write [--requests 500]
"""

from __future__ import annotations

import argparse

from bench.harness import api, print_row, summary, timed_requests, zookeeper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    with zookeeper() as ensemble, api(ensemble, 100) as bench:
        path = "/api/v1/node/hv00042/domain-state"
        latencies = []
        bench.zk_kinds.clear()
        for i in range(args.requests):
            state = "flush" if i % 2 == 0 else "ready"
            latencies += timed_requests(bench, "POST", path, 1, body=f"domain-state={state}")
        stats = summary(latencies)
        # the write itself is one Transaction; the cache's watch re-read (GetData) happens
        # asynchronously after the reply and is listed separately
        for kind, count in sorted(bench.zk_kinds.items()):
            stats[f"zk_{kind}_per_post"] = count / args.requests
        print_row("POST node domain-state", stats)


if __name__ == "__main__":
    main()
