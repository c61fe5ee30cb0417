"""ACL rules: the operator's nftables rule text, checked and turned into JSON.

Rules arrive as operator text. `validate_rule` turns one into the JSON form nft itself parsed
(never string-concatenating it into a command that runs on a real ruleset); the driver
(`pvcd.drivers.nftables`) only ever sends such JSON, and `check_rule_body` re-checks a stored
body before it does (the body comes from cluster state, a trust boundary).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from typing import Any

from pvcd.domain.errors import BackendError, InvalidValue

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
            f"{nft_error(parsed.stderr)}; allowed: {ALLOWED_HELP}"
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
            f"of it ({nft_error(loaded.stderr)}); write it another way"
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


def nft_error(stderr: str) -> str:
    """The first `Error: ...` of nft's message, without the file:line:column prefix."""
    for line in stderr.splitlines():
        if "Error:" in line:
            return line[line.index("Error:") :].strip()
    return (stderr.strip().splitlines() or ["unknown error"])[0]
