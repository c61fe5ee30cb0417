"""The cloud-init metadata service's rules (extensions.md §4), without any I/O.

Two decisions live here, so the HTTP server and the service that feeds it share one version:

- **Which answer a request gets** (`route`, `answer`): the EC2-style paths of §4 exactly, for
  `latest` or a date version; anything else is 404 (`PUT /latest/api/token` among them, so
  cloud-init falls back to token-less requests).
- **Which VM a request comes from** (`lease_mac`, `vm_with_interface`): the network's active
  (unexpired) lease or static lease for the source address gives a MAC; the VM is the one whose
  XML has an interface with that MAC on the network's bridge. Ambiguity (two MACs claim one
  address, two VMs carry one MAC on one bridge) identifies nobody: a guest must never be shown
  another guest's data, so doubt answers 404. The kernel-neighbour check (the MAC the primary
  actually talks to at that address) is the caller's, as it needs the host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

METADATA_ADDRESS = "169.254.169.254"
METADATA_PORT = 80
META_DATA_KEYS = ("instance-id", "local-hostname", "hostname", "name", "profile")

_VERSION = r"(?:latest|\d{4}-\d{2}-\d{2})"
_META_DATA = re.compile(rf"/{_VERSION}/meta-data/(?P<key>[a-z-]*)")
_USER_DATA = re.compile(rf"/{_VERSION}/user-data")

ROOT = "root"
USER_DATA = "user-data"
KEY_LIST = "meta-data/"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


NOT_FOUND = Reply(404, b"Not Found\n")
ROOT_REPLY = Reply(209, json.dumps({"message": "pvcd metadata API version 1"}).encode(),
                   "application/json")


@dataclass(frozen=True)
class Instance:
    """What a guest may learn about itself."""

    uuid: str
    name: str
    profile: str | None


def route(method: str, target: str) -> str | None:
    """The resource a request names: `ROOT`, `KEY_LIST`, `USER_DATA`, a meta-data key, or
    None (404). The query string, if any, is ignored; the path is matched as sent."""
    path = target.split("?", 1)[0]
    if method != "GET":
        return None
    if path == "/":
        return ROOT
    if _USER_DATA.fullmatch(path):
        return USER_DATA
    found = _META_DATA.fullmatch(path)
    if found is None:
        return None
    key = found.group("key")
    if key == "":
        return KEY_LIST
    return key if key in META_DATA_KEYS else None


def answer(resource: str, instance: Instance, userdata: str | None) -> Reply:
    """The reply for an identified guest; `userdata` is its profile's text (None: none)."""
    if resource == ROOT:
        return ROOT_REPLY
    if resource == KEY_LIST:
        text = "\n".join(META_DATA_KEYS)
    elif resource == USER_DATA:
        text = userdata or ""
    elif resource == "instance-id":
        text = instance.uuid
    elif resource in ("local-hostname", "hostname", "name"):
        text = instance.name
    elif resource == "profile":
        text = instance.profile or ""
    else:
        return NOT_FOUND
    return Reply(200, text.encode())


def normal_mac(mac: object) -> str | None:
    """`aa:bb:cc:dd:ee:ff` in lower case, or None for anything that is not a MAC."""
    if not isinstance(mac, str) or not re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", mac):
        return None
    return mac.lower()


@dataclass(frozen=True)
class LeaseEntry:
    mac: str
    ip: str
    expires: int = 0  # Unix seconds; 0: never (static leases, infinite leases)


def lease_mac(source: str, active: Iterable[LeaseEntry], static: Iterable[LeaseEntry],
              now: float) -> str | None:
    """The one MAC that holds `source` by an unexpired active lease or a static lease; None
    when none does, or when more than one MAC claims it."""
    macs = {normal_mac(lease.mac) for lease in active
            if lease.ip == source and (lease.expires == 0 or lease.expires > now)}
    macs |= {normal_mac(lease.mac) for lease in static if lease.ip == source}
    macs.discard(None)
    if len(macs) != 1:
        return None
    return macs.pop()


def vm_with_interface(mac: str, bridge: str,
                      interfaces: Iterable[tuple[str, Iterable[tuple[str, str]]]]) -> str | None:
    """The one VM (of `(uuid, [(mac, bridge), ...])`) with an interface `mac` on `bridge`;
    None when there is none or more than one."""
    found = [uuid for uuid, nics in interfaces
             if any(normal_mac(nic_mac) == mac and nic_bridge == bridge
                    for nic_mac, nic_bridge in nics)]
    return found[0] if len(found) == 1 else None
