"""The firewall controller: on every node, each managed network's ACLs in nftables.

Key `acl/<vni>`. A reconcile reads the network's `in` and `out` ACLs from the cache, in their
`order`, and hands their stored, validated JSON bodies to `NftablesDriver.apply_network_rules`:
one atomic nftables transaction, so packets see the old or the new rule list, never a mix. The
operator's text is never parsed again here, let alone concatenated into a command. A network
that is gone loses its chains. Every node carries the same chains because traffic of one
network is filtered where it is bridged (see drivers/nftables.py for the semantics).

The reconcile is idempotent (it rewrites the chains whole); the resync re-applies everything,
so a ruleset flushed by hand comes back within one interval.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from pvcd.controllers.base import DONE, Controller, Result, Watch, Wiring
from pvcd.controllers.network import vni_of_key, vni_of_path
from pvcd.domain.records import AclSpec
from pvcd.drivers.ifnames import bridge_name
from pvcd.drivers.nftables import NftablesDriver
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)


def acl_key(vni: int) -> str:
    return f"acl/{vni}"


def rule_body(acl: AclSpec) -> dict[str, Any]:
    """The body applied for an ACL: its validated JSON, commented with its description."""
    body = dict(acl.body)
    body.setdefault("comment", acl.description)
    return body


class FirewallController:
    def __init__(self, name: str, view: ClusterView, nft: NftablesDriver) -> None:
        self.name = name
        self.view = view
        self.nft = nft

    def keys(self) -> Iterable[str]:
        vnis = set(self.view.network_vnis()) | set(self.nft.networks())
        return [acl_key(v) for v in sorted(vnis)]

    def key_of_path(self, path: str) -> str | None:
        """The network's document and its ACLs matter (not its leases)."""
        paths = self.view.paths
        vni = vni_of_path(paths.networks, path)
        if vni is None or not (path == paths.network(vni) or
                               path.startswith(paths.network_acls(vni))):
            return None
        return acl_key(vni)

    def reconcile(self, key: str) -> Result:
        vni = vni_of_key(key)
        spec = self.view.network(vni)
        if spec is None:
            self.nft.remove_network(vni)
            return DONE
        in_rules = [rule_body(acl) for acl in self.view.acls(vni, "in")]
        out_rules = [rule_body(acl) for acl in self.view.acls(vni, "out")]
        if in_rules or out_rules:
            in_rules = [*direction_guards(spec, "daddr"), *in_rules]
            out_rules = [*direction_guards(spec, "saddr"), *out_rules]
        self.nft.apply_network_rules(vni, bridge_name(vni), in_rules, out_rules)
        return DONE


def direction_guards(spec: Any, field: str) -> list[dict[str, Any]]:
    """Rules that leave a chain for packets not going into (`daddr`) or out of (`saddr`) the
    network. The bridge hands every frame of `vmbr<vni>` to both chains, including a VM's
    packets on their way to the gateway to be routed elsewhere; `in` rules must only see what
    is addressed to the network, `out` rules only what comes from it."""
    guards = []
    for family, network in (("ip", spec.ip4_network), ("ip6", spec.ip6_network)):
        if not network:
            continue
        net = ipaddress.ip_network(network, strict=False)
        guards.append({
            "expr": [{"match": {"op": "!=",
                                "left": {"payload": {"protocol": family, "field": field}},
                                "right": {"prefix": {"addr": str(net.network_address),
                                                     "len": net.prefixlen}}}},
                     {"return": None}],
            "comment": f"pvc: only traffic {'into' if field == 'daddr' else 'out of'} "
                       "the network"})
    return guards


def build_firewall(node: str, view: ClusterView, nft: NftablesDriver,
                   resync_interval: float) -> Wiring:
    """Every network's ACL chains on this node, fed by the networks and their ACLs."""
    firewall = FirewallController(node, view, nft)
    controller = Controller("firewall", firewall.reconcile, firewall.keys,
                            resync_interval=resync_interval)
    wiring = Wiring()
    wiring.add(controller, Watch(view.paths.networks + "/", firewall.key_of_path))
    return wiring
