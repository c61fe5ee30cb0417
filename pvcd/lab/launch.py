"""How the lab starts a node daemon, written down so that the lab fence can start it again.

Each lab node's folder holds `launch.json`: the daemon's command line and what surrounds it (its
network namespace, its mount namespace's binds, its working directory, environment and log), the
pid it runs under, and the lab's plug-ins for it (the agent socket of its `test:///` libvirt,
the throwaway Ceph it adds memstore OSDs to). `pvcd.lab.lab.Lab` writes it and starts the node
with `launch`; the lab fence (`pvcd.lab.fence`) reads it to power the node off and `launch`es it
again, which records the new pid. The node's ZooKeeper record carries none of this: a node
cannot tell another what to kill or run.

The pid written is the daemon's: `ip netns exec`, `unshare` and the mount helper all exec the
next command in the same process.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pvcd.lab import mountns

LAUNCH_FILE = "launch.json"


@dataclass
class NodeLaunch:
    node: str
    command: list[str]  # the daemon's own argv, as /proc/<pid>/cmdline shows it
    cwd: str
    log: str
    env: dict[str, str] = field(default_factory=dict)  # the daemon's whole environment
    # (source, target) folders bind-mounted in a mount namespace of the daemon's own
    binds: list[list[str]] = field(default_factory=list)
    netns: str | None = None  # the node's network namespace
    floating: list[list[str]] = field(default_factory=list)  # [device, cidr] it may hold
    agent_socket: str | None = None  # pvcd.lab.agent, for a test:/// libvirt
    ceph_workdir: str | None = None  # the throwaway Ceph its memstore OSDs belong to
    pid: int = 0

    def argv(self) -> list[str]:
        """The full command: into the node's namespaces, then the daemon."""
        command = list(self.command)
        if self.binds:
            command = mountns.wrap(self.binds, command)
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        return command


def launch_path(folder: Path | str) -> Path:
    return Path(folder) / LAUNCH_FILE


def load_launch(folder: Path | str) -> NodeLaunch:
    """The launch record in a node's folder (OSError, ValueError when missing or broken)."""
    doc = json.loads(launch_path(folder).read_text())
    return NodeLaunch(**doc)


def save_launch(folder: Path | str, record: NodeLaunch) -> None:
    path = launch_path(folder)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2))
    tmp.chmod(0o600)  # the environment may hold the operator's secrets
    tmp.replace(path)  # the fence and the lab read it while it may be rewritten


def launch(folder: Path | str, record: NodeLaunch) -> int:
    """Start the node's daemon as `record` says (a session of its own, output to its log) and
    record its pid; returns the pid."""
    with open(record.log, "ab") as out:
        process = subprocess.Popen(record.argv(), cwd=record.cwd, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, env=record.env,
                                   start_new_session=True)
    record.pid = process.pid
    save_launch(folder, record)
    return process.pid


def lab_environment(package_parent: str) -> dict[str, str]:
    """This process's environment with pvcd importable from `package_parent`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    return env
