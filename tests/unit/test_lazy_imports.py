"""What a node daemon's process imports before it knows its role: not pyroute2 (~22 MiB, for
client networks, floating IPs and the metadata service only) nor the API (tornado,
prometheus_client, pvcd.api: coordinators only). Each is imported where it is first needed
(pvcd.drivers.rtnl, NodeDaemon's coordinator wiring)."""

from __future__ import annotations

import subprocess
import sys

LAZY = ("pyroute2", "tornado", "prometheus_client", "pvcd.api")


def test_a_node_daemon_module_imports_neither_pyroute2_nor_the_api() -> None:
    probe = ("import sys, pvcd.lab.node, pvcd.main; "
             f"print(','.join(m for m in {LAZY!r} if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           timeout=120, check=True).stdout.strip()
    assert found == "", f"imported at start: {found}"
