"""dnsmasq's `--dhcp-script`: keeps a network's lease journal; also the journal's reader.

dnsmasq runs with `--leasefile-ro`, so it keeps no lease file of its own. Instead it execs this
hook (through the small wrapper `DnsmasqInstance` writes, which bakes in the lease directory):

    hook init                       print the known leases in dnsmasq's lease-file format
    hook add|old|del MAC IP [NAME]  a lease was created / changed / destroyed

Events are appended as JSON lines to `<dir>/leases.jsonl`; the current lease set is that file
folded by IP address (a lease *is* an address; its MAC or name may change in `old` events). The
driver reads it with `read_leases`, and can replace it with a snapshot (`write_snapshot`) that
comes from ZooKeeper, which is how the cluster, not the node's disk, stays the lease store: the
next dnsmasq start gets that snapshot back through `init`.

dnsmasq runs the hook as root, one at a time, with stdin on /dev/null and stdout/stderr captured
for its log; stdout of `init` is its lease database. Writers and the compacting reader take an
exclusive flock on `<dir>/leases.lock`, so an append never lands in a file being replaced.
Unknown actions (`tftp`, `arp-add`, ... ) are ignored, as the manual asks. Kept free of pvcd
imports so that a hook run (one per lease event) starts quickly.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

JOURNAL = "leases.jsonl"
LOCK = "leases.lock"
LEASE_EVENTS = ("add", "old", "del")


@dataclass(frozen=True)
class Lease:
    """A DHCPv4 lease: `expires` is a Unix time, 0 for an infinite lease."""

    mac: str
    ip: str
    hostname: str | None
    expires: int

    def expired(self, now: float) -> bool:
        return self.expires != 0 and self.expires <= now


@contextmanager
def _locked(lease_dir: str) -> Iterator[None]:
    fd = os.open(os.path.join(lease_dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fold(lines: Iterator[str]) -> dict[str, Lease]:
    leases: dict[str, Lease] = {}
    for line in lines:
        try:
            event = json.loads(line)
            action, ip = event["event"], str(ipaddress.ip_address(event["ip"]))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line after a crash: skip it
        if action == "del":
            leases.pop(ip, None)
        elif action in ("add", "old"):
            leases[ip] = Lease(
                mac=event["mac"],
                ip=ip,
                hostname=event.get("hostname"),
                expires=int(event.get("expires", 0)),
            )
    return leases


def _read(lease_dir: str) -> tuple[dict[str, Lease], int]:
    try:
        with open(os.path.join(lease_dir, JOURNAL), encoding="utf-8") as journal:
            lines = journal.readlines()
    except FileNotFoundError:
        return {}, 0
    return _fold(iter(lines)), len(lines)


def _record(action: str, lease: Lease) -> str:
    return (
        json.dumps(
            {
                "event": action,
                "mac": lease.mac,
                "ip": lease.ip,
                "hostname": lease.hostname,
                "expires": lease.expires,
                "at": round(time.time(), 3),
            }
        )
        + "\n"
    )


def _replace(lease_dir: str, leases: Sequence[Lease]) -> None:
    """Rewrite the journal as one `add` per lease (caller holds the lock)."""
    tmp = os.path.join(lease_dir, f".{JOURNAL}.tmp")
    with open(tmp, "w", encoding="utf-8") as journal:
        journal.writelines(_record("add", lease) for lease in leases)
        journal.flush()
        os.fsync(journal.fileno())
    os.replace(tmp, os.path.join(lease_dir, JOURNAL))


def read_leases(lease_dir: str, now: float | None = None, compact_over: int = 1000) -> list[Lease]:
    """Current unexpired leases, sorted by IP; compacts a journal grown past `compact_over`."""
    now = time.time() if now is None else now
    with _locked(lease_dir):
        leases, lines = _read(lease_dir)
        current = sorted(
            (le for le in leases.values() if not le.expired(now)),
            key=lambda le: ipaddress.ip_address(le.ip),
        )
        if lines > compact_over + 2 * len(current):
            _replace(lease_dir, current)
    return current


def write_snapshot(lease_dir: str, leases: Sequence[Lease]) -> None:
    """Make the journal hold exactly `leases` (e.g. from ZooKeeper) before dnsmasq starts."""
    with _locked(lease_dir):
        _replace(lease_dir, leases)


def append_event(lease_dir: str, action: str, lease: Lease) -> None:
    with (
        _locked(lease_dir),
        open(os.path.join(lease_dir, JOURNAL), "a", encoding="utf-8") as journal,
    ):
        journal.write(_record(action, lease))


def _expiry_from_env(env: dict[str, str], now: float) -> int:
    if env.get("DNSMASQ_LEASE_EXPIRES", "").isdigit():
        return int(env["DNSMASQ_LEASE_EXPIRES"])
    if env.get("DNSMASQ_LEASE_LENGTH", "").isdigit():  # dnsmasq built with HAVE_BROKEN_RTC
        length = int(env["DNSMASQ_LEASE_LENGTH"])
        return 0 if length == 0 else int(now) + length
    return 0


def main(argv: Sequence[str], lease_dir: str, env: dict[str, str] | None = None) -> int:
    """Handle one dnsmasq invocation; `argv` excludes the program name."""
    env = dict(os.environ) if env is None else env
    if not argv:
        return 0
    action = argv[0]
    if action == "init":
        for lease in read_leases(lease_dir):
            # dnsmasq lease-file line: expiry MAC IP hostname client-id
            sys.stdout.write(f"{lease.expires} {lease.mac} {lease.ip} {lease.hostname or '*'} *\n")
        sys.stdout.flush()
        return 0
    if action in LEASE_EVENTS and len(argv) >= 3:
        mac, ip = argv[1], argv[2]
        if ":" in ip:  # DHCPv6: argv[1] is a DUID; not served (IPv6 is RA/SLAAC only)
            return 0
        hostname = argv[3] if len(argv) > 3 and argv[3] else None
        lease = Lease(
            mac=mac.lower(), ip=ip, hostname=hostname, expires=_expiry_from_env(env, time.time())
        )
        append_event(lease_dir, action, lease)
    return 0


if __name__ == "__main__":  # `python -m pvcd.drivers.dnsmasq_leasehook DIR ACTION ...`
    sys.exit(main(sys.argv[2:], sys.argv[1]))
