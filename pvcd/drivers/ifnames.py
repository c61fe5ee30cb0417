"""Interface and namespace names of client networks, and the checks every name passes.

A network's kernel objects are found by name alone, on every node and after every restart: the
bridge is `vmbr<vni>`, a managed network's tunnel `vxlan<vni>`, a bridged network's vLAN
`<uplink>.<vni>` (or `vlan<vni>` when that exceeds the kernel's 15 characters). The network,
firewall and gateway controllers, the nftables and dnsmasq drivers and the netlink driver all
derive the same names here, so they agree without sharing state. The checks (`check_ifname`,
`check_netns`, `check_vni`) reject what the kernel or a file path would misread before any driver
acts on it. Pure functions: no netlink, no I/O, usable from any thread or event loop.

The VXLAN MTU rule lives here too because it sizes the bridge named here: the tunnel adds 50
bytes, so the VXLAN device and its bridge get MTU = underlay MTU - 50.
"""

from __future__ import annotations

from pvcd.domain.errors import InvalidValue

IFNAMSIZ = 15  # longest interface name the kernel accepts
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VNI_MAX = 2**24 - 1


def bridge_name(vni: int) -> str:
    """The bridge of network `vni` on every node: `vmbr<vni>`."""
    return f"vmbr{check_vni(vni)}"


def vxlan_name(vni: int) -> str:
    """The VXLAN tunnel device of managed network `vni`: `vxlan<vni>`."""
    return f"vxlan{check_vni(vni)}"


def vlan_name(uplink: str, vni: int) -> str:
    """The vLAN device of bridged network `vni` on `uplink`.

    `<uplink>.<vni>` as Linux tools name it; when that exceeds the kernel's 15 characters (long
    predictable NIC names), `vlan<vni>`.
    """
    check_ifname(uplink)
    if not 1 <= vni <= 4094:
        raise InvalidValue(f"vLAN id {vni} is out of range: allowed 1-4094")
    name = f"{uplink}.{vni}"
    return name if len(name) <= IFNAMSIZ else f"vlan{vni}"


def vxlan_mtu(underlay_mtu: int) -> int:
    """Largest frame a VXLAN device can carry over an underlay of `underlay_mtu`."""
    return underlay_mtu - VXLAN_OVERHEAD


def check_vni(vni: int) -> int:
    """A VXLAN network identifier: 1 to 2**24 - 1."""
    if isinstance(vni, bool) or not isinstance(vni, int) or not 1 <= vni <= VNI_MAX:
        raise InvalidValue(f"VNI {vni!r} is out of range: allowed 1-{VNI_MAX}")
    return vni


def check_ifname(name: str) -> str:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= IFNAMSIZ
        or name in (".", "..")
        or any(c in name for c in "/:% ")
        or not name.isprintable()
    ):
        raise InvalidValue(
            f"interface name {name!r} is invalid: 1-{IFNAMSIZ} printable characters, "
            "no '/', ':', '%' or spaces"
        )
    return name


def check_netns(name: str) -> str:
    """A network namespace name: a plain file name under /run/netns."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= 255
        or name in (".", "..")
        or "/" in name
        or not name.isprintable()
    ):
        raise InvalidValue(f"network namespace name {name!r} is invalid: a file name, no '/'")
    return name
