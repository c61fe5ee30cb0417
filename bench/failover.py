"""Failover times on a network lab (nodes in namespaces, a client on the underlay).

1. Primary SIGKILL → the API answers on the floating IP again (from the client namespace).
   Session timeout 3 s: target ≤ 4 s.
2. Graceful handover (`POST coordinator-state=primary`) → the API answers on the floating IP
   from the new primary. Target ≤ 1 s.
3. A node hangs (SIGSTOP) → its VMs run elsewhere, with the *default* timing (keepalive 2 s,
   dead after 6 missed, session 10 s). Target ≤ 30 s.

Run as: .venv/bin/python -m bench.failover [--rounds 3]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from pathlib import Path

import requests

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab

NODES = ("node1", "node2", "node3")


def floating_primary(lab: Lab, client: str) -> str | None:
    nodes = lab.floating_api_get(client, "/node", timeout=1.0)
    primaries = [n["name"] for n in nodes or [] if n["coordinator_state"] == "primary"]
    return primaries[0] if len(primaries) == 1 else None


def wait(predicate, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("condition not met")


def lab_up(tag: str, **kwargs: object) -> tuple[Lab, str]:
    lab = Lab(Path(tempfile.mkdtemp(prefix=f"pvcd-bench-{tag}-")) / "lab")
    lab.up(nodes=3, network=True, **kwargs)  # type: ignore[arg-type]
    return lab, lab.network().add_client("op")


def sigkill_and_handover(rounds: int) -> None:
    kill_times, handover_times = [], []
    for _ in range(rounds):
        lab, client = lab_up("kill", session_timeout=3.0)
        try:
            old = wait(lambda: floating_primary(lab, client))  # noqa: B023
            target = next(n for n in NODES if n != old)
            requests.post(f"{lab.info.api}/node/{target}/coordinator-state",  # type: ignore[union-attr]
                          data={"coordinator-state": "primary"},
                          headers={"X-Api-Key": lab.info.token}, timeout=5)  # type: ignore[union-attr]
            start = time.monotonic()
            wait(lambda: floating_primary(lab, client) == target)  # noqa: B023
            handover_times.append(time.monotonic() - start)
            lab.signal_node(target, signal.SIGKILL)
            start = time.monotonic()
            wait(lambda: floating_primary(lab, client) not in (None, target))  # noqa: B023
            kill_times.append(time.monotonic() - start)
        finally:
            lab.down()
    print(f"graceful handover -> API on the floating IP: "
          f"p50={statistics.median(handover_times):.2f} s max={max(handover_times):.2f} s "
          f"(n={rounds})")
    print(f"primary SIGKILL -> API on the floating IP (session 3 s): "
          f"p50={statistics.median(kill_times):.2f} s max={max(kill_times):.2f} s (n={rounds})")


def hang(rounds: int) -> None:
    times = []
    for _ in range(rounds):
        lab, client = lab_up("hang", session_timeout=10.0, keepalive_interval=2.0,
                             dead_threshold=6)
        try:
            info = lab.info
            assert info is not None
            session = requests.Session()
            session.headers["X-Api-Key"] = info.token
            primary = wait(lambda: floating_primary(lab, client))  # noqa: B023
            victim = next(n for n in NODES if n != primary)
            uuids = []
            for i in range(4):
                session.post(f"{info.api}/vm", data={"xml": tiny_guest_xml(f"h{i}"),
                                                     "node": victim}).raise_for_status()
                uuids.append(session.get(f"{info.api}/vm/h{i}").json()[0]["uuid"])

            def running_on(node: str, lab: Lab = lab) -> set[str]:
                try:
                    return {u for u, d in lab.domains(node).items() if d["state"] == "running"}
                except (OSError, RuntimeError, ValueError):
                    return set()

            wait(lambda: set(uuids) <= running_on(victim))  # noqa: B023
            lab.signal_node(victim, signal.SIGSTOP)
            start = time.monotonic()
            others = [n for n in NODES if n != victim]
            wait(lambda: set(uuids) <= set().union(*(running_on(n) for n in others)),  # noqa: B023
                 timeout=120)
            times.append(time.monotonic() - start)
            lab.signal_node(victim, signal.SIGCONT)
        finally:
            lab.down()
    print(f"node hang -> its VMs running elsewhere (default timing, dead after 6 x 2 s): "
          f"p50={statistics.median(times):.2f} s max={max(times):.2f} s (n={rounds})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sigkill_and_handover(args.rounds)
    hang(max(1, args.rounds // 2))


if __name__ == "__main__":
    main()
