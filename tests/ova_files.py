"""Real OVA files made at test time: an OVF descriptor written here, VMDK images converted by
`qemu-img` from known bytes, a SHA-256 manifest, packed with `tarfile` in the order asked."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VMDK_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


def ovf_text(disks: list[tuple[str, int]], vcpus: int = 2, memory_mb: int = 512,
             graphics: bool = True, prolog: str = "") -> str:
    """An OVF 1.0 descriptor with one VirtualSystem: `disks` are (file, capacity in GiB)."""
    files = "".join(f'<File ovf:id="file{i}" ovf:href="{name}"/>'
                    for i, (name, _) in enumerate(disks))
    disk_section = "".join(
        f'<Disk ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}" ovf:capacity="{gib}" '
        f'ovf:capacityAllocationUnits="byte * 2^30" ovf:format="{VMDK_FORMAT}"/>'
        for i, (_, gib) in enumerate(disks))
    items = [
        f"<Item><rasd:ResourceType>3</rasd:ResourceType>"
        f"<rasd:VirtualQuantity>{vcpus}</rasd:VirtualQuantity><rasd:InstanceID>1"
        "</rasd:InstanceID></Item>",
        "<Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>"
        f"<rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>{memory_mb}"
        "</rasd:VirtualQuantity><rasd:InstanceID>2</rasd:InstanceID></Item>",
    ]
    if graphics:
        items.append("<Item><rasd:ResourceType>24</rasd:ResourceType><rasd:InstanceID>3"
                     "</rasd:InstanceID></Item>")
    items += [f"<Item><rasd:HostResource>ovf:/disk/vmdisk{i}</rasd:HostResource>"
              f"<rasd:ResourceType>17</rasd:ResourceType><rasd:InstanceID>{10 + i}"
              "</rasd:InstanceID></Item>" for i in range(len(disks))]
    return (f'<?xml version="1.0" encoding="UTF-8"?>{prolog}'
            f'<Envelope xmlns="{OVF_NS}" xmlns:ovf="{OVF_NS}" xmlns:rasd="{RASD_NS}">'
            f"<References>{files}</References>"
            f"<DiskSection><Info>disks</Info>{disk_section}</DiskSection>"
            '<VirtualSystem ovf:id="test"><Info>a test system</Info>'
            f"<VirtualHardwareSection><Info>hardware</Info>{''.join(items)}"
            "</VirtualHardwareSection></VirtualSystem></Envelope>")


def vmdk_of(raw: bytes, workdir: Path, name: str) -> bytes:
    """`raw` converted to a stream-optimized VMDK by qemu-img (package qemu-utils)."""
    source, target = workdir / f"{name}.raw", workdir / f"{name}.vmdk"
    source.write_bytes(raw)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", str(source), str(target)],
                   check=True, timeout=60, capture_output=True)
    return target.read_bytes()


def manifest(files: list[tuple[str, bytes]]) -> bytes:
    return "".join(f"SHA256({name})= {hashlib.sha256(data).hexdigest()}\n"
                   for name, data in files).encode()


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    """A tar archive of `members` in this order (an .ova when the .ovf comes first)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()
