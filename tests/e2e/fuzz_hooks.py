"""Schemathesis hooks: every refused request the fuzzer sends must leave desired state alone.

Loaded by the `st` process (`SCHEMATHESIS_HOOKS=tests.e2e.fuzz_hooks`, the repository on
`PYTHONPATH`), configured by two environment variables:
- `PVCD_FUZZ_LAB_FILE`: a `lab.json` (`pvcd.lab.info.LabInfo`): the ZooKeeper servers, the
  cluster's root and the credentials the daemons use (the tree is readable by nobody else);
- `PVCD_FUZZ_REPORT`: a file that gets one JSON line per call: operation, status, verdict
  (`accepted`, `unchanged`, `violation`, `unattributable`, `failed-in-backend`), the changes,
  what kept the cluster busy, and how long the call waited for a quiet cluster. The test
  reads it, so a check that silently did nothing would show.

`before_call` waits for a quiet cluster and takes a snapshot, `after_call` compares
(`tests.e2e.desired_state.RefusalGuard`); the check `refused_request_changes_nothing` turns a
violation into a schemathesis failure, reported with its reproduction like any other check.
The hooks are module functions by schemathesis' design, so the module holds the one guard of
the run; schemathesis calls them from one worker thread (`--workers 1`).
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path
from typing import Any

import schemathesis

from pvcd.lab.info import LabInfo
from pvcd.state.schema import Paths
from tests.e2e.desired_state import DesiredState, RefusalGuard, Verdict
from tests.e2e.fuzz_run import LAB_FILE_VAR, REPORT_VAR


class FuzzWatch:
    """The run's guard, its ZooKeeper client, the report, and the verdicts awaiting the check."""

    def __init__(self, lab_file: Path, report: Path) -> None:
        info = LabInfo.from_json(lab_file.read_text())
        self.client = info.zookeeper_client()
        self.client.start(timeout=10)
        self.guard = RefusalGuard(DesiredState(self.client, Paths(info.zk_root)))
        self.report = report
        self.verdicts: dict[str, Verdict] = {}
        self.waited: tuple[float, tuple[str, ...]] = (0.0, ())

    def before(self) -> None:
        self.waited = self.guard.before()

    def after(self, case: Any, status: int) -> None:
        verdict = self.guard.after(status)
        self.verdicts[case.id] = verdict
        line = {"operation": case.operation.label, "status": status, "verdict": verdict.kind,
                "changes": list(verdict.changes), "busy": list(verdict.busy),
                "waited": round(self.waited[0], 3), "waited_for": list(self.waited[1])}
        with self.report.open("a") as report:
            report.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self.client.stop()
        self.client.close()


WATCH = FuzzWatch(Path(os.environ[LAB_FILE_VAR]), Path(os.environ[REPORT_VAR]))
atexit.register(WATCH.close)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    WATCH.before()


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    WATCH.after(case, response.status_code)


@schemathesis.check
def refused_request_changes_nothing(ctx: Any, response: Any, case: Any) -> None:
    """A request the API refused (4xx, 510) changed nothing in ZooKeeper's desired state."""
    verdict = WATCH.verdicts.pop(case.id, None)
    if verdict is not None and verdict.kind == "violation":
        raise AssertionError(
            f"The API answered {response.status_code} but changed ZooKeeper's desired state: "
            + "; ".join(verdict.changes))
