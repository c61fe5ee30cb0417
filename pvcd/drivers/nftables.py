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

Rules arrive as operator text. `validate_rule` turns one into the JSON form nft itself parsed
(never string-concatenating it into a command that runs on a real ruleset), and `apply_*` only
ever sends JSON. One `apply_network_rules` is one JSON command, i.e. one atomic nftables
transaction: packets see either the old or the new chains, never a half-written list.

Namespaces: libnftables talks to the netns of the calling thread. The driver runs every call on
one private worker thread that first `setns()`s into `/run/netns/<netns>` (measured: ≈ 1 ms per
transaction, against ≈ 10 ms for `ip netns exec nft`), which also serializes the calls, as a
libnftables context is not thread-safe.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from pvcd.domain.errors import BackendError, InvalidValue, NotFound
from pvcd.drivers.ifnames import check_ifname, check_netns

log = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "pvc"
BASE_CHAIN = "forward"
IN_MAP = "net_in"
OUT_MAP = "net_out"
BRIDGE_SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")
VALIDATE_TIMEOUT = 10.0
MAX_RULE_LENGTH = 1024

# Top-level statements an ACL may contain. Everything else is refused: `jump`/`goto` (leave the
# network's chain), `queue` (hands packets to a userspace program), `dup`/`fwd` (copy or send
# traffic elsewhere), `mangle` (`meta mark set ...`: marks steer host routing), `vmap`/`map`/`set`
# (can carry verdicts or touch named objects), NAT, notrack, synproxy, ...
ALLOWED_STATEMENTS = frozenset(
    {"match", "counter", "log", "limit", "quota", "accept", "drop", "reject", "return", "continue"}
)
_FORBIDDEN_WORDS = re.compile(r"\b(jump|goto)\b")
ALLOWED_HELP = (
    "one nftables rule on one line, e.g. 'ip saddr 10.0.0.0/8 tcp dport 22 counter accept': "
    "matches plus counter, log, limit, quota and one verdict (accept, drop, reject, return, "
    "continue); no ';', '#', control characters, jump, goto, queue, dup, fwd, mark/NAT "
    "statements or named sets/maps"
)


def chain_names(vni: int) -> tuple[str, str]:
    """(in, out) chain names of network `vni`."""
    return f"net{vni}-in", f"net{vni}-out"


@dataclass
class NetworkRules:
    """The rules found in a network's chains, in order, as nftables JSON rule bodies."""

    inbound: list[dict[str, Any]] = field(default_factory=list)
    outbound: list[dict[str, Any]] = field(default_factory=list)


# -- validation -----------------------------------------------------------------------------


def validate_rule(text: str) -> dict[str, Any]:
    """Parse an operator's ACL rule text; return its JSON body `{"expr": [...]}`.

    The recipe: refuse characters and words that would make the text more than one rule of our
    chain, let `nft --echo --json` parse it inside a throw-away network namespace
    (`unshare --net`, so even a hostile text can only touch an empty ruleset), require exactly one
    rule whose statements are all allowed, then apply that JSON form once more in a fresh
    throw-away namespace so that what we store is known to load. A `comment "..."` in the
    text is kept as `"comment"`. Raises InvalidValue saying what is allowed.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidValue(f"rule must not be empty; allowed: {ALLOWED_HELP}")
    text = text.strip()
    if len(text) > MAX_RULE_LENGTH:
        raise InvalidValue(f"rule is longer than {MAX_RULE_LENGTH} characters")
    for bad, why in (
        (";", "';' (it would start another command)"),
        ("#", "'#' (it would start a comment)"),
    ):
        if bad in text:
            raise InvalidValue(f"rule {text!r} contains {why}; allowed: {ALLOWED_HELP}")
    if any(not c.isprintable() for c in text):
        raise InvalidValue(
            f"rule {text!r} contains a newline or another control character; "
            f"allowed: {ALLOWED_HELP}"
        )
    word = _FORBIDDEN_WORDS.search(text)
    if word:
        raise InvalidValue(
            f"rule {text!r} uses '{word.group(1)}', which would leave the "
            f"network's chain; allowed: {ALLOWED_HELP}"
        )

    script = (
        "add table inet pvcvalidate\n"
        "add chain inet pvcvalidate acl { type filter hook forward priority 0; policy accept; }\n"
        f"add rule inet pvcvalidate acl {text}\n"
    )
    parsed = _run_throwaway(["nft", "--echo", "--json", "-f"], script)
    if parsed.returncode != 0:
        raise InvalidValue(
            f"rule {text!r} is not a valid nftables rule: "
            f"{_nft_error(parsed.stderr)}; allowed: {ALLOWED_HELP}"
        )
    try:
        echoed = json.loads(parsed.stdout)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"nft --echo --json gave unreadable output: {exc}") from exc
    rules = [
        item["add"]["rule"]
        for item in echoed
        if isinstance(item, dict) and "rule" in item.get("add", {})
    ]
    if len(rules) != 1:
        raise InvalidValue(
            f"rule {text!r} makes {len(rules)} rules, not one; allowed: {ALLOWED_HELP}"
        )
    body: dict[str, Any] = {"expr": rules[0].get("expr", [])}
    if "comment" in rules[0]:
        body["comment"] = rules[0]["comment"]
    check_rule_body(body)

    probe = {
        "nftables": [
            {"add": {"table": {"family": "inet", "name": "pvcvalidate"}}},
            {
                "add": {
                    "chain": {
                        "family": "inet",
                        "table": "pvcvalidate",
                        "name": "acl",
                        "type": "filter",
                        "hook": "forward",
                        "prio": 0,
                        "policy": "accept",
                    }
                }
            },
            {"add": {"rule": {"family": "inet", "table": "pvcvalidate", "chain": "acl", **body}}},
        ]
    }
    loaded = _run_throwaway(["nft", "--json", "-f"], json.dumps(probe))
    if loaded.returncode != 0:
        raise InvalidValue(
            f"rule {text!r} parses, but nftables cannot load its own JSON form "
            f"of it ({_nft_error(loaded.stderr)}); write it another way"
        )
    return body


def check_rule_body(body: dict[str, Any]) -> None:
    """Refuse a rule body that `validate_rule` would not have produced (defence in depth)."""
    if not isinstance(body, dict) or set(body) - {"expr", "comment"}:
        raise InvalidValue(f"rule body must be {{'expr': [...], 'comment'?: str}}, got {body!r}")
    expr = body.get("expr")
    if not isinstance(expr, list) or not expr:
        raise InvalidValue("rule has no statements")
    for statement in expr:
        if not isinstance(statement, dict) or len(statement) != 1:
            raise InvalidValue(f"rule statement {statement!r} is malformed")
        (kind,) = statement
        if kind not in ALLOWED_STATEMENTS:
            raise InvalidValue(
                f"statement '{kind}' is not allowed in an ACL; allowed: {ALLOWED_HELP}"
            )
    if _mentions_key(expr, ("jump", "goto")):
        raise InvalidValue(f"rule jumps out of the network's chain; allowed: {ALLOWED_HELP}")
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment.encode()) > 128):
        raise InvalidValue("rule comment must be a string of at most 128 bytes")


def _mentions_key(value: Any, keys: tuple[str, ...]) -> bool:
    if isinstance(value, dict):
        return any(k in keys or _mentions_key(v, keys) for k, v in value.items())
    if isinstance(value, list):
        return any(_mentions_key(v, keys) for v in value)
    return False


def _run_throwaway(argv: list[str], script: str) -> subprocess.CompletedProcess[str]:
    """Run `unshare --net -- argv... <file holding script>` (nft prints no --echo output
    when it reads from a pipe, so the script goes through a private temporary file)."""
    try:
        with tempfile.NamedTemporaryFile("w", prefix="pvc-acl-", suffix=".nft") as file:
            file.write(script)
            file.flush()
            return subprocess.run(
                ["unshare", "--net", "--", *argv, file.name],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=VALIDATE_TIMEOUT,
                check=False,
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"cannot run nft in a throw-away namespace: {exc}") from exc


def _nft_error(stderr: str) -> str:
    """The first `Error: ...` of nft's message, without the file:line:column prefix."""
    for line in stderr.splitlines():
        if "Error:" in line:
            return line[line.index("Error:") :].strip()
    return (stderr.strip().splitlines() or ["unknown error"])[0]


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
                    f"nftables: cannot {what} (netns {self.netns or '-'}): {_nft_error(error)}"
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
