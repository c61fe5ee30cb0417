"""The one way pvcd connects to ZooKeeper: authenticated, with ACLs on everything it creates.

ZooKeeper is a trust boundary: whoever can write pvcd's tree can define VMs on every node.
So a daemon with credentials (`cluster.zookeeper_user` / `zookeeper_password`) authenticates
with the `digest` scheme and creates every znode with one ACL: all permissions for that user,
none for anyone else (`world:anyone` can neither read nor write, nor list). A tree created
before credentials were configured is secured by the first daemon that starts with them
(`secure_tree`, called by `pvcd.state.schema.ensure_schema`). TLS to ZooKeeper is used where
configured (ZooKeeper's `secureClientPort`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.security import ACL, make_digest_acl

from pvcd.state.zk_handler import PollingHandler

log = logging.getLogger(__name__)

RETRY = {"max_tries": -1, "delay": 0.05, "backoff": 1.5, "max_delay": 1.0, "max_jitter": 0.1}


@dataclass(frozen=True)
class ZkCredentials:
    user: str
    password: str

    def auth_data(self) -> list[tuple[str, str]]:
        return [("digest", f"{self.user}:{self.password}")]

    def acl(self) -> list[ACL]:
        return [make_digest_acl(self.user, self.password, all=True)]


@dataclass(frozen=True)
class ZkTls:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


def zookeeper_client(hosts: Sequence[str], timeout: float,
                     credentials: ZkCredentials | None = None, tls: ZkTls | None = None,
                     retry_forever: bool = True) -> KazooClient:
    """A client of the ensemble `hosts` (not started)."""
    kwargs: dict[str, object] = {}
    if credentials is not None:
        kwargs.update(auth_data=credentials.auth_data(), default_acl=credentials.acl())
    if tls is not None:
        kwargs.update(use_ssl=True, verify_certs=tls.verify, ca=tls.ca_file,
                      certfile=tls.cert_file, keyfile=tls.key_file)
    if retry_forever:
        kwargs["connection_retry"] = dict(RETRY)
    # kazoo's own handler builds an epoll selector per loop iteration (pvcd.state.zk_handler)
    return KazooClient(hosts=",".join(hosts), timeout=timeout, handler=PollingHandler(), **kwargs)


def secure_tree(client: KazooClient, root: str) -> int:
    """Give every znode under `root` (and `root`) the client's ACL when `root`'s is not it
    already; returns how many znodes were changed. Without credentials: nothing."""
    acl = client.default_acl
    if not acl:
        return 0
    current, _ = client.get_acls(root)
    if list(current) == list(acl):
        return 0
    found, pending = [], [root]
    while pending:  # every path first, so that the root, secured last, says "all done"
        path = pending.pop()
        try:
            pending.extend(f"{path.rstrip('/')}/{child}" for child in client.get_children(path))
        except NoNodeError:
            continue  # removed meanwhile
        found.append(path)
    changed = 0
    for path in reversed(found):
        try:
            client.set_acls(path, acl)
            changed += 1
        except NoNodeError:
            continue
    log.warning("event=zookeeper-tree-secured root=%s znodes=%d", root, changed)
    return changed
