"""The web dashboard in a real browser (Debian's headless Chromium, driven by Playwright, never
a downloaded browser) against a real lab: log in, see the nodes, watch a VM defined through the
API appear without a reload, stop it and flush a node from the page, see the API's message of a
refused action, follow a primary handover, and the refusals: logged out (pages and the event
stream) and a cross-site form post. One lab and one browser for the module.

Set PVCD_DASHBOARD_SCREENSHOTS=docs/dashboard to refresh the screenshots of docs/dashboard.md.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pvcd.lab.guest import tiny_guest_xml
from tests.e2e.labclient import LabClient, ok, running_lab, wait_until

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]

CHROMIUM = "/usr/bin/chromium"
LIVE = 1.0  # seconds: the page shows a change within this (the bound)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabClient]:
    # nodes in network namespaces: the browser reaches the API through the cluster's floating
    # IP (the lab's proxy), which moves with the primary
    with running_lab(tmp_path_factory.mktemp("dashboard-lab"), nodes=3, fencing="none",
                     network=True) as (_, client):
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium: scripts/setup installs it)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def origin(lab: LabClient) -> str:
    return lab.base.removesuffix("/api/v1")


@pytest.fixture
def page(lab: LabClient, browser: Any) -> Iterator[Any]:
    """A logged-in page (a fresh browser context: its own cookies), failing on script errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(origin(lab) + "/")
    assert page.url == origin(lab) + "/login"  # not logged in yet
    page.fill("#token", lab.token)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=live].on")
    yield page
    context.close()
    assert errors == []


def shoot(page: Any, name: str) -> None:
    folder = os.environ.get("PVCD_DASHBOARD_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def vm_state(lab: LabClient, name: str) -> str:
    return str(ok(lab.get(f"/vm/{name}"))[0]["state"])


def confirm(page: Any) -> None:
    page.click("[data-testid=confirm-yes]")


def test_the_cluster_live_in_the_browser(lab: LabClient, page: Any) -> None:
    # the overview and the nodes
    page.wait_for_selector("[data-testid=node-count]:has-text('3')")
    assert page.inner_text("[data-testid=primary]") == lab.primary()
    page.click("nav >> text=Nodes")
    rows = page.locator("[data-testid=nodes] tbody tr")
    assert rows.count() == 3
    assert sorted(rows.nth(i).get_attribute("data-key") for i in range(3)) == \
        ["node1", "node2", "node3"]

    # a VM defined and started through the API appears without a reload
    page.click("nav >> text=VMs")
    page.evaluate("window.notReloaded = true")
    started = time.monotonic()
    ok(lab.post("/vm", data={"xml": tiny_guest_xml("web1"), "node": "node1"}))
    page.wait_for_selector("[data-testid=vms] a:has-text('web1')", timeout=LIVE * 1000)
    seen = time.monotonic() - started
    wait_until(lambda: vm_state(lab, "web1") == "start", timeout=10)
    page.wait_for_selector("[data-testid=vms] tr:has-text('web1') .state-start")
    assert page.evaluate("window.notReloaded") is True
    assert seen < LIVE + 0.5, seen  # (the API's answer itself takes part of it)
    shoot(page, "vms")

    # stopped from the page (after a confirmation): the API reports it stopped
    page.click("[data-testid=vms] a:has-text('web1')")
    page.click("[data-testid=vm-stop]")
    page.wait_for_selector("[data-testid=confirm]")
    confirm(page)
    wait_until(lambda: vm_state(lab, "web1") == "stop", timeout=10)
    page.wait_for_selector("h1 .state-stop", timeout=LIVE * 1000)
    page.click("[data-testid=vm-start]")
    wait_until(lambda: vm_state(lab, "web1") == "start", timeout=10)

    # a refused action shows the API's own message: migrating a migrated VM again
    page.select_option("[data-testid=migrate-target]", "node2")
    page.click("[data-testid=vm-migrate]")
    confirm(page)
    wait_until(lambda: ok(lab.get("/vm/web1"))[0]["node"] == "node2", timeout=10)
    page.click("[data-testid=vm-migrate]")
    confirm(page)
    notice = page.wait_for_selector("[data-testid=notice].error")
    assert "already been migrated" in notice.inner_text()
    assert ok(lab.get("/vm/web1"))[0]["node"] == "node2"  # and nothing changed
    shoot(page, "vm")

    # a node flushed from the page: the API reports it flushed, its VM moved away
    page.click("nav >> text=Nodes")
    page.click("[data-testid=flush-node2]")
    confirm(page)
    wait_until(lambda: lab.nodes()["node2"]["domain_state"] == "flushed", timeout=20)
    page.wait_for_selector("[data-testid=nodes] tr[data-key=node2] .state-flushed",
                           timeout=LIVE * 1000)
    assert ok(lab.get("/vm/web1"))[0]["node"] != "node2"
    page.click("[data-testid=ready-node2]")
    wait_until(lambda: lab.nodes()["node2"]["domain_state"] == "ready", timeout=20)
    shoot(page, "nodes")
    page.click("nav >> text=Overview")
    page.wait_for_selector("[data-testid=vm-count]:has-text('1')")
    shoot(page, "overview")


def test_the_page_follows_a_primary_handover(lab: LabClient, page: Any) -> None:
    old = lab.primary()
    new = next(name for name in ("node1", "node2", "node3") if name != old)
    page.click("nav >> text=Nodes")
    page.click(f"[data-testid=primary-{new}]")
    confirm(page)
    wait_until(lambda: lab.primary() == new, timeout=30)
    # the stream ends with the old primary's API; EventSource reconnects to the new one
    page.wait_for_selector(f"[data-testid=nodes] tr[data-key={new}] .state-primary",
                           timeout=15000)
    page.wait_for_selector("[data-testid=live].on", timeout=15000)
    page.click("nav >> text=VMs")
    started = time.monotonic()
    ok(lab.post("/vm", data={"xml": tiny_guest_xml("after1"), "node": "node3"}))
    page.wait_for_selector("[data-testid=vms] a:has-text('after1')", timeout=LIVE * 1000)
    assert time.monotonic() - started < LIVE + 0.5


def test_a_thousand_vms_render_within_a_second(lab: LabClient, page: Any) -> None:
    """The list at 1,000 VMs (the API's answer replaced in the browser: the lab need not hold
    them), filtered and sorted."""
    vms = [{"name": f"vm{i:04d}", "uuid": f"00000000-0000-0000-0000-{i:012d}",
            "state": ("start", "stop", "shutdown")[i % 3], "node": f"node{1 + i % 3}",
            "vcpu": 1, "memory": 64 + i % 7, "description": f"guest {i}", "last_node": None,
            "migrated": False} for i in range(1000)]
    page.route("**/api/v1/vm", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(vms)))
    page.reload()
    page.wait_for_selector("[data-testid=live].on")
    # timed inside the page: from the navigation to the 1,000th row on screen (a frame later)
    rendered = page.evaluate("""() => new Promise((done) => {
        const started = performance.now();
        const rows = () => document.querySelectorAll("[data-testid=vms] tbody tr").length;
        const check = () => rows() === 1000 ? done(performance.now() - started)
                                            : requestAnimationFrame(check);
        window.location.hash = "#/vms";
        requestAnimationFrame(check);
    })""")
    assert rendered < 1000, rendered
    page.fill("[data-testid=vm-filter]", "node2 stop")
    page.wait_for_function("document.querySelectorAll('[data-testid=vms] tbody tr').length "
                           "=== 333")
    page.click("[data-testid=vms] th:has-text('Memory')")
    first = page.locator("[data-testid=vms] tbody tr").first.inner_text()
    assert "64 MiB" in first


class _FormSite(http.server.BaseHTTPRequestHandler):
    """Another site: a page with a form that posts to the lab's API."""

    target = ""

    def do_GET(self) -> None:
        body = (f'<form method="post" action="{self.target}">'
                '<input name="domain-state" value="flush">'
                '<button id="go" type="submit">win a prize</button></form>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_cross_site_form_post_is_refused(lab: LabClient, page: Any) -> None:
    _FormSite.target = lab.base + "/node/node3/domain-state"
    site = http.server.HTTPServer(("127.0.0.1", 0), _FormSite)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        # the logged-in browser visits the other site (another origin) and the form is sent
        page.goto(f"http://127.0.0.1:{site.server_address[1]}/")
        with page.expect_navigation():
            page.click("#go")
        answer = json.loads(page.inner_text("body"))
        assert "Cross-site request refused" in answer["message"], answer
        assert lab.nodes()["node3"]["domain_state"] == "ready"
    finally:
        site.shutdown()
        site.server_close()


def test_logged_out_every_page_and_the_stream_are_refused(lab: LabClient, page: Any) -> None:
    page.click("header button:has-text('Log out')")
    page.wait_for_url(origin(lab) + "/login")
    for path in ("/", "/#/vms", "/#/nodes"):
        page.goto(origin(lab) + path)
        # (a browser keeps the #fragment across the redirect: the view to go back to)
        assert page.url.split("#")[0] == origin(lab) + "/login", path
    events = page.evaluate("fetch('/events').then(r => r.status)")
    assert events == 401
    assert page.evaluate("fetch('/api/v1/node').then(r => r.status)") == 401
    assert requests.get(origin(lab) + "/events", timeout=5).status_code == 401
    assert requests.get(origin(lab) + "/", allow_redirects=False,
                        timeout=5).headers["Location"] == "/login"
