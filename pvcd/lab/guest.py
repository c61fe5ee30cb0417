"""The lab's tiny guest definition: small, diskless, accepted by the test driver and by QEMU.

No `<cpu mode=...>`: host-passthrough and host-model crash QEMU in the nested lab VM. ACPI is on,
so `LibvirtDriver.shutdown` (the ACPI power button) reaches a guest that listens. Without a
kernel the guest has nothing to boot (fine for the test driver; a real QEMU spins in the BIOS);
`kernel=` adds `<os><kernel>` for a direct-kernel boot.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr


def tiny_guest_xml(name: str, uuid: str | None = None, memory_mib: int = 64, vcpus: int = 1,
                   domain_type: str = "qemu", kernel: str | None = None) -> str:
    uuid_line = f"  <uuid>{escape(uuid)}</uuid>\n" if uuid else ""
    kernel_line = f"    <kernel>{escape(kernel)}</kernel>\n" if kernel else ""
    return (
        f"<domain type={quoteattr(domain_type)}>\n"
        f"  <name>{escape(name)}</name>\n"
        f"{uuid_line}"
        f"  <memory unit='MiB'>{int(memory_mib)}</memory>\n"
        f"  <vcpu>{int(vcpus)}</vcpu>\n"
        "  <os>\n"
        "    <type arch='x86_64'>hvm</type>\n"
        f"{kernel_line}"
        "  </os>\n"
        "  <features><acpi/></features>\n"  # graceful shutdown is the ACPI power button
        "  <on_poweroff>destroy</on_poweroff>\n"
        "  <on_reboot>restart</on_reboot>\n"
        "  <on_crash>destroy</on_crash>\n"
        "  <devices>\n"
        "    <serial type='pty'><target port='0'/></serial>\n"
        "    <console type='pty'><target type='serial' port='0'/></console>\n"
        "  </devices>\n"
        "</domain>\n"
    )
