"""GET /api/v1/node (N = 10, 100, 1000 nodes) and /api/v1/vm (N = 1000, 10000 VMs) latency.

Prints p50/p99 latency, requests/s, and the number of ZooKeeper requests made while serving the
reads (the target is zero: reads come from the watch-fed cache). Run as:
    .venv/bin/python -m bench.api_read [--requests 500]
"""

from __future__ import annotations

import argparse

from bench.harness import api, body_size, print_row, summary, timed_requests, zookeeper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--vm-sizes", default="1000,10000")
    args = parser.parse_args()
    with zookeeper() as ensemble:
        for size in (int(s) for s in args.sizes.split(",")):
            with api(ensemble, size) as bench:
                assert body_size(bench, "/api/v1/node") == size
                timed_requests(bench, "GET", "/api/v1/node", 20)  # warm up
                before = bench.zk_calls[0]
                latencies = timed_requests(bench, "GET", "/api/v1/node", args.requests)
                stats = summary(latencies)
                stats["zk_requests"] = bench.zk_calls[0] - before
                print_row(f"GET /api/v1/node N={size}", stats)
                limited = timed_requests(bench, "GET", "/api/v1/node?limit=hv0000", args.requests)
                print_row(f"GET /api/v1/node?limit N={size}", summary(limited))
        for size in (int(s) for s in args.vm_sizes.split(",")):
            with api(ensemble, 3, vms=size) as bench:
                assert body_size(bench, "/api/v1/vm") == size
                count = max(20, args.requests // (10 if size > 1000 else 1))
                timed_requests(bench, "GET", "/api/v1/vm", 5)  # warm up
                before = bench.zk_calls[0]
                stats = summary(timed_requests(bench, "GET", "/api/v1/vm", count))
                stats["zk_requests"] = bench.zk_calls[0] - before
                print_row(f"GET /api/v1/vm N={size}", stats)
                one = timed_requests(bench, "GET", "/api/v1/vm/vm00042", args.requests)
                print_row(f"GET /api/v1/vm/<vm> N={size}", summary(one))


if __name__ == "__main__":
    main()
