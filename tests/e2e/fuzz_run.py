"""Running the schemathesis CLI with the desired-state hooks (tests/e2e/fuzz_hooks.py).

One place builds the command line and the environment, for the lab's fuzz run
(tests/e2e/test_openapi_fuzz.py) and for the fast test that proves the hooks catch a refused
request that wrote (tests/fast/test_fuzz_oracle.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[2]
HOOKS_MODULE = "tests.e2e.fuzz_hooks"
CHECK = "refused_request_changes_nothing"
LAB_FILE_VAR = "PVCD_FUZZ_LAB_FILE"  # the lab.json the hooks read ZooKeeper's address from
REPORT_VAR = "PVCD_FUZZ_REPORT"  # where the hooks write their verdicts
CONFIG = """\
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "510"]
"""  # 510 is the API's documented failure answer; any other 5xx is a server error


def run_schemathesis(location: str, origin: str, token: str, workdir: Path, lab_file: Path,
                     report: Path, options: list[str], timeout: float
                     ) -> subprocess.CompletedProcess[str]:
    """`st run location --url origin` with the token and `options`, the hooks watching the
    cluster described by `lab_file` and writing their verdicts to `report`."""
    st = Path(sys.executable).with_name("st")
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [str(st), "--config-file", str(config), "--no-color",
               "run", location, "--url", origin, "--header", f"X-Api-Key: {token}",
               "--workers", "1",  # one call in flight (the hooks blame it); coverage generation
               # is not thread-safe either
               *options]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS_MODULE,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY),
                                                       os.environ.get("PYTHONPATH")])),
           LAB_FILE_VAR: str(lab_file), REPORT_VAR: str(report)}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          cwd=workdir, env=env, check=False)


def verdicts(report: Path) -> list[dict[str, Any]]:
    """The hooks' report: one dict per call (operation, status, verdict, changes, busy,
    waited)."""
    if not report.exists():
        return []
    return [json.loads(line) for line in report.read_text().splitlines() if line]


def verdict_counts(report: Path) -> Counter[str]:
    return Counter(line["verdict"] for line in verdicts(report))
