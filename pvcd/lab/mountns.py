"""Run a command in a private mount namespace with some folders bind-mounted over others.

Lab "machines" share one host, but some programs insist on fixed paths (libvirtd on
`/etc/libvirt`, `/run/libvirt`, ...; `ceph-volume` on `/etc/ceph` and `/var/lib/ceph`). Each lab
instance therefore gets its own view of those paths:

    unshare --mount --propagation private -- python -m pvcd.lab.mountns \
        --bind=SRC:DST ... -- command ...

The helper (this module's `main`) runs inside the new namespace, bind-mounts every SRC over its
DST (creating DST if missing) and execs the command, so the command's pid is the one the caller
started. Nothing is mounted in the caller's namespace; the namespace and its mounts disappear with
its last process. Paths are ours (never user input) and go to `mount` as separate arguments.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

COMMAND_TIMEOUT = 30.0


def wrap(binds: Iterable[Sequence[str | Path]], command: Sequence[str]) -> list[str]:
    """The argv that runs `command` in a new mount namespace with `binds` (source, target)."""
    return ["unshare", "--mount", "--propagation", "private", "--",
            sys.executable, "-m", "pvcd.lab.mountns",
            *[f"--bind={source}:{target}" for source, target in binds], "--", *command]


def mount_and_exec(argv: list[str]) -> None:
    """`--bind=SRC:DST ... -- command...`: bind-mount each SRC over DST, then exec command."""
    split = argv.index("--")
    binds, command = argv[:split], argv[split + 1:]
    for option in binds:
        source, target = option.removeprefix("--bind=").rsplit(":", 1)
        Path(target).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", source, target], check=True, timeout=COMMAND_TIMEOUT)
    os.execvp(command[0], command)


if __name__ == "__main__":
    mount_and_exec(sys.argv[1:])
