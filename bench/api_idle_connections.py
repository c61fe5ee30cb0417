"""Idle connections against the real API: do they starve an authenticated client, or make the
API's thread spin?

Child processes (each with its own file table) open `--connections` TCP connections to the API
from `--addresses` loopback source addresses and send nothing. While they hold them, this
process measures the API thread's CPU time and the latency of authenticated `GET /api/v1/node`
from another address. The API keeps at most `max_connections_per_client` per address (64) and
`max_connections` in all (1000, or less under a low open-file limit; at the cap a new connection
takes the place of the longest idle one); the rest are closed at once or wait in the listen
backlog; idle ones are dropped after `header_timeout` (10 s). Run as:
    .venv/bin/python -m bench.api_idle_connections [--connections 20000] [--addresses 1]

Measured (2 cores, 2026-12-07), 20,000 idle connections:
- from 1 address: 64 held, the rest closed at once; API thread 1 % CPU; authenticated GET
  p50 2 ms, p99 10 ms;
- from 1,000 addresses: 999 held, the longest idle evicted for each new one; API thread 12 %
  CPU; authenticated GET p50 11 ms, p99 1.1 s (a SYN retransmitted while the listen backlog
  overflows).
"""

from __future__ import annotations

import argparse
import http.client
import resource
import time

from bench.harness import TOKEN, api, print_row, summary, zookeeper
from tests.abusive_clients import idle_connections


def thread_cpu(ident: int) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


def authenticated_get(port: int) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                      source_address=("127.0.0.2", 0))
    conn.request("GET", "/api/v1/node", headers={"X-Api-Key": TOKEN})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200, response.status
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--addresses", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with zookeeper() as ensemble, api(ensemble, 3) as bench:
        server = bench.server
        assert server is not None and server.thread is not None and server.http_server
        ident = server.thread.ident
        assert ident is not None
        idle_cpu = thread_cpu(ident)
        time.sleep(1)
        idle_cpu = thread_cpu(ident) - idle_cpu
        with idle_connections(bench.port, args.connections, args.addresses) as opened:
            cpu = thread_cpu(ident)
            started = time.monotonic()
            latencies = []
            while time.monotonic() - started < args.seconds:
                latencies.append(authenticated_get(bench.port))
                time.sleep(0.1)
            busy = (thread_cpu(ident) - cpu) / (time.monotonic() - started)
            http_server = server.http_server
            print_row(f"idle connections={opened} addresses={args.addresses}", {
                "held_by_api": http_server.open_connections,
                "closed_per_client_cap": http_server.refused_per_client,
                "accept_pauses": http_server.accept_pauses,
                "evicted_idle": http_server.evicted_idle,
                "api_thread_cpu": round(busy, 3), "api_thread_cpu_idle": round(idle_cpu, 3)})
            print_row("authenticated GET /api/v1/node meanwhile", summary(latencies))


if __name__ == "__main__":
    main()
