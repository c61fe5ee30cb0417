"""The node health checks by name (extensions.md §8.3): what each may cost a node's health, and
the rule that turns an operator command's exit code into a delta.

The config (`health.checks`, `health.commands`) and the checks themselves
(`pvcd.controllers.health`) share these names, so a check named in the config file is a check
the daemon has, and a command cannot take a built-in check's name.
"""

from __future__ import annotations

from pvcd.domain.health import FULL_HEALTH

# every built-in check, in the order a node runs and reports them
LOAD, NICS, DISK, EDAC, LBVT, ZKPR, ZKCN, GWAY, IPMI, PSUR, CEPH = (
    "load", "nics", "disk", "edac", "lbvt", "zkpr", "zkcn", "gway", "ipmi", "psur", "ceph")
NODE_CHECKS = (LOAD, NICS, DISK, EDAC, LBVT, ZKPR, ZKCN, GWAY, IPMI, PSUR, CEPH)
COORDINATOR_CHECKS = (ZKPR, GWAY)  # the others run on every node

# what one finding costs (`nics`, `disk`, `gway` and `ceph` count each device, disk, network
# or OSD at fault)
DELTAS = {LOAD: 50, NICS: 10, DISK: 10, EDAC: 50, LBVT: 50, ZKPR: 50, ZKCN: 10, GWAY: 50,
          IPMI: 10, PSUR: 10, CEPH: 10}

CHECK_LIMIT = 10.0  # seconds a check may take; one that overruns reports TIMED_OUT_DELTA
TIMED_OUT_DELTA = 10
TIMED_OUT = "timed out"
NOT_APPLICABLE = "not applicable"


def command_delta(exit_code: int) -> int:
    """An operator command's delta: exit 0 is healthy, exit N costs min(N, 100); a command
    killed by a signal (negative code) costs the full 100."""
    if exit_code == 0:
        return 0
    if exit_code < 0:
        return FULL_HEALTH
    return min(exit_code, FULL_HEALTH)
