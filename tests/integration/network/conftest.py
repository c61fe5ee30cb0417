"""Namespaces for the network driver tests: real kernel objects, nothing in the root namespace.

Every namespace is named `pvct-<random>-<role>`, created by the test that uses it and deleted in
its teardown (which also takes down every interface inside it). Veth pairs are created inside a
namespace with the peer moved straight into another, so the root namespace never sees them.

`two_nodes` is the smallest cluster underlay:

    [node a: eth0 172.31.0.1/24] ==veth== [underlay: bridge ul] ==veth== [node b: eth0 .2/24]
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TIMEOUT = 20


class NetTools:
    """Shell-free helpers for the tests, handed out by the `net` fixture (test modules import
    nothing from here: this directory is not a package)."""

    @staticmethod
    def sh(
        *argv: str, check: bool = True, timeout: float = TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (argument list); fail the test with its stderr on error."""
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
        return result

    @classmethod
    def in_ns(
        cls, ns: str, *argv: str, check: bool = True, timeout: float = TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return cls.sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

    @classmethod
    def ping(
        cls,
        ns: str,
        address: str,
        count: int = 1,
        size: int | None = None,
        dont_fragment: bool = False,
        wait: int = 1,
    ) -> bool:
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(wait), address]
        if size is not None:
            argv[1:1] = ["-s", str(size)]
        if dont_fragment:
            argv[1:1] = ["-M", "do"]
        return cls.in_ns(ns, *argv, check=False).returncode == 0

    @classmethod
    def veth(
        cls,
        ns_a: str,
        name_a: str,
        ns_b: str,
        name_b: str,
        mtu: int | None = None,
        mac_b: str | None = None,
    ) -> None:
        """A veth pair `name_a`@ns_a <-> `name_b`@ns_b, both up (never in the root netns)."""
        cls.sh(
            "ip",
            "-n",
            ns_a,
            "link",
            "add",
            name_a,
            "type",
            "veth",
            "peer",
            "name",
            name_b,
            "netns",
            ns_b,
        )
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            if mtu is not None:
                cls.sh("ip", "-n", ns, "link", "set", name, "mtu", str(mtu))
            if ns == ns_b and mac_b is not None:
                cls.sh("ip", "-n", ns, "link", "set", name, "address", mac_b)
            cls.sh("ip", "-n", ns, "link", "set", name, "up")


sh = NetTools.sh
ping = NetTools.ping
veth = NetTools.veth


@pytest.fixture
def net() -> type[NetTools]:
    return NetTools


@pytest.fixture(scope="session", autouse=True)
def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("network driver tests create namespaces: run as root")
    packages = {
        "ip": "iproute2",
        "bridge": "iproute2",
        "unshare": "util-linux",
        "nft": "nftables",
        "ping": "iputils-ping",
        "dnsmasq": "dnsmasq-base",
        "busybox": "busybox",
    }
    for tool, package in packages.items():
        assert shutil.which(tool), f"{tool} is missing: apt-get install {package}"


NamespaceFactory = Callable[[str], str]


@pytest.fixture
def netns() -> Iterator[NamespaceFactory]:
    """`netns("a")` creates namespace `pvct-<random>-a` (lo up) and returns its name."""
    tag = secrets.token_hex(3)
    created: list[str] = []

    def make(role: str) -> str:
        name = f"pvct-{tag}-{role}"
        sh("ip", "netns", "add", name)
        created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in reversed(created):
        _kill_processes_in(name)
        sh("ip", "netns", "del", name, check=False)


def _kill_processes_in(ns: str) -> None:
    result = sh("ip", "netns", "pids", ns, check=False)
    for pid in result.stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


@dataclass
class Node:
    ns: str
    ip: str
    dev: str = "eth0"


@pytest.fixture
def two_nodes(netns: NamespaceFactory) -> tuple[Node, Node]:
    underlay = netns("u")
    sh("ip", "-n", underlay, "link", "add", "ul", "type", "bridge")
    sh("ip", "-n", underlay, "link", "set", "ul", "up")
    nodes = []
    for role, ip in (("a", "172.31.0.1"), ("b", "172.31.0.2")):
        node = Node(netns(role), ip)
        veth(underlay, f"ul-{role}", node.ns, node.dev)
        sh("ip", "-n", underlay, "link", "set", f"ul-{role}", "master", "ul")
        sh("ip", "-n", node.ns, "addr", "add", f"{ip}/24", "dev", node.dev)
        nodes.append(node)
    assert ping(nodes[0].ns, nodes[1].ip), "underlay does not work"
    return nodes[0], nodes[1]


@pytest.fixture
def state_root() -> Iterator[Path]:
    """A directory dnsmasq's unprivileged user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pvct-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
