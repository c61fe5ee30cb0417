"""API authentication: static tokens from the config, and sessions that survive a handover.

A token matches only exactly: both sides are hashed to fixed-length digests and compared with
`hmac.compare_digest` against *every* configured token, so neither the length nor the position
of a mismatch leaks through timing, and a prefix or substring of a token never matches.

A session is opened by `POST /api/v1/auth/login` with a valid token: a random session id is
stored in ZooKeeper (`<root>/sessions/<sid>`, with the token's SHA-256 and an expiry) and sent to
the client in a cookie signed with the configured secret key. Because the session lives in
ZooKeeper, it stays valid when the API moves to another primary; logout deletes it. A session
dies with its token: if the token is removed from the config, the session no longer validates.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

SESSION_COOKIE = "pvc_session"
SESSION_LIFETIME = 12 * 3600.0


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Tokens:
    digests: tuple[str, ...]

    @classmethod
    def from_config(cls, tokens: Sequence[str]) -> Tokens:
        return cls(tuple(token_digest(t) for t in tokens))

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        candidate = token_digest(token).encode()
        found = False
        for digest in self.digests:  # no early exit: constant work per request
            found |= hmac.compare_digest(candidate, digest.encode())
        return found

    def knows_digest(self, digest: str) -> bool:
        found = False
        for known in self.digests:
            found |= hmac.compare_digest(digest.encode(), known.encode())
        return found


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def session_expired(expires: float, now: float | None = None) -> bool:
    return (now if now is not None else time.time()) >= expires


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
