"""API authentication: static tokens from the config, and who a request acts as.

A token matches only exactly: both sides are hashed to fixed-length digests and compared with
`hmac.compare_digest` against *every* configured token, so neither the length nor the position
of a mismatch leaks through timing, and a prefix or substring of a token never matches.

Each token has a name for the audit log (`pvcd.api.requestlog`): its `description` from the
config, or its place there (`tokens[2]`) when it has none. The name is all that is ever logged
of a token; not even a prefix of its digest is (a hash prefix of a short token can be checked
against guesses offline).

A request acts as an `Identity`: a token's name, reached by a token (`X-Api-Key` or the `token`
value) or by a session opened with that token (`pvcd.api.sessions`); or nobody in particular
when authentication is disabled.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

SESSION_COOKIE = "pvc_session"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    """Who a request acts as: `who` is a token's name; `via` says how the request proved it
    ("token", "session"), or "none" when authentication is disabled."""

    who: str
    via: str


ANONYMOUS = Identity("anonymous", "none")  # authentication disabled


@dataclass(frozen=True)
class Tokens:
    digests: tuple[str, ...]
    names: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, tokens: Sequence[str | tuple[str, str]]) -> Tokens:
        """`tokens`: the token values, or (token, description) pairs as the config has them."""
        pairs = [(t, "") if isinstance(t, str) else t for t in tokens]
        return cls(tuple(token_digest(token) for token, _ in pairs),
                   tuple(description or f"tokens[{index}]"
                         for index, (_, description) in enumerate(pairs)))

    def match(self, token: str | None) -> str | None:
        """The name of the configured token equal to `token`, or None."""
        if not token:
            return None
        return self.match_digest(token_digest(token))

    def match_digest(self, digest: str) -> str | None:
        """The name of the configured token with this SHA-256 digest, or None."""
        candidate = digest.encode()
        found: str | None = None
        for index, known in enumerate(self.digests):  # no early exit: constant work
            if hmac.compare_digest(candidate, known.encode()):
                found = self._name(index)
        return found

    def valid(self, token: str | None) -> bool:
        return self.match(token) is not None

    def _name(self, index: int) -> str:
        return self.names[index] if index < len(self.names) else f"tokens[{index}]"


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


LOGIN_FORM = """<!doctype html>
<html><head><title>PVC API login</title></head>
<body>
<h1>PVC API login</h1>
<form method="post" action="/api/v1/auth/login">
<label>Token: <input type="password" name="token" autocomplete="off"></label>
<input type="submit" value="Log in">
</form>
</body></html>
"""
