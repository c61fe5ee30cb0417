"""Ceph storage: storage requests carried out on the right node, and ZooKeeper's mirror of Ceph.

The API writes a storage request and waits for its result; the node it is addressed to carries
it out and records what Ceph confirmed. Modules, one concept each:
  requests   claiming, running and finishing requests (no shared command slot; per-object
             locks; the result and the mirror objects in one transaction)
  mirror     the ZooKeeper ops that make the mirror of an object match Ceph
  sync       the primary re-reads Ceph: stats, adopting and dropping objects made or deleted
             outside pvcd, expiring requests
  primary    the primary's requests (pools, volumes, snapshots, flags, OSD in/out) and role
  osds       this node's OSDs: add and removal, their daemons, where OSDs come from
             (`OsdProvisioner`: the interface a lab plugs its memstore OSDs into)
  wiring     `build_storage`: the controllers and the primary service for one node
Every Ceph command is run by `pvcd.drivers.ceph`; nothing here starts a process.
"""

from pvcd.controllers.storage.osds import OsdProvisioner
from pvcd.controllers.storage.wiring import build_storage

__all__ = ["OsdProvisioner", "build_storage"]
