"""The fuzz run's oracle "a refused request changes nothing" (tests/e2e/desired_state.py,
tests/e2e/fuzz_hooks.py) can fail: against the real API in process, a handler made to write
and then refuse is reported, by the guard itself and through schemathesis; the snapshot sees
every kind of document the API writes, and none of those the daemons write on their own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from pvcd.api.cluster import STATE, MaintenanceHandler
from pvcd.api.values import accepts
from pvcd.domain.errors import InvalidValue
from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.info import LabInfo
from pvcd.lab.zookeeper import ZooKeeperEnsemble
from pvcd.state.store import Op
from tests.e2e.desired_state import DesiredState, RefusalGuard, changes
from tests.e2e.fuzz_run import CHECK, run_schemathesis, verdict_counts, verdicts
from tests.fakes.api import TOKEN, ApiClient, running_api
from tests.fakes.nodes import SimCluster


@pytest.fixture
def api(sim: SimCluster) -> Iterator[ApiClient]:
    sim.add_node("node1")
    sim.add_node("node2")  # (where node1's VM goes when node1 is flushed)
    sim.step()  # node1 takes the primary role
    with running_api(sim.state, sim.clock) as client:
        yield client


@pytest.fixture
def desired(sim: SimCluster, zookeeper: ZooKeeperEnsemble) -> Iterator[DesiredState]:
    """On a session of its own, as the fuzz hooks are: their watches and barrier are proven."""
    client = KazooClient(zookeeper.connect_string, timeout=5)
    client.start(timeout=10)
    yield DesiredState(client, sim.state.paths)
    client.stop()
    client.close()


@pytest.fixture
def writes_then_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """`POST /maintenance` writes the flag, then answers 510: the bug the oracle is for."""
    @accepts(STATE)
    async def post(self: MaintenanceHandler) -> None:
        paths = self.ctx.view.paths
        entry = self.ctx.view.cache.entry(paths.maintenance)
        doc = {"enabled": True, "since": None}
        await self.commit([Op.create(paths.maintenance, doc) if entry is None else
                           Op.set(paths.maintenance, doc, entry.version)])
        raise InvalidValue("refused after writing")

    monkeypatch.setattr(MaintenanceHandler, "post", post)


def test_a_refused_request_that_wrote_is_a_violation(
        api: ApiClient, desired: DesiredState, writes_then_refuses: None) -> None:
    guard = RefusalGuard(desired, quiet_timeout=1.0)
    guard.before()
    response = api.post("/maintenance", data={"state": "on"})
    assert response.status_code == 510, response.text
    verdict = guard.after(response.status_code)
    assert verdict.kind == "violation"
    assert verdict.changes == (f"created {desired.paths.maintenance}",)


@pytest.mark.parametrize("error,kind", [("Conflict", "failed-in-backend"),
                                         ("BackendError", "failed-in-backend"),
                                         ("InvalidValue", "violation"), ("NotFound", "violation")])
def test_a_storage_request_refused_by_its_executor_is_not_a_violation(
        api: ApiClient, desired: DesiredState, monkeypatch: pytest.MonkeyPatch, error: str,
        kind: str) -> None:
    """As `run_request` does when the executor refuses: the request was written and failed."""
    path = desired.paths.storage_request("0000000000001-cafe")

    @accepts(STATE)
    async def post(self: MaintenanceHandler) -> None:
        await self.commit([Op.create(path, {"id": "0000000000001-cafe", "op": "osd-remove",
                                            "state": "failed", "error": error})])
        raise InvalidValue("refused by the executor")

    monkeypatch.setattr(MaintenanceHandler, "post", post)
    guard = RefusalGuard(desired, quiet_timeout=1.0)
    guard.before()
    response = api.post("/maintenance", data={"state": "on"})
    verdict = guard.after(response.status_code)
    assert (verdict.kind, verdict.changes) == (kind, (f"created {path}",))


def test_refusals_that_change_nothing_and_acceptances_pass(
        api: ApiClient, desired: DesiredState) -> None:
    guard = RefusalGuard(desired, quiet_timeout=1.0)
    for state, status, kind in (("maybe", 510, "unchanged"), ("on", 200, "accepted"),
                                ("on", 200, "accepted")):
        guard.before()
        response = api.post("/maintenance", data={"state": state})
        assert response.status_code == status, response.text
        assert guard.after(response.status_code).kind == kind
    guard.before()
    response = api.post("/maintenance", data={"state": "on"}, token=False)
    assert response.status_code == 401
    assert guard.after(response.status_code).kind == "unchanged"


def test_a_change_while_the_cluster_is_busy_is_unattributable(
        api: ApiClient, sim: SimCluster, desired: DesiredState, writes_then_refuses: None
        ) -> None:
    sim.domain_state("node2", "flush")  # nobody steps the nodes: the flush stays pending
    guard = RefusalGuard(desired, quiet_timeout=0.2)
    guard.before()
    response = api.post("/maintenance", data={"state": "on"})
    verdict = guard.after(response.status_code)
    assert verdict.kind == "unattributable"
    assert verdict.changes == (f"created {desired.paths.maintenance}",)
    assert any(reason.startswith("node node2:") for reason in verdict.busy), verdict.busy


def test_the_snapshot_sees_what_the_api_writes_and_not_what_daemons_write(
        api: ApiClient, sim: SimCluster, desired: DesiredState) -> None:
    p = desired.paths

    def after(method: str, path: str, **data: str) -> list[str]:
        before = desired.current()
        response = api.call(method, path, data=data)
        assert response.status_code == 200, response.text
        return changes(before, desired.current())

    found = after("POST", "/vm", xml=tiny_guest_xml("web1"), node="node1")
    uuid = sim.state.vm_uuid("web1")
    assert found == sorted([f"created {p.vm(uuid)}", f"created {p.vm_name('web1')}"])

    before = desired.current()
    sim.run(3)  # the VM starts: its status, its owner, keepalives, node status
    assert sim.where_running(uuid) == ["node1"]
    assert changes(before, desired.read()) == []  # (a full read: no watch decides this one)

    assert after("POST", "/network", vni="4242", description="net", nettype="managed",
                 ip4_network="10.42.0.0/24", ip4_gateway="10.42.0.1", dhcp4="",
                 dhcp4_start="10.42.0.100", dhcp4_end="10.42.0.200") == sorted(
        [f"created {p.network(4242)}", f"created {p.network_name('net')}"]
        + [f"created {c}" for c in p.network_containers(4242) if c != p.network_leases(4242)])
    mac = "52:54:00:42:00:01"
    assert after("POST", "/network/net/lease", macaddress=mac, ipaddress="10.42.0.10") == \
        [f"created {p.network_static_lease(4242, mac)}"]
    assert after("POST", "/network/net/acl", description="ssh", direction="in",
                 rule="tcp dport 22 accept") == \
        [f"created {p.network_acl(4242, 'in', 'ssh')}"]
    assert after("POST", "/maintenance", state="on") == [f"created {p.maintenance}"]

    assert after("POST", "/node/node1/domain-state", **{"domain-state": "flush"}) == \
        [f"changed {p.node('node1')}"]
    assert any(reason.startswith("node node1:") for reason in desired.current().busy)
    before = desired.current()
    sim.run_until(lambda: not desired.current().busy)
    assert changes(before, desired.current()) == [f"changed {p.vm(uuid)}"]  # moved by the flush


def test_schemathesis_reports_a_refused_request_that_wrote(
        api: ApiClient, sim: SimCluster, zookeeper: ZooKeeperEnsemble, zk_root: str,
        tmp_path: Path, writes_then_refuses: None) -> None:
    code, output, report = _fuzz_maintenance(api, zookeeper, zk_root, tmp_path)
    assert code != 0
    assert CHECK in output and "changed ZooKeeper's desired state" in output, output[-5000:]
    assert verdict_counts(report)["violation"] >= 1, verdicts(report)


def test_schemathesis_passes_when_refusals_change_nothing(
        api: ApiClient, sim: SimCluster, zookeeper: ZooKeeperEnsemble, zk_root: str,
        tmp_path: Path) -> None:
    code, output, report = _fuzz_maintenance(api, zookeeper, zk_root, tmp_path)
    assert code == 0, output[-5000:]
    counts = verdict_counts(report)
    assert counts["unchanged"] >= 1 and counts["accepted"] >= 1, counts
    assert counts["violation"] == 0 and counts["unattributable"] == 0, verdicts(report)


def _fuzz_maintenance(api: ApiClient, zookeeper: ZooKeeperEnsemble, zk_root: str,
                      workdir: Path) -> tuple[int, str, Path]:
    """schemathesis on `POST /maintenance` of the in-process API, with the hooks."""
    lab_file, report, document = (workdir / "lab.json", workdir / "verdicts.jsonl",
                                  workdir / "openapi.json")
    lab_file.write_text(LabInfo(workdir=str(workdir), api=api.base, token=TOKEN,
                                zookeeper=zookeeper.connect_string, zk_root=zk_root).to_json())
    document.write_text(json.dumps(api.get("/openapi.json", token=False).json()))
    result = run_schemathesis(
        str(document), api.base.removesuffix("/api/v1"), TOKEN, workdir, lab_file, report,
        ["--include-operation-id", "post_api_v1_maintenance",
         "--checks", f"{CHECK},not_a_server_error", "--phases", "coverage,fuzzing",
         "--max-examples", "5", "--seed", "7"], timeout=60)
    return result.returncode, result.stdout + result.stderr, report
