"""MAC address templates of network templates (extensions.md §3.3): `render_mac`.

A template is operator text such as `{prefix}:a0:0{vmid}:0{netid}`. It is never handed to
`str.format`, whose `{0.__class__}` and `{x[...]}` forms reach into Python objects: it is cut
into literal text and the three placeholders this module knows, and anything else between
braces is refused. The placeholders:

- `{prefix}`: `52:54:01` (`MAC_PREFIX`; random MACs without a template use `52:54:00`);
- `{vmid}`: the number at the end of the VM's name, modulo 16, as one hex digit (0 without
  one). PVC meant the same and always got 0 through a regex slip;
- `{netid}`: the NIC's index (0 for the first network of the template), modulo 16, one hex
  digit.

The API checks a template by rendering it for sample names and indexes (`check_mac_template`);
the `provisioner.create` task renders it for the VM it makes and checks the result again.
"""

from __future__ import annotations

import re

from pvcd.domain.errors import InvalidValue
from pvcd.domain.provisioner import MAC_PREFIX

PLACEHOLDERS = ("prefix", "vmid", "netid")
MAX_TEMPLATE_LENGTH = 64
_PIECE = re.compile(r"\{([^{}]*)\}|([^{}]+)|([{}])")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_TRAILING_NUMBER = re.compile(r"([0-9]+)$")
# sample VM names and NIC indexes a template must render a valid MAC for: every digit of
# `{vmid}` and `{netid}`
SAMPLES = [(f"vm{n}", n) for n in range(16)] + [("vm", 0)]


def _pieces(template: str) -> list[tuple[str, str]]:
    """The template as ("text", literal) and ("field", placeholder) pieces; InvalidValue for a
    stray brace or an unknown placeholder."""
    pieces = []
    for match in _PIECE.finditer(template):
        field, literal, stray = match.groups()
        if stray is not None:
            raise InvalidValue(f"mac_template '{template}' has an unmatched '{stray}': "
                               f"placeholders are {_allowed()}")
        if field is not None:
            if field not in PLACEHOLDERS:
                raise InvalidValue(f"mac_template '{template}' has the unknown placeholder "
                                   f"'{{{field}}}': only {_allowed()} are allowed")
            pieces.append(("field", field))
        else:
            pieces.append(("text", literal))
    return pieces


def _allowed() -> str:
    return ", ".join("{" + p + "}" for p in PLACEHOLDERS)


def vm_id_digit(vm_name: str) -> str:
    """`{vmid}`: the number at the end of the name modulo 16, one hex digit; 0 without one."""
    match = _TRAILING_NUMBER.search(vm_name)
    return format(int(match.group(1)) % 16, "x") if match else "0"


def render_mac(template: str, vm_name: str, nic_index: int) -> str:
    """The MAC address `template` gives NIC `nic_index` (from 0) of the VM `vm_name`, in lower
    case; InvalidValue when the template is malformed or the result is not a unicast MAC."""
    if len(template) > MAX_TEMPLATE_LENGTH:
        raise InvalidValue(f"mac_template is {len(template)} characters long: at most "
                           f"{MAX_TEMPLATE_LENGTH} are allowed")
    fields = {"prefix": MAC_PREFIX, "vmid": vm_id_digit(vm_name),
              "netid": format(nic_index % 16, "x")}
    mac = "".join(fields[value] if kind == "field" else value
                  for kind, value in _pieces(template)).lower()
    if not _MAC.fullmatch(mac):
        raise InvalidValue(f"mac_template '{template}' gives '{mac}' for VM '{vm_name}', NIC "
                           f"{nic_index}: not a MAC address (six pairs of hex digits separated "
                           "by ':'), e.g. {prefix}:a0:0{vmid}:0{netid}")
    if int(mac[:2], 16) & 1:
        raise InvalidValue(f"mac_template '{template}' gives '{mac}', a multicast address (the "
                           "first octet is odd): a NIC needs a unicast MAC")
    return mac


def check_mac_template(template: str) -> str:
    """`template` if it renders a valid unicast MAC for every sample VM name and NIC index."""
    for vm_name, nic_index in SAMPLES:
        render_mac(template, vm_name, nic_index)
    return template
