"""The `pvc` client's human output: tables, fields, sizes, and the cluster summary."""

from __future__ import annotations

from typing import Any

from pvcd.cli.cluster import render_status
from pvcd.cli.node import node_details, node_table
from pvcd.cli.output import Column, field, render_fields, render_table, show, size_bytes, size_mib
from pvcd.cli.vm import vm_table


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    rows = [{"name": "node1", "vms": 3}, {"name": "node10", "vms": 12}]
    text = render_table(rows, [Column("NAME", field("name")), Column("VMS", field("vms"), True)])
    assert text.splitlines() == [
        "NAME    VMS",
        "node1     3",
        "node10   12",
    ]


def test_empty_table_is_the_empty_message() -> None:
    assert render_table([], [Column("NAME", field("name"))], empty="No VMs found.") == \
        "No VMs found."


def test_nested_fields_and_missing_values() -> None:
    get = field("memory", "total")
    assert get({"memory": {"total": 5}}) == 5
    assert get({"memory": None}) is None
    assert get({}) is None


def test_values_read_as_words() -> None:
    assert show(None) == "-" and show("") == "-"
    assert show(True) == "yes" and show(False) == "no"
    assert show(2.666666) == "2.667" and show(0.5) == "0.5"
    assert show(["a", "b"]) == "a, b" and show([]) == "-"
    assert show({"x": 1}) == "x=1"
    assert show(7) == "7"


def test_sizes() -> None:
    assert size_bytes(0) == "0 B"
    assert size_bytes(1023) == "1023 B"
    assert size_bytes(1024) == "1 KiB"
    assert size_bytes(1536) == "1.5 KiB"
    assert size_bytes(2 * 1024 ** 3) == "2 GiB"
    assert size_mib(64) == "64 MiB"
    assert size_mib(24064) == "23.5 GiB"
    assert size_mib(None) == "-"
    assert size_bytes("n/a") == "n/a"


def test_fields_align_values() -> None:
    assert render_fields([("Name", "web1"), ("Description", None)]).splitlines() == [
        "Name:         web1",
        "Description:  -",
    ]


NODE = {"name": "node1", "daemon_state": "run", "coordinator_state": "primary",
        "domain_state": "ready", "domains_count": 2, "cpu_count": 4, "load": 0.25,
        "vcpu": {"total": 4, "allocated": 3},
        "memory": {"total": 8192, "used": 1024, "free": 7168, "allocated": 512}}


def test_node_table() -> None:
    header, row, unknown = node_table([{**NODE, "health": 90}, NODE]).splitlines()
    assert header.split() == ["NAME", "DAEMON", "COORDINATOR", "DOMAIN", "HEALTH", "VMS",
                              "CPUS", "LOAD", "VCPU", "ALLOC", "MEM", "TOTAL", "USED", "FREE",
                              "ALLOC"]
    assert row.split() == ["node1", "run", "primary", "ready", "90%", "2", "4", "0.25", "3/4",
                           "8", "GiB", "1", "GiB", "7", "GiB", "512", "MiB"]
    assert unknown.split()[4] == "N/A"  # before the first round, or the node is down
    assert node_table([]) == "No nodes found."


def test_node_details_list_the_failing_checks_only() -> None:
    node = {**NODE, "health": 40, "health_plugins": ["load", "zkpr", "lbvt"],
            "health_details": [
                {"name": "load", "health_delta": 0, "message": "load 0.25 on 4 CPUs"},
                {"name": "zkpr", "health_delta": 50, "message": "not serving"},
                {"name": "lbvt", "health_delta": 10, "message": "timed out"}]}
    text = node_details([node])
    assert "Health:" in text and "40%" in text
    failing = text.split("Failing checks:\n", 1)[1].splitlines()
    assert failing == ["  zkpr (-50): not serving", "  lbvt (-10): timed out"]
    assert "Failing checks" not in node_details([{**NODE, "health": 100}])


def vm_object(**changes: Any) -> dict[str, Any]:
    vm = {"name": "web1", "uuid": "u-1", "state": "start", "node": "node2", "last_node": None,
          "running_on": "node2", "vcpu": 2, "memory": 1024,
          "networks": [{"type": "bridge", "source": "vmbr100", "mac": "52:54:00:00:00:01",
                        "model": "virtio"}]}
    vm.update(changes)
    return vm


def test_vm_table_shows_migration_and_networks() -> None:
    lines = vm_table([vm_object(last_node="node1")]).splitlines()
    assert lines[0].split() == ["NAME", "UUID", "STATE", "NODE", "MIGRATED", "VCPU", "MEMORY",
                                "NETWORKS"]
    assert lines[1].split() == ["web1", "u-1", "start", "node2", "from", "node1", "2", "1",
                                "GiB", "vmbr100"]


def test_cluster_status_shows_health_its_reasons_and_each_node() -> None:
    status = {
        "cluster_health": {"health": 40, "messages": [
            {"id": "DEAD_NODE_NODE3", "health_delta": 50, "text": "Node node3 is dead"},
            {"id": "VM_FAILED_BAD", "health_delta": 10, "text": "VM bad is failed"}]},
        "node_health": {"node1": {"health": 50, "messages": ["'load': load 9.0"]},
                        "node3": {"health": None, "messages": []}},
        "maintenance": False, "primary_node": "node1",
        "nodes": {"total": 2, "run,ready": 1, "dead,ready": 1},
        "vms": {"total": 3, "start": 1, "stop": 1, "failed": 1}, "networks": 0,
        "osds": {"total": 0},
        "detail": {"node": [{"name": "node1", "daemon_state": "run", "domain_state": "ready"},
                            {"name": "node3", "daemon_state": "dead",
                             "domain_state": "ready"}],
                   "faults": [{"id": "VM_FAILED_BAD", "active": False}]}}
    text = render_status(status)
    assert "Health:" in text and "40%" in text
    assert "DEAD_NODE_NODE3 (-50): Node node3 is dead\n" in text
    assert "VM_FAILED_BAD (-10): VM bad is failed [cleared]" in text
    assert "node1: 50% ('load': load 9.0)" in text and "node3: unknown" in text
    assert "3 total; 1 failed, 1 start, 1 stop" in text
    assert "Nodes not run/ready:" in text and "OSDs" not in text
    quiet = render_status({**status, "primary_node": None, "maintenance": True,
                           "cluster_health": {"health": 100, "messages": []}})
    assert "NONE" in quiet and "ON" in quiet and "Unacknowledged" not in quiet
