"""What a running lab is: `<workdir>/lab.json`, for scripts, tests and `pvcd lab down`.

The API URL and token, the ZooKeeper servers, the nodes (config, log, daemon pid, mount binds),
and the optional parts (network namespaces, the throwaway Ceph, per-node libvirtd). Written by
`pvcd.lab.lab.Lab` whenever it changes something; a lab is only ever described by one file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from kazoo.client import KazooClient

from pvcd.state.client import ZkCredentials, ZkTls, zookeeper_client

LAB_FILE = "lab.json"


@dataclass
class LabNode:
    name: str
    coordinator: bool
    config: str
    log: str
    pid: int = 0
    # (source, target) folders bind-mounted in the daemon's own mount namespace: a Ceph lab
    # node's /etc/ceph and /var/lib/ceph (`ceph-volume` insists on them), as on a machine of its own
    binds: list[list[str]] = field(default_factory=list)


@dataclass
class LabInfo:
    workdir: str
    api: str
    token: str
    zookeeper: str
    zk_root: str
    nodes: list[LabNode] = field(default_factory=list)
    zookeeper_servers: list[dict[str, Any]] = field(default_factory=list)
    session_timeout: float = 3.0
    created: float = 0.0
    network: dict[str, Any] | None = None  # {"id": ...} when nodes have network namespaces
    ceph: dict[str, Any] | None = None  # {"workdir", "conf", "keyring"} with a throwaway Ceph
    libvirt: str = "test"  # test: a test:/// file per node; qemu: a real libvirtd per node
    qemu: dict[str, Any] | None = None  # {"workdir", "kernel", "guest_xml"} with libvirt qemu
    watchdog_pid: int = 0  # the lab's watchdog board (pvcd.lab.watchdog), when nodes arm one
    # the digest credentials every node daemon uses (ZooKeeper ACLs: docs/security.md)
    zookeeper_user: str | None = None
    zookeeper_password: str | None = None
    zookeeper_ca: str | None = None  # with TLS to ZooKeeper: the certificate to trust
    backup_path: str | None = None  # every node's backup.allowed_paths (docs/backups.md)

    @property
    def dashboard(self) -> str:
        """The web dashboard's URL: the API's origin (the same server, at `/`)."""
        return self.api.removesuffix("/api/v1") + "/"

    def node(self, name: str) -> LabNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def zookeeper_client(self, timeout: float = 10.0) -> KazooClient:
        """A client of the lab's ZooKeeper with the nodes' credentials (not started)."""
        credentials = None
        if self.zookeeper_user and self.zookeeper_password:
            credentials = ZkCredentials(self.zookeeper_user, self.zookeeper_password)
        tls = ZkTls(ca_file=self.zookeeper_ca) if self.zookeeper_ca else None
        return zookeeper_client([self.zookeeper], timeout, credentials, tls, retry_forever=False)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LabInfo:
        doc = json.loads(text)
        doc["nodes"] = [LabNode(**n) for n in doc.get("nodes", [])]
        return cls(**doc)
