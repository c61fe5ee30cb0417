"""Authentication of the real API in process: tokens never logged, failures rate-limited per
client address, every write attributed to its token in the audit log, sessions that expire and
are removed from ZooKeeper, CSRF protection of cookie sessions."""

from __future__ import annotations

import http.client
import json
import logging
from dataclasses import replace
from unittest import mock

import pytest
import requests

from pvcd.api.app import make_context
from pvcd.api.auth import Tokens
from pvcd.api.requestlog import redact_uri
from pvcd.api.server import ApiServer
from pvcd.config.schema import ApiSection, AuthSection
from pvcd.domain.errors import ConfigError
from tests.e2e.labclient import wait_until
from tests.fakes.api import TOKEN, ApiClient, running_api, serving_api
from tests.fakes.nodes import SimCluster

WRONG = "not-the-token-0123"


def origin(api: ApiClient) -> str:
    return api.base.removesuffix("/api/v1")


def login(api: ApiClient) -> requests.Session:
    """A session as the dashboard's script holds it: the cookie, and the CSRF token header."""
    browser = requests.Session()
    response = browser.post(api.base + "/auth/login", data={"token": TOKEN}, timeout=5)
    assert response.status_code == 200, response.text
    browser.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return browser


def from_address(api: ApiClient, source: str, path: str,
                 headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """A GET from another loopback address: another client, as far as the API can tell."""
    host, port = api.base.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5, source_address=(source, 0))
    conn.request("GET", "/api/v1" + path, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_a_token_in_the_body_of_a_small_request_authenticates(node1_api: ApiClient) -> None:
    response = node1_api.post("/node/node1/domain-state", token=False,
                              data={"token": TOKEN, "domain-state": "ready"})
    assert response.status_code == 200, response.text
    wrong = node1_api.post("/node/node1/domain-state", token=False,
                           data={"token": WRONG, "domain-state": "ready"})
    assert wrong.status_code == 401
    assert wrong.json() == {"message": "Authentication required"}
    # JSON bodies too; a body that is not JSON is no token (401, not 510)
    as_json = node1_api.post("/node/node1/domain-state", token=False,
                             json={"token": TOKEN, "domain-state": "ready"})
    assert as_json.status_code == 200, as_json.text
    broken = node1_api.post("/node/node1/domain-state", token=False, data="{not json",
                            headers={"Content-Type": "application/json"})
    assert broken.status_code == 401


def test_a_stranger_learns_nothing_of_an_endpoint_before_its_token_is_checked(
        node1_api: ApiClient) -> None:
    """Storage is not configured on this API: a known client is told so (510), a stranger whose
    small body carries a wrong token only hears 401."""
    known = node1_api.get("/storage/ceph/pool")
    assert known.status_code == 510 and "storage" in known.json()["message"].lower()
    stranger = node1_api.post("/storage/ceph/pool", token=False,
                              data={"token": WRONG, "pool": "p1", "pgs": "8"})
    assert (stranger.status_code, stranger.json()) == (401, {"message": "Authentication required"})
    by_body = node1_api.post("/storage/ceph/pool", token=False,
                             data={"token": TOKEN, "pool": "p1", "pgs": "8"})
    assert by_body.status_code == 510 and "storage" in by_body.json()["message"].lower()


def test_no_log_line_holds_a_token(node1_api: ApiClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    base = node1_api.base
    for token in (TOKEN, WRONG):
        requests.get(base + "/node", params={"token": token}, timeout=5)
        requests.get(base + "/nonexistent", params={"token": token}, timeout=5)
        requests.get(f"{base}/node?x=1&token={token}", timeout=5)
        requests.get(base + "/node", headers={"X-Api-Key": token}, timeout=5)
        requests.post(base + "/node/node1/domain-state",
                      data={"token": token, "domain-state": "bogus"}, timeout=5)
        requests.post(base + "/auth/login", data={"token": token}, timeout=5)
        requests.patch(base + "/node", params={"token": token}, timeout=5)  # 405
    # what the API logged (the client's own urllib3 debug lines are not the API's)
    texts = [record.getMessage() + (record.exc_text or "") for record in caplog.records
             if not record.name.startswith("urllib3")]
    assert any("token=<redacted>" in text for text in texts), texts
    leaks = [text for text in texts if TOKEN in text or WRONG in text]
    assert leaks == []


def test_redact_uri() -> None:
    assert redact_uri("/api/v1/node?token=abc&x=1") == "/api/v1/node?token=<redacted>&x=1"
    assert redact_uri("/a?x=1&%74oken=abc") == "/a?x=1&%74oken=<redacted>"
    assert redact_uri("/a?tokens=abc") == "/a?tokens=abc"
    assert redact_uri("/a") == "/a"


def test_failed_credentials_are_rate_limited_per_address(sim_node1: SimCluster) -> None:
    section = ApiSection(auth=AuthSection(max_failures=3, failure_window=30.0))
    with running_api(sim_node1.state, sim_node1.clock, api=section) as api:
        assert api.get("/node", token=False, headers={"X-Api-Key": WRONG}).status_code == 401
        assert api.get("/node", token=False, params={"token": WRONG}).status_code == 401
        assert api.post("/auth/login", token=False, data={"token": WRONG}).status_code == 401
        # no token at all is no failure; public endpoints do not look at tokens
        assert api.get("/node", token=False).status_code == 401
        assert api.get("", token=False, params={"token": WRONG}).status_code == 209
        for attempt in ({"headers": {"X-Api-Key": WRONG}}, {"headers": {"X-Api-Key": TOKEN}}):
            limited = api.get("/node", token=False, **attempt)  # type: ignore[arg-type]
            assert limited.status_code == 429, limited.text
            assert limited.headers["Retry-After"] == "10"  # one attempt per 30 / 3 s
            assert "Too many failed authentication attempts" in limited.json()["message"]
        assert api.post("/auth/login", token=False, data={"token": TOKEN}).status_code == 429
        # another client address is not limited
        assert from_address(api, "127.0.0.2", "/node", {"X-Api-Key": TOKEN}).status == 200
        sim_node1.clock.advance(10)
        assert api.get("/node").status_code == 200
        assert api.get("/node", token=False, params={"token": WRONG}).status_code == 401
        assert api.get("/node").status_code == 429


def test_every_write_is_audited_with_its_tokens_name(
        node1_api: ApiClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pvcd.audit")
    assert node1_api.post("/node/node1/domain-state", data={"domain-state": "ready"}).status_code \
        == 200
    assert node1_api.post("/node/node1/domain-state", data={"domain-state": "bogus"}).status_code \
        == 510
    assert node1_api.get("/node").status_code == 200  # a read: not audited
    assert node1_api.post("/node/node1/domain-state", token=False, params={"token": WRONG},
                          data={"domain-state": "ready"}).status_code == 401
    browser = login(node1_api)
    assert browser.post(node1_api.base + "/node/node1/domain-state", data={"domain-state": "ready"},
                        headers={"Origin": origin(node1_api)}, timeout=5).status_code == 200
    def audited() -> list[str]:  # written once the answer is sent: wait for the last one
        return [r.getMessage() for r in caplog.records if r.name == "pvcd.audit"]

    lines = wait_until(lambda: len(audited()) == 5 and audited(), timeout=5)
    path = "/api/v1/node/node1/domain-state"
    assert lines == [
        f'event=api-write who="fast tier" via=token client=127.0.0.1 method=POST path={path} '
        "status=200",
        f'event=api-write who="fast tier" via=token client=127.0.0.1 method=POST path={path} '
        "status=510",
        "event=api-write who=unauthenticated via=none client=127.0.0.1 method=POST "
        f"path={path} status=401",
        'event=api-write who="fast tier" via=token client=127.0.0.1 method=POST '
        "path=/api/v1/auth/login status=200",
        'event=api-write who="fast tier" via=session client=127.0.0.1 method=POST '
        f"path={path} status=200",
    ]
    assert all(TOKEN not in line for line in lines)


def test_sessions_expire_and_are_removed(sim_node1: SimCluster) -> None:
    state, clock = sim_node1.state, sim_node1.clock
    section = ApiSection(auth=AuthSection(session_lifetime=600.0))
    with running_api(state, clock, api=section) as api:
        browser = login(api)
        assert browser.get(api.base + "/node", timeout=5).status_code == 200
        [sid] = state.cache.children(state.paths.sessions)
        doc = state.cache.get(state.paths.session(sid))
        assert doc["expires"] == doc["created"] + 600.0
        clock.advance(599)
        assert browser.get(api.base + "/node", timeout=5).status_code == 200
        clock.advance(1)
        assert browser.get(api.base + "/node", timeout=5).status_code == 401
        wait_until(lambda: not state.client.exists(state.paths.session(sid)), timeout=5)


def test_the_primary_sweeps_expired_sessions(sim_node1: SimCluster) -> None:
    state, clock = sim_node1.state, sim_node1.clock
    with serving_api(state, clock, session_sweep_interval=0.05) as (_, api):
        login(api)
        login(api)
        assert len(state.client.get_children(state.paths.sessions)) == 2
        clock.advance(ApiSection().auth.session_lifetime)
        wait_until(lambda: state.client.get_children(state.paths.sessions) == [], timeout=5)


def test_cookie_sessions_need_the_apis_own_origin_to_change_state(node1_api: ApiClient) -> None:
    browser = login(node1_api)
    path = node1_api.base + "/node/node1/domain-state"
    data = {"domain-state": "ready"}
    for headers in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Referer": "http://evil.example/page"}):
        refused = browser.post(path, data=data, headers=headers, timeout=5)
        assert refused.status_code == 403, (headers, refused.text)
        assert "Cross-site request refused" in refused.json()["message"]
    assert browser.post(path, data=data, headers={"Origin": origin(node1_api)},
                        timeout=5).status_code == 200
    referer = origin(node1_api) + "/api/v1/auth/login"
    assert browser.post(path, data=data, headers={"Referer": referer},
                        timeout=5).status_code == 200
    assert browser.get(node1_api.base + "/node", timeout=5).status_code == 200  # reads: no check
    # the right origin but not the session's CSRF token (a form of another site cannot have it)
    for token in ("", "0" * 64, browser.headers["X-CSRF-Token"][:-1]):
        refused = browser.post(path, data=data, headers={"Origin": origin(node1_api),
                                                         "X-CSRF-Token": token}, timeout=5)
        assert refused.status_code == 403, (token, refused.text)
        assert "X-CSRF-Token" in refused.json()["message"]
    # a token in a header is not what a browser sends by itself: no Origin needed, but a
    # browser page of another origin is refused anyway
    assert node1_api.post("/node/node1/domain-state", data=data).status_code == 200
    assert node1_api.post("/node/node1/domain-state", data=data,
                          headers={"Origin": "http://evil.example"}).status_code == 403
    logout = browser.post(node1_api.base + "/auth/logout",
                          headers={"Origin": origin(node1_api)}, timeout=5)
    assert logout.json() == {"message": "Logout successful"}


def make_ctx(auth: bool) -> object:
    return make_context(mock.MagicMock(), mock.MagicMock(), "node1", auth,
                        Tokens.from_config(["secret-token"]))


def test_no_unauthenticated_api_beyond_loopback_unless_allowed(
        caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_ctx(auth=False)
    for address, extra in (("0.0.0.0", []), ("10.1.2.3", []), ("::", []),
                           ("127.0.0.1", [("10.0.0.254", None)])):
        with pytest.raises(ConfigError, match=r"api\.auth\.allow_unauthenticated"):
            ApiServer(ctx, address, 7370, "", extra_listen=extra)  # type: ignore[arg-type]
    ApiServer(ctx, "127.0.0.1", 7370, "")  # type: ignore[arg-type]
    ApiServer(make_ctx(auth=True), "0.0.0.0", 7370, "s" * 16)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="pvcd.api.server")
    ApiServer(ctx, "0.0.0.0", 7370, "", allow_unauthenticated=True)  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records if r.name == "pvcd.api.server"] == [
        "event=api-unauthenticated addresses=0.0.0.0: authentication is off "
        "(api.auth.allow_unauthenticated): anyone who reaches these addresses controls the "
        "cluster"]


def test_the_config_keys_reach_the_api() -> None:
    auth = replace(AuthSection(), session_lifetime=120.0, max_failures=2, failure_window=10.0)
    ctx = make_context(mock.MagicMock(), mock.MagicMock(), "node1", True,
                       Tokens.from_config([("secret-token", "ops")]),
                       api=ApiSection(auth=auth, max_body_size=70000))
    assert ctx.sessions.lifetime == 120.0
    assert ctx.failures.max_failures == 2 and ctx.failures.rate == 0.2
    assert ctx.max_body_size == 70000
    assert ctx.tokens.match("secret-token") == "ops"


def test_token_names_for_the_audit_log() -> None:
    tokens = Tokens.from_config([("first-token", "ops team"), ("second-token", ""),
                                 "third-token"])
    assert [tokens.match(t) for t in ("first-token", "second-token", "third-token")] == [
        "ops team", "tokens[1]", "tokens[2]"]
    assert tokens.match("first-toke") is None and tokens.match("") is None


def test_a_session_cookie_that_is_not_ours_is_no_session(node1_api: ApiClient) -> None:
    forged = requests.get(node1_api.base + "/node", cookies={"pvc_session": "x|y|z"}, timeout=5)
    assert forged.status_code == 401
    assert json.loads(forged.text) == {"message": "Authentication required"}
