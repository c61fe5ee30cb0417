"""Value checks of the configuration file: each returns what is wrong with a value, or None.

A section field names its checks in its metadata (`checks(...)`); the loader
(`pvcd.config.loader`) applies them and prefixes the problem with the file and the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from pvcd.domain.health import CHECK_NAME

# A value check returns what is wrong with a value ("must be between 1 and 65535"), or None.
Check = Callable[[Any], str | None]

# What `cross_check()` returns: the key relative to its section (may be "tokens[1].token"), and
# the problem.
Problem = tuple[str, str]


def checks(check: Check | None = None, *, each: Check | None = None) -> dict[str, Check]:
    """Field metadata: `check` applies to the whole value, `each` to every item of a list."""
    metadata: dict[str, Check] = {}
    if check is not None:
        metadata["check"] = check
    if each is not None:
        metadata["each"] = each
    return metadata


# --- value checks ------------------------------------------------------------------------------


def in_range(low: float, high: float) -> Check:
    """Accept numbers from `low` to `high`, both included."""

    def check(value: float) -> str | None:
        if low <= value <= high:  # also rejects NaN, which compares false to everything
            return None
        return f"must be between {low:g} and {high:g}, got {describe(value)}"

    return check


def one_of(*allowed: str) -> Check:
    """Accept only the listed words."""

    def check(value: str) -> str | None:
        if value in allowed:
            return None
        return f"must be one of {', '.join(allowed)}, got {describe(value)}"

    return check


def not_empty(value: str | tuple[object, ...]) -> str | None:
    return None if value else "must not be empty"


NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def node_name(value: str) -> str | None:
    # The name is a ZooKeeper path component and a host name label, hence the DNS label rules.
    if NODE_NAME.fullmatch(value):
        return None
    return (
        f"{value!r} is not a valid node name (lower-case letters, digits and '-', starting with"
        " a letter or digit, at most 63 characters)"
    )


# A bracketed IPv6 literal or a host name / IPv4 address, then the port.
HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


def host_port(value: str) -> str | None:
    found = HOST_PORT.fullmatch(value)
    if found and 1 <= int(found.group(1)) <= 65535:
        return None
    return f"expected 'host:port' with a port between 1 and 65535, got {value!r}"


# Non-empty components of safe characters, no trailing slash.
ZOOKEEPER_PATH = re.compile(r"(?:/[A-Za-z0-9_.-]+)+")


def zookeeper_root(value: str) -> str | None:
    components = value.split("/")[1:]
    if (
        ZOOKEEPER_PATH.fullmatch(value)
        and "." not in components  # ZooKeeper rejects relative components
        and ".." not in components
        and components[0] != "zookeeper"  # reserved by ZooKeeper itself
    ):
        return None
    return (
        f"{value!r} is not a valid ZooKeeper path (absolute, components of letters, digits,"
        " '_', '.', '-', no trailing slash, not under /zookeeper)"
    )


def ip_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"expected an IPv4 or IPv6 address, got {value!r}"
    return None


def ip_network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"expected a network in CIDR notation (e.g. 10.0.0.0/24), got {value!r}"
    return None


def address_with_prefix(value: str) -> str | None:
    try:
        if "/" in value:
            ipaddress.ip_interface(value)
            return None
    except ValueError:
        pass
    return f"expected an address with a prefix length (e.g. 10.0.0.254/24), got {value!r}"


def device_name(value: str) -> str | None:
    # Linux limits interface names to 15 bytes (IFNAMSIZ - 1) and forbids '/' and whitespace.
    if 0 < len(value.encode()) <= 15 and "/" not in value and not any(c.isspace() for c in value):
        return None
    return f"{value!r} is not a valid network device name (1 to 15 characters, no '/' or spaces)"


def token_value(value: str) -> str | None:
    # Never echo the token: the message ends up in the journal.
    if len(value) < 8:
        return "must be at least 8 characters"
    if any(c.isspace() for c in value):
        return "must not contain whitespace"
    return None


def netns_name(value: str) -> str | None:
    if 0 < len(value) <= 255 and "/" not in value and value not in (".", "..") and \
            value.isprintable() and not any(c.isspace() for c in value):
        return None
    return f"{value!r} is not a valid network namespace name (a file name under /run/netns)"


def absolute_path(value: str) -> str | None:
    return None if value.startswith("/") else f"expected an absolute path, got {value!r}"


def check_name(value: str) -> str | None:
    """A health check's name (as `nodes/<node>/health` and the faults spell it)."""
    if CHECK_NAME.match(value):
        return None
    return (f"{value!r} is not a valid check name (lower-case letters, digits and '_', "
            "starting with a letter, at most 32 characters)")


def command_argv(value: tuple[str, ...]) -> str | None:
    """A command run without a shell: an argument list whose first item is an absolute path."""
    if not value:
        return "must be a list: the executable's absolute path, then its arguments"
    if not value[0].startswith("/"):
        return (f"the executable must be an absolute path, got {describe(value[0])} "
                "(commands run without a shell or PATH)")
    if any("\0" in item for item in value):
        return "an argument holds a NUL character"
    return None


def uuid_text(value: str) -> str | None:
    """A UUID in its 8-4-4-4-12 hexadecimal form (a libvirt secret's)."""
    if re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", value):
        return None
    return f"must be a UUID like 8c5b4d9e-0f3a-4c1e-9a7b-2d6e5f4a3b21, got {describe(value)}"


def unix_user(value: str) -> str | None:
    if re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        return None
    return f"{value!r} is not a valid user name"


def describe(value: object) -> str:
    """Show a value as the operator wrote it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


ZOOKEEPER_USER = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def zookeeper_user(value: str) -> str | None:
    # a digest user name: the part before ':' in ZooKeeper's "user:password" auth data
    if ZOOKEEPER_USER.fullmatch(value):
        return None
    return (f"{value!r} is not a valid ZooKeeper user name (1 to 64 letters, digits, '_', '.' "
            "and '-')")
