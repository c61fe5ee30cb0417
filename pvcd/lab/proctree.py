"""Processes seen through /proc: mount namespaces and process trees.

A lab libvirtd and its QEMU guests live in a mount namespace of their own; stopping an
instance means finding every process of that namespace, and the children tini adopted.
"""

from __future__ import annotations

import os


def mount_namespace(pid: int) -> str:
    if pid <= 0:
        return ""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


def processes_in_namespace(namespace: str) -> list[int]:
    """Pids of the processes in a mount namespace (`mnt:[inode]`)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and mount_namespace(int(entry)) == namespace:
            pids.append(int(entry))
    return pids


def command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def parents_of() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: split after the last ')'
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def children(pid: int) -> list[int]:
    return sorted(child for child, parent in parents_of().items() if parent == pid)


def descendants(pid: int) -> list[int]:
    parents = parents_of()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found
