"""How the lab starts a node daemon, written down so that the lab fence can start it again.

Each lab node's folder holds `launch.json`: the daemon's command line and what surrounds it (its
network namespace, its mount namespace's binds, its working directory, environment and log), the
pid it runs under, and the lab's plug-ins for it (the agent socket of its `test:///` libvirt,
the throwaway Ceph it adds memstore OSDs to). `pvcd.lab.lab.Lab` writes it and starts the node
with `launch`; the lab fence (`pvcd.lab.fence`) reads it to power the node off and `launch`es it
again, which records the new pid. The node's ZooKeeper record carries none of this: a node
cannot tell another what to kill or run.

One power action at a time per node (`power_lock`): a restart by the lab (as systemd's) and a
fence's power cycle both read the record and start a daemon; without the lock, a restart that
read the killed pid just before a fence powered the node on started a second daemon of the
node (the chaos test's "two daemons"). Under the lock, a start finds the fence's daemon running
and starts none (`start_unless_running`).

The pid written is the daemon's: `ip netns exec`, `unshare` and the mount helper all exec the
next command in the same process.

`pvcd lab down` first leaves a marker in the lab's `nodes/` folder (`mark_going_down`): a lab
fence that finds it powers the node off and leaves it off. A fence that checked just before the
marker appeared may still start one daemon; `down` sweeps for those after every daemon of the
lab (the fences run inside them) has gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pvcd.drivers.host import pid_alive, pids_where, process_argv, signal_pid
from pvcd.lab import mountns

LAUNCH_FILE = "launch.json"
GOING_DOWN_FILE = "lab-going-down"
POWER_LOCK_FILE = "power.lock"


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


@contextmanager
def power_lock(folder: Path | str) -> Iterator[None]:
    """Hold node `folder`'s power: one start, stop or power cycle at a time (module docstring)."""
    with open(Path(folder) / POWER_LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_unless_running(folder: Path | str, record: NodeLaunch) -> int:
    """Start the node's daemon unless the one its record names runs (a fence powered the node
    on meanwhile); the daemon's pid either way."""
    with power_lock(folder):
        try:
            current = load_launch(folder)
        except (OSError, ValueError, TypeError):
            current = None
        if current is not None and pid_alive(current.pid) and \
                process_argv(current.pid) == current.command:
            return current.pid
        return launch(folder, record)


def lab_environment(package_parent: str) -> dict[str, str]:
    """This process's environment with pvcd importable from `package_parent`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    return env


def mark_going_down(nodes_dir: Path | str) -> None:
    """Say that the lab is going down: no fence starts a node daemon again."""
    Path(nodes_dir).mkdir(parents=True, exist_ok=True)
    (Path(nodes_dir) / GOING_DOWN_FILE).touch()


def clear_going_down(nodes_dir: Path | str) -> None:
    (Path(nodes_dir) / GOING_DOWN_FILE).unlink(missing_ok=True)


def going_down(nodes_dir: Path | str) -> bool:
    return (Path(nodes_dir) / GOING_DOWN_FILE).exists()


def node_daemons(configs: list[str]) -> list[int]:
    """The processes whose command line names one of `configs` and `pvcd.lab.node`: the lab's
    node daemons, and a process a fence has forked to start one (its argv is its parent's
    until it execs, then the daemon's, through `ip netns exec` and the mount helper)."""
    return pids_where(lambda argv: "pvcd.lab.node" in argv and any(c in argv for c in configs))


def stop_node_daemons(configs: list[str], children: list[int], timeout: float) -> list[int]:
    """Stop every node daemon of a lab (found by `node_daemons`, not by the pids recorded at
    start: a fence restarts a daemon under a new pid): SIGTERM, SIGKILL after `timeout`, and
    look again until two looks in a row find none (a fence inside a daemon that is stopping may
    start one more; only a live daemon can). `children`: pids of this process's to reap.
    Returns every pid it stopped."""
    deadline = time.monotonic() + timeout
    stopped: list[int] = []
    empty = 0
    while empty < 2:
        pids = node_daemons(configs)
        empty = 0 if pids else empty + 1
        for pid in pids:
            if pid not in stopped:
                stopped.append(pid)
                signal_pid(pid, signal.SIGCONT)  # a stopped process dies only when it runs
                signal_pid(pid, signal.SIGTERM)
            elif time.monotonic() > deadline:
                signal_pid(pid, signal.SIGKILL)
        if time.monotonic() > deadline + 30:
            raise RuntimeError(f"lab node daemons {pids} survived SIGKILL")
        for pid in children:
            reap(pid)
        time.sleep(0.05)
    return stopped


def reap(pid: int) -> None:
    """Collect child `pid`'s exit status once it has ended (no zombie left behind)."""
    if pid > 0 and not pid_alive(pid):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
