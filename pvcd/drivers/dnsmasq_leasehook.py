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

Guest input: a lease's host name is whatever the guest sent in its DHCP request, and its MAC
address is the guest's too (a non-Ethernet hardware type reaches us as `06-...`). `guest_lease`
is the one rule for what of a reported lease is kept, applied where a lease enters: the hook's
events, every journal line read back, and the cluster's copy handed to the next dnsmasq. An
unusable MAC, address or expiry drops the lease; a host name dnsmasq would not serve drops
only the name. Nothing here raises on a guest's value, so no guest can stop dnsmasq, the
gateway or a reconcile with a name (it once could: `web_1` was stored, then refused when the
next primary handed it back, and that network's dnsmasq did not start).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

JOURNAL = "leases.jsonl"
LOCK = "leases.lock"
LEASE_EVENTS = ("add", "old", "del")
# dnsmasq's own rule for a client's host name (legal_hostname() in its util.c): one label of
# letters, digits, '-' and '_', not starting with '-' or '_', at most 63 characters (a DNS
# label). dnsmasq serves `web_1` and `host-`, so they are kept.
GUEST_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
ETHERNET_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
MAX_EXPIRES = 2**63 - 1


@dataclass(frozen=True)
class Lease:
    """A DHCPv4 lease: `expires` is a Unix time, 0 for an infinite lease."""

    mac: str
    ip: str
    hostname: str | None
    expires: int

    def expired(self, now: float) -> bool:
        return self.expires != 0 and self.expires <= now


def guest_hostname(raw: object) -> str | None:
    """The host name a guest reported, if dnsmasq would serve it under that name; else None
    (the lease is kept without a name). Never raises."""
    if isinstance(raw, str) and GUEST_HOSTNAME.fullmatch(raw):
        return raw
    return None


def guest_lease(mac: object, ip: object, hostname: object, expires: object) -> Lease | None:
    """A reported lease as we keep it, or None when it cannot be kept: a MAC that is not an
    Ethernet address (it names the lease's znode), an address that is not IPv4, an expiry
    that is not a whole number of seconds. A bad host name only drops the name. Never raises."""
    if not isinstance(mac, str) or not ETHERNET_MAC.fullmatch(mac.lower()):
        return None
    if not isinstance(ip, str) or len(ip) > 15:
        return None
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return None
    if isinstance(expires, str) and expires.isascii() and expires.isdigit() and len(expires) < 20:
        expires = int(expires)
    if isinstance(expires, bool) or not isinstance(expires, int) or \
            not 0 <= expires <= MAX_EXPIRES:
        return None
    return Lease(mac.lower(), str(address), guest_hostname(hostname), expires)


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
            lease = guest_lease(event.get("mac"), ip, event.get("hostname"),
                                event.get("expires", 0))
            if lease is None:
                leases.pop(ip, None)  # the address's last usable state is unknown
            else:
                leases[ip] = lease
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
    if _digits(env.get("DNSMASQ_LEASE_EXPIRES", "")):
        return int(env["DNSMASQ_LEASE_EXPIRES"])
    if _digits(env.get("DNSMASQ_LEASE_LENGTH", "")):  # dnsmasq built with HAVE_BROKEN_RTC
        length = int(env["DNSMASQ_LEASE_LENGTH"])
        return 0 if length == 0 else int(now) + length
    return 0


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) < 19


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
        hostname = argv[3] if len(argv) > 3 else None
        reported = guest_lease(mac, ip, hostname, _expiry_from_env(env, time.time()))
        if reported is None:  # dnsmasq still serves it; the cluster does not keep it
            sys.stderr.write(f"pvcd lease hook: {action} {mac!r} {ip!r} not kept: an Ethernet "
                             "MAC and an IPv4 address are needed\n")
            append_event(lease_dir, "del", Lease("", ip, None, 0))  # none we keep there now
        else:
            append_event(lease_dir, action, reported)
    return 0


if __name__ == "__main__":  # `python -m pvcd.drivers.dnsmasq_leasehook DIR ACTION ...`
    sys.exit(main(sys.argv[2:], sys.argv[1]))
