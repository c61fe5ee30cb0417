"""The web dashboard as served by the real API in process: its pages and the event stream only
with a session (else the login page, or 401), the cookie's attributes, the CSRF rules of the
writes its script makes, its security headers, and a change reaching an open event stream."""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Iterator

import requests

from pvcd.config.schema import ApiSection
from pvcd.web import PAGES_DIR, STATIC_DIR, WEB_DIR
from tests.fakes.api import TOKEN, ApiClient, running_api
from tests.fakes.nodes import SimCluster

WRITE = "/node/node1/domain-state"


def root(api: ApiClient) -> str:
    return api.base.removesuffix("/api/v1")


def login(api: ApiClient) -> tuple[requests.Session, requests.Response]:
    browser = requests.Session()
    response = browser.post(api.base + "/auth/login", data={"token": TOKEN}, timeout=5)
    assert response.status_code == 200, response.text
    return browser, response


def test_logged_out_the_pages_send_to_login_and_the_stream_is_401(node1_api: ApiClient) -> None:
    stranger = requests.get(root(node1_api) + "/", allow_redirects=False, timeout=5)
    assert stranger.status_code == 302
    assert stranger.headers["Location"] == "/login"
    assert requests.get(root(node1_api) + "/events", timeout=5).status_code == 401
    # a token that is wrong is no way in either; a right one in X-Api-Key reads the stream
    assert requests.get(root(node1_api) + "/events", headers={"X-Api-Key": "nope-nope"},
                        timeout=5).status_code == 401
    page = requests.get(root(node1_api) + "/login", timeout=5)
    assert page.status_code == 200
    assert 'action="/api/v1/auth/login"' in page.text


def test_login_sets_a_strict_httponly_cookie_and_opens_the_dashboard(
        node1_api: ApiClient) -> None:
    browser, response = login(node1_api)
    cookie = response.headers["Set-Cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "secure" not in cookie  # plain HTTP here: a Secure cookie would never come back
    page = browser.get(root(node1_api) + "/", allow_redirects=False, timeout=5)
    assert page.status_code == 200
    assert '<script type="module" src="/static/js/app.js">' in page.text
    session = browser.get(node1_api.base + "/auth/session", timeout=5).json()
    assert session == {"who": "fast tier", "via": "session", "auth_enabled": True,
                       "csrf_token": response.json()["csrf_token"]}
    # a token client has no CSRF token to carry
    assert node1_api.get("/auth/session").json()["csrf_token"] is None
    # logged out: back to the login page, and the stream refused
    logout = browser.post(node1_api.base + "/auth/logout", timeout=5, headers={
        "Origin": root(node1_api), "X-CSRF-Token": response.json()["csrf_token"]})
    assert logout.json() == {"message": "Logout successful"}
    assert browser.get(root(node1_api) + "/", allow_redirects=False,
                       timeout=5).status_code == 302
    assert browser.get(root(node1_api) + "/events", timeout=5).status_code == 401


def test_a_cross_site_form_post_is_refused_and_changes_nothing(node1_api: ApiClient) -> None:
    browser, response = login(node1_api)
    before = node1_api.nodes()["node1"]["domain_state"]
    # what a form on another site makes the browser send: the cookie (were it not Strict),
    # a form body, that site's Origin, and no CSRF token
    forged = browser.post(node1_api.base + WRITE, data={"domain-state": "flush"},
                          headers={"Origin": "https://evil.example"}, timeout=5)
    assert forged.status_code == 403
    # even from our own origin, a write without the session's token is refused
    no_token = browser.post(node1_api.base + WRITE, data={"domain-state": "flush"},
                            headers={"Origin": root(node1_api)}, timeout=5)
    assert no_token.status_code == 403
    assert "X-CSRF-Token" in no_token.json()["message"]
    assert node1_api.nodes()["node1"]["domain_state"] == before
    ok = browser.post(node1_api.base + WRITE, data={"domain-state": "ready"}, timeout=5,
                      headers={"Origin": root(node1_api),
                               "X-CSRF-Token": response.json()["csrf_token"]})
    assert ok.status_code == 200, ok.text
    # a token client keeps working without any of it
    assert node1_api.post(WRITE, data={"domain-state": "ready"}).status_code == 200


def test_security_headers(node1_api: ApiClient) -> None:
    browser, _ = login(node1_api)
    page = browser.get(root(node1_api) + "/", timeout=5)
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self' 'sha256-" in policy  # the import map, by its hash
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy
    for response in (page, browser.get(node1_api.base + "/node", timeout=5),
                     requests.get(root(node1_api) + "/static/js/app.js", timeout=5)):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
    script = requests.get(root(node1_api) + "/static/js/app.js", timeout=5)
    assert script.status_code == 200
    assert "javascript" in script.headers["Content-Type"]
    outside = requests.get(root(node1_api) + "/static/%2e%2e/pages/index.html", timeout=5)
    assert outside.status_code in (401, 403, 404)
    assert "importmap" not in outside.text


def test_the_package_holds_every_file_the_pages_load() -> None:
    index = (PAGES_DIR / "index.html").read_text()
    for name in ("style.css", "js/app.js", "vendor/preact.module.js",
                 "vendor/preact-hooks.module.js", "vendor/htm.module.js"):
        assert f"/static/{name}" in index
        assert (STATIC_DIR / name).is_file()
    assert (STATIC_DIR / "vendor" / "preact.LICENSE").is_file()
    assert (STATIC_DIR / "vendor" / "htm.LICENSE").is_file()
    # and the package ships every one of them (pyproject.toml's package-data)
    patterns = tomllib.loads((WEB_DIR.parents[1] / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["pvcd.web"]
    for path in WEB_DIR.rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".pyc"):
            relative = path.relative_to(WEB_DIR)
            assert any(relative.match(pattern) for pattern in patterns), relative


def events(response: requests.Response) -> Iterator[tuple[str, str]]:
    """(event, data) of a server-sent event stream."""
    kind, data = "message", ""
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            data = line[len("data: "):]
        elif line == "":
            yield kind, data
            kind, data = "message", ""


def test_a_change_reaches_an_open_stream_within_a_second(node1_api: ApiClient) -> None:
    browser, _ = login(node1_api)
    with browser.get(root(node1_api) + "/events", stream=True, timeout=5) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        received = events(stream)
        assert next(received)[0] == "hello"
        started = time.monotonic()
        assert node1_api.post(WRITE, data={"domain-state": "flush"}).status_code == 200
        for kind, data in received:
            node = (json.loads(data) if kind == "change" else {}).get("node", {}).get("node1")
            if node is not None:
                break
        assert time.monotonic() - started < 1.0
        # the event carries the node as the API shows it now: the page needs no round trip
        assert node == node1_api.get("/node/node1").json()[0]


def test_an_idle_stream_outlives_the_header_timeout(sim_node1: SimCluster) -> None:
    """The connection limits close connections idle *between* requests; a stream is in the
    middle of its answer and stays open as long as the client reads it."""
    with running_api(sim_node1.state, sim_node1.clock,
                     api=ApiSection(header_timeout=0.2)) as api:
        browser, _ = login(api)
        with browser.get(root(api) + "/events", stream=True, timeout=5) as stream:
            received = events(stream)
            assert next(received)[0] == "hello"
            time.sleep(1.0)  # idle for 5 header timeouts: the point of the test
            assert api.post(WRITE, data={"domain-state": "flush"}).status_code == 200
            kind, data = next(received)
            assert kind == "change" and "node1" in json.loads(data)["node"]


def test_a_stream_ends_with_its_session(node1_api: ApiClient) -> None:
    browser, response = login(node1_api)
    with browser.get(root(node1_api) + "/events", stream=True, timeout=5) as stream:
        received = events(stream)
        assert next(received)[0] == "hello"
        logout = browser.post(node1_api.base + "/auth/logout", timeout=5, headers={
            "Origin": root(node1_api), "X-CSRF-Token": response.json()["csrf_token"]})
        assert logout.status_code == 200
        # a change after the logout: the stream ends instead of sending it
        assert node1_api.post(WRITE, data={"domain-state": "flush"}).status_code == 200
        assert [kind for kind, _ in received] == []


def test_node_logs_reach_only_the_streams_that_follow_them(sim_node1: SimCluster) -> None:
    """A log written while two streams are open: the one following it hears of it (by key),
    the other only of the node change made next, never of the log."""
    state = sim_node1.state
    with running_api(state, sim_node1.clock) as api:
        browser, _ = login(api)
        bad = browser.get(root(api) + "/events", params={"follow": "vm:x"}, timeout=5)
        assert bad.status_code == 510
        assert "kind log or console" in bad.json()["message"]
        with browser.get(root(api) + "/events", params={"follow": "log:node1"}, stream=True,
                         timeout=5) as following, \
                browser.get(root(api) + "/events", stream=True, timeout=5) as plain:
            heard, other = events(following), events(plain)
            assert next(heard)[0] == "hello" and next(other)[0] == "hello"
            state.put(state.paths.node_log("node1"), {"lines": ["one"], "last_line": 1})
            kind, data = next(heard)
            assert kind == "change" and json.loads(data) == {"log": ["node1"]}
            assert api.post(WRITE, data={"domain-state": "flush"}).status_code == 200
            kind, data = next(other)
            assert kind == "change" and set(json.loads(data)) == {"node"}  # no "log" before
