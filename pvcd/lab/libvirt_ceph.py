"""RBD disks for the QEMU lab: the cephx user QEMU connects as, and its key in every libvirtd.

A VM whose disks are RBD volumes (the provisioner's generated XML, spec §3.9) names a cephx user
and a libvirt secret in each disk's `<auth>`:

    <auth username='libvirt'><secret type='ceph' uuid='...'/></auth>

libvirt hands the secret's value (the user's key) to QEMU's RBD driver. On a production node the
operator defines that secret once per hypervisor (`virsh secret-define` and `secret-set-value`)
and writes its UUID and the user in `drivers.ceph.libvirt_secret_uuid` and
`drivers.ceph.libvirt_user`. The lab does the same for every node's libvirtd: it creates
`client.libvirt` on the throwaway Ceph with the `rbd` profile (it may read and write RBD images,
nothing else), and defines one persistent, private secret with the same UUID in every libvirtd,
so a VM's XML is valid on every node and after a live migration.
"""

from __future__ import annotations

import base64
from typing import Any
from xml.sax.saxutils import escape

from pvcd.lab.ceph import ThrowawayCeph

LIBVIRT_CEPH_USER = "libvirt"  # drivers.ceph.libvirt_user's default


def libvirt_client_key(ceph: ThrowawayCeph, user: str = LIBVIRT_CEPH_USER) -> str:
    """The key of `client.<user>`, created with the `rbd` profile if it does not exist."""
    return ceph.ceph(["auth", "get-or-create-key", f"client.{user}",
                      "mon", "profile rbd", "osd", "profile rbd"]).strip()


def secret_xml(secret_uuid: str, user: str) -> str:
    """A persistent (survives a libvirtd restart) and private (not readable through the API)
    secret of usage type ceph."""
    return (f"<secret ephemeral='no' private='yes'>"
            f"<uuid>{escape(secret_uuid)}</uuid>"
            f"<usage type='ceph'><name>client.{escape(user)} secret</name></usage>"
            f"</secret>")


def define_ceph_secret(uri: str, secret_uuid: str, user: str, key: str) -> None:
    """Define (or update) the secret `secret_uuid` holding `key` in the libvirtd at `uri`."""
    import libvirt  # libvirt-python: only when a QEMU lab is built

    conn: Any = libvirt.open(uri)
    try:
        secret = conn.secretDefineXML(secret_xml(secret_uuid, user), 0)
        secret.setValue(base64.b64decode(key), 0)  # libvirt keeps the raw bytes
    finally:
        conn.close()
