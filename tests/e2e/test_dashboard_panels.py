"""The dashboard's panels in a real browser (Debian's headless Chromium, driven by Playwright)
against a real QEMU lab of two nodes: the cluster's health figure and a real fault (a node
daemon killed: DEAD_NODE) on the overview, acknowledged from the page; the maintenance switch;
a node's health and its daemon log, followed as it grows; a QEMU guest's serial console,
followed across a restart of the guest; tags added and removed; the snapshot panel's refusal
with the API's message. What the lab cannot produce cheaply (hostile console bytes, a running
snapshot task) is answered in the browser (`page.route`) in the API's own shapes.

The page is judged by what it shows and the API by what it reports. Set
PVCD_DASHBOARD_SCREENSHOTS=docs/dashboard to refresh the panels' screenshots.
"""

from __future__ import annotations

import json
import os
import signal
import uuid as uuidlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from pvcd.lab.lab import Lab
from pvcd.lab.qemu_guest import GUEST_SERIAL_UP, qemu_guest_xml
from tests.e2e.labclient import LabClient, ok, wait_until
from tests.e2e.test_dashboard import browser, confirm, page
from tests.e2e.test_logs import qlab  # two QEMU nodes, no fencing, health checks every 2 s
from tests.e2e.test_vm_devices import BUSES, disk_xml

pytest.importorskip("libvirt")
pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.needs_root,
              pytest.mark.timeout(300)]

__all__ = ["browser", "page", "qlab"]  # the fixtures, shared with test_dashboard, test_logs

TIMEOUT = 20.0  # a session timeout (3 s) and a few rounds of checks, on a busy machine
LIVE = 1000  # ms: the page shows a change within this once the API has it


@pytest.fixture(scope="module")
def lab(qlab: tuple[Lab, LabClient]) -> LabClient:
    """(what the shared `page` fixture logs into)"""
    return qlab[1]


@pytest.fixture(scope="module")
def guest(qlab: tuple[Lab, LabClient]) -> dict[str, Any]:
    """The lab's tiny QEMU guest, running on the primary, its boot line on its console."""
    the_lab, api = qlab
    info = the_lab._info()
    assert info.qemu is not None
    ok(api.post("/vm", data={"xml": Path(info.qemu["guest_xml"]).read_text(),
                             "node": api.primary()}))
    wait_until(lambda: ok(api.get("/vm/guest/console"))["data"], timeout=20)
    return dict(ok(api.get("/vm/guest"))[0])


def shoot(page: Any, selector: str, name: str) -> None:
    """A screenshot of one panel (small: the panel, not the window)."""
    folder = os.environ.get("PVCD_DASHBOARD_SCREENSHOTS")
    if folder:
        page.locator(selector).first.screenshot(path=str(Path(folder) / f"{name}.png"))


def faults(api: LabClient) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in ok(api.get("/faults"))}


def health_shown(page: Any) -> int:
    return int(page.inner_text("[data-testid=cluster-health]").rstrip("%"))


def follows(requests: list[str]) -> list[str]:
    """The `follow` values of the event streams the page opened, stream by stream."""
    return [",".join(sorted(v for k, v in parse_qsl(urlsplit(url).query) if k == "follow"))
            for url in requests]


def test_a_killed_node_is_a_fault_on_the_overview_acknowledged_from_the_page(
        qlab: tuple[Lab, LabClient], page: Any) -> None:
    the_lab, api = qlab
    page.wait_for_selector("[data-testid=cluster-health]:has-text('100%')")
    page.wait_for_selector("[data-testid=faults-empty]")
    victim = next(n for n in ("node2", "node1") if n != api.primary())
    dead, fence = f"DEAD_NODE_{victim.upper()}", f"FENCE_FAILED_{victim.upper()}"
    the_lab.signal_node(victim, signal.SIGKILL)
    try:
        wait_until(lambda: dead in faults(api), timeout=TIMEOUT, interval=0.2)
        row = page.wait_for_selector(f"[data-testid=faults] tr[data-key={dead}]",
                                     timeout=LIVE * 3)
        assert "new" in row.inner_text()
        # the figure and its reasons are the API's
        wait_until(lambda: health_shown(page) == ok(api.get("/status"))["cluster_health"]
                   ["health"], timeout=5)
        assert health_shown(page) <= 50
        reasons = page.inner_text("[data-testid=health-reasons]")
        assert dead in reasons
        shoot(page, ".health-panel", "health")

        page.click(f"[data-testid=ack-{dead}]")
        wait_until(lambda: faults(api)[dead]["status"] == "ack", timeout=5)
        page.wait_for_selector(f"[data-testid=faults] tr[data-key={dead}] .state-ack",
                               timeout=LIVE)
        assert dead not in page.inner_text("[data-testid=health-reasons]" if page.locator(
            "[data-testid=health-reasons]").count() else ".health-card")
        # the other (the failed fence: the lab has no fence targets), with all at once
        wait_until(lambda: fence in faults(api), timeout=TIMEOUT, interval=0.2)
        page.wait_for_selector(f"[data-testid=faults] tr[data-key={fence}]", timeout=LIVE * 3)
        page.click("[data-testid=ack-all]")
        wait_until(lambda: all(f["status"] == "ack" for f in faults(api).values()), timeout=5)
        page.wait_for_selector("[data-testid=cluster-health]:has-text('100%')", timeout=LIVE)
    finally:
        the_lab.start_node(victim)
        the_lab.wait_ready(60)
    # deleted from the page, after a confirmation, once the node is back (nothing re-raises)
    wait_until(lambda: not faults(api)[dead]["active"], timeout=TIMEOUT, interval=0.2)
    page.click("[data-testid=delete-all]")
    confirm(page)
    wait_until(lambda: dead not in faults(api), timeout=5)
    page.wait_for_selector(f"[data-testid=faults] tr[data-key={dead}]", state="detached",
                           timeout=LIVE)


def test_maintenance_switched_from_the_page(lab: LabClient, page: Any) -> None:
    page.wait_for_selector("[data-testid=maintenance]:has-text('off')")
    page.click("[data-testid=maintenance-toggle]")
    page.click("[data-testid=confirm-no]")  # turning it on asks first: declined, nothing done
    assert ok(lab.get("/status"))["maintenance"] is False
    page.click("[data-testid=maintenance-toggle]")
    confirm(page)
    wait_until(lambda: ok(lab.get("/status"))["maintenance"] is True, timeout=5)
    page.wait_for_selector("[data-testid=maintenance]:has-text('on')", timeout=LIVE)
    page.click("[data-testid=maintenance-toggle]")  # off: no question
    wait_until(lambda: ok(lab.get("/status"))["maintenance"] is False, timeout=5)
    page.wait_for_selector("[data-testid=maintenance]:has-text('off')", timeout=LIVE)


def test_a_node_log_shown_and_followed(lab: LabClient, page: Any) -> None:
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)
    node = next(n for n in ("node1", "node2") if n != lab.primary())
    page.click("nav >> text=Nodes")
    page.wait_for_selector(f"[data-testid=node-health-{node}]:has-text('health 100%')",
                           timeout=TIMEOUT * 1000)
    page.click(f"[data-testid=node-log-toggle-{node}]")
    page.wait_for_selector(f"[data-testid=node-log-{node}] pre.log")
    # work on that node, logged there: the page shows the new lines as they come
    before = ok(lab.get(f"/node/{node}/log", params={"lines": 1}))["last_line"]
    for state in ("flush", "ready"):
        ok(lab.post(f"/node/{node}/domain-state", data={"domain-state": state, "wait": "1"}))
    wait_until(lambda: ok(lab.get(f"/node/{node}/log"))["last_line"] > before + 1, timeout=10)
    newest = ok(lab.get(f"/node/{node}/log", params={"lines": 1}))["data"]
    page.wait_for_function(
        "([id, line]) => document.querySelector(`[data-testid=node-log-${id}] pre`)"
        ".textContent.split('\\n').includes(line)", arg=[node, newest], timeout=5000)
    shown = page.inner_text(f"[data-testid=node-log-{node}] pre").split("\n")
    # line for line the buffer's tail: nothing repeated, nothing missed
    kept = ok(lab.get(f"/node/{node}/log", params={"lines": 5000}))["data"].split("\n")
    end = shown.index(newest) + 1
    assert shown[:end] == kept[kept.index(newest) + 1 - end:kept.index(newest) + 1]
    shoot(page, f"[data-testid=node-panel-{node}]", "node-panel")
    # the stream carried that node's log only while the panel showed it
    assert f"log:{node}" in follows(streams)
    # (Playwright hands its events to Python only inside its own calls: wait in one)
    with page.expect_request(lambda r: "/events" in r.url, timeout=5000):
        page.click(f"[data-testid=node-log-toggle-{node}]")
    assert follows(streams)[-1] == ""


def test_a_guests_console_followed_on_its_page(lab: LabClient, guest: dict[str, Any],
                                               page: Any) -> None:
    page.goto(page.url.split("#")[0] + "#/vms/guest")
    console = page.wait_for_selector("[data-testid=vm-console] pre.log")
    assert console.inner_text().strip() == GUEST_SERIAL_UP
    # restarted (the power button, a new boot): its lines appear without a reload
    ok(lab.post("/vm/guest/state", data={"state": "restart"}))
    page.wait_for_function(
        "() => document.querySelector('[data-testid=vm-console] pre').textContent"
        ".split('\\n').length === 3", timeout=20000)
    assert [line.rstrip() for line in console.inner_text().split("\n")] == [
        GUEST_SERIAL_UP, "pvcd-guest: power button, powering off", GUEST_SERIAL_UP]
    shoot(page, "[data-testid=vm-console-panel]", "vm-console")
    shoot(page, "[data-testid=vm-meta]", "vm-meta")


def test_tags_and_the_snapshot_panel_from_the_page(lab: LabClient, guest: dict[str, Any],
                                                   page: Any) -> None:
    page.goto(page.url.split("#")[0] + "#/vms/guest")
    page.fill("[data-testid=tag-name]", "web")
    page.click("[data-testid=tag-add]")
    wait_until(lambda: ok(lab.get("/vm/guest/tags"))["tags"] == [
        {"name": "web", "type": "user", "protected": False}], timeout=5)
    page.wait_for_selector("[data-testid=vm-tags] [data-tag=web]", timeout=LIVE)
    page.click("[data-testid=tag-remove-web]")
    confirm(page)
    wait_until(lambda: ok(lab.get("/vm/guest/tags"))["tags"] == [], timeout=5)
    page.wait_for_selector("[data-testid=vm-tags] [data-tag=web]", state="detached",
                           timeout=LIVE)
    # a VM without an RBD disk cannot be snapshotted: the API's message, and nothing made
    page.click("[data-testid=snapshot-take]")
    notice = page.wait_for_selector("[data-testid=notice].error")
    refusal = lab.post("/vm/guest/snapshot")
    assert refusal.status_code == 510
    assert notice.inner_text().startswith(refusal.json()["message"][:40])
    assert ok(lab.get("/vm/guest/snapshot")) == []
    assert page.locator("[data-testid=task-progress]").count() == 0


def test_console_bytes_are_shown_as_text_never_as_markup(
        lab: LabClient, guest: dict[str, Any], page: Any) -> None:
    hostile = ("\x1b[1;31mred\x1b[0m <img src=x onerror=\"window.pwned=1\">\n"
               "\x1b]0;title\x07<script>window.pwned=2</script>\n50%\r100%\r")
    page.route("**/api/v1/vm/*/console*", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(
            {"name": "guest", "last_line": 3,  # (a follower asks for what is after line 3)
             "data": "" if "after=" in route.request.url else hostile})))
    page.goto(page.url.split("#")[0] + "#/vms/guest")
    console = page.wait_for_selector("[data-testid=vm-console] pre.log")
    assert console.inner_text().split("\n") == [
        'red <img src=x onerror="window.pwned=1">', "<script>window.pwned=2</script>", "100%"]
    assert page.locator("[data-testid=vm-console] img, [data-testid=vm-console] script"
                        ).count() == 0
    assert page.evaluate("window.pwned") is None
    # a VM whose node keeps no console (no <serial><log>): the answer is empty, and so it says
    page.unroute("**/api/v1/vm/*/console*")
    page.route("**/api/v1/vm/*/console*", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"name": "guest", "data": "", "last_line": 0})))
    page.reload()
    empty = page.wait_for_selector("[data-testid=vm-console] .empty")
    assert "No console output" in empty.inner_text()


def test_the_tasks_page_shows_a_snapshot_tasks_progress(lab: LabClient, guest: dict[str, Any],
                                                       page: Any) -> None:
    """A `vm.create_snapshot` task half done, as `GET /tasks` shapes it (extensions.md §1.1):
    the lab has no Ceph to run one."""
    task = {"id": "1765000000000-0a1b2c3d", "name": "vm.create_snapshot", "state": "running",
            "progress": {"current": 1, "total": 3, "message": "pausing the guest"},
            "current": 1, "total": 3, "status": "pausing the guest", "message": "",
            "error": None, "result": None, "objects": [f"vm:{guest['uuid']}"], "artifacts": [],
            "args": {"vm": guest["uuid"], "name": "guest", "snapshot_name": "before-upgrade",
                     "consistency": "auto"},
            "run_on": "node1", "executor": "node1/1", "log": [], "created": 1765000000.0,
            "started": 1765000000.5, "updated": 1765000001.0, "finished": None}
    page.route("**/api/v1/tasks", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps([task])))
    page.click("nav >> text=Tasks")
    row = page.wait_for_selector(f"[data-testid=tasks] tr[data-key='{task['id']}']")
    text = row.inner_text()
    assert "guest @ before-upgrade" in text and "1/3" in text and "pausing the guest" in text
    assert row.query_selector("progress").get_attribute("value") == "1"


def test_a_snapshot_taken_from_the_page_shows_its_tasks_progress(
        lab: LabClient, guest: dict[str, Any], page: Any) -> None:
    """The lab has no Ceph: the VM's snapshots, the 202 of `POST /vm/<vm>/snapshot` and the
    running task are answered in the browser, in the API's shapes (extensions.md §1.1, §5)."""
    vm = dict(ok(lab.get("/vm/guest"))[0])
    vm["snapshots"] = [
        {"name": name, "timestamp": 1765000000 + i * 3600, "age": 7200 - i * 3600,
         "consistency": consistency, "rbd_snapshots": [f"vms/guest_disk0@{name}"],
         "xml_diff_lines": []}
        for i, (name, consistency) in enumerate([("nightly", "fs-frozen"),
                                                 ("before-upgrade", "crash-consistent")])]
    task_id = "1765000000000-0a1b2c3d"
    task = {"id": task_id, "name": "vm.create_snapshot", "state": "running",
            "progress": {"current": 1, "total": 3, "message": "pausing the guest"},
            "message": "", "args": {"name": "guest", "snapshot_name": "manual"}}
    page.route("**/api/v1/vm", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps([vm])))
    page.route("**/api/v1/vm/*/snapshot", lambda route: route.fulfill(
        status=202, content_type="application/json", body=json.dumps(
            {"task_id": task_id, "task_name": "vm.create_snapshot", "run_on": vm["node"],
             "message": "Task started"})))
    page.route(f"**/api/v1/tasks/{task_id}", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(task)))
    page.reload()
    page.goto(page.url.split("#")[0] + "#/vms/guest")
    page.wait_for_selector("[data-testid=snapshots] tr[data-key=before-upgrade]")
    page.fill("[data-testid=snapshot-name]", "manual")
    page.click("[data-testid=snapshot-take]")
    progress = page.wait_for_selector("[data-testid=task-progress][data-state=running]")
    assert "1/3" in progress.inner_text() and "pausing the guest" in progress.inner_text()
    shoot(page, "[data-testid=vm-snapshots]", "vm-snapshots")
    # a rollback asks first: declined, nothing is sent
    page.click("[data-testid=snapshot-rollback-nightly]")
    assert "Roll guest back to snapshot nightly" in page.inner_text("[data-testid=confirm]")
    page.click("[data-testid=confirm-no]")
    assert page.locator("[data-testid=task-progress]").count() == 1


def test_a_disk_attached_and_detached_from_the_page_as_tasks(
        qlab: tuple[Lab, LabClient], page: Any) -> None:
    """A second guest with a SCSI bus (as in test_vm_devices.py): a file disk hot-plugged from
    its page and out again, each a task on its node followed to its end on the page, and both
    tasks on the Tasks page."""
    the_lab, api = qlab
    info = the_lab._info()
    assert info.qemu is not None
    xml = qemu_guest_xml("hot", str(uuidlib.uuid4()), kernel=Path(info.qemu["kernel"])
                         ).replace("<controller type='usb' model='none'/>", BUSES)
    ok(api.post("/vm", data={"xml": xml, "node": api.primary()}))
    wait_until(lambda: ok(api.get("/vm/hot"))[0]["running_on"], timeout=15)
    data = the_lab.workdir / "hot-data.img"
    data.write_bytes(b"\0" * (1 << 20))
    page.goto(page.url.split("#")[0] + "#/vms/hot")
    page.fill("[data-testid=device-xml]", disk_xml(data, "sdb"))
    page.click("[data-testid=device-attach]")
    page.wait_for_selector("[data-testid=vm-devices] [data-testid=task-progress]"
                           "[data-state=success]", timeout=30000)
    assert [d["dev"] for d in ok(api.get("/vm/hot"))[0]["disks"]] == ["sdb"]
    page.wait_for_selector("[data-testid=devices] tr[data-key='disk sdb']", timeout=LIVE)
    shoot(page, "[data-testid=vm-devices]", "vm-devices")
    page.click("[data-testid=detach-disk-sdb]")
    confirm(page)
    page.wait_for_selector("[data-testid=devices] tr[data-key='disk sdb']", state="detached",
                           timeout=30000)
    assert ok(api.get("/vm/hot"))[0]["disks"] == []
    assert page.locator("[data-testid=vm-devices] [data-testid=task-progress]"
                        "[data-state=success]").count() == 2
    # the Tasks page lists both, done, for that VM
    page.click("nav >> text=Tasks")
    rows = page.locator("[data-testid=tasks] tbody tr:has-text('hot')")
    rows.first.wait_for()
    shown = [rows.nth(i).inner_text() for i in range(rows.count())]
    assert len(shown) == 2 and all("success" in row for row in shown), shown
    ok(api.post("/vm/hot/state", data={"state": "stop", "wait": "true"}))
