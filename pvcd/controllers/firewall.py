"""The firewall controller: on every node, each managed network's ACLs in nftables.

Key `acl/<vni>`. A reconcile reads the network's `in` and `out` ACLs from the cache, in their
`order`, checks each with the API's own rules (`pvcd.specs.networks.check_acl_document`: the
rule text parsed by nft in a throw-away namespace, `validate_rule`, remembered per text) and
hands the JSON bodies made *here* to `NftablesDriver.apply_network_rules`: one atomic nftables
transaction, so packets see the old or the new rule list, never a mix. The stored body is never
applied (anything that reaches ZooKeeper could have written it), and the text is never
concatenated into a command. An ACL that breaks the rules is left out and reported in the
node's status (`pvcd.controllers.refusals`); a network document that breaks them leaves its
chains as they are. A network that is gone loses its chains. Every node carries the same
chains because traffic of one network is filtered where it is bridged (see drivers/nftables.py
for the semantics).

The reconcile is idempotent (it rewrites the chains whole); the resync re-applies everything,
so a ruleset flushed by hand comes back within one interval.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Any

from pvcd.controllers.base import DONE, Controller, Result, Watch, Wiring
from pvcd.controllers.network import checked_network, vni_of_key, vni_of_path
from pvcd.controllers.node import NodeStatusWriter
from pvcd.controllers.refusals import Refusals
from pvcd.controllers.restore_hold import hold_during_restore
from pvcd.domain.errors import InvalidValue
from pvcd.domain.metadata import METADATA_ADDRESS, METADATA_PORT
from pvcd.domain.records import AclSpec, NetworkSpec
from pvcd.drivers.ifnames import bridge_name
from pvcd.drivers.nft_rules import validate_rule
from pvcd.drivers.nftables import NftablesDriver
from pvcd.specs.networks import check_acl_document
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)


def acl_key(vni: int) -> str:
    return f"acl/{vni}"


def rule_body(acl: AclSpec) -> dict[str, Any]:
    """The body applied for an ACL: its validated JSON, commented with its description."""
    body = dict(acl.body)
    body.setdefault("comment", acl.description)
    return body


class RuleBodies:
    """The body `validate_rule` makes of each rule text, remembered (refusals too): it runs
    nft twice in a throw-away namespace (≈ 10 ms), and every resync re-checks every ACL."""

    def __init__(self, validate: Callable[[str], dict[str, Any]] = validate_rule,
                 size: int = 4096) -> None:
        self.validate = validate
        self.size = size
        self._known: dict[str, dict[str, Any] | InvalidValue] = {}

    def body(self, rule: str) -> dict[str, Any]:
        known = self._known.get(rule)
        if known is None:
            try:
                known = self.validate(rule)
            except InvalidValue as exc:  # (a BackendError, nft not running, is not kept)
                known = exc
            if len(self._known) >= self.size:
                self._known.clear()
            self._known[rule] = known
        if isinstance(known, InvalidValue):
            raise InvalidValue(str(known))
        return copy.deepcopy(known)


class FirewallController:
    def __init__(self, name: str, view: ClusterView, nft: NftablesDriver, refusals: Refusals,
                 rules: RuleBodies | None = None) -> None:
        self.name = name
        self.view = view
        self.nft = nft
        self.refusals = refusals
        self.rules = rules or RuleBodies()

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
        try:
            spec = checked_network(self.view, vni)
        except InvalidValue as exc:  # its chains stay as they are (the network controller
            # reports the refusal)
            log.warning("event=acls-not-applied node=%s vni=%d reason=%s", self.name, vni, exc)
            return DONE
        scope = f"acl/{vni}"
        if spec is None:
            self.nft.remove_network(vni)
            self.refusals.report(scope, {})
            return DONE
        refused: dict[str, str] = {}
        in_rules = [rule_body(acl) for acl in self._acls(spec, "in", refused)]
        out_rules = [rule_body(acl) for acl in self._acls(spec, "out", refused)]
        self.refusals.report(scope, refused)
        if in_rules or out_rules:
            metadata_in, metadata_out = metadata_rules(spec)
            in_rules = [*metadata_in, *direction_guards(spec, "daddr"), *in_rules]
            out_rules = [*metadata_out, *direction_guards(spec, "saddr"), *out_rules]
        self.nft.apply_network_rules(vni, bridge_name(vni), in_rules, out_rules)
        return DONE


    def _acls(self, spec: NetworkSpec, direction: str, refused: dict[str, str]) -> list[AclSpec]:
        """The network's ACLs of one direction that the API's rules allow, in chain order, each
        with the body made here of its rule text; the others go into `refused`."""
        path = self.view.paths.network_acls(spec.vni, direction)
        accepted = []
        for name in self.view.cache.children(path):
            try:
                accepted.append(check_acl_document(spec, direction, name,
                                                   self.view.cache.get(f"{path}/{name}"),
                                                   self.rules.body))
            except InvalidValue as exc:
                refused[f"acl/{spec.vni}/{direction}/{name}"] = str(exc)
        return sorted(accepted, key=lambda acl: (acl.order, acl.description))


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


def metadata_rules(spec: NetworkSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(in, out) rules that let a managed network's guests reach the primary's metadata
    service (`pvcd.controllers.metadata`) whatever the operator's ACLs say, as PVC's client
    network firewall does: the request (TCP to 169.254.169.254:80) leaves the network, and
    only replies of a connection this node saw a guest open come back (`ct state
    established`), so a guest cannot pass ACLs by sending *from* that address."""
    if spec.type != "managed" or not spec.ip4_network:
        return [], []

    def match(protocol: str, field: str, value: str | int) -> dict[str, Any]:
        return {"match": {"op": "==", "left": {"payload": {"protocol": protocol,
                                                           "field": field}}, "right": value}}

    comment = "pvc: the metadata service"
    request = {"expr": [match("ip", "daddr", METADATA_ADDRESS),
                        match("tcp", "dport", METADATA_PORT), {"accept": None}],
               "comment": comment}
    reply = {"expr": [match("ip", "saddr", METADATA_ADDRESS), match("tcp", "sport", METADATA_PORT),
                      {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                 "right": "established"}}, {"accept": None}],
             "comment": comment}
    return [reply], [request]


def build_firewall(node: str, view: ClusterView, nft: NftablesDriver,
                   resync_interval: float, writer: NodeStatusWriter) -> Wiring:
    """Every network's ACL chains on this node, fed by the networks and their ACLs."""
    firewall = FirewallController(node, view, nft, Refusals(node, writer))
    controller = Controller("firewall", hold_during_restore(view, firewall.reconcile),
                            firewall.keys,
                            resync_interval=resync_interval)
    wiring = Wiring()
    wiring.add(controller, Watch(view.paths.networks + "/", firewall.key_of_path))
    return wiring
