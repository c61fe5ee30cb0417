"""Per-network ACLs in nftables, driven through libnftables' JSON API.

Layout (all of it ours; nothing else on the host is read or changed):

    table inet pvc {
        map net_in  { type ifname : verdict; }      # "vmbr<vni>" : jump net<vni>-in
        map net_out { type ifname : verdict; }      # "vmbr<vni>" : jump net<vni>-out
        chain forward {
            type filter hook forward priority 0; policy accept;
            iifname vmap @net_out
            oifname vmap @net_in
        }
        chain net<vni>-in  { <the network's "in" ACLs, in order> }
        chain net<vni>-out { <the network's "out" ACLs, in order> }
    }

Semantics. The ACLs are VM-centric: `out` rules see every packet a VM of the network sends,
`in` rules every packet delivered to one. The driver sets `net.bridge.bridge-nf-call-iptables`
and `...-ip6tables` to 1 in its namespace (`ensure_bridge_filtering`, also done by every
`apply_network_rules`), so IPv4/IPv6 frames *bridged* through `vmbr<vni>` also pass the inet
forward hook; br_netfilter reports them with iifname = oifname = the bridge (not the port). Hence:

* VM to VM in the same network (same node, or across VXLAN): `net<vni>-out`, then `net<vni>-in`.
  Across nodes this happens on both nodes, so every node carries the same chains.
* Routed out of the network by the gateway: `net<vni>-out` only; routed in: `net<vni>-in` only.
* ARP and other non-IP frames are not filtered. An `accept` in a network chain ends the whole
  forward hook for this table (nftables semantics); a chain that ends without a verdict falls
  back to the `forward` chain, whose policy is accept. `return` leaves one direction's chain.

Rules arrive as operator text; `pvcd.drivers.nft_rules.validate_rule` turns one into the JSON
form nft itself parsed, and `apply_*` only ever sends JSON. One `apply_network_rules` is one
JSON command, i.e. one atomic nftables transaction: packets see either the old or the new
chains, never a half-written list.

Namespaces: libnftables talks to the netns of the calling thread. The driver runs every call on
one private worker thread that first `setns()`s into `/run/netns/<netns>` (measured: ≈ 1 ms per
transaction, against ≈ 10 ms for `ip netns exec nft`), which also serializes the calls, as a
libnftables context is not thread-safe.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from pvcd.domain.errors import BackendError, InvalidValue, NotFound
from pvcd.drivers.ifnames import check_ifname, check_netns
from pvcd.drivers.nft_rules import check_rule_body, nft_error

log = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "pvc"
BASE_CHAIN = "forward"
IN_MAP = "net_in"
OUT_MAP = "net_out"
BRIDGE_SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")
def chain_names(vni: int) -> tuple[str, str]:
    """(in, out) chain names of network `vni`."""
    return f"net{vni}-in", f"net{vni}-out"


@dataclass
class NetworkRules:
    """The rules found in a network's chains, in order, as nftables JSON rule bodies."""

    inbound: list[dict[str, Any]] = field(default_factory=list)
    outbound: list[dict[str, Any]] = field(default_factory=list)


# -- the driver -----------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NftablesDriver:
    """The `inet pvc` table of one network namespace (`None`: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        if netns is not None:
            check_netns(netns)
        if netns is not None and not os.path.exists(f"/run/netns/{netns}"):
            raise NotFound(f"network namespace {netns} does not exist")
        self.netns = netns
        self._thread_state = threading.local()
        self._worker = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"nft-{netns or 'self'}", initializer=self._enter
        )

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _enter(self) -> None:
        """Worker thread start: move this thread (only) into the namespace, open libnftables."""
        if self.netns is not None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {self.netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
        import nftables  # Debian python3-nftables, symlinked into the venv

        nft = nftables.Nftables()
        nft.set_json_output(True)
        nft.set_handle_output(False)
        self._thread_state.nft = nft

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return self._worker.submit(fn).result()
        except BackendError:
            raise
        except (OSError, ImportError, RuntimeError) as exc:  # incl. a broken worker
            raise BackendError(f"nftables (netns {self.netns or '-'}): {exc}") from exc

    def _json(self, commands: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
        """Run one JSON command list (one transaction) on the worker thread."""

        def run() -> list[dict[str, Any]]:
            rc, output, error = self._thread_state.nft.json_cmd({"nftables": commands})
            if rc != 0:
                raise BackendError(
                    f"nftables: cannot {what} (netns {self.netns or '-'}): {nft_error(error)}"
                )
            return list(output.get("nftables", [])) if isinstance(output, dict) else []

        return self._call(run)

    # -- bridge filtering ------------------------------------------------------------------

    def ensure_bridge_filtering(self) -> None:
        """Set bridge-nf-call-ip(6)tables=1 in the namespace: bridged IP traffic meets the ACLs."""

        def run() -> None:
            # /proc/sys/net resolves to the opening thread's namespace, i.e. ours
            for name in BRIDGE_SYSCTLS:
                path = f"/proc/sys/net/bridge/{name}"
                with open(path) as current:
                    if current.read().strip() == "1":
                        continue
                with open(path, "w") as sysctl:
                    sysctl.write("1\n")
                log.info("sysctl set key=net.bridge.%s value=1 netns=%s", name, self.netns or "-")

        self._call(run)

    def bridge_filtering(self) -> dict[str, str]:
        def run() -> dict[str, str]:
            result = {}
            for name in BRIDGE_SYSCTLS:
                with open(f"/proc/sys/net/bridge/{name}") as sysctl:
                    result[name] = sysctl.read().strip()
            return result

        return self._call(run)

    # -- reading ---------------------------------------------------------------------------

    def _list(self, obj: dict[str, Any]) -> list[dict[str, Any]] | None:
        """`list` one object; None when it (or its table) does not exist."""

        def run() -> list[dict[str, Any]] | None:
            rc, output, _error = self._thread_state.nft.json_cmd({"nftables": [{"list": obj}]})
            if rc != 0:
                return None
            return list(output.get("nftables", [])) if isinstance(output, dict) else []

        return self._call(run)

    def _map_elements(self, name: str) -> dict[str, str]:
        """Elements of dispatch map `name`: bridge name -> target chain."""
        listed = self._list({"map": {"family": FAMILY, "table": TABLE, "name": name}})
        elements: dict[str, str] = {}
        for item in listed or []:
            for key, verdict in item.get("map", {}).get("elem", []):
                target = (
                    verdict.get("jump", {}).get("target") if isinstance(verdict, dict) else None
                )
                if isinstance(key, str) and target:
                    elements[key] = target
        return elements

    def list_rules(self, vni: int) -> NetworkRules:
        """The rules now in network `vni`'s chains, with their counters."""
        result = NetworkRules()
        for chain, rules in zip(chain_names(vni), (result.inbound, result.outbound), strict=True):
            listed = self._list({"chain": {"family": FAMILY, "table": TABLE, "name": chain}})
            for item in listed or []:
                rule = item.get("rule")
                if rule is not None:
                    rules.append({k: v for k, v in rule.items() if k in ("expr", "comment")})
        return result

    def networks(self) -> list[int]:
        """VNIs that have chains in the table."""
        listed = self._list({"table": {"family": FAMILY, "name": TABLE}}) or []
        vnis = set()
        for item in listed:
            match = re.fullmatch(r"net(\d+)-(in|out)", item.get("chain", {}).get("name", ""))
            if match:
                vnis.add(int(match.group(1)))
        return sorted(vnis)

    # -- writing ---------------------------------------------------------------------------

    def _skeleton(self) -> list[dict[str, Any]]:
        """Commands that (re)create the table, dispatch maps and base chain, idempotently."""
        table = {"family": FAMILY, "table": TABLE}
        return [
            {"add": {"table": {"family": FAMILY, "name": TABLE}}},
            {"add": {"map": {**table, "name": IN_MAP, "type": "ifname", "map": "verdict"}}},
            {"add": {"map": {**table, "name": OUT_MAP, "type": "ifname", "map": "verdict"}}},
            {
                "add": {
                    "chain": {
                        **table,
                        "name": BASE_CHAIN,
                        "type": "filter",
                        "hook": "forward",
                        "prio": 0,
                        "policy": "accept",
                    }
                }
            },
            # the base chain is wholly ours: rewriting it keeps exactly these two rules
            {"flush": {"chain": {**table, "name": BASE_CHAIN}}},
            {
                "add": {
                    "rule": {
                        **table,
                        "chain": BASE_CHAIN,
                        "expr": [
                            {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": f"@{OUT_MAP}"}}
                        ],
                    }
                }
            },
            {
                "add": {
                    "rule": {
                        **table,
                        "chain": BASE_CHAIN,
                        "expr": [
                            {"vmap": {"key": {"meta": {"key": "oifname"}}, "data": f"@{IN_MAP}"}}
                        ],
                    }
                }
            },
        ]

    def apply_network_rules(
        self,
        vni: int,
        bridge: str,
        in_rules: list[dict[str, Any]],
        out_rules: list[dict[str, Any]],
    ) -> None:
        """Make network `vni`'s chains hold exactly these rules, in list order, atomically.

        Each rule is a body from `validate_rule` (`{"expr": [...]}`, optionally `"comment"`:
        the ACL's description fits there). Traffic of `bridge` is dispatched to the chains.
        """
        if not isinstance(vni, int) or isinstance(vni, bool) or vni < 1:
            raise InvalidValue(f"VNI {vni!r} is invalid")
        check_ifname(bridge)
        for body in [*in_rules, *out_rules]:
            check_rule_body(body)
        self.ensure_bridge_filtering()
        table = {"family": FAMILY, "table": TABLE}
        chain_in, chain_out = chain_names(vni)
        commands = self._skeleton()
        for chain, rules in ((chain_in, in_rules), (chain_out, out_rules)):
            commands.append({"add": {"chain": {**table, "name": chain}}})
            commands.append({"flush": {"chain": {**table, "name": chain}}})
            commands.extend({"add": {"rule": {**table, "chain": chain, **body}}} for body in rules)
        for map_name, chain in ((IN_MAP, chain_in), (OUT_MAP, chain_out)):
            elements = self._map_elements(map_name)
            for key, target in elements.items():
                if (target == chain) != (key == bridge):  # stale: other bridge, or other chain
                    commands.append(
                        {"delete": {"element": {**table, "name": map_name, "elem": [key]}}}
                    )
            if elements.get(bridge) != chain:
                commands.append(
                    {
                        "add": {
                            "element": {
                                **table,
                                "name": map_name,
                                "elem": [[bridge, {"jump": {"target": chain}}]],
                            }
                        }
                    }
                )
        self._json(commands, f"apply the ACLs of network {vni}")
        log.info(
            "nft rules applied vni=%d bridge=%s in=%d out=%d netns=%s",
            vni,
            bridge,
            len(in_rules),
            len(out_rules),
            self.netns or "-",
        )

    def remove_network(self, vni: int) -> None:
        """Remove network `vni`'s chains and dispatch; nothing happens if they are absent."""
        table = {"family": FAMILY, "table": TABLE}
        commands: list[dict[str, Any]] = []
        chains = chain_names(vni)
        for map_name in (IN_MAP, OUT_MAP):
            for key, target in self._map_elements(map_name).items():
                if target in chains:
                    commands.append(
                        {"delete": {"element": {**table, "name": map_name, "elem": [key]}}}
                    )
        for chain in chains:
            if self._list({"chain": {**table, "name": chain}}) is not None:
                commands.append({"flush": {"chain": {**table, "name": chain}}})
                commands.append({"delete": {"chain": {**table, "name": chain}}})
        if commands:
            self._json(commands, f"remove the ACLs of network {vni}")
            log.info("nft rules removed vni=%d netns=%s", vni, self.netns or "-")

    def remove_all(self) -> None:
        """Delete the whole `inet pvc` table (node teardown); nothing happens if absent."""
        if self._list({"table": {"family": FAMILY, "name": TABLE}}) is not None:
            self._json(
                [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}], "delete table inet pvc"
            )
            log.info("nft table removed netns=%s", self.netns or "-")
