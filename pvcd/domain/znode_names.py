"""Which names may become one component of a ZooKeeper path.

Some names a user chooses are stored as znode names (a VM's name in `vm-names/<name>`, a
network's description, an ACL's description, a pool or volume name). ZooKeeper refuses some
(`PathUtils.validatePath`): `.` and `..`, an empty name, `/` (it would be two components), and
characters it judges invalid in the UTF-16 units Java sees: controls (U+0000-U+001F,
U+007F-U+009F), U+D800-U+F8FF (which takes in every character beyond U+FFFF, such as emoji,
since Java holds those as two surrogates, and the private-use area) and U+FFF0-U+FFFF. Refused
by ZooKeeper, such a name used to come back as a 510 quoting ZooKeeper's exception and our
internal path; checked here first, it is refused with a message about the name. The ranges are
ZooKeeper's, taken inclusively (a few characters more than it refuses, none fewer).
"""

from __future__ import annotations

# what a message says is refused, after the reason
REFUSED = ("ZooKeeper cannot store '.', '..', '/', control characters, U+D800 to U+F8FF, "
           "or U+FFF0 and above, e.g. emoji")


def _refused(char: str) -> bool:
    code = ord(char)
    return (code <= 0x1F or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xF8FF
            or code >= 0xFFF0 or char == "/")


def znode_name_problem(name: str) -> str | None:
    """Why ZooKeeper would refuse `name` as one path component (a short reason naming the
    offending character), or None when it takes it."""
    if name in ("", ".", ".."):
        return f"{name!r} is not allowed"
    for char in name:
        if _refused(char):
            return f"the character {char!r} (U+{ord(char):04X}) is not allowed"
    return None
