"""`/api/v1` and the authentication endpoints."""

from __future__ import annotations

from pvcd.api.auth import LOGIN_FORM, SESSION_COOKIE, Identity, token_digest
from pvcd.api.base import BaseHandler
from pvcd.api.routing import route
from pvcd.api.sessions import csrf_token
from pvcd.api.values import accepts, text
from pvcd.state.store import Op

AUTH_DISABLED = "Authentication is disabled"
TOKEN = text("token", "An API token.", required=True)


class RootHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.message("PVC API version 1.0: the pvcd cluster manager's HTTP API", 209)


class LoginHandler(BaseHandler):
    public = True

    def get(self) -> None:
        if not self.ctx.auth_enabled:
            return self.message(AUTH_DISABLED)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(LOGIN_FORM)

    @accepts(TOKEN)
    async def post(self) -> None:
        if not self.ctx.auth_enabled:
            return self.message(AUTH_DISABLED)
        self.refuse_if_over_failures()
        token = self.values[TOKEN]
        name = self.ctx.tokens.match(token)
        if name is None:
            self.ctx.failures.record_failure(self.request.remote_ip or "")
            return self.message("Authentication failed: invalid token", 401)
        self.identity = Identity(name, "token")
        sid, ops = self.ctx.sessions.new(token_digest(token))
        await self.commit(ops)
        self.set_signed_cookie(SESSION_COOKIE, sid, expires_days=None, httponly=True,
                               samesite="Strict", secure=self.request.protocol == "https")
        # the page's script sends it back with every write (pvcd.api.sessions: CSRF)
        self.reply({"message": "Login successful",
                    "csrf_token": csrf_token(self.cookie_secret, sid)})


class SessionHandler(BaseHandler):
    """Who the request acts as, and its session's CSRF token: what the dashboard reads when it
    loads (its cookie is HttpOnly: the script cannot read it)."""

    def get(self) -> None:
        identity = self.identity
        assert identity is not None  # not public: authenticated in prepare
        self.reply({"who": identity.who, "via": identity.via,
                    "csrf_token": self.csrf_token() if identity.via == "session" else None,
                    "auth_enabled": self.ctx.auth_enabled})


class LogoutHandler(BaseHandler):
    public = True

    async def get(self) -> None:
        await self._logout()

    async def post(self) -> None:
        await self._logout()

    async def _logout(self) -> None:
        if not self.ctx.auth_enabled:
            return self.message(AUTH_DISABLED)
        sid = self.session_id()
        self.clear_cookie(SESSION_COOKIE)
        if sid is None or self.identity is None:
            return self.message("No active session")
        await self.commit([Op.delete(self.ctx.view.paths.session(sid))])
        self.message("Logout successful")


ROUTES = [
    route("", RootHandler),
    route("/auth/login", LoginHandler),
    route("/auth/logout", LogoutHandler),
    route("/auth/session", SessionHandler),
]
