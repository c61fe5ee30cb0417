"""Login sessions: opened with a token, kept in ZooKeeper, ended by logout or by time.

`POST /api/v1/auth/login` with a valid token stores a random session id in ZooKeeper
(`<root>/sessions/<sid>`: the token's SHA-256, when it was opened, when it expires) and sends the
id in a cookie signed with the configured secret key. The session lives in ZooKeeper so that it
stays valid when the API moves to another primary.

A session ends:
- at logout (its znode is deleted);
- `api.auth.session_lifetime` after it was opened: an expired session is refused, and its znode
  is deleted when it is next presented and by the primary's periodic `sweep`, so the tree does
  not keep every session ever opened;
- with its token: when the token is removed from the config, its sessions no longer validate
  (the sweep removes them once expired).

A cookie session is what a browser sends by itself, so a request that changes state and rests on
one must (1) come from the API's own origin (`same_origin`): its `Origin` header (or, if a client
sends none, its `Referer`) must name the host the request was sent to; and (2) carry the
session's CSRF token in the `X-CSRF-Token` header (`csrf_token`): a value a page of another site
can neither read nor guess, which the login answer and `GET /api/v1/auth/session` give to the
dashboard's own script. The token is derived from the session id with the cookie secret (HMAC),
so it needs no storage and stays valid on another primary, as the session does. A request with
a token header needs neither (a browser never adds `X-Api-Key` by itself), but one that has an
`Origin` (a browser page sent it) must be of the same origin too (`BaseHandler`). The cookie is
also `SameSite=Strict` and `HttpOnly`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

from pvcd.api.auth import Tokens, new_session_id
from pvcd.domain.records import ApiSession
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

CSRF_HEADER = "X-CSRF-Token"


class Sessions:
    def __init__(self, view: ClusterView, store: Store, tokens: Tokens, lifetime: float,
                 clock: Callable[[], float]) -> None:
        self.view = view
        self.store = store
        self.tokens = tokens
        self.lifetime = lifetime
        self.clock = clock

    def new(self, digest: str) -> tuple[str, list[Op]]:
        """A new session id for the token with this digest, and the write that opens it."""
        sid, now = new_session_id(), self.clock()
        session = ApiSession(digest, now, now + self.lifetime)
        return sid, [Op.create(self.view.paths.session(sid), session.to_doc())]

    def token_name(self, sid: str) -> str | None:
        """The name of the token that session `sid` was opened with, if the session is open
        and unexpired and the token still configured; an expired session is removed."""
        doc = self.view.cache.get(self.view.paths.session(sid))
        if not isinstance(doc, dict):
            return None
        if self._expired(doc, self.clock()):
            self._remove([sid])
            return None
        return self.tokens.match_digest(str(doc.get("token_sha256", "")))

    def sweep(self) -> None:
        """Remove every expired session."""
        now = self.clock()
        self._remove([sid for sid in self.view.cache.children(self.view.paths.sessions)
                      if self._expired(self.view.cache.get(self.view.paths.session(sid)), now)])

    def _expired(self, doc: Any, now: float) -> bool:
        try:
            return now >= float(doc["expires"])
        except (TypeError, KeyError, ValueError):
            return True  # not a session we wrote: nothing to keep

    def _remove(self, sids: list[str]) -> None:
        for sid in sids:  # one by one: a logout may have removed one already
            future = self.store.commit_async([Op.delete(self.view.paths.session(sid))])
            future.add_done_callback(_logged())


def _logged() -> Callable[[Future[list[Any]]], None]:
    def done(future: Future[list[Any]]) -> None:
        if future.exception() is None:
            log.info("event=api-session-removed reason=expired")  # the id is a secret
        else:
            log.debug("event=api-session-remove-failed error=%s", future.exception())

    return done


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """Whether a request naming this `Origin` (else this `Referer`) came from a page of the
    host it was sent to (`Host`, with its port). Neither header: not same origin."""
    source = origin if origin is not None else referer
    if not source or not host or source == "null":
        return False
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def csrf_token(secret: str, sid: str) -> str:
    """The CSRF token of session `sid`: an HMAC of its id under the cookie secret."""
    return hmac.new(secret.encode(), b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()


def csrf_valid(secret: str, sid: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(secret, sid).encode(),
                                                   (presented or "").encode())
